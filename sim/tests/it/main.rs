//! The simulator's integration tests: one test binary, one module per area
//! (each was a binary of its own, and each linked the node).
//!
//! Run one area with `cargo test -p canopy-sim --test it bugs::`.

// Clippy's allow-*-in-tests covers `#[test]` functions; the helpers beside
// them are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed unwrap is a failed test, and output shows with failures"
)]

mod bugs;
mod cli;
mod determinism;
mod invariants;
