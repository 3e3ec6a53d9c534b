//! `canopy-node`: one Canopy node — the library behind the `canopy` binary and
//! the simulator.
//!
//! One module per seam (see `docs/architecture.md`):
//! - [`body`] — the streamed HTTP body type every seam shares.
//! - [`env`] — clock, randomness, data directory: what the node is built from.
//! - [`gateway`] — the HTTP ingress: routing by host and path, websites.
//! - [`store`] — content-addressed blobs on disk, verified on every read.
//! - [`tls`] — HTTPS for dream: a local CA, certificates issued per name.

pub mod body;
pub mod env;
pub mod gateway;
pub mod store;
pub mod tls;

/// The version of this node, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
