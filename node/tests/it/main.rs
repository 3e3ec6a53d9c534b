//! The node's integration tests: one test binary, one module per area (each
//! was a binary of its own, and each linked wasmtime and libp2p).
//!
//! Run one area with `cargo test -p canopy-node --test it runtime::`.

// Clippy's allow-*-in-tests covers `#[test]` functions; the helpers beside
// them are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed unwrap is a failed test, and output shows with failures"
)]

mod cluster;
mod deploy_queue;
mod determinism_rules;
mod function_limits;
mod gateway;
mod git_push;
mod p2p;
mod peer_limits;
mod runtime;
mod tls;
