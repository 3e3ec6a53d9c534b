//! `canopy-sim`: many Canopy nodes in one deterministic simulation,
//! replayable from a seed. See `docs/simulation.md` and [`canopy_sim::cli`].

#![allow(clippy::print_stderr, reason = "the command line's output is its job")]

use clap::Parser;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Log lines carry the simulated time of the host that wrote them (`-`
/// outside a host), so a replay's logs line up with its trace.
struct SimulatedTime;

impl FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{:>8}ms", elapsed.as_millis()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimulatedTime)
            .with_thread_ids(true)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = canopy_sim::cli::Args::parse();
    match canopy_sim::cli::main_with(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("canopy-sim: {e:#}");
            std::process::exit(2);
        }
    }
}
