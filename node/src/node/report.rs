//! What the admin API asks a running node: the status of the node and of
//! every peer it reaches, and cluster invites.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use crate::admin::{self, AdminSource, InviteAnswer};
use crate::cluster::{ClusterNode, PeerReport};
use crate::deploy::Deployer;
use crate::env::Env;
use crate::net::identity::NodeKey;
use crate::runtime::Runtime;
use crate::status::{CertificateStatus, ClusterStatus, NodeStatus, RuntimeStatus, StatusReport};

/// The node as its admin API sees it.
pub(super) struct Info {
    pub(super) id: String,
    pub(super) http: String,
    pub(super) admin: String,
    pub(super) deployer: Arc<Deployer>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) gc: crate::gc::GcReports,
    pub(super) certificates: Vec<CertificateStatus>,
    /// The cluster side, with what issuing invites takes: the node's key,
    /// its environment (clock, randomness) and its peer addresses.
    pub(super) cluster: Option<(Arc<ClusterNode>, NodeKey, Env, Vec<String>)>,
}

impl Info {
    fn local_status(&self) -> NodeStatus {
        let stats = self.runtime.load_stats();
        let mut status = NodeStatus {
            id: self.id.clone(),
            version: crate::version().to_owned(),
            role: "standalone".to_owned(),
            http: self.http.clone(),
            admin: self.admin.clone(),
            git_base: format!("{}{}/", self.admin, admin::GIT_MOUNT),
            runtime: RuntimeStatus {
                compiled: stats.compiled,
                from_disk: stats.from_disk,
                from_memory: stats.from_memory,
                memory: Some(self.runtime.memory_budget()),
            },
            peers: Vec::new(),
            state_hash: None,
            serving: Default::default(),
            holds: None,
            gc: self.gc.last(),
            busy_refusals: Default::default(),
        };
        if let Some((cluster, ..)) = &self.cluster {
            let report = cluster.report();
            status.role = report.role;
            status.peers = report.peers;
            status.state_hash = Some(report.state_hash);
            status.serving = report.serving;
            status.holds = Some(report.holds);
            status.busy_refusals = report.busy_refusals;
        }
        status
    }
}

/// A peer's report as `canopy status` shows it.
fn peer_status(report: PeerReport) -> NodeStatus {
    NodeStatus {
        git_base: format!("{}{}/", report.admin, admin::GIT_MOUNT),
        id: report.id,
        version: report.version,
        role: report.role,
        http: report.http,
        admin: report.admin,
        runtime: RuntimeStatus::default(),
        peers: report.peers,
        state_hash: Some(report.state_hash),
        serving: report.serving,
        holds: Some(report.holds),
        gc: None,
        busy_refusals: report.busy_refusals,
    }
}

impl AdminSource for Info {
    fn status(&self) -> futures::future::BoxFuture<'_, StatusReport> {
        async move {
            let mut nodes = vec![self.local_status()];
            let mut cluster_status = None;
            if let Some((cluster, ..)) = &self.cluster {
                nodes.extend(cluster.peer_reports().await.into_iter().map(peer_status));
                let hashes: BTreeSet<_> =
                    nodes.iter().filter_map(|n| n.state_hash.clone()).collect();
                cluster_status = Some(ClusterStatus {
                    id: cluster
                        .cluster_id()
                        .unwrap_or_else(|| "(joining)".to_owned()),
                    members: cluster.handle().read(|s| s.admitted().len()),
                    reporting: nodes.len(),
                    converged: hashes.len() == 1,
                });
            }
            StatusReport {
                cluster: cluster_status,
                nodes,
                deployments: self.deployer.status(),
                certificates: self.certificates.clone(),
            }
        }
        .boxed()
    }

    fn domains(&self) -> crate::deploy::domains::Owners {
        self.deployer.domain_owners()
    }

    fn transfer_domain(
        &self,
        domain: &str,
        project: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<(), crate::deploy::domains::DomainError> {
        self.deployer.transfer_domain(domain, project, warrantor)
    }

    fn remove_node(
        &self,
        node: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<String, admin::InviteError> {
        let Some((cluster, ..)) = &self.cluster else {
            return Err(admin::InviteError::NotInCluster);
        };
        let id = cluster.remove(node, warrantor)?;
        Ok(crate::cluster::node_hex(&id))
    }

    fn invite(
        &self,
        ttl_s: u64,
        warrantor: &crate::auth::Token,
    ) -> Result<InviteAnswer, admin::InviteError> {
        let Some((cluster, key, env, peers)) = &self.cluster else {
            return Err(admin::InviteError::NotInCluster);
        };
        let token = cluster.invite(key, env, Duration::from_secs(ttl_s), warrantor)?;
        Ok(InviteAnswer {
            token: token.encode(),
            peers: peers.clone(),
            expires_at_unix_s: token.expires_at_unix_s,
        })
    }
}
