//! The swarm task: one tokio task that owns the libp2p swarm, carries out
//! commands from [`P2pNet`](super::P2pNet) handles, enforces admission and
//! turns libp2p events into [`NetEvent`]s.
//!
//! Admission: a peer in the admitted set is a full peer once it identified
//! itself (`PeerUp`). A peer outside it that got through the transport is on
//! probation: the gates in [`Behaviour`] keep kad and gossipsub away from it,
//! it gets no `PeerUp` and is not listed in `peers()`, and what it may do —
//! up to [`MAX_JOIN_REQUESTS_PER_CONNECTION`] requests on
//! [`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL) per connection, for
//! [`P2pConfig::probation`] — is decided by the sans-IO [`Probation`] core,
//! which this task feeds (with `now` from the node's clock,
//! [`P2pConfig::clock`]) and obeys. It is promoted in place when the set
//! comes to include it, and disconnected when its probation runs out first.
//!
//! Per-peer request limits: every request of an admitted peer passes the
//! sans-IO [`PeerLimits`] core before it is queued for protocol code; over
//! its peer's bounds it is answered busy at once (nothing queued, the peer
//! stays connected), and an admitted request frees its slot when its answer
//! leaves (or its responder is dropped, or it times out).
//!
//! Inputs are handled by `handle_*` methods (commands, swarm events, the
//! redial tick, the probation timer), one per source.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, mdns};
use tokio::sync::{mpsc, oneshot, watch};

use super::behaviour::{self, Behaviour, BehaviourEvent};
use super::codec::{WireRequest, WireResponse};
use super::probation::Probation;
use super::{Command, MAX_JOIN_REQUESTS_PER_CONNECTION, P2pConfig, Shared, lock};
use crate::env::Clock;
use crate::net::identity::NodeKey;
use crate::net::peer_limits::{PeerLimits, Refusal};
use crate::net::{NetError, NetEvent, NodeId, Responder};

/// How often kad may start a bootstrap query on new peers.
const KAD_BOOTSTRAP_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// An answer from protocol code on its way back to a requester; `Some(peer)`
/// when the request holds one of the peer's [`PeerLimits`] slots.
type PendingResponse =
    BoxFuture<'static, (Option<NodeId>, ResponseChannel<WireResponse>, WireResponse)>;

/// A dial waiting for the peer to identify itself.
struct PendingDial {
    addr: Multiaddr,
    /// `None` for the driver's own bootstrap redials.
    reply: Option<oneshot::Sender<Result<NodeId, NetError>>>,
    bootstrap: bool,
}

pub struct Driver {
    swarm: Swarm<Behaviour>,
    config: P2pConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<NetEvent>,
    events_open: bool,
    /// Events not yet handed to protocol code (bounded for requests and
    /// messages by `config.event_queue_len`).
    outbox: VecDeque<NetEvent>,
    admitted_rx: watch::Receiver<BTreeSet<NodeId>>,
    admitted_open: bool,
    admitted: BTreeSet<PeerId>,
    /// Admitted peers that identified themselves on a live connection.
    up: BTreeSet<PeerId>,
    /// Connected peers that are not admitted.
    probation: Probation,
    /// Fires at the earliest probation deadline.
    probation_timer: Pin<Box<tokio::time::Sleep>>,
    /// Requests open and their rate, per admitted peer.
    peer_limits: PeerLimits,
    /// The node's clock: probation deadlines, kad bootstrap spacing.
    clock: Clock,
    shared: Arc<Shared>,
    requests: HashMap<OutboundRequestId, (NodeId, oneshot::Sender<Result<Bytes, NetError>>)>,
    responses: FuturesUnordered<PendingResponse>,
    dials: HashMap<ConnectionId, PendingDial>,
    /// Which peer each bootstrap address turned out to be.
    bootstrap_peers: BTreeMap<Multiaddr, PeerId>,
    last_kad_bootstrap: Option<tokio::time::Instant>,
}

impl Driver {
    pub fn new(
        key: &NodeKey,
        config: P2pConfig,
        admitted_rx: watch::Receiver<BTreeSet<NodeId>>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<NetEvent>,
        shared: Arc<Shared>,
    ) -> Result<Self, NetError> {
        let keypair = key.to_libp2p();
        let transport = behaviour::transport(&keypair, &config)?;
        let behaviour = Behaviour::new(&keypair, &config)?;
        let swarm = Swarm::new(
            transport,
            behaviour,
            keypair.public().to_peer_id(),
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(config.idle_connection_timeout),
        );
        let probation = Probation::new(config.probation, MAX_JOIN_REQUESTS_PER_CONNECTION);
        // Only peers with a connection send requests, so no more peers than
        // connections need state.
        let peer_limits = PeerLimits::new(config.peer_limits, config.max_connections as usize);
        let clock = config.clock.clone();
        let mut driver = Self {
            swarm,
            config,
            commands,
            events,
            events_open: true,
            outbox: VecDeque::new(),
            admitted_rx,
            admitted_open: true,
            admitted: BTreeSet::new(),
            up: BTreeSet::new(),
            probation,
            probation_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            peer_limits,
            clock,
            shared,
            requests: HashMap::new(),
            responses: FuturesUnordered::new(),
            dials: HashMap::new(),
            bootstrap_peers: BTreeMap::new(),
            last_kad_bootstrap: None,
        };
        driver.apply_admitted();
        Ok(driver)
    }

    /// Bind every listen address and wait until each has a concrete address.
    pub async fn listen(mut self) -> Result<Self, NetError> {
        let local_peer = *self.swarm.local_peer_id();
        let mut waiting = HashMap::new();
        for addr in self.config.listen.clone() {
            let id = self.swarm.listen_on(addr.clone()).map_err(|e| {
                NetError::Setup(format!(
                    "cannot listen on {addr}: {e}; pick another address or port"
                ))
            })?;
            waiting.insert(id, addr);
        }
        let deadline = tokio::time::sleep(self.config.handshake_timeout);
        tokio::pin!(deadline);
        while !waiting.is_empty() {
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                _ = &mut deadline => {
                    let addrs: Vec<String> = waiting.values().map(|a| a.to_string()).collect();
                    return Err(NetError::Setup(format!("listeners did not start in time: {}", addrs.join(", "))));
                }
            };
            match event {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    waiting.remove(&listener_id);
                    self.add_listen_addr(address.with_p2p(local_peer).unwrap_or_else(|a| a));
                }
                SwarmEvent::ListenerError { listener_id, error }
                | SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(error),
                    ..
                } => {
                    let addr = waiting
                        .get(&listener_id)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    return Err(NetError::Setup(format!(
                        "cannot listen on {addr}: {error}; pick another address or port"
                    )));
                }
                other => self.handle_swarm_event(other),
            }
        }
        Ok(self)
    }

    fn add_listen_addr(&mut self, addr: Multiaddr) {
        tracing::info!(%addr, "listening");
        let mut addrs = lock(&self.shared.listen_addrs);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }

    /// The task body: runs until every handle is dropped.
    pub async fn run(mut self) {
        if self.config.cluster_secret.is_some() && self.config.quic {
            tracing::warn!(
                "QUIC is on: the cluster secret guards TCP only; QUIC connections are guarded by node-key admission alone"
            );
        }
        for addr in self.config.bootstrap.clone() {
            self.dial(addr, None, true);
        }
        let mut redial = tokio::time::interval(self.config.redial_interval);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the bootstrap peers were just dialed.
        redial.tick().await;
        // A handle of its own: a permit from `reserve` borrows the sender
        // while the select's handlers borrow `self`.
        let events = self.events.clone();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                changed = self.admitted_rx.changed(), if self.admitted_open => match changed {
                    Ok(()) => self.apply_admitted(),
                    // The owner is gone: keep the last set.
                    Err(_) => self.admitted_open = false,
                },
                () = &mut self.probation_timer, if !self.probation.is_empty() => self.handle_probation_timeout(),
                Some((limited, channel, response)) = self.responses.next(), if !self.responses.is_empty() => {
                    if let Some(peer) = limited {
                        let now = self.clock.now().into_std();
                        self.peer_limits.release(peer, now);
                    }
                    if self.swarm.behaviour_mut().requests.send_response(channel, response).is_err() {
                        tracing::debug!("a requester went away before its answer was sent");
                    }
                }
                permit = events.reserve(), if self.events_open && !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        tracing::debug!("nobody reads network events any more; dropping them");
                        self.events_open = false;
                        self.outbox.clear();
                    }
                },
                _ = redial.tick() => self.handle_redial_tick(),
            }
        }
        tracing::debug!("network stopped: every handle was dropped");
    }

    // ---- admission ----

    fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains(peer)
    }

    /// Take in a new admitted set: promote peers on probation that joined it,
    /// disconnect peers that left it.
    fn apply_admitted(&mut self) {
        let wanted: BTreeSet<PeerId> = self
            .admitted_rx
            .borrow_and_update()
            .iter()
            .filter_map(|id| {
                let peer = id.to_peer_id();
                if peer.is_none() {
                    tracing::warn!(node = %id, "admitted node id is not an ed25519 public key; ignoring it");
                }
                peer
            })
            .collect();
        let added: Vec<PeerId> = wanted.difference(&self.admitted).copied().collect();
        let removed: Vec<PeerId> = self.admitted.difference(&wanted).copied().collect();
        self.admitted = wanted;
        for peer in added {
            let behaviour = self.swarm.behaviour_mut();
            behaviour.gossip.admit(peer);
            behaviour.kad.admit(peer);
            self.promote(peer);
        }
        let now = self.clock.now().into_std();
        for peer in removed {
            if let Some(id) = NodeId::from_peer_id(&peer) {
                self.peer_limits.forget(id, now);
                lock(&self.shared.busy_refusals).remove(&id);
            }
            let behaviour = self.swarm.behaviour_mut();
            behaviour.gossip.revoke(&peer);
            behaviour.kad.revoke(&peer);
            if self.swarm.is_connected(&peer) {
                tracing::info!(%peer, "peer is no longer admitted; closing its connections");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            self.mark_down(peer);
        }
    }

    /// A peer on probation was admitted: it becomes a full peer on the
    /// connections it has (the gates opened in `apply_admitted`).
    fn promote(&mut self, peer: PeerId) {
        let Some(promotion) = self.probation.handle_admitted(&peer) else {
            return;
        };
        tracing::info!(%peer, "peer on probation is admitted now");
        // Not identified yet: `handle_identified` marks it up.
        if let Some(addrs) = promotion.identified {
            let kad = self.swarm.behaviour_mut().kad.inner_mut();
            for addr in addrs {
                kad.add_address(&peer, addr);
            }
            self.mark_up(peer);
        }
    }

    /// A connection from or to a peer that is not admitted: start (or extend
    /// to this connection) its probation.
    fn start_probation(&mut self, peer: PeerId, connection: ConnectionId) {
        if NodeId::from_peer_id(&peer).is_none() {
            tracing::warn!(%peer, "peer key is not ed25519; it can never be admitted, closing");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        let now = self.clock.now().into_std();
        if self.probation.handle_connection(peer, connection, now) {
            tracing::info!(%peer, "peer is not admitted: on probation, it may only send join requests");
        }
        self.rearm_probation();
    }

    fn rearm_probation(&mut self) {
        if let Some(next) = self.probation.poll_timeout() {
            self.probation_timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(next));
        }
    }

    /// Close the connections of peers whose probation ran out.
    fn handle_probation_timeout(&mut self) {
        let now = self.clock.now().into_std();
        for peer in self.probation.handle_timeout(now) {
            tracing::info!(
                %peer,
                probation_ms = self.config.probation.as_millis(),
                "peer was not admitted during its probation; closing its connections"
            );
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.rearm_probation();
    }

    // ---- events to protocol code ----

    fn emit(&mut self, event: NetEvent) {
        if !self.events_open {
            return;
        }
        let droppable = matches!(event, NetEvent::Request { .. } | NetEvent::Message { .. });
        if droppable && self.outbox.len() >= self.config.event_queue_len {
            // A dropped request's responder answers the requester with an error.
            let (kind, from) = match &event {
                NetEvent::Request { from, .. } => ("request", *from),
                NetEvent::Message { from, .. } => ("message", *from),
                NetEvent::PeerUp(p) | NetEvent::PeerDown(p) => ("peer event", *p),
            };
            tracing::warn!(
                queue_len = self.outbox.len(),
                %from,
                "the node is not reading network events fast enough; dropping a {kind}"
            );
            return;
        }
        self.outbox.push_back(event);
    }

    fn mark_up(&mut self, peer: PeerId) {
        let Some(id) = NodeId::from_peer_id(&peer) else {
            return;
        };
        if self.up.insert(peer) {
            tracing::info!(%peer, node = %id, "peer up");
            self.peer_limits.handle_peer_up(id);
            lock(&self.shared.peers).insert(id);
            self.emit(NetEvent::PeerUp(id));
            self.kad_bootstrap();
        }
    }

    fn mark_down(&mut self, peer: PeerId) {
        if self.up.remove(&peer)
            && let Some(id) = NodeId::from_peer_id(&peer)
        {
            tracing::info!(%peer, node = %id, "peer down");
            let now = self.clock.now().into_std();
            self.peer_limits.handle_peer_down(id, now);
            lock(&self.shared.peers).remove(&id);
            self.emit(NetEvent::PeerDown(id));
        }
    }

    /// Look for more peers through the ones we know, at most once a second.
    fn kad_bootstrap(&mut self) {
        let now = self.clock.now();
        if self
            .last_kad_bootstrap
            .is_some_and(|last| now.duration_since(last) < KAD_BOOTSTRAP_MIN_INTERVAL)
        {
            return;
        }
        if self
            .swarm
            .behaviour_mut()
            .kad
            .inner_mut()
            .bootstrap()
            .is_ok()
        {
            self.last_kad_bootstrap = Some(now);
        }
    }

    // ---- commands ----

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                protocol,
                payload,
                reply,
            } => {
                let Some(peer_id) = peer.to_peer_id().filter(|p| self.up.contains(p)) else {
                    let _ = reply.send(Err(NetError::NotConnected(peer)));
                    return;
                };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .requests
                    .send_request(&peer_id, WireRequest { protocol, payload });
                self.requests.insert(id, (peer, reply));
            }
            Command::Publish { topic, payload } => {
                let topic = gossipsub::IdentTopic::new(topic);
                match self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .inner_mut()
                    .publish(topic.clone(), payload)
                {
                    Ok(_) => {}
                    // Best effort: nobody listening is not an error.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        tracing::debug!(%topic, "published with no subscribed peers");
                    }
                    Err(gossipsub::PublishError::Duplicate) => {}
                    Err(e) => tracing::warn!(%topic, "publish failed: {e}"),
                }
            }
            Command::Subscribe { topic } => {
                let topic = gossipsub::IdentTopic::new(topic);
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .inner_mut()
                    .subscribe(&topic)
                {
                    tracing::warn!(%topic, "subscribe failed: {e:?}");
                }
            }
            Command::Dial { addr, reply } => self.dial(addr, Some(reply), false),
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        reply: Option<oneshot::Sender<Result<NodeId, NetError>>>,
        bootstrap: bool,
    ) {
        let opts = match addr.iter().last() {
            // An explicit dial always dials (its caller waits for the
            // outcome); background dials skip peers already being dialed.
            Some(AddrProtocol::P2p(peer)) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(if reply.is_some() {
                    PeerCondition::Always
                } else {
                    PeerCondition::DisconnectedAndNotDialing
                })
                .build(),
            _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(
                    connection,
                    PendingDial {
                        addr,
                        reply,
                        bootstrap,
                    },
                );
            }
            Err(e) => {
                tracing::debug!(%addr, "dial failed at once: {e}");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(dial_error(&addr, e.to_string())));
                }
            }
        }
    }

    fn finish_dial(&mut self, connection: ConnectionId, result: Result<PeerId, String>) {
        let Some(dial) = self.dials.remove(&connection) else {
            return;
        };
        if let Err(reason) = &result {
            if dial.bootstrap {
                tracing::warn!(addr = %dial.addr, "cannot join through bootstrap peer: {reason}");
            } else {
                tracing::info!(addr = %dial.addr, "dial failed: {reason}");
            }
        }
        if let Some(reply) = dial.reply {
            let result = match result {
                Ok(peer) => NodeId::from_peer_id(&peer)
                    .ok_or_else(|| dial_error(&dial.addr, "the peer's key is not ed25519".into())),
                Err(reason) => Err(dial_error(&dial.addr, reason)),
            };
            let _ = reply.send(result);
        }
    }

    fn handle_redial_tick(&mut self) {
        // Forget dials whose caller gave up waiting.
        self.dials
            .retain(|_, d| d.reply.as_ref().is_none_or(|r| !r.is_closed()));
        let dialing: BTreeSet<Multiaddr> = self
            .dials
            .values()
            .filter(|d| d.bootstrap)
            .map(|d| d.addr.clone())
            .collect();
        for addr in self.config.bootstrap.clone() {
            // Connected but not up (not identified yet, or not admitted by
            // this node) needs no new connection either.
            let connected = self
                .bootstrap_peers
                .get(&addr)
                .is_some_and(|peer| self.swarm.is_connected(peer));
            if !connected && !dialing.contains(&addr) {
                self.dial(addr, None, true);
            }
        }
    }

    // ---- swarm events ----

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                if let Some(dial) = self.dials.get(&connection_id)
                    && dial.bootstrap
                {
                    self.bootstrap_peers.insert(dial.addr.clone(), peer_id);
                }
                if !self.is_admitted(&peer_id) {
                    self.start_probation(peer_id, connection_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                let reason = match endpoint {
                    ConnectedPoint::Dialer { .. } => {
                        "the peer closed the connection before identifying itself (it may be at its connection limit, or have ended this node's probation: check the invite and the peer's admitted set)".to_owned()
                    }
                    ConnectedPoint::Listener { .. } => "connection closed".to_owned(),
                };
                self.finish_dial(connection_id, Err(reason));
                self.probation
                    .handle_connection_closed(peer_id, connection_id, num_established);
                if num_established == 0 {
                    self.mark_down(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let reason = error_chain(&error);
                tracing::debug!(peer = ?peer_id, "outgoing connection failed: {reason}");
                self.finish_dial(connection_id, Err(reason));
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                // A wrong cluster secret or a connection over a limit ends up here.
                tracing::info!(from = %send_back_addr, peer = ?peer_id, "refused an incoming connection: {}", error_chain(&error));
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                self.add_listen_addr(address.with_p2p(local).unwrap_or_else(|a| a));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                let address = address.with_p2p(local).unwrap_or_else(|a| a);
                lock(&self.shared.listen_addrs).retain(|a| a != &address);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!("a listener failed: {error}");
            }
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            }) => self.handle_identified(connection_id, peer_id, info),
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Requests(event) => self.handle_request_event(event),
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.handle_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossip(_) => {}
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            }) => {
                if is_new_peer {
                    tracing::debug!(%peer, "kad learned a peer");
                }
            }
            BehaviourEvent::Kad(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if !self.is_admitted(&peer) {
                        tracing::debug!(%peer, "mdns found a peer that is not admitted; ignoring it");
                        continue;
                    }
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .inner_mut()
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
                        self.dial(addr, None, false);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn handle_identified(&mut self, connection: ConnectionId, peer: PeerId, info: identify::Info) {
        if info.protocol_version != behaviour::IDENTIFY_PROTOCOL_VERSION {
            tracing::warn!(%peer, version = %info.protocol_version, "peer speaks another Canopy protocol version");
        }
        let kad_addrs = if info.protocols.contains(&behaviour::KAD_PROTOCOL) {
            info.listen_addrs
        } else {
            Vec::new()
        };
        if !self.is_admitted(&peer) {
            // On probation: kept for promotion, not given to kad.
            tracing::debug!(%peer, "a peer on probation identified itself");
            self.probation.handle_identified(peer, kad_addrs);
            self.finish_dial(
                connection,
                Err(format!(
                    "peer {peer} is not in this node's admitted set; admit it before dialing it"
                )),
            );
            return;
        }
        for addr in kad_addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .inner_mut()
                .add_address(&peer, addr);
        }
        self.finish_dial(connection, Ok(peer));
        self.mark_up(peer);
    }

    fn handle_request_event(&mut self, event: request_response::Event<WireRequest, WireResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                let Some(from) = NodeId::from_peer_id(&peer) else {
                    return;
                };
                let limited = self.is_admitted(&peer);
                if limited {
                    // A request can overtake identify on a fresh connection.
                    self.mark_up(peer);
                    let now = self.clock.now().into_std();
                    if let Err(refusal) = self.peer_limits.admit(from, now) {
                        self.refuse_busy(from, &request.protocol, refusal, channel);
                        return;
                    }
                } else if let Err(refusal) =
                    self.probation
                        .handle_request(&peer, connection_id, &request.protocol)
                {
                    tracing::warn!(%peer, protocol = %request.protocol, "refused a request from a peer that is not admitted: {refusal}");
                    if self
                        .swarm
                        .behaviour_mut()
                        .requests
                        .send_response(channel, WireResponse::Refused(refusal.to_string()))
                        .is_err()
                    {
                        tracing::debug!(%peer, "a refused requester went away");
                    }
                    return;
                }
                let (tx, rx) = oneshot::channel();
                let timeout = self.config.request_timeout;
                self.responses.push(Box::pin(async move {
                    let response = match tokio::time::timeout(timeout, rx).await {
                        Ok(Ok(answer)) => WireResponse::from(answer),
                        Ok(Err(_)) => WireResponse::Refused(
                            "the peer dropped the request without answering".into(),
                        ),
                        Err(_) => WireResponse::Refused(format!(
                            "the peer did not answer within {} ms",
                            timeout.as_millis()
                        )),
                    };
                    (limited.then_some(from), channel, response)
                }));
                self.emit(NetEvent::Request {
                    from,
                    protocol: request.protocol,
                    payload: request.payload,
                    reply: Responder(tx),
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((peer, reply)) = self.requests.remove(&request_id) {
                    let result = match response {
                        WireResponse::Answer(payload) => Ok(payload),
                        WireResponse::Refused(reason) => Err(NetError::Refused { peer, reason }),
                        WireResponse::Busy(reason) => Err(NetError::Busy { peer, reason }),
                    };
                    let _ = reply.send(result);
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, reply)) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(self.outbound_error(peer, error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "an inbound request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Answer a request over its peer's limits: busy, at once, nothing
    /// queued; the peer stays connected. Logged at most once per peer per
    /// [`WARN_INTERVAL`](crate::net::peer_limits::WARN_INTERVAL).
    fn refuse_busy(
        &mut self,
        from: NodeId,
        protocol: &str,
        refusal: Refusal,
        channel: ResponseChannel<WireResponse>,
    ) {
        if refusal.warn {
            tracing::warn!(
                peer = %from,
                protocol,
                refused_total = refusal.refused_total,
                "refusing requests from a peer over its limits (logged at most once a minute per peer): {}",
                refusal.busy
            );
        }
        lock(&self.shared.busy_refusals).insert(from, refusal.refused_total);
        let response = WireResponse::Busy(refusal.busy.to_string());
        if self
            .swarm
            .behaviour_mut()
            .requests
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!(peer = %from, "a requester refused as busy went away");
        }
    }

    fn outbound_error(&self, peer: NodeId, error: OutboundFailure) -> NetError {
        match error {
            OutboundFailure::Timeout => NetError::Timeout {
                peer,
                timeout_ms: u64::try_from(self.config.request_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
            OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                NetError::NotConnected(peer)
            }
            OutboundFailure::UnsupportedProtocols => NetError::Refused {
                peer,
                reason: "the peer does not speak Canopy requests".into(),
            },
            OutboundFailure::Io(e) => NetError::Refused {
                peer,
                reason: format!("the request failed: {e}"),
            },
        }
    }

    fn handle_gossip(
        &mut self,
        propagation_source: PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let author = message.source;
        let accepted = author
            .is_some_and(|a| self.is_admitted(&a) || a == *self.swarm.local_peer_id())
            && self.is_admitted(&propagation_source);
        let acceptance = if accepted {
            gossipsub::MessageAcceptance::Accept
        } else {
            tracing::warn!(
                author = ?author,
                via = %propagation_source,
                topic = %message.topic,
                "dropped a message from a peer that is not admitted"
            );
            gossipsub::MessageAcceptance::Reject
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .inner_mut()
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
        if let (true, Some(from)) = (accepted, author.as_ref().and_then(NodeId::from_peer_id)) {
            self.emit(NetEvent::Message {
                from,
                topic: message.topic.into_string(),
                payload: Bytes::from(message.data),
            });
        }
    }
}

fn dial_error(addr: &Multiaddr, reason: String) -> NetError {
    NetError::Dial {
        addr: addr.to_string(),
        reason,
    }
}

/// An error with its causes, so "handshake failed" says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
