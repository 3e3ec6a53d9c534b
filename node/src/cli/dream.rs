//! `canopy dream`: a whole Canopy cloud on this machine, offline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::admin::AdminOptions;
use crate::auth::{
    ADMIN_TOKEN_FILE, Token, git_base_with_token, issue_admin_token_file, read_token_file,
};
use crate::deploy::DeployEvent;
use crate::deploy::build::SandboxMode;
use crate::env::Env;
use crate::node::{Node, NodeOptions};

use super::admin_client::DreamPointer;

/// Start a local cloud: nodes with a Git remote to push to, an HTTP gateway
/// and an admin API, all on 127.0.0.1.
///
/// When it is ready it writes DIR/dream.json with the addresses and an admin
/// token (`git_base` is the push URL of every project, token included:
/// `git push "${git_base}shop.git" main`), and prints how to push a project
/// and reach it. Other `canopy` commands on this machine find the running
/// dream and its token by themselves. Ctrl-C stops it;
/// with --data-dir, starting again on the same directory serves every project
/// again at once, without a push.
///
/// With --nodes N (N > 1) it runs N `canopy node` processes that form one
/// encrypted peer-to-peer cluster: push to any node's Git remote and every
/// node serves the project. dream.json lists every node (addresses, pid,
/// config, log); a node stopped from outside starts again with
/// `canopy node --config DIR/node-I/node.yaml` and catches up.
#[derive(Debug, clap::Args)]
pub struct DreamArgs {
    /// How many nodes to run (1 to 16).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
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
struct DreamFile<N: Serialize> {
    /// `http://canopy:TOKEN@127.0.0.1:PORT/git/`: append `<project>.git`.
    git_base: String,
    /// An admin token (also in DIR/node-1/admin-token).
    token: String,
    http: String,
    https: Option<String>,
    /// The local CA certificate HTTPS clients trust.
    ca: Option<String>,
    admin: String,
    data_dir: String,
    nodes: Vec<N>,
}

#[derive(Debug, Serialize)]
struct DreamNode {
    id: String,
    http: String,
    admin: String,
    git_base: String,
}

/// The files of a dream: its directory and `dream.json`.
struct Layout {
    data_dir: PathBuf,
    dream_json: PathBuf,
}

pub async fn run(args: DreamArgs) -> anyhow::Result<()> {
    // A temporary directory lives exactly as long as this function.
    let (data_dir, _temporary) = match args.data_dir.clone() {
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
    let layout = Layout {
        data_dir,
        dream_json,
    };
    if args.nodes > 1 {
        return run_cluster(&args, &layout).await;
    }
    let Layout {
        data_dir,
        dream_json,
    } = layout;

    let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let node = Node::start(
        Env::production(data_dir.join("node-1")),
        NodeOptions {
            http_listen: localhost(args.http_port),
            admin_listen: localhost(args.admin_port),
            https_local_ca: Some(localhost(args.https_port)),
            local_ca_dir: None,
            admin_tls: None,
            git_limits: crate::git::GitLimits::default(),
            build_limits: crate::deploy::BuildLimits::default(),
            gc: crate::gc::GcConfig::default(),
            gateway: crate::gateway::GatewayConfig::default(),
            wasm_memory_budget_bytes: crate::runtime::DEFAULT_MEMORY_BUDGET_BYTES,
            wasm_request_body: crate::runtime::RequestBodyLimits::default(),
            cluster: None,
            admin: AdminOptions {
                loopback_hosts_only: true,
                ..AdminOptions::default()
            },
            builds: SandboxMode::Preferred,
        },
    )
    .await?;
    let mut events = node.subscribe();

    let token = single_node_token(&node, &data_dir.join("node-1"))?;
    let http = format!("http://{}", node.http_addr());
    let admin = node.admin_url().to_owned();
    let git_base = git_base_with_token(&node.git_base(), &token);
    let https = node.https_addr().map(|a| format!("https://{a}"));
    let ca = node.ca_pem().map(|p| p.display().to_string());
    let facts = DreamFile {
        git_base: git_base.clone(),
        token: token.clone(),
        http: http.clone(),
        https: https.clone(),
        ca: ca.clone(),
        admin: admin.clone(),
        data_dir: data_dir.display().to_string(),
        nodes: vec![DreamNode {
            id: node.id().to_owned(),
            http: http.clone(),
            admin: admin.clone(),
            git_base: git_base.clone(),
        }],
    };
    write_facts(&dream_json, &facts, &admin, &token)?;

    let port = node.http_addr().port();
    println!(
        "Canopy dream is running: 1 node, data in {}",
        data_dir.display()
    );
    println!();
    println!("  push to     {}<project>.git", git_base);
    println!("  http        {http}");
    if let (Some(https), Some(ca)) = (&https, &ca) {
        println!("  https       {https}  (trust {ca})");
    }
    println!("  admin       {admin}");
    println!(
        "  token       {token}  (an admin token; also in {})",
        dream_json.display()
    );
    println!();
    println!("Deploy a project (a Git repository with a canopy.yaml whose `project:` is NAME):");
    println!();
    println!("  git remote add dream {git_base}NAME.git");
    println!("  git push dream main");
    println!("  curl http://NAME.localhost:{port}/");
    println!();
    println!("Branch B is served at http://B.NAME.localhost:{port}/");
    println!("What is deployed: canopy status   (it finds this dream and its token)");
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
    remove_facts(&dream_json);
    Ok(())
}

/// `--nodes N` with N > 1: node processes, supervised until Ctrl-C.
async fn run_cluster(args: &DreamArgs, layout: &Layout) -> anyhow::Result<()> {
    println!(
        "Starting a {}-node Canopy dream in {} …",
        args.nodes,
        layout.data_dir.display()
    );
    let mut cluster = super::dream_cluster::start(
        &layout.data_dir,
        args.nodes,
        (args.http_port, args.https_port, args.admin_port),
    )
    .await?;
    let token_path = layout.data_dir.join("node-1").join(ADMIN_TOKEN_FILE);
    let token = read_token_file(&token_path)?;
    for node in &mut cluster.nodes {
        node.git_base = git_base_with_token(&node.git_base, &token);
    }
    let first = cluster.nodes[0].clone();
    let git_base = first.git_base.clone();
    let facts = DreamFile {
        git_base: git_base.clone(),
        token: token.clone(),
        http: first.http.clone(),
        https: first.https.clone(),
        ca: Some(
            layout
                .data_dir
                .join("node-1/tls/ca.pem")
                .display()
                .to_string(),
        ),
        admin: first.admin.clone(),
        data_dir: layout.data_dir.display().to_string(),
        nodes: cluster.nodes.clone(),
    };
    write_facts(&layout.dream_json, &facts, &first.admin, &token)?;

    println!();
    println!(
        "Canopy dream is running: {} nodes in one cluster",
        args.nodes
    );
    println!();
    for node in &cluster.nodes {
        println!("  {}  {}", node.name, node.id);
        println!("      push to     {}<project>.git", node.git_base);
        println!("      http        {}", node.http);
        println!("      admin       {}", node.admin);
    }
    let port = first.http.rsplit(':').next().unwrap_or("PORT");
    println!();
    println!("  token  {token}  (an admin token for every node; also in dream.json)");
    println!();
    println!("Push to any node; every node serves the project:");
    println!();
    println!("  git remote add dream {git_base}NAME.git");
    println!("  git push dream main");
    println!("  curl http://NAME.localhost:{port}/");
    println!();
    println!("The cluster: canopy status   (it finds this dream and its token)");
    println!("Press Ctrl-C to stop.");

    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut reported = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => cluster.reap(&mut reported),
        }
    }
    println!("stopping…");
    cluster.stop().await;
    remove_facts(&layout.dream_json);
    Ok(())
}

/// The admin token of a one-node dream: the node's first admin token, or
/// the one a previous run left in DATA/admin-token; if that one no longer
/// works (it was revoked), a new one in its place.
fn single_node_token(node: &Node, node_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = node.first_admin_token() {
        return Ok(token.reveal());
    }
    let path = node_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(text) = read_token_file(&path)
        && Token::parse(&text).is_ok_and(|t| node.authority().verify(&t).is_ok())
    {
        return Ok(text);
    }
    let token = issue_admin_token_file(node.authority(), &path, "canopy dream", node.id())?;
    Ok(token.reveal())
}

/// Write dream.json (mode 0600: it holds a token) and the pointer other
/// commands find the dream by.
fn write_facts<N: Serialize>(
    dream_json: &Path,
    facts: &DreamFile<N>,
    admin: &str,
    token: &str,
) -> anyhow::Result<()> {
    crate::durable::write_atomically(dream_json, &serde_json::to_vec_pretty(facts)?, Some(0o600))
        .with_context(|| format!("cannot write {}", dream_json.display()))?;
    let pointer = DreamPointer {
        admin: admin.to_owned(),
        token: token.to_owned(),
        dream_json: dream_json.to_owned(),
        pid: std::process::id(),
    };
    if let Some(path) = DreamPointer::path()
        && let Err(e) = crate::durable::write_atomically(
            &path,
            &serde_json::to_vec_pretty(&pointer)?,
            Some(0o600),
        )
    {
        // Other commands then need --admin and --token; the dream still runs.
        eprintln!(
            "warning: cannot write {} ({e}); other commands need --admin and --token",
            path.display()
        );
    }
    Ok(())
}

/// Remove dream.json, and the pointer if it is still this dream's.
fn remove_facts(dream_json: &Path) {
    let _ = std::fs::remove_file(dream_json);
    if let Some(path) = DreamPointer::path()
        && let Ok(bytes) = std::fs::read(&path)
        && let Ok(pointer) = serde_json::from_slice::<DreamPointer>(&bytes)
        && pointer.pid == std::process::id()
    {
        let _ = std::fs::remove_file(&path);
    }
}

fn print_event(event: &DeployEvent, port: u16) {
    let short = |c: &str| c[..c.len().min(10)].to_owned();
    match event {
        DeployEvent::Started { key, commit } => println!("… {key} {} deploying", short(commit)),
        DeployEvent::Live {
            key,
            commit,
            elapsed_ms,
            ..
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
