//! `canopy cluster init|invite|remove`: make a cluster secret, invite a
//! node, remove one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::admin::InviteAnswer;
use crate::tls::{CA_CERT_FILE, CA_KEY_FILE, CaScope, LocalCa};

/// Create a cluster's secret, invite a new node into a running cluster, or
/// remove one.
///
/// A cluster starts with its first node: give it a `cluster:` section with a
/// secret (`canopy cluster init`) and no invite, and it founds the cluster.
/// Every further node needs the same secret and an invite from a member.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Write a new cluster secret (32 random bytes, hex) to FILE, readable by
    /// its owner only, and with --ca-dir the cluster's CA. Every node of the
    /// cluster reads the same secret file (`cluster.secret_file`); a node
    /// without it cannot even connect.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["secret_file", "ca_dir"])))]
    Init {
        /// Where to write the secret; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// Also make the cluster's CA in DIR (ca.pem, ca-key.pem): it signs
        /// each node's admin-port certificate when the admin port is off
        /// loopback. Copy DIR to every node (`local_ca:`), and give clients
        /// ca.pem (`--ca`, git's `http.sslCAInfo`). An existing CA is never
        /// overwritten.
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
    },
    /// Ask a running member for a single-use invite token, and print what the
    /// new node's config needs.
    ///
    /// Needs an admin token.
    Invite {
        #[command(flatten)]
        target: super::admin_client::AdminTarget,
        /// How long the token stays valid, in seconds (at most the node's
        /// `admin.max_invite_ttl`, 1 hour unless configured).
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        ttl: u64,
        /// Print only the JSON answer (token, peers, expiry).
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the cluster for good: every node stops admitting
    /// it and closes its connections, and what it writes from now on counts
    /// nowhere (what it recorded before, like the pushes it received, stays).
    ///
    /// Needs an admin token. The founding node cannot be removed.
    Remove {
        #[command(flatten)]
        target: super::admin_client::AdminTarget,
        /// The node's id, or at least its first 16 hex digits (as
        /// `canopy status` shows it).
        node: String,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Init {
            secret_file,
            ca_dir,
        } => init(secret_file.as_deref(), ca_dir.as_deref()),
        ClusterCommand::Invite { target, ttl, json } => invite(&target, ttl, json).await,
        ClusterCommand::Remove { target, node } => remove(&target, &node).await,
    }
}

/// A new cluster secret as a secret file holds it: 32 random bytes in hex
/// and a newline.
pub(crate) fn new_secret_file_text() -> String {
    let mut secret = [0u8; 32];
    crate::env::Rng::from_os().fill_bytes(&mut secret);
    format!("{}\n", crate::cluster::hex(&secret))
}

fn init(secret_file: Option<&Path>, ca_dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = ca_dir {
        for file in [CA_CERT_FILE, CA_KEY_FILE] {
            let existing = dir.join(file);
            if existing.exists() {
                anyhow::bail!(
                    "--ca-dir {}: {} exists (an existing CA is never overwritten; pick an empty directory, or keep using that CA)",
                    dir.display(),
                    existing.display()
                );
            }
        }
    }
    if let Some(path) = secret_file {
        write_secret_file(path)?;
    }
    if let Some(dir) = ca_dir {
        let ca = LocalCa::load_or_create_scoped(dir, CaScope::Node, &crate::env::Rng::from_os())
            .with_context(|| format!("cannot make the cluster's CA in {}", dir.display()))?;
        println!();
        println!("Made the cluster's CA in {}", dir.display());
        println!(
            "Copy the directory to every node and point `local_ca` at it; give clients {} (`canopy --ca`, `git -c http.sslCAInfo=`).",
            ca.ca_pem_path().display()
        );
    }
    Ok(())
}

/// Write a new secret to `path`, never over an existing file.
fn write_secret_file(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }
    .with_context(|| {
        format!(
            "cannot create {} (an existing secret is never overwritten; remove it first if you mean to)",
            path.display()
        )
    })?;
    file.write_all(new_secret_file_text().as_bytes())?;
    file.sync_all()?;
    println!("Wrote a new cluster secret to {}", path.display());
    println!("Copy it to every node and point `cluster.secret_file` at it.");
    Ok(())
}

async fn remove(target: &super::admin_client::AdminTarget, node: &str) -> anyhow::Result<()> {
    let body = serde_json::to_value(crate::admin::NodeRemoval {
        node: node.to_owned(),
    })?;
    let bytes = target
        .client()?
        .call(http::Method::POST, "/api/cluster/remove", Some(body))
        .await?;
    let answer: crate::admin::NodeRemoval =
        serde_json::from_slice(&bytes).context("the node did not answer with the removed node")?;
    println!("Removed node {} from the cluster.", answer.node);
    Ok(())
}

async fn invite(
    target: &super::admin_client::AdminTarget,
    ttl: u64,
    json: bool,
) -> anyhow::Result<()> {
    let path = format!("/api/cluster/invite?ttl={ttl}");
    let bytes = target
        .client()?
        .call(http::Method::POST, &path, None)
        .await?;
    let answer: InviteAnswer =
        serde_json::from_slice(&bytes).context("the node did not answer with an invite")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("Invite (single use, valid for {ttl} s):");
    println!();
    println!("  {}", answer.token);
    println!();
    println!("In the new node's config:");
    println!();
    println!("  cluster:");
    println!("    secret_file: <the same secret file as this cluster's nodes>");
    println!("    peers:");
    for peer in &answer.peers {
        println!("      - {peer}");
    }
    println!("    invite: {}", answer.token);
    Ok(())
}
