//! A gate around a behaviour (kad, gossipsub) that keeps it away from peers on
//! probation: connected, but not admitted.
//!
//! Every connection gets the inner behaviour's handler, wrapped. While the
//! gate of a connection is closed, the inner handler is never polled — it
//! opens no stream, sends nothing, and reports nothing to its behaviour (so
//! kad does not add the peer to its routing table and gossipsub does not learn
//! its subscriptions or messages). Streams the remote opens are negotiated as
//! usual but held unread (at most [`MAX_HELD_STREAMS`], later ones are
//! dropped); refusing the protocol instead would make the remote's gossipsub
//! give up on this connection for good. When the peer is admitted the gate
//! opens: the held streams are handed to the inner handler and it runs as on
//! any admitted connection, without reconnecting. A gate never closes again:
//! a peer that loses admission is disconnected by the driver.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// Streams a closed gate holds for one connection before it drops new ones.
pub const MAX_HELD_STREAMS: usize = 8;

/// A behaviour whose handlers run only on connections of admitted peers.
pub struct Gated<B: NetworkBehaviour> {
    inner: B,
    admitted: BTreeSet<PeerId>,
    /// Established connections, so a gate can be opened on each.
    connections: BTreeMap<PeerId, BTreeSet<ConnectionId>>,
    pending: VecDeque<ToSwarm<B::ToSwarm, THandlerInEvent<Self>>>,
}

impl<B: NetworkBehaviour> Gated<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            admitted: BTreeSet::new(),
            connections: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Let `peer` through: open the gate of each of its connections, and of
    /// every later one.
    pub fn admit(&mut self, peer: PeerId) {
        if !self.admitted.insert(peer) {
            return;
        }
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*connection),
                event: GateIn::Open,
            });
        }
    }

    /// New connections of `peer` start closed. Open ones stay open: the
    /// caller disconnects the peer.
    pub fn revoke(&mut self, peer: &PeerId) {
        self.admitted.remove(peer);
    }

    fn handler(&self, peer: &PeerId, inner: THandler<B>) -> GatedHandler<THandler<B>> {
        GatedHandler {
            inner,
            open: self.admitted.contains(peer),
            held: Vec::new(),
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(self.handler(&peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(self.handler(&peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .insert(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(set) = self.connections.get_mut(&e.peer_id) {
                    set.remove(&e.connection_id);
                    if set.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.pending.pop_front() {
            return Poll::Ready(event);
        }
        self.inner.poll(cx).map(|e| e.map_in(GateIn::Inner))
    }
}

/// What a [`Gated`] behaviour tells one of its handlers.
#[derive(Debug)]
pub enum GateIn<E> {
    /// For the inner handler.
    Inner(E),
    /// The peer is admitted now.
    Open,
}

type Held<H> = FullyNegotiatedInbound<
    <H as ConnectionHandler>::InboundProtocol,
    <H as ConnectionHandler>::InboundOpenInfo,
>;

/// The inner behaviour's handler, run only once its gate is open.
pub struct GatedHandler<H: ConnectionHandler> {
    inner: H,
    open: bool,
    /// Inbound streams negotiated while the gate was closed.
    held: Vec<Held<H>>,
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = GateIn<H::FromBehaviour>;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if !self.open {
            // Opening happens in `on_behaviour_event`, after which the
            // connection polls its handler again.
            return Poll::Pending;
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        if !self.open {
            return Poll::Ready(None);
        }
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            // Queued by the inner handler until it runs.
            GateIn::Inner(event) => self.inner.on_behaviour_event(event),
            GateIn::Open => {
                if self.open {
                    return;
                }
                self.open = true;
                for held in std::mem::take(&mut self.held) {
                    self.inner
                        .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(held));
                }
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(stream) if !self.open => {
                if self.held.len() < MAX_HELD_STREAMS {
                    self.held.push(stream);
                } else {
                    // Dropping the stream closes it.
                    tracing::debug!("a peer on probation opened too many streams; dropping one");
                }
            }
            other => self.inner.on_connection_event(other),
        }
    }
}
