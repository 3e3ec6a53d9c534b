//! The peer-messaging seam: how protocol code talks to other nodes.
//!
//! One small, message-oriented interface with two implementations: libp2p in
//! production (`net::p2p`) and turmoil in the simulator (`canopy-sim`).
//! Protocol code (cluster-state sync, blob replication, deployment) sees only
//! this module's types — never a libp2p or turmoil type — so the same code
//! runs in both.
//!
//! Shape: request/response to one peer (with a bounded payload), publish to a
//! topic, and a stream of [`NetEvent`]s (peers coming and going, requests to
//! answer, published messages). Payloads are opaque bytes; each protocol owns
//! its encoding.
//!
//! Every implementation is built by a constructor that returns a handle
//! implementing [`Net`] and the `tokio::sync::mpsc::Receiver<NetEvent>` the
//! node's protocol driver reads. Admission (which peers may talk to this node)
//! is enforced inside the implementation: protocol code never sees an event
//! from a peer that is not admitted, except a request on [`JOIN_PROTOCOL`].
//! So are the per-peer request limits ([`peer_limits`]): a request over its
//! peer's bounds is answered [`NetError::Busy`] at once and never reaches
//! protocol code.

pub mod admission;
pub mod identity;
pub mod p2p;
pub mod peer_limits;

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The largest request or response payload, in bytes. Larger transfers (blobs)
/// are split into chunks by the protocol that sends them.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl fmt::Display for NodeId {
    /// The first 8 bytes in hex: enough to tell nodes apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Which protocol a request belongs to (`"state-sync/1"`, `"blob/1"`, ...).
pub type Protocol = &'static str;

/// The one protocol a connected peer that is not admitted may use: its
/// request carries an invite token, so a new node can ask to join. The
/// network delivers such requests (a few per connection, for a limited time)
/// but admits nobody itself: protocol code must verify the token before it
/// admits the sender.
pub const JOIN_PROTOCOL: Protocol = "join/1";

/// Something the network tells protocol code.
#[derive(Debug)]
pub enum NetEvent {
    /// A connection to an admitted peer is up.
    PeerUp(NodeId),
    /// The last connection to a peer went down.
    PeerDown(NodeId),
    /// A peer asks something; answer through `reply` (dropping it answers
    /// with an error the requester sees). `from` is admitted, unless
    /// `protocol` is [`JOIN_PROTOCOL`].
    Request {
        from: NodeId,
        protocol: String,
        payload: Bytes,
        reply: Responder,
    },
    /// A message published on a topic this node subscribed to.
    Message {
        from: NodeId,
        topic: String,
        payload: Bytes,
    },
}

/// The way back to a requester.
#[derive(Debug)]
pub struct Responder(pub oneshot::Sender<Result<Bytes, String>>);

impl Responder {
    pub fn ok(self, payload: Bytes) {
        debug_assert!(
            payload.len() <= MAX_PAYLOAD_BYTES,
            "response over the payload limit"
        );
        let _ = self.0.send(Ok(payload));
    }

    pub fn err(self, reason: impl Into<String>) {
        let _ = self.0.send(Err(reason.into()));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    #[error("peer {peer} did not answer within {timeout_ms} ms")]
    Timeout { peer: NodeId, timeout_ms: u64 },
    #[error("peer {peer} refused the request: {reason}")]
    Refused { peer: NodeId, reason: String },
    /// The peer has too many of this node's requests open, or this node
    /// sends faster than the peer accepts ([`peer_limits`]): nothing is wrong
    /// with the request or the peer; back off and retry later, or ask
    /// another peer.
    #[error("peer {peer} is busy, retry later: {reason}")]
    Busy { peer: NodeId, reason: String },
    #[error("payload of {size_bytes} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge { size_bytes: usize },
    #[error("the network has stopped")]
    Stopped,
    #[error("cannot connect to {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("cannot start the network: {0}")]
    Setup(String),
}

/// What protocol code uses to reach peers. Cheap to clone.
pub trait Net: Send + Sync + 'static {
    /// This node's identity.
    fn local_id(&self) -> NodeId;

    /// Peers connected right now, sorted.
    fn peers(&self) -> Vec<NodeId>;

    /// Ask `peer` something and wait for the answer (bounded by the
    /// implementation's request timeout).
    fn request(
        &self,
        peer: NodeId,
        protocol: Protocol,
        payload: Bytes,
    ) -> futures::future::BoxFuture<'static, Result<Bytes, NetError>>;

    /// Publish on `topic` to every subscribed peer (best effort).
    fn publish(&self, topic: &str, payload: Bytes) -> Result<(), NetError>;

    /// Receive messages published on `topic`.
    fn subscribe(&self, topic: &str) -> Result<(), NetError>;

    /// Requests refused as busy so far, per peer ([`peer_limits`]).
    fn busy_refusals(&self) -> BTreeMap<NodeId, u64> {
        BTreeMap::new()
    }
}

impl<T: Net + ?Sized> Net for std::sync::Arc<T> {
    fn local_id(&self) -> NodeId {
        (**self).local_id()
    }

    fn peers(&self) -> Vec<NodeId> {
        (**self).peers()
    }

    fn request(
        &self,
        peer: NodeId,
        protocol: Protocol,
        payload: Bytes,
    ) -> futures::future::BoxFuture<'static, Result<Bytes, NetError>> {
        (**self).request(peer, protocol, payload)
    }

    fn publish(&self, topic: &str, payload: Bytes) -> Result<(), NetError> {
        (**self).publish(topic, payload)
    }

    fn subscribe(&self, topic: &str) -> Result<(), NetError> {
        (**self).subscribe(topic)
    }

    fn busy_refusals(&self) -> BTreeMap<NodeId, u64> {
        (**self).busy_refusals()
    }
}
