//! One assembly of a node's services, shared by every way a node runs.
//!
//! `canopy node` and `canopy dream` (through [`Node::start`](super::Node::start))
//! and the simulator (`canopy_sim::host`) build a node with [`assemble`]: the
//! node's key, blob store, runtime, gateway, Git remote, deployer (with
//! what was live restored), the cluster side on a [`Transport`], and the
//! deploy loop. What differs between them is the [`Env`] and the
//! [`NodeSpec`]; listeners (sockets) are not part of the assembly, so the
//! simulator drives the same handlers in process.
//!
//! The order of the steps is fixed: it is the order in which a node draws
//! from its [`Rng`](crate::env::Rng), and a simulated run replays from its
//! seed only if every boot draws in the same order.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::GIT_MOUNT;
use crate::auth::{Authority, LocalBook, TokenBook};
use crate::cluster::{ClusterNode, ClusterOptions};
use crate::deploy::build::SandboxMode;
use crate::deploy::{BuildLimits, DeployEvent, Deployer};
use crate::env::Env;
use crate::gateway::{Gateway, GatewayConfig};
use crate::gc::{ClusterView, Collector, GcConfig, GcReports};
use crate::git::{GitHttp, GitLimits, PushListener as _, Repos};
use crate::net::NodeId;
use crate::net::identity::NodeKey;
use crate::net::{Net, NetEvent};
use crate::runtime::{GuestEnv, Runtime, RuntimeConfig};
use crate::store::BlobStore;

/// How a node reaches its peers: libp2p in production
/// ([`P2pTransport`](super::P2pTransport)), turmoil's network in the
/// simulator.
pub trait Transport: Send {
    /// The network handle the cluster side talks through.
    type Net: Net + Clone;

    /// Start the network as `key`. The net accepts peers in `admitted`,
    /// which the cluster side keeps equal to the state's admitted set.
    fn start(
        self,
        key: &NodeKey,
        admitted: watch::Receiver<BTreeSet<NodeId>>,
    ) -> impl Future<Output = anyhow::Result<Started<Self::Net>>> + Send;
}

/// A started network.
pub struct Started<N> {
    pub net: N,
    pub events: mpsc::Receiver<NetEvent>,
    /// Addresses peers can reach this node at (its member record keeps them).
    pub addresses: Vec<String>,
}

/// What a node is made of besides its environment.
pub struct NodeSpec<T> {
    /// The function runtime: compiled-code directory, instance and memory
    /// limits.
    pub runtime: RuntimeConfig,
    /// Whether `build.command`s must run in the sandbox.
    pub builds: SandboxMode,
    /// What one push may carry (`limits.git` in the node config).
    pub git: GitLimits,
    /// The deploy queue's bounds (`limits.builds` in the node config).
    pub build_limits: BuildLimits,
    /// Garbage collection (`gc` in the node config).
    pub gc: GcConfig,
    /// The gateway's limits (`limits.gateway` in the node config).
    pub gateway: GatewayConfig,
    /// Take part in a cluster through `T`; `None`: a standalone node.
    pub cluster: Option<ClusterSpec<T>>,
}

/// The cluster side of a [`NodeSpec`].
pub struct ClusterSpec<T> {
    pub transport: T,
    /// `addresses` is filled in from the started transport.
    pub options: ClusterOptions,
}

/// A node's services, assembled and running (the deploy loop included),
/// without listeners.
pub struct Services<N> {
    pub key: NodeKey,
    pub store: Arc<BlobStore>,
    pub runtime: Arc<Runtime>,
    pub gateway: Arc<Gateway>,
    /// The Git remote's handler (mounted at [`GIT_MOUNT`]).
    pub git: Arc<GitHttp>,
    pub deployer: Arc<Deployer>,
    /// Checks the tokens of admin and Git requests: against cluster state
    /// in a cluster, `DATA_DIR/tokens.json` on a standalone node.
    pub authority: Authority,
    /// Deploy events from before the restore on: what went live again.
    pub deploy_events: broadcast::Receiver<DeployEvent>,
    /// The cluster side and the net it talks through.
    pub cluster: Option<(Arc<ClusterNode>, N)>,
    /// The deploy loop: every push the Git remote acknowledges.
    pub deploy_task: JoinHandle<()>,
    /// What garbage collection last did.
    pub gc: GcReports,
    /// Garbage collection, a pass every `gc.interval`.
    pub gc_task: JoinHandle<()>,
}

/// Build a node from `env` and `spec`: load (or create) its key, open its
/// store, start its runtime, restore what was live, start the cluster side
/// and the deploy loop. Returns once every restored release is served.
pub async fn assemble<T: Transport>(
    env: &Env,
    spec: NodeSpec<T>,
) -> anyhow::Result<Services<T::Net>> {
    let data = &env.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    // The node's first draw: its identity (kept on disk across restarts).
    let key = NodeKey::load_or_create(data, &env.rng)?;

    let store = Arc::new(BlobStore::open_on(env.disk.clone(), data.join("store"))?);
    let runtime = Runtime::with_guest_env(spec.runtime, GuestEnv::of(env))?;
    let gateway = Gateway::with_config(spec.gateway);
    let repos = Repos::new(data.join("git"))?;
    let deployer = Deployer::new(
        env.clone(),
        store.clone(),
        runtime.clone(),
        gateway.clone(),
        repos.clone(),
        spec.builds,
        spec.gc.history,
    )?;
    let (pushes, pushes_rx) = deployer.queue(spec.build_limits);
    let git = Arc::new(
        GitHttp::new(repos, pushes.clone())
            .with_mount_prefix(GIT_MOUNT)
            .with_limits(spec.git)
            .with_repack(spec.gc.git_repack.clone(), env.clock.clone()),
    );
    let deploy_events = deployer.subscribe();
    deployer.restore().await;

    let cluster = match spec.cluster {
        Some(ClusterSpec {
            transport,
            mut options,
        }) => {
            let (admitted_tx, admitted_rx) = watch::channel(BTreeSet::new());
            let started = transport.start(&key, admitted_rx).await?;
            options.addresses = started.addresses;
            let cluster = ClusterNode::start(
                env,
                &key,
                Arc::new(started.net.clone()),
                started.events,
                store.clone(),
                deployer.clone(),
                admitted_tx,
                options,
            )?;
            Some((cluster, started.net))
        }
        None => None,
    };

    // Pushes acknowledged before a stop or crash but never deployed are
    // deployed now, then every push as it comes.
    for event in deployer.unfinished_pushes() {
        pushes.pushed(event);
    }
    let deploy_task = tokio::spawn(deployer.clone().run(pushes_rx));

    let collector = Collector::new(
        spec.gc,
        store.clone(),
        runtime.clone(),
        deployer.clone(),
        cluster.as_ref().map(|(node, _)| ClusterView {
            handle: node.handle().clone(),
            local: key.node_id(),
        }),
    );
    let gc = collector.reports();
    let gc_task = tokio::spawn(crate::gc::run(collector, env.clock.clone()));

    let book: Arc<dyn TokenBook> = match &cluster {
        Some((cluster, _)) => Arc::new(crate::cluster::tokens::ClusterBook::new(
            cluster.handle().clone(),
        )),
        None => Arc::new(LocalBook::open(env.disk.clone(), data.join("tokens.json"))?),
    };
    // Its own stream, drawn last, so tokens shift none of the node's other draws.
    let authority = Authority::new(book, env.clock.clone(), env.rng.fork());

    Ok(Services {
        key,
        store,
        runtime,
        gateway,
        git,
        deployer,
        authority,
        deploy_events,
        cluster,
        deploy_task,
        gc,
        gc_task,
    })
}
