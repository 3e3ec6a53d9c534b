//! One running node: its services ([`assemble`]: store, runtime, gateway,
//! Git remote, deployer, the cluster side when it has one) behind its
//! listeners — the gateway (HTTP and HTTPS) and the admin API.
//!
//! The simulator builds the same services with [`assemble`] on its own
//! environment and transport, and drives the handlers without sockets.

mod assemble;
mod p2p_join;
mod report;

pub use assemble::{ClusterSpec, NodeSpec, Services, Started, Transport, assemble};
pub use p2p_join::P2pTransport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminOptions};
use crate::auth::{ADMIN_TOKEN_FILE, Authority, Token};
use crate::cluster::{ClusterNode, ClusterOptions, SyncConfig};
use crate::deploy::build::SandboxMode;
use crate::deploy::{DeployEvent, Deployer};
use crate::env::Env;
use crate::gateway::GatewayConfig;
use crate::git::GitLimits;
use crate::net::admission::InviteToken;
use crate::net::p2p::Multiaddr;
use crate::runtime::RuntimeConfig;
use crate::status::CertificateStatus;
use crate::tls::{CaScope, LocalCa};

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
    /// How the admin API guards itself (Host check, invite lifetime).
    pub admin: AdminOptions,
    /// Serve the admin API and Git remote over TLS (`canopy node` with the
    /// admin port off loopback); `None`: plain HTTP.
    pub admin_tls: Option<AdminTls>,
    /// Whether `build.command`s must run in the sandbox (`canopy node`) or
    /// may run without one, with a warning (`canopy dream`).
    pub builds: SandboxMode,
    /// What one push may carry and hold (`limits.git` in the node config).
    pub git_limits: GitLimits,
    /// The deploy queue's bounds (`limits.builds` in the node config).
    pub build_limits: crate::deploy::BuildLimits,
    /// Garbage collection (`gc` in the node config).
    pub gc: crate::gc::GcConfig,
    /// The gateway's connection bounds (`limits.gateway` in the node config).
    pub gateway: GatewayConfig,
    /// The linear memory all running functions may hold together
    /// (`limits.wasm.memory_budget` in the node config).
    pub wasm_memory_budget_bytes: u64,
    /// Functions' request-body limits (`limits.wasm.request_body` and
    /// `limits.wasm.max_request_body` in the node config).
    pub wasm_request_body: crate::runtime::RequestBodyLimits,
}

/// TLS on the admin port, with a certificate from the node's CA
/// (`local_ca`, default `DATA_DIR/tls`; made with [`CaScope::Node`] if
/// absent) until ACME certificates land.
#[derive(Clone, Debug)]
pub struct AdminTls {
    /// Every DNS name and address clients reach the admin port by; the
    /// certificate holds exactly these.
    pub names: Vec<String>,
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
    /// The largest state-sync message gathered from a peer
    /// (`limits.cluster.max_sync_message`).
    pub max_sync_message_bytes: usize,
    /// What one peer may ask of this node: requests open at once and their
    /// rate (`limits.cluster.*_per_peer`).
    pub peer_limits: crate::net::peer_limits::PeerLimitsConfig,
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
    /// `http://` or, when the port is served over TLS, `https://` it.
    admin_url: String,
    deployer: Arc<Deployer>,
    authority: Authority,
    /// The admin token this start created (see [`Node::first_admin_token`]).
    first_admin_token: Option<Token>,
    shutdown: watch::Sender<bool>,
    /// The gateway and the admin API: they drain in-flight requests on stop.
    tasks: Vec<JoinHandle<()>>,
    deploy_task: JoinHandle<()>,
    gc_task: JoinHandle<()>,
}

/// The sockets a node listens on, bound before its services start (the
/// cluster side tells peers these addresses).
struct Listeners {
    http: TcpListener,
    admin: TcpListener,
    https: Option<TcpListener>,
}

impl Listeners {
    async fn bind(options: &NodeOptions) -> anyhow::Result<Self> {
        let http = TcpListener::bind(options.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", options.http_listen))?;
        let admin = TcpListener::bind(options.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for the admin API on {}",
                    options.admin_listen
                )
            })?;
        let https = match options.https_local_ca {
            Some(listen) => Some(
                TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for HTTPS on {listen}"))?,
            ),
            None => None,
        };
        Ok(Self { http, admin, https })
    }
}

/// Issue an admin token if none is live and write it to
/// `DATA_DIR/admin-token` (mode 0600): the way into a new node, or back into
/// one whose admin tokens were all revoked (whoever can read the data
/// directory owns the node anyway).
fn first_admin_token(
    authority: &Authority,
    data_dir: &Path,
    node_id: &str,
) -> anyhow::Result<Option<Token>> {
    if authority.has_live_admin() {
        return Ok(None);
    }
    let token = crate::auth::issue_admin_token_file(
        authority,
        &data_dir.join(ADMIN_TOKEN_FILE),
        "first admin token",
        node_id,
    )?;
    Ok(Some(token))
}

impl Node {
    /// Start a node: restore what was live, then listen. Returns once the
    /// node serves every restored release and accepts pushes.
    pub async fn start(env: Env, options: NodeOptions) -> anyhow::Result<Node> {
        let listeners = Listeners::bind(&options).await?;
        let http_addr = listeners.http.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let https_addr = match &listeners.https {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let admin_url = match options.admin_tls {
            Some(_) => format!("https://{admin_addr}"),
            None => format!("http://{admin_addr}"),
        };

        let spec = NodeSpec {
            runtime: RuntimeConfig {
                memory_budget_bytes: options.wasm_memory_budget_bytes,
                request_body: options.wasm_request_body,
                ..RuntimeConfig::new(env.data_dir.join("compiled"))
            },
            builds: options.builds,
            git: options.git_limits.clone(),
            build_limits: options.build_limits,
            gc: options.gc.clone(),
            gateway: options.gateway.clone(),
            cluster: options.cluster.as_ref().map(|setup| ClusterSpec {
                transport: P2pTransport::of(setup, &env.clock),
                options: ClusterOptions {
                    found_if_new: setup.invite.is_none(),
                    invite: setup.invite.clone(),
                    replication_factor: setup.replication_factor,
                    http: format!("http://{http_addr}"),
                    admin: admin_url.clone(),
                    sync: SyncConfig {
                        max_message_bytes: setup.max_sync_message_bytes,
                        ..SyncConfig::default()
                    },
                    ..ClusterOptions::default()
                },
            }),
        };
        let services = assemble(&env, spec).await?;
        let id = services.key.node_id().to_string();
        let p2p_addrs: Vec<String> = match (&services.cluster, &options.cluster) {
            (Some((cluster, net)), Some(setup)) => {
                if let Err(e) = p2p_join::connect(&env, &services.key, setup, cluster, net).await {
                    services.deploy_task.abort();
                    services.gc_task.abort();
                    cluster.stop().await;
                    return Err(e);
                }
                cluster.addresses().to_vec()
            }
            _ => Vec::new(),
        };

        let founder = match &services.cluster {
            None => true,
            Some((cluster, _)) => {
                let local = cluster.local_id();
                cluster.handle().read(|state| {
                    state
                        .members()
                        .get(&local)
                        .is_some_and(|m| m.joined_by.is_none())
                })
            }
        };
        let first_admin_token = if founder {
            first_admin_token(&services.authority, &env.data_dir, &id)?
        } else {
            None
        };

        let ca = match (options.https_local_ca, &options.admin_tls) {
            (None, None) => None,
            (_, admin_tls) => {
                let ca_dir = options
                    .local_ca_dir
                    .clone()
                    .unwrap_or_else(|| env.data_dir.join("tls"));
                let scope = match admin_tls {
                    Some(_) => CaScope::Node,
                    None => CaScope::Local,
                };
                let ca = LocalCa::load_or_create_scoped(&ca_dir, scope, &env.rng)?;
                if admin_tls.is_some() && ca.scope() == CaScope::Local {
                    anyhow::bail!(
                        "{} is a dream CA, which certifies localhost only, but the admin port {} is off loopback and needs a certificate for its network names\n  help: point local_ca at a node CA (`canopy cluster init --ca-dir DIR` makes one to share between nodes), or at an empty directory for a new one",
                        ca.ca_pem_path().display(),
                        admin_addr
                    );
                }
                Some(Arc::new(ca))
            }
        };
        let admin_tls = match (&options.admin_tls, &ca) {
            (Some(tls), Some(ca)) => Some(
                crate::tls::fixed_server_config(ca, &tls.names).with_context(|| {
                    format!(
                        "cannot make the admin port's certificate for {:?}",
                        tls.names
                    )
                })?,
            ),
            _ => None,
        };
        let ca_pem = ca.as_ref().map(|ca| ca.ca_pem_path().to_owned());
        let mut certificates = Vec::new();
        if let (Some(path), Some(_)) = (&ca_pem, https_addr) {
            certificates.push(CertificateStatus {
                domain: "localhost, *.localhost, 127.0.0.1".to_owned(),
                issuer: format!("the local CA ({})", path.display()),
                not_after: "2045-01-01".to_owned(),
            });
        }
        if let (Some(path), Some(tls)) = (&ca_pem, &options.admin_tls) {
            certificates.push(CertificateStatus {
                domain: format!("admin port: {}", tls.names.join(", ")),
                issuer: format!("the node CA ({})", path.display()),
                not_after: "2045-01-01".to_owned(),
            });
        }

        let (shutdown, _) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn({
            let gateway = services.gateway.clone();
            let stop = stopped(shutdown.subscribe());
            let listener = listeners.http;
            async move {
                if let Err(e) = gateway.serve(listener, stop).await {
                    tracing::error!(error = %e, "gateway stopped");
                }
            }
        }));
        if let (Some(listener), Some(ca)) = (listeners.https, ca) {
            let config = crate::tls::server_config(ca)?;
            let gateway = services.gateway.clone();
            let stop = stopped(shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = gateway.serve_tls(listener, config, stop).await {
                    tracing::error!(error = %e, "HTTPS gateway stopped");
                }
            }));
        }
        let cluster = services.cluster.as_ref().map(|(c, _)| c.clone());
        let info = Arc::new(report::Info {
            id: id.clone(),
            http: format!("http://{http_addr}"),
            admin: admin_url.clone(),
            deployer: services.deployer.clone(),
            runtime: services.runtime.clone(),
            gc: services.gc.clone(),
            certificates,
            cluster: cluster
                .clone()
                .map(|c| (c, services.key.clone(), env.clone(), p2p_addrs.clone())),
        });
        tasks.push(tokio::spawn({
            // An admin API on loopback is meant for this machine only: a
            // request naming another host came through DNS rebinding.
            let guard = AdminOptions {
                loopback_hosts_only: options.admin.loopback_hosts_only
                    || admin_addr.ip().is_loopback(),
                ..options.admin.clone()
            };
            let admin = Admin::new(
                info,
                services.git.clone(),
                services.authority.clone(),
                guard,
            );
            let stop = stopped(shutdown.subscribe());
            let listener = listeners.admin;
            async move {
                let served = match admin_tls {
                    Some(config) => admin.serve_tls(listener, config, stop).await,
                    None => admin.serve(listener, stop).await,
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }
        }));

        Ok(Node {
            id,
            cluster,
            p2p_addrs,
            http_addr,
            https_addr,
            ca_pem,
            admin_addr,
            admin_url,
            deployer: services.deployer,
            authority: services.authority,
            first_admin_token,
            shutdown,
            tasks,
            deploy_task: services.deploy_task,
            gc_task: services.gc_task,
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

    /// The admin API's URL: `https://` when it is served over TLS.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The prefix of every project's push URL: `<admin>/git/`, to which
    /// `<project>.git` is appended.
    pub fn git_base(&self) -> String {
        format!("{}{}/", self.admin_url(), admin::GIT_MOUNT)
    }

    /// The admin token this start created, when the node founded its
    /// cluster (or is standalone) and no admin token was live: shown once,
    /// and kept in `DATA_DIR/admin-token`.
    pub fn first_admin_token(&self) -> Option<&Token> {
        self.first_admin_token.as_ref()
    }

    /// Checks and issues this node's tokens.
    pub fn authority(&self) -> &Authority {
        &self.authority
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
        self.gc_task.abort();
        let _ = self.gc_task.await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
