//! `canopy-node`: one Canopy node — the library behind the `canopy` binary and
//! the simulator.
//!
//! One module per seam (see `docs/architecture.md`):
//! - [`body`] — the streamed HTTP body type every seam shares.
//! - [`env`] — clock, randomness, data directory: what the node is built from.

pub mod body;
pub mod env;
pub mod git;

/// The version of this node, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
