//! `canopy dream --nodes N` (N > 1): N real `canopy node` processes on
//! 127.0.0.1 forming one cluster, supervised by the dream.
//!
//! Node 1 founds the cluster; every other node joins it with an invite that
//! node 1 issues through its admin API — the same path an operator takes.
//! Each node has its own data directory (`DIR/node-I`), config file
//! (`DIR/node-I/node.yaml`, ports fixed at first start so a restarted node
//! comes back on the same addresses), and log (`DIR/node-I/node.log`). They
//! share the cluster secret (`DIR/cluster.secret`) and the local CA
//! (`DIR/node-1/tls`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::node_cmd::{NODE_FILE, NodeFile};
use crate::admin::InviteAnswer;

/// How long one node may take to start (and join).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One node of the dream, as `dream.json` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DreamNode {
    pub name: String,
    pub id: String,
    pub http: String,
    pub https: Option<String>,
    pub admin: String,
    /// `http://canopy:TOKEN@…/git/`: append `<project>.git`.
    pub git_base: String,
    /// Peer-to-peer addresses.
    pub p2p: Vec<String>,
    pub pid: u32,
    /// `canopy node --config CONFIG` starts this node again.
    pub config: String,
    pub data_dir: String,
    pub log: String,
}

/// Ports a node keeps across restarts.
#[derive(Debug, Serialize, Deserialize)]
struct NodePorts {
    http: u16,
    https: u16,
    admin: u16,
    p2p: u16,
}

/// The running node processes.
pub(crate) struct Cluster {
    pub nodes: Vec<DreamNode>,
    children: Vec<Child>,
}

/// Start `count` nodes under `dir`. `base_ports` are node 1's requested
/// ports (0: free ones); node I gets base + I - 1.
pub(crate) async fn start(
    dir: &Path,
    count: u16,
    base_ports: (u16, u16, u16),
) -> anyhow::Result<Cluster> {
    let exe = std::env::current_exe().context("cannot find the canopy binary")?;
    let secret = dir.join("cluster.secret");
    if !secret.exists() {
        let text = super::cluster_cmd::new_secret_file_text();
        crate::durable::write_atomically(&secret, text.as_bytes(), Some(0o600))
            .with_context(|| format!("cannot write {}", secret.display()))?;
    }
    let mut cluster = Cluster {
        nodes: Vec::new(),
        children: Vec::new(),
    };
    for index in 1..=count {
        let result = start_one(&exe, dir, index, base_ports, &secret, &cluster.nodes).await;
        match result {
            Ok((node, child)) => {
                println!("  node-{index} {} up (http {})", node.id, node.http);
                cluster.nodes.push(node);
                cluster.children.push(child);
            }
            Err(e) => {
                cluster.stop().await;
                return Err(e.context(format!("node-{index} did not start")));
            }
        }
    }
    Ok(cluster)
}

async fn start_one(
    exe: &Path,
    dir: &Path,
    index: u16,
    (http, https, admin): (u16, u16, u16),
    secret: &Path,
    running: &[DreamNode],
) -> anyhow::Result<(DreamNode, Child)> {
    let name = format!("node-{index}");
    let data = dir.join(&name);
    std::fs::create_dir_all(&data)?;
    let ports = node_ports(&data, index, http, https, admin)?;
    let config_path = data.join("node.yaml");
    let admitted = data.join("cluster/state.automerge").exists();
    let invite = match running.first() {
        Some(founder) if !admitted => Some(invite(founder).await?),
        _ => None,
    };
    let local = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
    let mut config = serde_json::json!({
        "data_dir": data,
        "http": local(ports.http),
        "https": local(ports.https),
        "admin": local(ports.admin),
        "local_ca": dir.join("node-1").join("tls"),
        // A dream builds even where bubblewrap is missing, with a warning.
        "build_sandbox": "preferred",
        "cluster": {
            "listen": [local(ports.p2p)],
            "secret_file": secret,
            "peers": running.first().map(|f| f.p2p.clone()).unwrap_or_default(),
            "mdns": false,
            "quic": false,
        },
    });
    if let Some(answer) = &invite {
        config["cluster"]["invite"] = answer.token.clone().into();
        config["cluster"]["peers"] = answer.peers.clone().into();
    }
    let yaml = serde_yaml_ng::to_string(&config)?;
    crate::durable::write_atomically(&config_path, yaml.as_bytes(), None)?;

    let log_path = data.join("node.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let _ = std::fs::remove_file(data.join(NODE_FILE));
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info,wasmtime=warn,cranelift=warn,libp2p=warn");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let facts = match wait_ready(&data, &mut child).await {
        Ok(facts) => facts,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = log_tail(&log_path);
            return Err(e.context(format!(
                "its log ({}) ends with:\n{tail}",
                log_path.display()
            )));
        }
    };
    Ok((
        DreamNode {
            name,
            id: facts.id,
            http: facts.http,
            https: facts.https,
            admin: facts.admin,
            git_base: facts.git_base,
            p2p: facts.p2p,
            pid: facts.pid,
            config: config_path.display().to_string(),
            data_dir: data.display().to_string(),
            log: log_path.display().to_string(),
        },
        child,
    ))
}

/// The node's ports: kept in `DATA/ports.json` from its first start.
fn node_ports(
    data: &Path,
    index: u16,
    http: u16,
    https: u16,
    admin: u16,
) -> anyhow::Result<NodePorts> {
    let path = data.join("ports.json");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(ports) = serde_json::from_slice(&bytes)
    {
        return Ok(ports);
    }
    let pick = |base: u16| -> anyhow::Result<u16> {
        if base != 0 {
            return Ok(base + index - 1);
        }
        // The OS picks a free port; the node binds it a moment later.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        Ok(listener.local_addr()?.port())
    };
    let ports = NodePorts {
        http: pick(http)?,
        https: pick(https)?,
        admin: pick(admin)?,
        p2p: pick(0)?,
    };
    crate::durable::write_atomically(&path, &serde_json::to_vec(&ports)?, None)?;
    Ok(ports)
}

/// An invite from the founder, asked with its first admin token.
async fn invite(founder: &DreamNode) -> anyhow::Result<InviteAnswer> {
    let token = crate::auth::read_token_file(
        &Path::new(&founder.data_dir).join(crate::auth::ADMIN_TOKEN_FILE),
    )?;
    let target = super::admin_client::AdminTarget {
        admin: Some(founder.admin.clone()),
        token: Some(token),
        ca: None,
    };
    let bytes = target
        .client()?
        .call(http::Method::POST, "/api/cluster/invite?ttl=600", None)
        .await?;
    serde_json::from_slice(&bytes).context("node-1 did not answer with an invite")
}

/// Wait for the node's `node.json`, or its exit.
async fn wait_ready(data: &Path, child: &mut Child) -> anyhow::Result<NodeFile> {
    let path = data.join(NODE_FILE);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("it exited with {status}");
        }
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(facts) = serde_json::from_slice::<NodeFile>(&bytes)
        {
            return Ok(facts);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "it did not become ready within {} s",
            START_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Cluster {
    /// Report nodes that exited (killed from outside, or crashed) once each.
    pub fn reap(&mut self, reported: &mut Vec<bool>) {
        reported.resize(self.children.len(), false);
        for (i, child) in self.children.iter_mut().enumerate() {
            if !reported[i]
                && let Ok(Some(status)) = child.try_wait()
            {
                reported[i] = true;
                let node = &self.nodes[i];
                println!(
                    "! {} exited ({status}); start it again with: canopy node --config {}",
                    node.name, node.config
                );
            }
        }
    }

    /// SIGTERM every node still running; SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on our own child's pid has no memory effects.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while let Ok(None) = child.try_wait() {
                if tokio::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
