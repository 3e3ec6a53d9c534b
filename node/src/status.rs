//! What a node reports about itself and its deployments: the admin API's
//! JSON schema (`GET /api/status`) and its rendering for `canopy status`.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// The whole answer of `GET /api/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The cluster this node belongs to; `None` for a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// This node first, then every peer that answered.
    pub nodes: Vec<NodeStatus>,
    pub deployments: Vec<EnvironmentStatus>,
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub version: String,
    /// `standalone` until the node is part of a cluster.
    pub role: String,
    pub http: String,
    pub admin: String,
    /// Push URLs are `<git_base><project>.git`.
    pub git_base: String,
    pub runtime: RuntimeStatus,
    /// Connected peers (short ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// The hash of this node's cluster state: equal on converged nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_hash: Option<String>,
    /// `project@branch` → commit serving on this node.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub serving: std::collections::BTreeMap<String, String>,
    /// Blobs this node holds for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<usize>,
    /// What garbage collection last did, and what each project uses here
    /// (`None`: no pass yet, or a peer's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<crate::gc::GcReport>,
    /// Requests this node refused as busy, per peer (short id): the peer
    /// was over its per-peer limits (`limits.cluster.*_per_peer`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub busy_refusals: std::collections::BTreeMap<String, u64>,
}

/// The cluster as seen from the node that answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: String,
    /// Admitted members in cluster state.
    pub members: usize,
    /// Nodes that reported (this one and the peers that answered).
    pub reporting: usize,
    /// Every reporting node is on the same state hash.
    pub converged: bool,
}

/// How the node's components were loaded since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    /// Compiled from WebAssembly (first deploy of a component).
    pub compiled: u64,
    /// Loaded from the on-disk compiled-code cache (restarts).
    pub from_disk: u64,
    /// Already in memory (the same component in several deployments).
    pub from_memory: u64,
    /// The memory budget of all running functions, and its use (`None`:
    /// a peer's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::runtime::MemoryBudgetReport>,
}

/// One environment (project × branch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    pub project: String,
    pub branch: String,
    /// `live`, `deploying`, `failed` (nothing ever went live) or `degraded`
    /// (live, but the newest push failed and did not replace it).
    pub state: String,
    pub hosts: Vec<String>,
    pub live_commit: Option<String>,
    pub pending_commit: Option<String>,
    pub failed_commit: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub domain: String,
    pub issuer: String,
    pub not_after: String,
}

fn short(commit: &Option<String>) -> String {
    match commit {
        Some(c) => c[..c.len().min(10)].to_owned(),
        None => "-".to_owned(),
    }
}

/// `bytes` for a person: `512 B`, `3.4 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A node's disk and memory use, and what garbage collection last freed.
fn render_gc(out: &mut String, gc: &crate::gc::GcReport) {
    let _ = writeln!(
        out,
        "      store      {} in {} blobs ({} unreferenced, waiting out the grace period)",
        size(gc.store_bytes),
        gc.blobs_stored,
        gc.blobs_waiting
    );
    match &gc.error {
        Some(error) => {
            let _ = writeln!(out, "      gc         last pass removed nothing: {error}");
        }
        None => {
            let idle = match gc.functions_idle_unloaded {
                0 => String::new(),
                n => format!(" (+{n} idle, code only)"),
            };
            let _ = writeln!(
                out,
                "      gc         last pass freed {} ({} blobs, {} compiled), unloaded {} functions{idle}, took {} ms",
                size(gc.bytes_freed + gc.compiled_bytes_freed),
                gc.blobs_removed,
                gc.compiled_removed,
                gc.functions_unloaded,
                gc.duration_ms
            );
        }
    }
    for (project, usage) in &gc.projects {
        let _ = writeln!(
            out,
            "      project {project}  disk {} ({} blobs, {} releases kept)  memory {}",
            size(usage.disk_bytes),
            usage.blobs,
            usage.releases,
            size(usage.memory_bytes)
        );
    }
}

impl StatusReport {
    /// The report as `canopy status` prints it for a person.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.cluster {
            let _ = writeln!(out, "CLUSTER {}", c.id);
            let _ = writeln!(
                out,
                "  {} members, {} reporting, {}",
                c.members,
                c.reporting,
                if c.converged {
                    "converged: every reporting node has the same state".to_owned()
                } else {
                    let mut hashes: Vec<_> = self
                        .nodes
                        .iter()
                        .filter_map(|n| n.state_hash.as_deref())
                        .collect();
                    hashes.sort();
                    hashes.dedup();
                    format!("NOT converged: {} different states (syncing)", hashes.len())
                }
            );
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "NODES");
        for node in &self.nodes {
            let _ = writeln!(
                out,
                "  {}  {}  v{}  http {}  admin {}",
                node.id, node.role, node.version, node.http, node.admin
            );
            let _ = writeln!(out, "      git        {}<project>.git", node.git_base);
            if let Some(hash) = &node.state_hash {
                let _ = writeln!(
                    out,
                    "      state {}  peers [{}]  holds {} blobs",
                    &hash[..hash.len().min(12)],
                    node.peers.join(", "),
                    node.holds.unwrap_or(0)
                );
                for (env, commit) in &node.serving {
                    let _ = writeln!(
                        out,
                        "      serves {env} {}",
                        &commit[..commit.len().min(10)]
                    );
                }
                if !node.busy_refusals.is_empty() {
                    let counts: Vec<String> = node
                        .busy_refusals
                        .iter()
                        .map(|(peer, count)| format!("{peer} {count}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "      refused as busy (peers over limits.cluster per-peer bounds): {}",
                        counts.join(", ")
                    );
                }
            }
            if let Some(memory) = &node.runtime.memory {
                let _ = writeln!(
                    out,
                    "      functions  memory {} in use of a {} budget (peak {}, {} growths refused)",
                    size(memory.in_use_bytes),
                    size(memory.budget_bytes),
                    size(memory.peak_bytes),
                    memory.refused
                );
            }
            if let Some(gc) = &node.gc {
                render_gc(&mut out, gc);
            }
        }
        // Hosts answer on the gateway's port; a person wants a URL to click.
        let port = self
            .nodes
            .first()
            .and_then(|n| n.http.rsplit_once(':'))
            .map(|(_, port)| format!(":{port}"))
            .unwrap_or_default();
        let _ = writeln!(out);
        let _ = writeln!(out, "DEPLOYMENTS");
        if self.deployments.is_empty() {
            let _ = writeln!(out, "  none yet: push a project to the git remote above");
        }
        for d in &self.deployments {
            let _ = writeln!(
                out,
                "  {}@{}  {}  live {}{}",
                d.project,
                d.branch,
                d.state,
                short(&d.live_commit),
                match &d.pending_commit {
                    Some(_) => format!("  deploying {}", short(&d.pending_commit)),
                    None => String::new(),
                }
            );
            for host in &d.hosts {
                let _ = writeln!(out, "      http://{host}{port}/");
            }
            if let Some(error) = &d.error {
                let _ = writeln!(out, "      push {} failed:", short(&d.failed_commit));
                for line in error.lines() {
                    let _ = writeln!(out, "        {line}");
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "CERTIFICATES");
        if self.certificates.is_empty() {
            let _ = writeln!(out, "  none: this node serves plain HTTP");
        }
        for c in &self.certificates {
            let _ = writeln!(
                out,
                "  {}  issued by {}  valid until {}",
                c.domain, c.issuer, c.not_after
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_for_a_person() {
        let report = StatusReport {
            cluster: None,
            nodes: vec![NodeStatus {
                id: "7f3a9c21".into(),
                version: "0.1.0".into(),
                role: "standalone".into(),
                http: "http://127.0.0.1:8080".into(),
                admin: "http://127.0.0.1:8081".into(),
                git_base: "http://127.0.0.1:8081/git/".into(),
                runtime: RuntimeStatus {
                    memory: Some(crate::runtime::MemoryBudgetReport {
                        budget_bytes: 2 << 30,
                        in_use_bytes: 48 << 20,
                        peak_bytes: 300 << 20,
                        refused: 3,
                    }),
                    ..RuntimeStatus::default()
                },
                peers: vec![],
                state_hash: None,
                serving: Default::default(),
                holds: None,
                busy_refusals: Default::default(),
                gc: Some(crate::gc::GcReport {
                    finished_unix_ms: 1_700_000_000_000,
                    duration_ms: 12,
                    blobs_removed: 40,
                    bytes_freed: 3 << 20,
                    compiled_removed: 1,
                    compiled_bytes_freed: 1 << 20,
                    functions_unloaded: 2,
                    functions_idle_unloaded: 1,
                    blobs_stored: 120,
                    store_bytes: 9 << 20,
                    blobs_waiting: 5,
                    projects: [(
                        "shop".to_owned(),
                        crate::gc::ProjectUsage {
                            releases: 3,
                            blobs: 100,
                            disk_bytes: 7 << 20,
                            memory_bytes: 2 << 20,
                        },
                    )]
                    .into(),
                    error: None,
                }),
            }],
            deployments: vec![
                EnvironmentStatus {
                    project: "shop".into(),
                    branch: "main".into(),
                    state: "degraded".into(),
                    hosts: vec!["shop.localhost".into()],
                    live_commit: Some("0123456789abcdef".into()),
                    pending_commit: None,
                    failed_commit: Some("fedcba9876543210".into()),
                    error: Some(
                        "canopy.yaml:3:5: unknown field `wsam`\n  help: did you mean `wasm`?"
                            .into(),
                    ),
                },
                EnvironmentStatus {
                    project: "shop".into(),
                    branch: "dev".into(),
                    state: "deploying".into(),
                    hosts: vec![],
                    live_commit: None,
                    pending_commit: Some("aaaaaaaaaaaaaaaa".into()),
                    failed_commit: None,
                    error: None,
                },
            ],
            certificates: vec![],
        };
        insta::assert_snapshot!(report.render());
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    fn node(id: &str, hash: &str) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            version: "0.1.0".into(),
            role: "full".into(),
            http: "http://127.0.0.1:8080".into(),
            admin: "http://127.0.0.1:8081".into(),
            git_base: "http://127.0.0.1:8081/git/".into(),
            runtime: RuntimeStatus::default(),
            peers: vec!["bbbb".into(), "cccc".into()],
            state_hash: Some(hash.into()),
            serving: [("shop@main".to_owned(), "0123456789abcdef".to_owned())].into(),
            holds: Some(3),
            gc: None,
            busy_refusals: Default::default(),
        }
    }

    #[test]
    fn renders_a_cluster() {
        let report = StatusReport {
            cluster: Some(ClusterStatus {
                id: "00112233445566778899aabbccddeeff".into(),
                members: 3,
                reporting: 2,
                converged: false,
            }),
            nodes: vec![
                NodeStatus {
                    busy_refusals: [("cccc".to_owned(), 1234)].into(),
                    ..node("aaaa", "1111111111111111")
                },
                node("bbbb", "2222222222222222"),
            ],
            deployments: vec![],
            certificates: vec![],
        };
        insta::assert_snapshot!(report.render());
    }
}
