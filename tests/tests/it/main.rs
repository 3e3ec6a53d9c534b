//! The end-to-end tests: one test binary, one module per area (each was a
//! binary of its own). Tests that start processes hold the machine lock
//! ([`canopy_tests::share_machine`], [`canopy_tests::own_machine`]), so
//! the areas do not crowd each other now that they run in one process.
//!
//! Run one area with `cargo test -p canopy-tests --test it dream::`.

mod appliance;
mod cli;
mod cluster;
mod dream;
