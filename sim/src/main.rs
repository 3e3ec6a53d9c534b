//! `canopy-sim`: many Canopy nodes in one deterministic simulation,
//! replayable from a seed. See `docs/simulation.md` and [`canopy_sim::cli`].

use clap::Parser;

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
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
