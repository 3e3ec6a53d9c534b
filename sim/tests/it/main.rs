//! The simulator's integration tests: one test binary, one module per area
//! (each was a binary of its own, and each linked the node).
//!
//! Run one area with `cargo test -p canopy-sim --test it bugs::`.

mod bugs;
mod cli;
mod determinism;
mod invariants;
