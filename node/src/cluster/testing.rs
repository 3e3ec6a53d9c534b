//! An in-memory [`Net`]: a hub connecting N handles through queues, able to
//! partition and heal. For tests and as a base for the simulator.
//!
//! Deterministic: ordered maps only, no OS threads; requests travel as
//! [`NetEvent::Request`]s on the target's event queue and their answers come
//! back through the responder. Two ways to cut a link:
//! - [`MemoryHub::disconnect`] — the connection drops: both sides get
//!   `PeerDown`, and `PeerUp` on [`MemoryHub::reconnect`].
//! - [`MemoryHub::partition`] — packets are lost silently: requests across
//!   the cut fail with a timeout error and nobody is told, as when a network
//!   path dies under a live connection. [`MemoryHub::heal`] restores it.
//!
//! Each node's inbound requests pass its per-peer limits
//! ([`PeerLimits`], default bounds, the tokio clock) as on libp2p: over a
//! bound a request fails with [`NetError::Busy`] and is never queued.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::env::Clock;
use crate::net::peer_limits::{PeerLimits, PeerLimitsConfig};
use crate::net::{MAX_PAYLOAD_BYTES, Net, NetError, NetEvent, NodeId, Protocol, Responder};

/// Events queued per node before `request` waits for room.
const EVENT_QUEUE_LEN: usize = 1024;

/// Traffic figures, for tests that check how data moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolStats {
    pub requests: u64,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub response_bytes_total: u64,
}

#[derive(Default)]
struct HubInner {
    nodes: BTreeMap<NodeId, NodeSlot>,
    /// Links that dropped (unordered pairs, smaller id first).
    down: BTreeSet<(NodeId, NodeId)>,
    /// Links that lose packets silently.
    cut: BTreeSet<(NodeId, NodeId)>,
    stats: BTreeMap<String, ProtocolStats>,
}

struct NodeSlot {
    events: mpsc::Sender<NetEvent>,
    topics: BTreeSet<String>,
    /// Requests of each peer open on this node, and their rate.
    limits: PeerLimits,
}

/// The most peers a hub node keeps request limits for.
const MAX_TRACKED_PEERS: usize = 1024;

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The hub every [`MemoryNet`] of one test cluster hangs off. Cheap to clone.
#[derive(Clone)]
pub struct MemoryHub {
    inner: Arc<Mutex<HubInner>>,
    request_timeout: Duration,
}

impl MemoryHub {
    /// A hub whose requests across a partition fail after `request_timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            request_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a node connected to every node already there; returns its
    /// handle and event queue. Everyone (it included) gets `PeerUp`s.
    pub fn add_node(&self, id: NodeId) -> (MemoryNet, mpsc::Receiver<NetEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE_LEN);
        let mut inner = self.lock();
        let others: Vec<NodeId> = inner.nodes.keys().copied().collect();
        for other in others {
            if other == id {
                continue;
            }
            tell(&inner, other, NetEvent::PeerUp(id));
            let _ = tx.try_send(NetEvent::PeerUp(other));
        }
        inner.nodes.insert(
            id,
            NodeSlot {
                events: tx,
                topics: BTreeSet::new(),
                limits: PeerLimits::new(PeerLimitsConfig::default(), MAX_TRACKED_PEERS),
            },
        );
        drop(inner);
        (
            MemoryNet {
                hub: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Drop the connection between `a` and `b` (both are told).
    pub fn disconnect(&self, a: NodeId, b: NodeId) {
        let mut inner = self.lock();
        if inner.down.insert(pair(a, b)) {
            tell(&inner, a, NetEvent::PeerDown(b));
            tell(&inner, b, NetEvent::PeerDown(a));
        }
    }

    /// Restore the connection between `a` and `b` (both are told).
    pub fn reconnect(&self, a: NodeId, b: NodeId) {
        let mut inner = self.lock();
        if inner.down.remove(&pair(a, b)) {
            tell(&inner, a, NetEvent::PeerUp(b));
            tell(&inner, b, NetEvent::PeerUp(a));
        }
    }

    /// Silently lose every packet between `side` and every other node.
    pub fn partition(&self, side: &[NodeId]) {
        let mut inner = self.lock();
        let all: Vec<NodeId> = inner.nodes.keys().copied().collect();
        for a in side {
            for b in &all {
                if !side.contains(b) {
                    inner.cut.insert(pair(*a, *b));
                }
            }
        }
    }

    /// Undo every [`MemoryHub::partition`].
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Traffic figures of `protocol` so far.
    pub fn stats(&self, protocol: &str) -> ProtocolStats {
        self.lock().stats.get(protocol).cloned().unwrap_or_default()
    }
}

/// A request admitted by its target's limits; dropping it frees the slot.
struct OpenRequest {
    hub: MemoryHub,
    on: NodeId,
    from: NodeId,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.lock().nodes.get_mut(&self.on) {
            slot.limits
                .release(self.from, Clock::tokio().now().into_std());
        }
    }
}

/// Queue a control event without waiting; a full queue loses it (logged).
fn tell(inner: &HubInner, to: NodeId, event: NetEvent) {
    if let Some(slot) = inner.nodes.get(&to)
        && slot.events.try_send(event).is_err()
    {
        tracing::warn!(node = %to, "memory net: event queue full or closed; event dropped");
    }
}

/// One node's handle on a [`MemoryHub`].
#[derive(Clone)]
pub struct MemoryNet {
    hub: MemoryHub,
    id: NodeId,
}

impl MemoryNet {
    pub fn hub(&self) -> &MemoryHub {
        &self.hub
    }
}

impl Net for MemoryNet {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn peers(&self) -> Vec<NodeId> {
        let inner = self.hub.lock();
        inner
            .nodes
            .keys()
            .filter(|n| **n != self.id && !inner.down.contains(&pair(self.id, **n)))
            .copied()
            .collect()
    }

    fn request(
        &self,
        peer: NodeId,
        protocol: Protocol,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, NetError>> {
        let hub = self.hub.clone();
        let from = self.id;
        async move {
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(NetError::TooLarge {
                    size_bytes: payload.len(),
                });
            }
            let timeout_ms = hub.request_timeout.as_millis() as u64;
            let (events, cut) = {
                let mut inner = hub.lock();
                let stats = inner.stats.entry(protocol.to_string()).or_default();
                stats.requests += 1;
                stats.max_request_bytes = stats.max_request_bytes.max(payload.len());
                if inner.down.contains(&pair(from, peer)) {
                    return Err(NetError::NotConnected(peer));
                }
                let cut = inner.cut.contains(&pair(from, peer));
                let Some(slot) = inner.nodes.get_mut(&peer) else {
                    return Err(NetError::NotConnected(peer));
                };
                if !cut
                    && let Err(refusal) = slot.limits.admit(from, Clock::tokio().now().into_std())
                {
                    return Err(NetError::Busy {
                        peer,
                        reason: refusal.busy.to_string(),
                    });
                }
                (slot.events.clone(), cut)
            };
            if cut {
                tokio::time::sleep(hub.request_timeout).await;
                return Err(NetError::Timeout { peer, timeout_ms });
            }
            // Freed when answered, or when this exchange ends early.
            let _slot = OpenRequest {
                hub: hub.clone(),
                on: peer,
                from,
            };
            let (tx, rx) = oneshot::channel();
            let event = NetEvent::Request {
                from,
                protocol: protocol.to_string(),
                payload,
                reply: Responder(tx),
            };
            if events.send(event).await.is_err() {
                return Err(NetError::NotConnected(peer));
            }
            let answer = match tokio::time::timeout(hub.request_timeout, rx).await {
                Err(_) => return Err(NetError::Timeout { peer, timeout_ms }),
                Ok(Err(_)) => {
                    return Err(NetError::Refused {
                        peer,
                        reason: "the peer dropped the request".into(),
                    });
                }
                Ok(Ok(answer)) => answer,
            };
            let response = answer.map_err(|reason| NetError::Refused { peer, reason })?;
            let mut inner = hub.lock();
            let stats = inner.stats.entry(protocol.to_string()).or_default();
            stats.max_response_bytes = stats.max_response_bytes.max(response.len());
            stats.response_bytes_total += response.len() as u64;
            // A partition that began while the request was answered loses it.
            if inner.cut.contains(&pair(from, peer)) {
                return Err(NetError::Timeout { peer, timeout_ms });
            }
            Ok(response)
        }
        .boxed()
    }

    fn publish(&self, topic: &str, payload: Bytes) -> Result<(), NetError> {
        let inner = self.hub.lock();
        for (id, slot) in &inner.nodes {
            let reachable = *id != self.id
                && !inner.down.contains(&pair(self.id, *id))
                && !inner.cut.contains(&pair(self.id, *id));
            if reachable && slot.topics.contains(topic) {
                tell(
                    &inner,
                    *id,
                    NetEvent::Message {
                        from: self.id,
                        topic: topic.to_string(),
                        payload: payload.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> Result<(), NetError> {
        let mut inner = self.hub.lock();
        match inner.nodes.get_mut(&self.id) {
            Some(slot) => {
                slot.topics.insert(topic.to_string());
                Ok(())
            }
            None => Err(NetError::Stopped),
        }
    }
}

/// The node key numbered `n`: a fixed seed, for tests and benchmarks.
pub fn test_key(n: u8) -> crate::net::identity::NodeKey {
    crate::net::identity::NodeKey::from_secret_bytes([n; 32])
}

/// The admin token the test clusters of [`founded_state`] start with.
pub fn test_admin_token() -> crate::auth::Token {
    crate::auth::Token::generate(&crate::env::Rng::seeded(0xad))
}

/// The state of node `n` that founded a cluster (nonce from `n`), with
/// [`test_admin_token`] as its first admin token.
pub fn founded_state(n: u8) -> super::ClusterState {
    let mut state = super::ClusterState::new(test_key(n), 0);
    state.found([n; 16]).expect("founding writes two records");
    let admin = test_admin_token();
    let record = crate::auth::TokenRecord {
        id: admin.id(),
        principal: crate::auth::Principal::Admin,
        label: "test admin".into(),
        secret_sha256: admin.secret_hash(),
        created_at_unix_s: 0,
        expires_at_unix_s: None,
        created_by: "test".into(),
        warrant_key: Some(super::hex(&admin.warrant_key().node_id().0)),
    };
    state.put_token(&record, &admin).expect("recording a token");
    state
}

/// The state of node `n`, admitted by `founder` (an admitted node, which
/// records an invite an admin asked for and the admission) and synced
/// with it.
pub fn joined_state(n: u8, founder: &mut super::ClusterState) -> super::ClusterState {
    let mut state = super::ClusterState::new(test_key(n), 0);
    let cluster = founder
        .cluster_id()
        .and_then(|id| crate::net::admission::ClusterId::parse(&id))
        .expect("the founder has a cluster id");
    state.pin(cluster);
    admit_test_node(founder, n);
    state.merge(founder).expect("merging a fresh replica");
    state
}

/// Admit node `n` through `by` (an admitted node): the invite an admin
/// (with [`test_admin_token`]) asked for, and the admission.
pub fn admit_test_node(by: &mut super::ClusterState, n: u8) {
    let nonce = [n; 16];
    by.record_invite_issued(&nonce, u64::MAX, &test_admin_token())
        .expect("recording an invite");
    by.admit_invited(test_key(n).node_id(), &nonce)
        .expect("admitting writes a record");
}

/// The warrant [`test_admin_token`]'s holder gives a push of `commit`
/// (`None`: a deletion) to `env` through `node`.
pub fn push_warrant(
    node: NodeId,
    env: &crate::deploy::EnvKey,
    commit: Option<&str>,
) -> crate::auth::Warrant {
    test_admin_token().warrant(&crate::auth::push_statement(
        &env.project,
        &env.branch,
        commit,
        &node,
    ))
}
