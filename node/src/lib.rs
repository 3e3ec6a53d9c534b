//! `canopy-node`: one Canopy node — the library behind the `canopy` binary and
//! the simulator.
//!
//! One module per seam (see `docs/architecture.md`):
//! - [`body`] — the streamed HTTP body type every seam shares.
//! - [`env`] — clock, randomness, data directory: what the node is built from.
//! - [`runtime`] — wasmtime: wasi:http functions, cached by CID, run under limits.

pub mod body;
pub mod env;
pub mod runtime;

/// The version of this node, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
