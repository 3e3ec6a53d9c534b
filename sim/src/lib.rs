//! `canopy-sim`: many Canopy nodes in one deterministic simulation on
//! turmoil, replayable from a seed. See `docs/simulation.md`.
//!
//! - [`net`] — the node's net seam over turmoil's simulated TCP.
//! - [`disk`] — the node's disk seam: a real directory with a journal of
//!   what is not yet durable, which a simulated crash may lose or tear.
//! - [`harness`] — one run: nodes as turmoil hosts, the generators, the
//!   faults, the samples the invariants check.
//! - [`host`] — a simulated node's software (the production parts on
//!   simulated environments) and the push client, invites and joins on it.
//! - [`world`] — what the harness and the hosts share.
//! - [`faults`] — the fault model and the per-run ranges drawn from a seed.
//! - [`guest_clock`] — the simulated time functions read.
//! - [`workload`] — what pushes carry, and requests.
//! - [`git_push`] — a push's commit and pack built in process, and the
//!   smart-HTTP exchange with a node's Git remote.
//! - [`trace`] — the trace and its stable hash.
//! - [`invariants`] — checkers over a trace.
//! - [`rogue`] — the bad actors: a rogue node forging cluster records, and
//!   a token revoked while the network is in pieces.
//! - [`cli`] — the `canopy-sim` command line: one seed, a range in
//!   parallel, soak.

pub mod cli;
pub mod disk;
pub mod faults;
pub mod git_push;
pub mod guest_clock;
pub mod harness;
pub mod host;
pub mod invariants;
pub mod net;
pub mod rogue;
pub mod trace;
pub mod workload;
pub mod world;

pub use harness::{RunConfig, RunResult, run};
