//! `canopy dream`: a whole Canopy cloud on this machine, offline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::deploy::DeployEvent;
use crate::env::Env;
use crate::node::{DEFAULT_REPO, Node, NodeOptions};

/// Start a local cloud: a node with a Git remote to push to, an HTTP gateway
/// and an admin API, all on 127.0.0.1.
///
/// When it is ready it writes DIR/dream.json with the Git remote and the
/// addresses, and prints how to push a project and reach it. Ctrl-C stops it;
/// with --data-dir, starting again on the same directory serves every project
/// again at once, without a push.
#[derive(Debug, clap::Args)]
pub struct DreamArgs {
    /// How many nodes to run. This version runs one node per dream.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1))]
    nodes: u16,
    /// Keep the cloud's data here (created if missing). Default: a temporary
    /// directory removed when the dream stops.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The gateway's port for user traffic (0 picks a free one).
    #[arg(long, default_value_t = 0, value_name = "P")]
    http_port: u16,
    /// The HTTPS gateway's port (0 picks a free one). Certificates come from
    /// a local CA kept in the data directory: trust DIR/node-1/tls/ca.pem
    /// (`curl --cacert`).
    #[arg(long, default_value_t = 0, value_name = "P")]
    https_port: u16,
    /// The admin API and Git remote port (0 picks a free one).
    #[arg(long, default_value_t = 0, value_name = "P")]
    admin_port: u16,
}

/// The machine-readable facts of a running dream (`DIR/dream.json`).
#[derive(Debug, Serialize)]
struct DreamFile {
    git_remote: String,
    http: String,
    https: Option<String>,
    /// The local CA certificate HTTPS clients trust.
    ca: Option<String>,
    admin: String,
    data_dir: String,
    nodes: Vec<DreamNode>,
}

#[derive(Debug, Serialize)]
struct DreamNode {
    id: String,
    http: String,
    admin: String,
    git_remote: String,
}

pub async fn run(args: DreamArgs) -> anyhow::Result<()> {
    // A temporary directory lives exactly as long as this function.
    let (data_dir, _temporary) = match args.data_dir {
        Some(dir) => (dir, None),
        None => {
            let dir = tempfile::Builder::new().prefix("canopy-dream-").tempdir()?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create --data-dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let dream_json = data_dir.join("dream.json");
    // A stale file from an earlier run must not be mistaken for readiness.
    let _ = std::fs::remove_file(&dream_json);

    let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let node = Node::start(
        Env::production(data_dir.join("node-1")),
        NodeOptions {
            http_listen: localhost(args.http_port),
            admin_listen: localhost(args.admin_port),
            https_local_ca: Some(localhost(args.https_port)),
        },
    )
    .await?;
    let mut events = node.subscribe();

    let http = format!("http://{}", node.http_addr());
    let admin = format!("http://{}", node.admin_addr());
    let git_remote = node.git_remote(DEFAULT_REPO);
    let https = node.https_addr().map(|a| format!("https://{a}"));
    let ca = node.ca_pem().map(|p| p.display().to_string());
    let facts = DreamFile {
        git_remote: git_remote.clone(),
        http: http.clone(),
        https: https.clone(),
        ca: ca.clone(),
        admin: admin.clone(),
        data_dir: data_dir.display().to_string(),
        nodes: vec![DreamNode {
            id: node.id().to_owned(),
            http: http.clone(),
            admin: admin.clone(),
            git_remote: git_remote.clone(),
        }],
    };
    crate::durable::write_atomically(&dream_json, &serde_json::to_vec_pretty(&facts)?, None)
        .with_context(|| format!("cannot write {}", dream_json.display()))?;

    let port = node.http_addr().port();
    println!(
        "Canopy dream is running: 1 node, data in {}",
        data_dir.display()
    );
    println!();
    println!("  git remote  {git_remote}");
    println!("  http        {http}");
    if let (Some(https), Some(ca)) = (&https, &ca) {
        println!("  https       {https}  (trust {ca})");
    }
    println!("  admin       {admin}");
    println!();
    println!("Deploy a project (a Git repository with a canopy.yaml at its root):");
    println!();
    println!("  git remote add dream {git_remote}");
    println!("  git push dream main");
    println!("  curl http://<project>.localhost:{port}/");
    println!();
    println!("Branch B is served at http://B.<project>.localhost:{port}/");
    println!("What is deployed: canopy status --admin {admin}");
    println!("Press Ctrl-C to stop.");

    let stop = super::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = events.recv() => match event {
                Ok(event) => print_event(&event, port),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    println!("stopping…");
    node.stop().await;
    let _ = std::fs::remove_file(&dream_json);
    Ok(())
}

fn print_event(event: &DeployEvent, port: u16) {
    let short = |c: &str| c[..c.len().min(10)].to_owned();
    match event {
        DeployEvent::Started { key, commit } => println!("… {key} {} deploying", short(commit)),
        DeployEvent::Live {
            key,
            commit,
            elapsed_ms,
        } => {
            let host = crate::deploy::hosts_of(key, &[]).remove(0);
            println!(
                "✓ {key} {} live in {elapsed_ms} ms: http://{host}:{port}/",
                short(commit)
            );
        }
        DeployEvent::Failed { key, commit, error } => {
            println!(
                "✗ {key} {} failed; the previous version keeps serving:",
                short(commit)
            );
            for line in error.lines() {
                println!("    {line}");
            }
        }
        DeployEvent::Removed { key } => println!("- {key} removed (branch deleted)"),
    }
}
