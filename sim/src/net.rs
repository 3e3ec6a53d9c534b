//! The node's net seam ([`canopy_node::net::Net`]) over turmoil's simulated
//! TCP: the only part of a simulated node that differs from production.
//!
//! Every node listens on [`PORT`] of its turmoil host. A request opens a
//! connection to the peer's host, writes one length-prefixed frame
//! (sender id, protocol, payload) and reads one framed answer; the peer's
//! side turns the frame into a [`NetEvent::Request`] and writes back what its
//! protocol code answers through the [`Responder`]. Whatever turmoil does to
//! the segments (latency, partitions, holds, random link failures) happens
//! to these frames; a lost segment shows up as a request timeout, as on a
//! real network whose path died under a live connection.
//!
//! Connection state (which peers are up) is driven by the harness, as a
//! transport would see it: a crash or a graceful leave drops the node's
//! connections, a (re)start brings them up on both sides. Partitions are
//! silent: nobody is told.
//!
//! Admission is enforced here, as the `Net` contract asks and as libp2p's
//! connection gate does in production: the node's admitted set (the watch
//! its `ClusterNode` keeps equal to cluster state, plus an inviter it joins
//! through) decides which connected peers protocol code sees. `PeerUp` /
//! `PeerDown` follow "connected and admitted"; a request from a peer that is
//! not admitted is refused unanswered unless it is a `join/1` request, and
//! only `join/1` may be sent to one.
//!
//! Per-peer request limits go through the node's own core
//! ([`PeerLimits`], as the libp2p driver does): a request of an admitted
//! peer over its bounds is answered busy at once (status byte 2, which the
//! requester turns into [`NetError::Busy`]) and never reaches protocol code;
//! time comes from the node's clock, so runs stay replayable.
//!
//! Duplication: with probability `duplicate_rate` a request is sent twice
//! (at-least-once delivery); the second answer is ignored.
//!
//! Read corruption: with probability `corrupt_rate` a blob chunk this node
//! serves (`blob/1`) has one byte flipped, as when the disk under a read
//! rots; the fetching node must notice (it verifies every blob's CID).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use canopy_node::env::{Clock, Rng};
use canopy_node::net::peer_limits::{PeerLimits, PeerLimitsConfig};
use canopy_node::net::{
    JOIN_PROTOCOL, MAX_PAYLOAD_BYTES, Net, NetError, NetEvent, NodeId, Protocol, Responder,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// The port every simulated node listens on.
pub const PORT: u16 = 7000;

/// How a simulated transport behaves.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub request_timeout: Duration,
    /// What one peer may ask of the node (the node config's defaults).
    pub peer_limits: PeerLimitsConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            peer_limits: PeerLimitsConfig::default(),
        }
    }
}

/// Response frame status bytes.
const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const STATUS_BUSY: u8 = 2;

struct Inner {
    id: NodeId,
    /// Host names of every node that may exist in the run.
    hosts: BTreeMap<NodeId, String>,
    /// Peers with a connection.
    up: Mutex<BTreeSet<NodeId>>,
    /// Peers protocol code was told are up (connected and admitted).
    visible: Mutex<BTreeSet<NodeId>>,
    admitted: watch::Receiver<BTreeSet<NodeId>>,
    events: mpsc::Sender<NetEvent>,
    /// Requests open and their rate, per peer.
    limits: Mutex<PeerLimits>,
    clock: Clock,
    config: NetConfig,
    /// Probability (in millionths) that a request is sent twice.
    duplicate_ppm: std::sync::atomic::AtomicU32,
    /// Probability (in millionths) that a served blob chunk is corrupted.
    corrupt_ppm: std::sync::atomic::AtomicU32,
    rng: Rng,
}

/// One node's handle on the simulated network. Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    inner: Arc<Inner>,
}

impl SimNet {
    /// A node's transport and the event queue its protocol drivers read;
    /// `admitted` is the set of peers it may talk to (see the module doc).
    /// Call [`SimNet::serve`] inside the node's host to accept requests.
    pub fn new(
        id: NodeId,
        hosts: BTreeMap<NodeId, String>,
        config: NetConfig,
        rng: Rng,
        admitted: watch::Receiver<BTreeSet<NodeId>>,
    ) -> (SimNet, mpsc::Receiver<NetEvent>) {
        let (events, rx) = mpsc::channel(1024);
        let limits = PeerLimits::new(config.peer_limits, hosts.len().max(1));
        let net = SimNet {
            inner: Arc::new(Inner {
                id,
                hosts,
                up: Mutex::default(),
                visible: Mutex::default(),
                admitted,
                events,
                limits: Mutex::new(limits),
                clock: Clock::tokio(),
                config,
                duplicate_ppm: Default::default(),
                corrupt_ppm: Default::default(),
                rng,
            }),
        };
        (net, rx)
    }

    fn up(&self) -> MutexGuard<'_, BTreeSet<NodeId>> {
        self.inner.up.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to `peer` came up (the harness tells both sides).
    pub fn peer_up(&self, peer: NodeId) {
        if peer != self.inner.id && self.up().insert(peer) {
            self.refresh();
        }
    }

    /// The connection to `peer` went down.
    pub fn peer_down(&self, peer: NodeId) {
        if self.up().remove(&peer) {
            let now = self.now();
            self.limits().handle_peer_down(peer, now);
            self.refresh();
        }
    }

    fn limits(&self) -> MutexGuard<'_, PeerLimits> {
        self.inner.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time to give the limits core: the node's (simulated) clock.
    fn now(&self) -> std::time::Instant {
        self.inner.clock.now().into_std()
    }

    fn is_admitted(&self, peer: &NodeId) -> bool {
        self.inner.admitted.borrow().contains(peer)
    }

    /// Tell protocol code which peers are now connected and admitted, in
    /// id order.
    fn refresh(&self) {
        let now: BTreeSet<NodeId> = Net::peers(self).into_iter().collect();
        let mut visible = self.inner.visible.lock().unwrap_or_else(|p| p.into_inner());
        for gone in visible.difference(&now) {
            let _ = self.inner.events.try_send(NetEvent::PeerDown(*gone));
        }
        for new in now.difference(&visible) {
            let _ = self.inner.events.try_send(NetEvent::PeerUp(*new));
        }
        *visible = now;
    }

    /// Follow the admitted set (one waiter on the watch, so its wake-up
    /// order cannot vary).
    async fn track_admitted(self) {
        let mut admitted = self.inner.admitted.clone();
        loop {
            self.refresh();
            if admitted.changed().await.is_err() {
                return;
            }
        }
    }

    /// Send each request twice with probability `rate` (0..=1).
    pub fn set_duplicate_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6) as u32;
        self.inner
            .duplicate_ppm
            .store(ppm, std::sync::atomic::Ordering::Relaxed);
    }

    /// Corrupt each served blob chunk with probability `rate` (0..=1).
    pub fn set_corrupt_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6) as u32;
        self.inner
            .corrupt_ppm
            .store(ppm, std::sync::atomic::Ordering::Relaxed);
    }

    fn chance(&self, ppm: &std::sync::atomic::AtomicU32) -> bool {
        let ppm = ppm.load(std::sync::atomic::Ordering::Relaxed);
        ppm > 0 && (self.inner.rng.next_u64() % 1_000_000) < ppm as u64
    }

    /// Accept requests on [`PORT`] until the host stops. Spawn it inside the
    /// node's turmoil host.
    pub async fn serve(self) -> std::io::Result<()> {
        tokio::spawn(self.clone().track_admitted());
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let net = self.clone();
            tokio::spawn(async move {
                let _ = net.answer(stream).await;
            });
        }
    }

    async fn answer(&self, mut stream: turmoil::net::TcpStream) -> std::io::Result<()> {
        let frame = read_frame(&mut stream).await?;
        let Some((from, protocol, payload)) = decode_request(frame) else {
            return Ok(());
        };
        if protocol != JOIN_PROTOCOL && !self.is_admitted(&from) {
            let mut out = vec![STATUS_REFUSED];
            out.extend_from_slice(b"not an admitted member of this cluster");
            write_frame(&mut stream, &out).await?;
            let mut rest = [0u8; 1];
            let _ = stream.read(&mut rest).await;
            return Ok(());
        }
        // Join requests come from peers not admitted yet; they are few.
        let slot = if self.is_admitted(&from) {
            let now = self.now();
            let admitted = self.limits().admit(from, now);
            match admitted {
                Ok(()) => Some(Slot {
                    net: self,
                    peer: from,
                }),
                Err(refusal) => {
                    if refusal.warn {
                        tracing::warn!(peer = %from, %protocol, refused_total = refusal.refused_total, "refusing requests from a peer over its limits: {}", refusal.busy);
                    }
                    let mut out = vec![STATUS_BUSY];
                    out.extend_from_slice(refusal.busy.to_string().as_bytes());
                    write_frame(&mut stream, &out).await?;
                    let mut rest = [0u8; 1];
                    let _ = stream.read(&mut rest).await;
                    return Ok(());
                }
            }
        } else {
            None
        };
        let is_blob = protocol == canopy_node::cluster::BLOB_PROTOCOL;
        let (tx, rx) = oneshot::channel();
        let event = NetEvent::Request {
            from,
            protocol,
            payload,
            reply: Responder(tx),
        };
        if self.inner.events.send(event).await.is_err() {
            return Ok(());
        }
        let answer = rx
            .await
            .unwrap_or_else(|_| Err("the peer dropped the request".into()));
        // Answered: the peer's slot is free.
        drop(slot);
        let mut out = Vec::new();
        match answer {
            Ok(body) => {
                out.push(STATUS_OK);
                out.extend_from_slice(&body);
                // Chunks only (answers to `have` are a few bytes of JSON).
                if is_blob && body.len() >= 256 && self.chance(&self.inner.corrupt_ppm) {
                    let at = 1 + (self.inner.rng.next_u64() % body.len() as u64) as usize;
                    out[at] ^= 0x20;
                }
            }
            Err(reason) => {
                out.push(STATUS_REFUSED);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        write_frame(&mut stream, &out).await?;
        // Wait for the requester to close: a close with unread data resets.
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest).await;
        Ok(())
    }
}

/// One admitted request's slot in its peer's limits, freed when dropped
/// (answered, or the exchange ended early).
struct Slot<'a> {
    net: &'a SimNet,
    peer: NodeId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let now = self.net.now();
        self.net.limits().release(self.peer, now);
    }
}

fn encode_request(from: NodeId, protocol: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(33 + protocol.len() + payload.len());
    out.extend_from_slice(&from.0);
    out.push(protocol.len() as u8);
    out.extend_from_slice(protocol.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_request(frame: Vec<u8>) -> Option<(NodeId, String, Bytes)> {
    let id: [u8; 32] = frame.get(..32)?.try_into().ok()?;
    let len = *frame.get(32)? as usize;
    let protocol = std::str::from_utf8(frame.get(33..33 + len)?)
        .ok()?
        .to_string();
    let payload = Bytes::copy_from_slice(frame.get(33 + len..)?);
    Some((NodeId(id), protocol, payload))
}

async fn write_frame(stream: &mut turmoil::net::TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut turmoil::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PAYLOAD_BYTES + 1024 {
        return Err(std::io::Error::other("frame over the payload limit"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// A peer's answer that is not a payload.
struct Refused {
    /// Its limits turned the request away (retry later).
    busy: bool,
    reason: String,
}

/// One request/answer exchange on a fresh connection.
async fn exchange(host: String, frame: Arc<Vec<u8>>) -> std::io::Result<Result<Bytes, Refused>> {
    let mut stream = turmoil::net::TcpStream::connect((host.as_str(), PORT)).await?;
    write_frame(&mut stream, &frame).await?;
    let answer = read_frame(&mut stream).await?;
    match answer.split_first() {
        Some((&STATUS_OK, body)) => Ok(Ok(Bytes::copy_from_slice(body))),
        Some((&status, reason)) => Ok(Err(Refused {
            busy: status == STATUS_BUSY,
            reason: String::from_utf8_lossy(reason).into_owned(),
        })),
        None => Err(std::io::Error::other("empty answer")),
    }
}

impl Net for SimNet {
    fn local_id(&self) -> NodeId {
        self.inner.id
    }

    fn peers(&self) -> Vec<NodeId> {
        let admitted = self.inner.admitted.borrow();
        self.up()
            .iter()
            .filter(|p| admitted.contains(p))
            .copied()
            .collect()
    }

    fn request(
        &self,
        peer: NodeId,
        protocol: Protocol,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, NetError>> {
        let net = self.clone();
        async move {
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(NetError::TooLarge {
                    size_bytes: payload.len(),
                });
            }
            if !net.up().contains(&peer) || (protocol != JOIN_PROTOCOL && !net.is_admitted(&peer)) {
                return Err(NetError::NotConnected(peer));
            }
            let Some(host) = net.inner.hosts.get(&peer).cloned() else {
                return Err(NetError::NotConnected(peer));
            };
            let timeout = net.inner.config.request_timeout;
            let frame = Arc::new(encode_request(net.inner.id, protocol, &payload));
            if net.chance(&net.inner.duplicate_ppm) {
                let (host, frame) = (host.clone(), frame.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, exchange(host, frame)).await;
                });
            }
            let timeout_ms = timeout.as_millis() as u64;
            match tokio::time::timeout(timeout, exchange(host, frame)).await {
                Err(_) => Err(NetError::Timeout { peer, timeout_ms }),
                Ok(Err(_)) => Err(NetError::NotConnected(peer)),
                Ok(Ok(answer)) => answer.map_err(|Refused { busy, reason }| match busy {
                    true => NetError::Busy { peer, reason },
                    false => NetError::Refused { peer, reason },
                }),
            }
        }
        .boxed()
    }

    fn publish(&self, _topic: &str, _payload: Bytes) -> Result<(), NetError> {
        // No protocol the simulator runs publishes yet.
        Ok(())
    }

    fn subscribe(&self, _topic: &str) -> Result<(), NetError> {
        Ok(())
    }

    fn busy_refusals(&self) -> BTreeMap<NodeId, u64> {
        self.limits().refusals().clone()
    }
}
