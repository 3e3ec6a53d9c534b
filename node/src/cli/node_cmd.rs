//! `canopy node --config FILE`: one production node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use crate::env::Env;
use crate::node::{Node, NodeOptions};

/// Run one production node from a config file.
///
/// The file is YAML:
///
///   data_dir: /var/lib/canopy     # everything the node keeps
///   http: 0.0.0.0:80              # the gateway (user traffic)
///   admin: 127.0.0.1:7070         # admin API and Git remote
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    data_dir: PathBuf,
    http: SocketAddr,
    admin: SocketAddr,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read the node config {name}"))?;
    let config: NodeConfig = serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{name}:{}:{}", l.line(), l.column()))
            .unwrap_or(name.clone());
        anyhow::anyhow!("{at}: {e}\n  help: a node config has data_dir, http and admin (see `canopy node --help`)")
    })?;
    let node = Node::start(
        Env::production(&config.data_dir),
        NodeOptions {
            http_listen: config.http,
            admin_listen: config.admin,
            https_local_ca: None,
        },
    )
    .await?;
    println!(
        "canopy node {} serving: http {} admin {}",
        node.id(),
        node.http_addr(),
        node.admin_addr()
    );
    super::stop_signal().await;
    node.stop().await;
    Ok(())
}
