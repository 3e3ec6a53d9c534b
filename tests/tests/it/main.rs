//! The end-to-end tests: one test binary, one module per area (each was a
//! binary of its own). Tests that start processes hold the machine lock
//! ([`canopy_tests::share_machine`], [`canopy_tests::own_machine`]), so
//! the areas do not crowd each other now that they run in one process.
//!
//! Run one area with `cargo test -p canopy-tests --test it dream::`.

// Clippy's allow-*-in-tests covers `#[test]` functions; the helpers beside
// them are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed unwrap is a failed test, and output shows with failures"
)]

mod admin_tls;
mod appliance;
mod auth;
mod cli;
mod cluster;
mod dream;
mod gc;
mod limits;
mod sandbox;
