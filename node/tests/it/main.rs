//! The node's integration tests: one test binary, one module per area (each
//! was a binary of its own, and each linked wasmtime and libp2p).
//!
//! Run one area with `cargo test -p canopy-node --test it runtime::`.

mod cluster;
mod determinism_rules;
mod gateway;
mod git_push;
mod p2p;
mod runtime;
mod tls;
