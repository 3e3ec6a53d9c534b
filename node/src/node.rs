//! One node, assembled from its environment: store, runtime, gateway, Git
//! remote, deployer and admin API, the cluster side when it has one, and the
//! tasks that run them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminSource, InviteAnswer};
use crate::cluster::{ClusterNode, ClusterOptions, PeerReport};
use crate::deploy::{DeployEvent, Deployer};
use crate::env::Env;
use crate::gateway::Gateway;
use crate::git::{GitHttp, Repos};
use crate::net::Net as _;
use crate::net::admission::InviteToken;
use crate::net::identity::NodeKey;
use crate::net::p2p::{Multiaddr, P2pConfig, P2pNet};
use crate::runtime::{GuestEnv, Runtime, RuntimeConfig};
use crate::status::{CertificateStatus, ClusterStatus, NodeStatus, RuntimeStatus, StatusReport};
use crate::store::BlobStore;
use crate::tls::LocalCa;

/// How long a joining node waits for the inviter to admit it and for the
/// admission to reach its own state.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// The repository name `canopy dream` advertises as its Git remote.
pub const DEFAULT_REPO: &str = "dream.git";

/// Where a node listens.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The gateway: user traffic (HTTP/1.1 and HTTP/2).
    pub http_listen: SocketAddr,
    /// The admin API and the Git remote.
    pub admin_listen: SocketAddr,
    /// HTTPS with certificates from a local CA kept in the data directory
    /// (`canopy dream`); `None` serves plain HTTP only.
    pub https_local_ca: Option<SocketAddr>,
    /// Where the local CA lives; default `DATA_DIR/tls`. Nodes of one dream
    /// share one CA, so clients trust one certificate.
    pub local_ca_dir: Option<PathBuf>,
    /// Be part of a cluster; `None`: a standalone node.
    pub cluster: Option<ClusterSetup>,
}

/// How a node takes part in a cluster (`cluster:` in the node config).
#[derive(Clone, Debug, Default)]
pub struct ClusterSetup {
    /// Peer-to-peer listen addresses (TCP, and QUIC when on).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (and to join through, with `invite`).
    pub peers: Vec<Multiaddr>,
    /// The cluster's pre-shared key (every node has the same).
    pub secret: Option<[u8; 32]>,
    pub mdns: bool,
    pub quic: bool,
    /// Join the cluster with this token (first start only; ignored once the
    /// node is a member).
    pub invite: Option<InviteToken>,
    /// Copies of every blob; `None`: min(3, nodes).
    pub replication_factor: Option<usize>,
}

/// A running node. Dropping it does not stop it; call [`Node::stop`].
pub struct Node {
    id: String,
    cluster: Option<Arc<ClusterNode>>,
    p2p_addrs: Vec<String>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    ca_pem: Option<PathBuf>,
    admin_addr: SocketAddr,
    deployer: Arc<Deployer>,
    shutdown: watch::Sender<bool>,
    /// The gateway and the admin API: they drain in-flight requests on stop.
    tasks: Vec<JoinHandle<()>>,
    deploy_task: JoinHandle<()>,
}

struct Info {
    id: String,
    http: String,
    admin: String,
    deployer: Arc<Deployer>,
    runtime: Arc<Runtime>,
    certificates: Vec<CertificateStatus>,
    cluster: Option<(Arc<ClusterNode>, NodeKey, Env, Vec<String>)>,
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
            git_remote: format!("{}{}/{DEFAULT_REPO}", self.admin, admin::GIT_MOUNT),
            runtime: RuntimeStatus {
                compiled: stats.compiled,
                from_disk: stats.from_disk,
                from_memory: stats.from_memory,
            },
            peers: Vec::new(),
            state_hash: None,
            serving: Default::default(),
            holds: None,
        };
        if let Some((cluster, ..)) = &self.cluster {
            let report = cluster.report();
            status.role = report.role;
            status.peers = report.peers;
            status.state_hash = Some(report.state_hash);
            status.serving = report.serving;
            status.holds = Some(report.holds);
        }
        status
    }
}

/// A peer's report as `canopy status` shows it.
fn peer_status(report: PeerReport) -> NodeStatus {
    NodeStatus {
        git_remote: format!("{}{}/{DEFAULT_REPO}", report.admin, admin::GIT_MOUNT),
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

    fn invite(&self, ttl_s: u64) -> Result<InviteAnswer, admin::InviteError> {
        let Some((cluster, key, env, peers)) = &self.cluster else {
            return Err(admin::InviteError::NotInCluster);
        };
        let token = cluster
            .invite(key, env, Duration::from_secs(ttl_s))
            .map_err(admin::InviteError::Cluster)?;
        Ok(InviteAnswer {
            token: token.encode(),
            peers: peers.clone(),
            expires_at_unix_s: token.expires_at_unix_s,
        })
    }
}

impl Node {
    /// Start a node: restore what was live, then listen. Returns once the
    /// node serves every restored release and accepts pushes.
    pub async fn start(env: Env, options: NodeOptions) -> anyhow::Result<Node> {
        let data = env.data_dir.clone();
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create the data directory {}", data.display()))?;
        let key = NodeKey::load_or_create(&data, &env.rng)?;
        let id = key.node_id().to_string();

        let store = Arc::new(BlobStore::open_on(env.disk.clone(), data.join("store"))?);
        let runtime = Runtime::with_guest_env(
            RuntimeConfig::new(data.join("compiled")),
            GuestEnv::of(&env),
        )?;
        let gateway = Gateway::new();
        let (pushes_tx, pushes_rx) = mpsc::unbounded_channel();
        let repos = Repos::new(data.join("git"))?;
        let git = Arc::new(
            GitHttp::new(repos.clone(), pushes_tx.clone()).with_mount_prefix(admin::GIT_MOUNT),
        );
        let deployer = Deployer::new(
            env.clone(),
            store.clone(),
            runtime.clone(),
            gateway.clone(),
            repos,
        )?;
        deployer.restore().await;

        let http_listener = tokio::net::TcpListener::bind(options.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", options.http_listen))?;
        let admin_listener = tokio::net::TcpListener::bind(options.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for the admin API on {}",
                    options.admin_listen
                )
            })?;
        let http_addr = http_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let https = match options.https_local_ca {
            Some(listen) => {
                let ca_dir = options
                    .local_ca_dir
                    .clone()
                    .unwrap_or_else(|| data.join("tls"));
                let ca = Arc::new(LocalCa::load_or_create(&ca_dir, &env.rng)?);
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for HTTPS on {listen}"))?;
                Some((listener, ca))
            }
            None => None,
        };
        let https_addr = match &https {
            Some((listener, _)) => Some(listener.local_addr()?),
            None => None,
        };
        let ca_pem = https.as_ref().map(|(_, ca)| ca.ca_pem_path().to_owned());
        let certificates = match &ca_pem {
            Some(path) => vec![CertificateStatus {
                domain: "localhost, *.localhost, 127.0.0.1".to_owned(),
                issuer: format!("the dream's local CA ({})", path.display()),
                not_after: "2045-01-01".to_owned(),
            }],
            None => Vec::new(),
        };

        let (cluster, p2p_addrs) = match &options.cluster {
            Some(setup) => {
                let (cluster, addrs) = start_cluster(
                    &env,
                    &key,
                    setup,
                    store,
                    deployer.clone(),
                    format!("http://{http_addr}"),
                    format!("http://{admin_addr}"),
                )
                .await?;
                (Some(cluster), addrs)
            }
            None => (None, Vec::new()),
        };

        let (shutdown, _) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn({
            let gateway = gateway.clone();
            let stop = stopped(shutdown.subscribe());
            async move {
                if let Err(e) = gateway.serve(http_listener, stop).await {
                    tracing::error!(error = %e, "gateway stopped");
                }
            }
        }));
        if let Some((listener, ca)) = https {
            let config = crate::tls::server_config(ca)?;
            let gateway = gateway.clone();
            let stop = stopped(shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = gateway.serve_tls(listener, config, stop).await {
                    tracing::error!(error = %e, "HTTPS gateway stopped");
                }
            }));
        }
        let info = Arc::new(Info {
            id: id.clone(),
            http: format!("http://{http_addr}"),
            admin: format!("http://{admin_addr}"),
            deployer: deployer.clone(),
            runtime,
            certificates,
            cluster: cluster
                .clone()
                .map(|c| (c, key.clone(), env.clone(), p2p_addrs.clone())),
        });
        tasks.push(tokio::spawn({
            let admin = Admin::new(info, git);
            let stop = stopped(shutdown.subscribe());
            async move {
                if let Err(e) = admin.serve(admin_listener, stop).await {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }
        }));
        for event in deployer.unfinished_pushes() {
            let _ = pushes_tx.send(event);
        }
        let deploy_task = tokio::spawn(deployer.clone().run(pushes_rx));

        Ok(Node {
            id,
            cluster,
            p2p_addrs,
            http_addr,
            https_addr,
            ca_pem,
            admin_addr,
            deployer,
            shutdown,
            tasks,
            deploy_task,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS gateway, when the node serves one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The local CA's certificate that HTTPS clients should trust.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The URL `git push` accepts for repository `repo` (e.g. `dream.git`).
    pub fn git_remote(&self, repo: &str) -> String {
        format!("http://{}{}/{repo}", self.admin_addr, admin::GIT_MOUNT)
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DeployEvent> {
        self.deployer.subscribe()
    }

    /// The node's peer-to-peer addresses (with `/p2p/<id>`), when in a cluster.
    pub fn p2p_addrs(&self) -> &[String] {
        &self.p2p_addrs
    }

    /// The cluster side, when the node is in a cluster.
    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    /// Stop accepting, let in-flight requests finish, stop every task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if let Some(cluster) = &self.cluster {
            cluster.stop().await;
        }
        // A deploy in flight is abandoned: its push stays acknowledged and is
        // deployed again at the next start (see `Deployer::unfinished_pushes`).
        self.deploy_task.abort();
        let _ = self.deploy_task.await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Start the peer-to-peer network and the cluster side; join through the
/// invite's peer when the node is not a member yet. Returns the cluster and
/// the node's peer addresses.
async fn start_cluster(
    env: &Env,
    key: &NodeKey,
    setup: &ClusterSetup,
    store: Arc<BlobStore>,
    deployer: Arc<Deployer>,
    http: String,
    admin: String,
) -> anyhow::Result<(Arc<ClusterNode>, Vec<String>)> {
    let (admitted_tx, admitted_rx) = watch::channel(BTreeSet::new());
    let config = P2pConfig {
        listen: setup.listen.clone(),
        bootstrap: setup.peers.clone(),
        mdns: setup.mdns,
        cluster_secret: setup.secret,
        quic: setup.quic,
        ..P2pConfig::default()
    };
    let (net, events) = P2pNet::start(key, config, admitted_rx)
        .await
        .context("cannot start the peer-to-peer network")?;
    let addrs: Vec<String> = net.listen_addrs().iter().map(|a| a.to_string()).collect();
    let options = ClusterOptions {
        found_if_new: setup.invite.is_none(),
        invite: setup.invite.clone(),
        addresses: addrs.clone(),
        replication_factor: setup.replication_factor,
        http,
        admin,
        ..ClusterOptions::default()
    };
    let cluster = ClusterNode::start(
        env,
        Arc::new(net.clone()),
        events,
        store,
        deployer,
        admitted_tx,
        options,
    )?;
    // Members recorded in state are peers too (restart after a join).
    let known: Vec<Multiaddr> = cluster.handle().read(|s| {
        s.members()
            .into_iter()
            .filter(|(id, m)| *id != key.node_id() && m.admitted)
            .flat_map(|(_, m)| m.addresses)
            .filter_map(|a| a.parse().ok())
            .collect()
    });
    for addr in known {
        let net = net.clone();
        tokio::spawn(async move {
            let _ = net.dial(addr).await;
        });
    }
    // Once a member, the invite in the config has done its job.
    if let Some(token) = &setup.invite
        && !cluster.is_admitted()
    {
        // Forged or expired tokens fail here, before any network traffic.
        token.verify(
            env.clock.unix_now_s(),
            token.cluster_id,
            &BTreeSet::from([token.inviter]),
        )?;
        if let Err(e) = join(&net, &cluster, token, &setup.peers, setup.mdns).await {
            cluster.stop().await;
            return Err(e);
        }
    }
    Ok((cluster, addrs))
}

/// Reach the inviter through one of `peers` (or, with none, find it on the
/// LAN with mDNS) and ask it to admit this node.
async fn join(
    net: &P2pNet,
    cluster: &ClusterNode,
    token: &InviteToken,
    peers: &[Multiaddr],
    mdns: bool,
) -> anyhow::Result<()> {
    if peers.is_empty() {
        anyhow::ensure!(
            mdns,
            "cluster.invite is set but cluster.peers is empty and mdns is off: add the inviting node's address (printed by `canopy cluster invite`)"
        );
        // The inviter is in this node's admitted set, so mDNS dials it.
        let found = tokio::time::timeout(JOIN_WAIT, async {
            while !net.peers().contains(&token.inviter) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        anyhow::ensure!(
            found.is_ok(),
            "the node that issued the invite ({}) was not found on the local network by mDNS within {} s; add its address to cluster.peers",
            token.inviter,
            JOIN_WAIT.as_secs()
        );
        cluster.join(token, JOIN_WAIT).await?;
        return Ok(());
    }
    let mut reached = None;
    let mut errors = Vec::new();
    for addr in peers {
        match net.dial(addr.clone()).await {
            Ok(peer) if peer == token.inviter => {
                reached = Some(peer);
                break;
            }
            Ok(peer) => errors.push(format!(
                "{addr} is node {peer}, not the inviter {}",
                token.inviter
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    anyhow::ensure!(
        reached.is_some(),
        "cannot reach the node that issued the invite ({}):\n  {}\n  help: check cluster.peers (one of the addresses `canopy cluster invite` printed) and that cluster.secret_file holds the cluster's secret",
        token.inviter,
        errors.join("\n  ")
    );
    cluster.join(token, JOIN_WAIT).await?;
    Ok(())
}
