//! What the harness and the simulated hosts share, on the run's one thread:
//! the world (running nodes, their disks, pushes started and recorded, the
//! trace) and the names, RNG streams and keys of nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use canopy_node::cluster::ClusterNode;
use canopy_node::deploy::{DeployEvent, Deployer};
use canopy_node::env::Rng;
use canopy_node::gateway::Gateway;
use canopy_node::net::NodeId;
use canopy_node::net::admission::InviteToken;
use canopy_node::net::identity::NodeKey;
use canopy_node::store::BlobStore;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::disk::SimDisk;
use crate::git_push::PushPack;
use crate::guest_clock::SimulatedNow;
use crate::net::SimNet;
use crate::trace::{Event, NodeIx, Trace};
use crate::workload::Pushes;

/// A running node's parts, as the harness reaches them.
pub(crate) struct Running {
    pub(crate) net: SimNet,
    pub(crate) cluster: Arc<ClusterNode>,
    pub(crate) store: Arc<BlobStore>,
    pub(crate) deployer: Arc<Deployer>,
    pub(crate) gateway: Arc<Gateway>,
    /// Work for the node's host: pushes to serve, invites to issue.
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
    /// What the deployer reports: pushes going live through the ledger.
    pub(crate) deploy_events: broadcast::Receiver<DeployEvent>,
    /// The node's token check, as its admin API and Git remote make it.
    pub(crate) authority: canopy_node::auth::Authority,
    pub(crate) boot: u64,
}

/// Work the harness hands to a node's host.
pub(crate) enum Job {
    /// Play a `git push` client against the node's Git remote.
    Push(PushJob),
    /// Issue an invite (as an operator would through the admin API).
    Invite(oneshot::Sender<Result<InviteToken, String>>),
    /// Write a rogue node's forgeries into its own cluster state.
    Forge(crate::rogue::Forgery),
    /// Revoke the project token (as the operator would), retrying until
    /// this node has the token's record.
    Revoke,
}

/// One push: a commit of the project for `branch`.
pub(crate) struct PushJob {
    pub(crate) branch: &'static str,
    pub(crate) pack: PushPack,
}

/// What the harness knows of a push it started.
pub(crate) struct Started {
    pub(crate) node: NodeIx,
    /// The boot of `node` it was handed to (a crash loses it).
    pub(crate) boot: u64,
    pub(crate) env: String,
    pub(crate) blobs: Vec<String>,
    pub(crate) file0: String,
    pub(crate) marker: u8,
    pub(crate) in_flight: bool,
    pub(crate) acknowledged: bool,
    /// Its `push` line was written.
    pub(crate) reported: bool,
}

/// State shared by the harness and the simulated hosts (one thread).
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) run_dir: PathBuf,
    pub(crate) ids: Vec<NodeId>,
    pub(crate) hosts: BTreeMap<NodeId, String>,
    pub(crate) running: BTreeMap<NodeIx, Running>,
    pub(crate) boots: BTreeMap<NodeIx, u64>,
    /// Each node's disk, kept across its restarts.
    pub(crate) disks: BTreeMap<NodeIx, Arc<SimDisk>>,
    pub(crate) drift_permille: Vec<u64>,
    /// `gc.history` on every node of the run.
    pub(crate) gc_history: usize,
    /// The cluster's first admin token (node 0 issues it when it founds the
    /// cluster): what warrants invites, as an operator's would.
    pub(crate) admin: Option<canopy_node::auth::Token>,
    /// A project token the operator made with it (for `shop`): the run
    /// revokes it and checks every node stops taking it.
    pub(crate) project_token: Option<canopy_node::auth::Token>,
    /// Whether a node has revoked the project token.
    pub(crate) token_revoked: bool,
    pub(crate) duplicate_rate: f64,
    pub(crate) corrupt_read_rate: f64,
    /// Every push that a ledger recorded, by precedence.
    pub(crate) pushes: Pushes,
    /// Every push started, by commit id (hex).
    pub(crate) started: BTreeMap<String, Started>,
    /// The test guest's versions (`tests/guests/testfn`) pushes deploy.
    pub(crate) functions: Vec<Arc<Vec<u8>>>,
    /// What each running node had installed when last looked at.
    pub(crate) installed: BTreeMap<NodeIx, BTreeMap<String, (u64, String)>>,
    /// The faults are healed: nodes (re)started now get a clean transport.
    pub(crate) healed: bool,
    /// Simulated time since the run started: what the trace stamps and
    /// what functions read (see [`crate::guest_clock`]).
    pub(crate) simulated_now: SimulatedNow,
    pub(crate) trace: Trace,
}

pub(crate) type Shared = Arc<Mutex<World>>;

pub(crate) fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    pub(crate) fn record(&mut self, event: Event) {
        self.trace.push(self.simulated_now.elapsed_ms(), event);
    }
}

/// Write the `push` line of every acknowledged push whose ledger record is
/// known (the first, if a restart deployed it again).
pub(crate) fn report_pushes(w: &mut World) {
    let mut events = Vec::new();
    for (commit, started) in w.started.iter_mut() {
        if !started.acknowledged || started.reported {
            continue;
        }
        let by = w.ids[started.node].to_string();
        let recorded = w.pushes.values().find(|p| {
            p.version.env == started.env && p.version.commit == *commit && p.version.by == by
        });
        if let Some(pushed) = recorded {
            started.reported = true;
            events.push(Event::Push {
                node: started.node,
                version: pushed.version.clone(),
                blobs: started.blobs.clone(),
            });
        }
    }
    for e in events {
        w.record(e);
    }
}

pub(crate) fn host_name(ix: NodeIx) -> String {
    format!("n{ix}")
}

/// The RNG of boot `boot` of node `ix`: every node, and every restart of
/// it, has its own stream.
pub(crate) fn node_rng(seed: u64, ix: NodeIx, boot: u64) -> Rng {
    Rng::seeded(seed ^ ((ix as u64) << 32) ^ (boot << 48))
}

/// Node `ix`'s key: the one its first boot draws from its RNG
/// (`NodeKey::load_or_create`, the node's first draw), so the same for the
/// same (seed, node).
pub fn node_key(seed: u64, ix: NodeIx) -> NodeKey {
    NodeKey::generate(&node_rng(seed, ix, 1))
}
