//! The `canopy` command line: argument parsing and the subcommands.
//!
//! Everything a person sees from `canopy` is written here; the node itself
//! logs through `tracing`, quiet unless `-v` or `RUST_LOG` asks.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command line's output is its job"
)]

mod admin_client;
mod cluster_cmd;
mod domain_cmd;
mod dream;
mod dream_cluster;
mod node_cmd;
mod status;
mod token_cmd;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Canopy: a peer-to-peer serverless cloud. Push a Git repository with a
/// `canopy.yaml`, and its WebAssembly functions and websites serve on every
/// node.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, propagate_version = true)]
#[command(
    after_help = "Start here:\n  canopy dream                 a whole cloud on this machine\n  canopy validate ./my-project check a project before pushing it\n  canopy status                what is deployed, and what failed\n  canopy token create --project shop\n                               a token that may push to project shop\n  canopy cluster invite        add a node to a running cluster\n\nCommands that talk to a node find the running `canopy dream` by default;\nelse pass --admin URL and --token TOKEN (or CANOPY_ADMIN, CANOPY_TOKEN)."
)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Dream(dream::DreamArgs),
    Node(node_cmd::NodeArgs),
    Cluster(cluster_cmd::ClusterArgs),
    Validate(validate::ValidateArgs),
    Status(status::StatusArgs),
    Token(token_cmd::TokenArgs),
    Domain(domain_cmd::DomainArgs),
}

/// Run the CLI; the process exits with the returned code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Validate(args) => return validate::run(args),
        Command::Dream(args) => runtime().and_then(|rt| rt.block_on(dream::run(args))),
        Command::Node(args) => runtime().and_then(|rt| rt.block_on(node_cmd::run(args))),
        Command::Cluster(args) => runtime().and_then(|rt| rt.block_on(cluster_cmd::run(args))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(status::run(args))),
        Command::Token(args) => runtime().and_then(|rt| rt.block_on(token_cmd::run(args))),
        Command::Domain(args) => runtime().and_then(|rt| rt.block_on(domain_cmd::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,wasmtime=warn,cranelift=warn",
        _ => "debug,wasmtime=info,cranelift=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolve when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_teaches() {
        let help = Cli::command().render_long_help().to_string();
        insta::assert_snapshot!(help);
    }
}
