//! Many nodes, one cloud: the cluster state and blob replication, as sans-IO
//! protocol cores with thin tokio drivers on the [`crate::net`] seam.
//!
//! - [`state`] — the cluster state (members, admitted keys, deployments,
//!   routes, blob allocations) as one automerge document behind a typed API.
//!   Every record is signed by its author (`record`), and a node acts only
//!   on records whose author may write them (`trust`): a rogue member can
//!   write in its own name only.
//! - [`sync`] — automerge's sync protocol as a sans-IO core ([`SyncCore`]):
//!   on change and by periodic anti-entropy.
//! - [`replicate`] — fetching blobs by CID from peers, chunked and verified
//!   before they are stored ([`ReplicateCore`]), and [`placement`] — which
//!   nodes must hold a blob (replication factor R, rendezvous hashing).
//! - [`follow`] — which release of every environment to install, abort or
//!   retire ([`follow::FollowCore`]).
//! - [`driver`] — the tokio drivers that feed the cores from [`crate::net`]
//!   events and the node's clock, and [`blob_server`], which answers peers'
//!   blob requests from the local store (file IO, driver side).
//! - [`member`] — [`member::ClusterNode`]: the cluster side of a running node
//!   (the tasks above, plus the follower's driver, admission and
//!   persistence through [`journal`]: a full save plus change files).
//!
//! The cores ([`SyncCore`], [`ReplicateCore`], [`follow::FollowCore`]) are
//! sans-IO, in quinn-proto's shape: fed inputs through `handle_*` methods
//! (with `now` as a plain [`std::time::Instant`] where time matters),
//! polled through `poll_*` methods for what to do and when to be called
//! again. They do no IO, never read a clock and do not depend on tokio, so
//! a unit test, the libp2p node and the simulator drive the same code. New
//! protocol cores start in that shape.
//! - [`testing`] — [`testing::MemoryHub`], an in-memory [`crate::net::Net`]
//!   with partitions, for tests and the simulator.
//! - [`tokens`] — [`tokens::ClusterBook`]: token records in cluster state.
//! - [`watch`] — a watch channel whose wake order is deterministic (tokio's
//!   is not), for the state hash.
//!
//! This module must not touch the network except through [`crate::net::Net`],
//! read the OS clock or RNG, or spawn OS threads. See `docs/cluster.md`.

pub mod blob_server;
pub mod domains;
pub mod driver;
mod error;
pub mod follow;
mod ids;
pub mod journal;
pub mod member;
pub mod placement;
mod record;
pub mod replicate;
pub mod state;
pub mod sync;
pub mod testing;
pub mod tokens;
mod trust;
pub mod watch;

pub use driver::{
    ClusterHandle, FetchCommand, FetchReport, ReplicateHandle, RoutedEvents, replicate_channel,
    route_events, run_replicate, run_sync, split_events,
};
pub use error::ClusterError;
pub use ids::{hex, node_hex, parse_hex, parse_node_hex};
pub use member::{ClusterNode, ClusterOptions, PeerReport};
pub use record::message as record_message;
pub use replicate::{BLOB_PROTOCOL, ReplicateConfig, ReplicateCore};
pub use state::{
    Admission, ClusterState, Deployment, DeploymentUpdate, Member, Role, StateContents, StateHash,
};
pub use sync::{SYNC_PROTOCOL, SyncConfig, SyncCore};
