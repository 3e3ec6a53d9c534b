//! One node, assembled from its environment: store, runtime, gateway, Git
//! remote, deployer and admin API, and the tasks that run them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminSource};
use crate::deploy::{DeployEvent, Deployer};
use crate::env::Env;
use crate::gateway::Gateway;
use crate::git::{GitHttp, Repos};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::status::{CertificateStatus, NodeStatus, RuntimeStatus, StatusReport};
use crate::store::BlobStore;
use crate::tls::LocalCa;

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
}

/// A running node. Dropping it does not stop it; call [`Node::stop`].
pub struct Node {
    id: String,
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
}

impl AdminSource for Info {
    fn status(&self) -> StatusReport {
        StatusReport {
            nodes: vec![NodeStatus {
                id: self.id.clone(),
                version: crate::version().to_owned(),
                role: "standalone".to_owned(),
                http: self.http.clone(),
                admin: self.admin.clone(),
                git_remote: format!("{}{}/{DEFAULT_REPO}", self.admin, admin::GIT_MOUNT),
                runtime: {
                    let stats = self.runtime.load_stats();
                    RuntimeStatus {
                        compiled: stats.compiled,
                        from_disk: stats.from_disk,
                        from_memory: stats.from_memory,
                    }
                },
            }],
            deployments: self.deployer.status(),
            certificates: self.certificates.clone(),
        }
    }
}

impl Node {
    /// Start a node: restore what was live, then listen. Returns once the
    /// node serves every restored release and accepts pushes.
    pub async fn start(env: Env, options: NodeOptions) -> anyhow::Result<Node> {
        let data = env.data_dir.clone();
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create the data directory {}", data.display()))?;
        let id = node_id(&env, &data)?;

        let store = Arc::new(BlobStore::open(data.join("store"))?);
        let runtime = Runtime::new(RuntimeConfig::new(data.join("compiled")))?;
        let gateway = Gateway::new();
        let (pushes_tx, pushes_rx) = mpsc::unbounded_channel();
        let repos = Repos::new(data.join("git"))?;
        let git = Arc::new(
            GitHttp::new(repos.clone(), pushes_tx.clone()).with_mount_prefix(admin::GIT_MOUNT),
        );
        let deployer = Deployer::new(env.clone(), store, runtime.clone(), gateway.clone(), repos)?;
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
                let ca = Arc::new(LocalCa::load_or_create(&data.join("tls"), &env.rng)?);
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

    /// Stop accepting, let in-flight requests finish, stop every task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // A deploy in flight is abandoned: its push stays acknowledged and is
        // deployed again at the next start (see `Deployer::unfinished_pushes`).
        self.deploy_task.abort();
        let _ = self.deploy_task.await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The node's identity, made once from the node's RNG and kept in its data
/// directory.
fn node_id(env: &Env, data: &Path) -> anyhow::Result<String> {
    let path = data.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_owned());
        }
        anyhow::bail!(
            "{} does not hold a node id (16 hex digits); remove it to make a new one",
            path.display()
        );
    }
    let id = format!("{:016x}", env.rng.next_u64());
    crate::durable::write_atomically(&path, id.as_bytes(), None)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}
