//! `canopy-node`: one Canopy node — the library behind the `canopy` binary and
//! the simulator.
//!
//! One module per seam (see `docs/architecture.md`):
//! - [`env`] — clock, randomness, data directory, disk seam, guests' clock:
//!   what the node is built from.
//! - [`config`] — the `canopy.yaml` schema and its located errors.
//! - [`git`] — the Git remote users push to, and reading commits with gix.
//! - [`store`] — content-addressed blobs (CIDv1), verified on every read.
//! - [`runtime`] — wasmtime: wasi:http components, compiled-code cache, limits.
//! - [`gateway`] — HTTP/1.1 + HTTP/2 ingress, routing by host and path.
//! - [`deploy`] — from a pushed commit to a live release, atomically.
//! - [`admin`] — the admin API (status JSON) and the Git remote's mount.
//! - [`auth`] — principals, tokens, and the check on every admin request.
//! - [`cluster`] — cluster state (automerge) and blob replication.
//! - [`net`] — the peer-messaging seam (libp2p in production, turmoil in the simulator).
//! - [`node`] — one node assembled from its environment.
//! - [`status`] — the status report and its rendering.
//! - [`tls`] — HTTPS for dream: a local CA issuing certificates for `*.localhost`.
//! - [`cli`] — the `canopy` command line.
//! - [`durable`] — crash-safe replacement of small files.
//! - [`body`] — the streamed HTTP body type every seam shares.
//! - [`bugs`] — known bugs the simulator switches on (feature `sim-bugs` only).
//! - [`test_guests`] — builds the guest components tests and the simulator
//!   deploy (not used by the node).

pub mod admin;
pub mod auth;
pub mod body;
pub mod bugs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod durable;
pub mod env;
pub mod gateway;
pub mod gc;
pub mod git;
pub mod listener;
pub mod net;
pub mod node;
pub mod runtime;
pub mod status;
pub mod store;
pub mod test_guests;
pub mod tls;

/// The version of this node, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
