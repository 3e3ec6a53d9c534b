//! The libp2p implementation of the [`Net`] seam.
//!
//! Owns the swarm: transports (TCP with an optional pre-shared-key private
//! network, and QUIC), noise, yamux, and the behaviours Canopy uses —
//! request-response (one protocol carrying every Canopy request, see
//! [`codec`]), gossipsub (signed messages), identify, kad (peer discovery from
//! a bootstrap address), mdns (switchable off) and connection limits — plus
//! admission by the admitted set (a `watch` channel the caller controls, fed
//! from signed cluster state). A peer outside the set that gets through the
//! transport (cluster secret, noise) is held on *probation*: no `PeerUp`, no
//! kad or gossipsub, every request refused except a few on
//! [`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL), and its connections closed
//! after [`P2pConfig::probation`] unless it is admitted first, in which case
//! it is promoted on the same connection. Those rules are a sans-IO core
//! (`probation`) that the swarm task (`driver`) feeds and obeys.
//!
//! The swarm runs in one tokio task (no OS threads); [`P2pNet`] handles talk
//! to it over a command channel. Dropping every handle stops the task and
//! closes its connections. See `docs/security.md` for the trust model.

mod behaviour;
pub mod codec;
mod driver;
mod gate;
mod probation;
mod psk;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
pub use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol as AddrProtocol;
use tokio::sync::{mpsc, oneshot, watch};

use super::identity::NodeKey;
use super::peer_limits::PeerLimitsConfig;
use super::{MAX_PAYLOAD_BYTES, Net, NetError, NetEvent, NodeId, Protocol};
use crate::env::Clock;
use codec::MAX_PROTOCOL_NAME_BYTES;

/// How many [`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL) requests one
/// connection of a peer that is not admitted may send; later ones are refused.
pub const MAX_JOIN_REQUESTS_PER_CONNECTION: u32 = 4;

/// How a node joins the libp2p network.
#[derive(Clone)]
pub struct P2pConfig {
    /// Addresses to listen on: `/ip4/0.0.0.0/tcp/4001`, and with `quic`,
    /// `/ip4/0.0.0.0/udp/4001/quic-v1`. Port 0 picks a free port; read the
    /// result from [`P2pNet::listen_addrs`].
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; dialed at start and redialed every
    /// `redial_interval` while not connected.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// The cluster's pre-shared key: wraps every TCP connection (libp2p
    /// private network, see `psk`). It cannot guard QUIC; admission does (see
    /// `docs/security.md`).
    pub cluster_secret: Option<[u8; 32]>,
    /// Enable the QUIC transport (UDP).
    pub quic: bool,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// How long a connection may take to finish its handshake (cluster secret, noise, yamux).
    pub handshake_timeout: Duration,
    /// How often bootstrap peers that are not connected are dialed again.
    pub redial_interval: Duration,
    /// How long a connection with no traffic stays open.
    pub idle_connection_timeout: Duration,
    /// Upper bound on established connections, all peers together.
    pub max_connections: u32,
    /// Upper bound on established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Upper bound on connections still in their handshake, each direction.
    pub max_pending_connections: u32,
    /// Requests and messages waiting for the node to read them; past this,
    /// new ones are dropped (requests answered with an error).
    pub event_queue_len: usize,
    /// How long a connected peer that is not admitted may stay connected to
    /// present an invite ([`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL)) before
    /// its connections are closed.
    pub probation: Duration,
    /// What one admitted peer may ask of this node: requests open at once
    /// and their rate ([`peer_limits`](crate::net::peer_limits)); a request
    /// over a bound is answered busy at once, never queued.
    pub peer_limits: PeerLimitsConfig,
    /// The node's clock ([`Env::clock`](crate::env::Env::clock)): probation
    /// deadlines and request rates are read from it. Default: tokio's.
    pub clock: Clock,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            cluster_secret: None,
            quic: true,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            redial_interval: Duration::from_secs(5),
            idle_connection_timeout: Duration::from_secs(24 * 60 * 60),
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_connections: 64,
            event_queue_len: 4096,
            probation: Duration::from_secs(30),
            peer_limits: PeerLimitsConfig::default(),
            clock: Clock::tokio(),
        }
    }
}

impl fmt::Debug for P2pConfig {
    // Never print the cluster secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pConfig")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field(
                "cluster_secret",
                &self.cluster_secret.map(|_| "<set>").unwrap_or("<none>"),
            )
            .field("quic", &self.quic)
            .field("request_timeout", &self.request_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("redial_interval", &self.redial_interval)
            .field("probation", &self.probation)
            .field("peer_limits", &self.peer_limits)
            .finish_non_exhaustive()
    }
}

impl P2pConfig {
    /// The TCP multiaddr of a socket address.
    pub fn tcp_addr(addr: SocketAddr) -> Multiaddr {
        Multiaddr::from(addr.ip()).with(AddrProtocol::Tcp(addr.port()))
    }

    /// The QUIC multiaddr of a socket address.
    pub fn quic_addr(addr: SocketAddr) -> Multiaddr {
        Multiaddr::from(addr.ip())
            .with(AddrProtocol::Udp(addr.port()))
            .with(AddrProtocol::QuicV1)
    }

    fn check(&self) -> Result<(), NetError> {
        if !self.quic
            && let Some(addr) = self
                .listen
                .iter()
                .chain(&self.bootstrap)
                .find(|a| is_quic(a))
        {
            return Err(NetError::Setup(format!(
                "{addr} is a QUIC address but QUIC is off; turn QUIC on or use a TCP address"
            )));
        }
        if self.request_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return Err(NetError::Setup(
                "request and handshake timeouts must be above zero".into(),
            ));
        }
        if self.redial_interval.is_zero() {
            return Err(NetError::Setup("redial_interval must be above zero".into()));
        }
        if self.probation.is_zero() {
            return Err(NetError::Setup(
                "probation must be above zero: it is how long a node may take to present its invite".into(),
            ));
        }
        if self.event_queue_len == 0 {
            return Err(NetError::Setup("event_queue_len must be above zero".into()));
        }
        if self.max_connections == 0 {
            return Err(NetError::Setup("max_connections must be above zero".into()));
        }
        self.peer_limits
            .check()
            .map_err(|e| NetError::Setup(e.to_string()))
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, AddrProtocol::QuicV1 | AddrProtocol::Quic))
}

/// What a handle asks the swarm task to do.
enum Command {
    Request {
        peer: NodeId,
        protocol: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<Bytes, NetError>>,
    },
    Publish {
        topic: String,
        payload: Bytes,
    },
    Subscribe {
        topic: String,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<NodeId, NetError>>,
    },
}

/// State the swarm task publishes for synchronous reads.
#[derive(Default)]
struct Shared {
    peers: Mutex<BTreeSet<NodeId>>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    /// Requests refused as busy, per admitted peer.
    busy_refusals: Mutex<BTreeMap<NodeId, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is always left consistent (single assignments), so a panic
    // elsewhere while holding the lock does not make it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle to the libp2p network. Cheap to clone.
#[derive(Clone)]
pub struct P2pNet {
    local_id: NodeId,
    // Unbounded because `publish`/`subscribe` are synchronous; every command is
    // small and requests are bounded by their callers awaiting them.
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    dial_timeout: Duration,
}

impl fmt::Debug for P2pNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P2pNet({})", self.local_id)
    }
}

impl P2pNet {
    /// Start the swarm in a tokio task: listen, dial the bootstrap peers, and
    /// return a handle and the events protocol code reads.
    ///
    /// Must be called inside a tokio runtime. Returns once every listener is
    /// bound (so [`P2pNet::listen_addrs`] is complete), or an error naming the
    /// address that could not be bound.
    pub async fn start(
        key: &NodeKey,
        config: P2pConfig,
        admitted: watch::Receiver<BTreeSet<NodeId>>,
    ) -> Result<(P2pNet, mpsc::Receiver<NetEvent>), NetError> {
        config.check()?;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::channel(config.event_queue_len);
        let shared = Arc::new(Shared::default());
        let dial_timeout = config.handshake_timeout + config.request_timeout;
        let driver =
            driver::Driver::new(key, config, admitted, command_rx, event_tx, shared.clone())?;
        let driver = driver.listen().await?;
        tokio::spawn(driver.run());
        let net = P2pNet {
            local_id: key.node_id(),
            commands: command_tx,
            shared,
            dial_timeout,
        };
        Ok((net, event_rx))
    }

    /// The addresses this node listens on (ports resolved), each ending in
    /// `/p2p/<peer id>` so another node can use it as a bootstrap address.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.listen_addrs).clone()
    }

    /// Connect to `addr` and wait until the peer there has identified itself
    /// and is admitted *by this node*; returns its id. Fails with
    /// [`NetError::Dial`] when the peer is unreachable, the handshake fails
    /// (e.g. a different cluster secret), the peer closes the connection, or
    /// the peer is not in this node's admitted set.
    ///
    /// The peer need not have admitted this node: a joining node puts its
    /// inviter in its own admitted set, dials it, and sends a
    /// [`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL) request; until the peer
    /// admits it, every other request fails with [`NetError::Refused`], and
    /// the peer closes the connection after its probation.
    pub async fn dial(&self, addr: Multiaddr) -> Result<NodeId, NetError> {
        let (reply, rx) = oneshot::channel();
        let shown = addr.to_string();
        self.commands
            .send(Command::Dial { addr, reply })
            .map_err(|_| NetError::Stopped)?;
        match tokio::time::timeout(self.dial_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::Dial {
                addr: shown,
                reason: format!(
                    "no answer within {} ms; check that the address is right and the node runs",
                    self.dial_timeout.as_millis()
                ),
            }),
        }
    }
}

impl Net for P2pNet {
    fn local_id(&self) -> NodeId {
        self.local_id
    }

    fn peers(&self) -> Vec<NodeId> {
        lock(&self.shared.peers).iter().copied().collect()
    }

    fn request(
        &self,
        peer: NodeId,
        protocol: Protocol,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, NetError>> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            let size_bytes = payload.len();
            return async move { Err(NetError::TooLarge { size_bytes }) }.boxed();
        }
        debug_assert!(
            protocol.len() <= MAX_PROTOCOL_NAME_BYTES,
            "protocol name too long"
        );
        if protocol.len() > MAX_PROTOCOL_NAME_BYTES {
            let reason =
                format!("protocol name `{protocol}` is over {MAX_PROTOCOL_NAME_BYTES} bytes");
            return async move { Err(NetError::Refused { peer, reason }) }.boxed();
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Request {
            peer,
            protocol: protocol.to_owned(),
            payload,
            reply,
        });
        async move {
            sent.map_err(|_| NetError::Stopped)?;
            // The swarm enforces the request timeout and always answers.
            rx.await.map_err(|_| NetError::Stopped)?
        }
        .boxed()
    }

    fn publish(&self, topic: &str, payload: Bytes) -> Result<(), NetError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(NetError::TooLarge {
                size_bytes: payload.len(),
            });
        }
        self.commands
            .send(Command::Publish {
                topic: topic.to_owned(),
                payload,
            })
            .map_err(|_| NetError::Stopped)
    }

    fn subscribe(&self, topic: &str) -> Result<(), NetError> {
        self.commands
            .send(Command::Subscribe {
                topic: topic.to_owned(),
            })
            .map_err(|_| NetError::Stopped)
    }

    fn busy_refusals(&self) -> BTreeMap<NodeId, u64> {
        lock(&self.shared.busy_refusals).clone()
    }
}
