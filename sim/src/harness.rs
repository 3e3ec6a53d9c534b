//! One simulated run: K real node parts as turmoil hosts, the workload and
//! the fault generator driven from the seed, the trace, the invariants.
//!
//! Each node is built from a simulated environment: turmoil's network behind
//! the net seam ([`crate::net::SimNet`]), turmoil's clock (each host's tokio
//! runtime runs on simulated time), an RNG seeded from the run's seed, the
//! node index and the boot count, and a data directory in a per-run temp
//! directory behind a crash-consistent disk ([`crate::disk::SimDisk`], one
//! per node, kept across restarts): after a crash, what the node synced
//! (the store's blobs, the cluster state it saved) is there, what it had
//! not synced may be gone or torn, what it held only in memory is gone.
//!
//! A node runs the production code unchanged: its store, runtime, gateway
//! route table and deployer, and its cluster side (`ClusterNode`: state
//! sync and anti-entropy, verified chunked replication and placement, the
//! ledger, the follower that installs each environment's winner through the
//! deployer once every blob is fetched and verified, state persistence).
//! What the harness does itself: it seeds each node's first cluster state
//! (one cluster, every node admitted, as after joining), makes a push by
//! storing the release's blobs on a node and recording the deployment in
//! its cluster state (what the deployer's ledger does after a `git push`),
//! and sends requests through the gateway's handler (see
//! [`crate::workload::request`]).
//!
//! Everything runs on the calling thread: turmoil steps every host's
//! runtime in turn, so a run is a pure function of its seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use canopy_node::bugs::Bug;
use canopy_node::cluster::{ClusterNode, ClusterOptions, ClusterState, Role, SyncConfig};
use canopy_node::deploy::Deployer;
use canopy_node::env::{Clock, Env, Rng};
use canopy_node::gateway::Gateway;
use canopy_node::net::NodeId;
use canopy_node::net::admission::ClusterId;
use canopy_node::runtime::{Runtime, RuntimeConfig};
use canopy_node::store::{BlobStore, cid_of};
use sha2::{Digest, Sha256};

use crate::disk::SimDisk;
use crate::faults::{Params, uniform, unit};
use crate::invariants::{self, Violation};
use crate::net::{NetConfig, PORT, SimNet};
use crate::trace::{Event, NodeIx, Trace, Version};
use crate::workload;
use crate::workload::Pushes;

/// Simulated time per turmoil step.
pub const TICK: Duration = Duration::from_millis(10);
const TICK_MS: u64 = TICK.as_millis() as u64;
/// The workload and fault generators roll once per slot.
const SLOT_MS: u64 = 100;
/// Where `ClusterNode` keeps its state, below the data directory.
const STATE_FILE: &str = "cluster/state.automerge";
/// Cluster-state anti-entropy interval before drift.
const ANTI_ENTROPY: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    /// Nodes at the start (more may join).
    pub nodes: usize,
    /// Length of the active phase (workload and faults), in simulated
    /// seconds.
    pub steps: u64,
    /// Known bugs switched on in the nodes.
    pub bugs: Vec<Bug>,
    /// How long after the last fault heals every invariant must hold.
    pub convergence_bound: Duration,
}

impl RunConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 5,
            steps: 60,
            bugs: vec![],
            convergence_bound: Duration::from_secs(60),
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "canopy-sim --seed {} --nodes {} --steps {}",
            self.seed, self.nodes, self.steps
        );
        for bug in &self.bugs {
            cmd.push_str(&format!(" --bug {}", bug.name()));
        }
        cmd
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub config: RunConfig,
    pub trace: Trace,
    pub hash: String,
    pub violations: Vec<Violation>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl RunResult {
    /// The line every run ends with.
    pub fn summary_line(&self) -> String {
        format!(
            "seed={} trace={} violations={}",
            self.config.seed,
            self.hash,
            self.violations.len()
        )
    }
}

/// A running node's parts, as the harness reaches them.
struct Running {
    net: SimNet,
    cluster: Arc<ClusterNode>,
    store: Arc<BlobStore>,
    deployer: Arc<Deployer>,
    gateway: Arc<Gateway>,
}

/// State shared by the harness and the simulated hosts (one thread).
struct World {
    seed: u64,
    run_dir: PathBuf,
    ids: Vec<NodeId>,
    hosts: BTreeMap<NodeId, String>,
    running: BTreeMap<NodeIx, Running>,
    boots: BTreeMap<NodeIx, u64>,
    /// Each node's disk, kept across its restarts.
    disks: BTreeMap<NodeIx, Arc<SimDisk>>,
    drift_permille: Vec<u64>,
    duplicate_rate: f64,
    corrupt_read_rate: f64,
    /// The first cluster state every node starts from (one cluster, every
    /// node admitted).
    base_state: Vec<u8>,
    /// Every acknowledged push, by precedence.
    pushes: Pushes,
    /// The test guest (`tests/guests/testfn`) every push deploys a version of.
    guest: Arc<Vec<u8>>,
    /// What each running node had installed when last looked at.
    installed: BTreeMap<NodeIx, BTreeMap<String, (u64, String)>>,
    /// The faults are healed: nodes (re)started now get a clean transport.
    healed: bool,
    now_ms: u64,
    trace: Trace,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    fn record(&mut self, event: Event) {
        self.trace.push(self.now_ms, event);
    }
}

fn host_name(ix: NodeIx) -> String {
    format!("n{ix}")
}

/// A node's id: derived from its index, the same in every run.
pub fn node_id(ix: NodeIx) -> NodeId {
    let digest = Sha256::digest(format!("canopy-sim node {ix}").as_bytes());
    NodeId(digest.into())
}

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Record panics of this thread (tasks inside the simulation included)
/// instead of printing them; the run reports them as violations.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            let captured = PANICS.try_with(|p| p.borrow_mut().push(message)).is_ok();
            if !captured || std::env::var_os("CANOPY_SIM_SHOW_PANICS").is_some() {
                default(info);
            }
        }));
    });
}

fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// Run one scenario. Never panics: a panic is a violation in the result.
pub fn run(config: &RunConfig) -> RunResult {
    install_panic_hook();
    canopy_node::bugs::set_active(&config.bugs);
    take_panics();
    let dir = scratch_dir();
    let guest = match workload::guest_wasm() {
        Ok(guest) => Arc::new(guest),
        Err(e) => {
            let mut trace = Trace::default();
            trace.push(
                0,
                Event::Panic {
                    message: format!("no test guest: {e}"),
                },
            );
            let violations = invariants::check_all(&trace, 0);
            return RunResult {
                config: config.clone(),
                hash: trace.hash(),
                trace,
                violations,
                simulated: Duration::ZERO,
            };
        }
    };
    canopy_node::env::set_inline_blocking(true);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        simulate(config, dir.path(), guest)
    }));
    canopy_node::env::set_inline_blocking(false);
    canopy_node::bugs::set_active(&[]);
    let (mut trace, simulated) = match outcome {
        Ok(done) => done,
        Err(_) => {
            let mut trace = Trace::default();
            trace.push(0, Event::Params("the harness panicked".into()));
            (trace, Duration::ZERO)
        }
    };
    for message in take_panics() {
        let at = trace.entries.last().map_or(0, |e| e.at_ms);
        trace.push(at, Event::Panic { message });
    }
    let violations = invariants::check_all(&trace, config.convergence_bound.as_millis() as u64);
    RunResult {
        config: config.clone(),
        hash: trace.hash(),
        trace,
        violations,
        simulated,
    }
}

/// The compiled-code directory every simulated node shares, kept across
/// processes (`$TMPDIR/canopy-sim-compiled`): each function version is
/// compiled once per machine. Writes into it are atomic, so processes and
/// threads may share it; compiled code that does not fit this wasmtime is
/// compiled again by the runtime.
fn compiled_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join("canopy-sim-compiled")
}

/// A per-run directory for the nodes' data, in memory when the machine has
/// /dev/shm (fsync is free there, and a run writes many small files).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("canopy-sim-");
        b
    };
    if shm.is_dir()
        && let Ok(dir) = builder().tempdir_in(shm)
    {
        return dir;
    }
    builder().tempdir().expect("create a temp dir for the run")
}

fn simulate(config: &RunConfig, run_dir: &Path, guest: Arc<Vec<u8>>) -> (Trace, Duration) {
    let rng = Rng::seeded(config.seed);
    let params = Params::draw(&rng, config.nodes);
    let total_nodes = config.nodes + params.joins;
    let ids: Vec<NodeId> = (0..total_nodes).map(node_id).collect();
    let hosts = ids
        .iter()
        .enumerate()
        .map(|(ix, id)| (*id, host_name(ix)))
        .collect();
    let world: Shared = Arc::new(Mutex::new(World {
        seed: config.seed,
        run_dir: run_dir.to_path_buf(),
        ids: ids.clone(),
        hosts,
        running: BTreeMap::new(),
        boots: BTreeMap::new(),
        disks: BTreeMap::new(),
        drift_permille: params.drift_permille.clone(),
        duplicate_rate: params.duplicate_rate,
        corrupt_read_rate: params.corrupt_read_rate,
        base_state: base_state(&rng, &ids),
        pushes: BTreeMap::new(),
        guest: guest.clone(),
        installed: BTreeMap::new(),
        healed: false,
        now_ms: 0,
        trace: Trace::default(),
    }));
    lock(&world).record(Event::Params(format!(
        "seed={} nodes={} steps={} bugs={:?} {}",
        config.seed,
        config.nodes,
        config.steps,
        config.bugs.iter().map(|b| b.name()).collect::<Vec<_>>(),
        params.describe()
    )));

    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(100_000))
        .tick_duration(TICK)
        .min_message_latency(params.min_latency)
        .max_message_latency(params.max_latency)
        .fail_rate(params.fail_rate)
        .repair_rate(params.repair_rate)
        .rng_seed(config.seed)
        // A fixed wall-clock epoch (turmoil's default is the real time).
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .build();
    let add_host = |sim: &mut turmoil::Sim<'_>, ix: NodeIx| {
        let world = world.clone();
        sim.host(host_name(ix), move || node_main(world.clone(), ix));
    };
    for ix in 0..config.nodes {
        add_host(&mut sim, ix);
    }

    let active_ms = config.steps * 1000;
    let bound_ms = config.convergence_bound.as_millis() as u64;
    let mut registered: BTreeSet<NodeIx> = (0..config.nodes).collect();
    let mut left: BTreeSet<NodeIx> = BTreeSet::new();
    let mut crashed: BTreeMap<NodeIx, u64> = BTreeMap::new(); // node -> restart at
    let mut partition: Option<(Vec<NodeIx>, u64)> = None; // side, heal at
    let mut hold: Option<(NodeIx, NodeIx, u64)> = None;
    let mut joins_left = params.joins;
    let mut leaves_left = params.leaves;
    let join_at = uniform(&rng, active_ms / 4, active_ms * 3 / 4);
    let leave_at = uniform(&rng, active_ms / 4, active_ms * 3 / 4);
    let mut pushes = 0u64;
    let mut checked_blobs: BTreeSet<(NodeIx, String)> = BTreeSet::new();
    let mut healed_at: Option<u64> = None;
    let mut now = 0u64;
    loop {
        lock(&world).now_ms = now;
        let running: Vec<NodeIx> = lock(&world).running.keys().copied().collect();

        if now < active_ms && now.is_multiple_of(SLOT_MS) && !running.is_empty() {
            // --- workload ---
            if unit(&rng) < params.push_chance {
                let node = running[uniform(&rng, 0, running.len() as u64 - 1) as usize];
                let branch = workload::BRANCHES[uniform(&rng, 0, 1) as usize];
                pushes += 1;
                do_push(&world, &rng, node, branch, pushes);
            }
            if unit(&rng) < params.request_chance {
                let node = running[uniform(&rng, 0, running.len() as u64 - 1) as usize];
                let branch = workload::BRANCHES[uniform(&rng, 0, 1) as usize];
                let mut w = lock(&world);
                let r = &w.running[&node];
                let function = unit(&rng) < 0.5;
                let event = workload::request(
                    node,
                    &workload::env_key(branch),
                    function,
                    &r.gateway,
                    &w.pushes,
                );
                w.record(event);
            }
            if joins_left > 0 && now >= join_at {
                joins_left -= 1;
                let ix = registered.len();
                registered.insert(ix);
                add_host(&mut sim, ix);
                lock(&world).record(Event::Fault {
                    what: format!("join n{ix}"),
                });
            }
            if leaves_left > 0 && now >= leave_at && running.len() > 2 {
                leaves_left -= 1;
                let node = running[uniform(&rng, 0, running.len() as u64 - 1) as usize];
                let others: Vec<NodeIx> = registered.difference(&left).copied().collect();
                stop_node(&world, &mut sim, node, &others, &partition, hold);
                left.insert(node);
                lock(&world).record(Event::Leave { node });
            }
            // --- faults ---
            let hosts_up: Vec<NodeIx> = registered.difference(&left).copied().collect();
            if partition.is_none() && hold.is_none() && unit(&rng) < params.partition_chance {
                let side: Vec<NodeIx> = hosts_up
                    .iter()
                    .copied()
                    .filter(|_| unit(&rng) < 0.5)
                    .collect();
                if !side.is_empty() && side.len() < hosts_up.len() {
                    for a in &side {
                        for b in hosts_up.iter().filter(|b| !side.contains(b)) {
                            sim.partition(host_name(*a), host_name(*b));
                        }
                    }
                    let heal_at = now + uniform(&rng, 500, params.max_partition.as_millis() as u64);
                    lock(&world).record(Event::Fault {
                        what: format!("partition {:?} until {heal_at}", side),
                    });
                    partition = Some((side, heal_at));
                }
            }
            if partition.is_none()
                && hold.is_none()
                && hosts_up.len() >= 2
                && unit(&rng) < params.hold_chance
            {
                let a = hosts_up[uniform(&rng, 0, hosts_up.len() as u64 - 1) as usize];
                let b = hosts_up[uniform(&rng, 0, hosts_up.len() as u64 - 1) as usize];
                if a != b {
                    sim.hold(host_name(a), host_name(b));
                    let until = now + uniform(&rng, 100, params.max_hold.as_millis() as u64);
                    lock(&world).record(Event::Fault {
                        what: format!("hold n{a}-n{b} until {until}"),
                    });
                    hold = Some((a, b, until));
                }
            }
            if running.len() > 2 && unit(&rng) < params.crash_chance {
                let node = running[uniform(&rng, 0, running.len() as u64 - 1) as usize];
                let others: Vec<NodeIx> = registered.difference(&left).copied().collect();
                stop_node(&world, &mut sim, node, &others, &partition, hold);
                let restart_at = now + uniform(&rng, 100, params.max_downtime.as_millis() as u64);
                crashed.insert(node, restart_at);
                lock(&world).record(Event::Crash { node });
                crash_disk(&world, &rng, node);
            }
            if unit(&rng) < params.corrupt_chance {
                let node = running[uniform(&rng, 0, running.len() as u64 - 1) as usize];
                if let Some(cid) = corrupt_blob(&world, &rng, node) {
                    checked_blobs.insert((node, cid.clone()));
                    lock(&world).record(Event::Fault {
                        what: format!("corrupt n{node} {cid}"),
                    });
                }
            }
        }

        // --- heals due ---
        let heal_everything = now >= active_ms && healed_at.is_none();
        if let Some((side, at)) = &partition
            && (now >= *at || heal_everything)
        {
            let hosts_up: Vec<NodeIx> = registered.difference(&left).copied().collect();
            for a in side {
                for b in hosts_up.iter().filter(|b| !side.contains(b)) {
                    sim.repair(host_name(*a), host_name(*b));
                }
            }
            lock(&world).record(Event::Fault {
                what: "partition healed".into(),
            });
            partition = None;
        }
        if let Some((a, b, at)) = hold
            && (now >= at || heal_everything)
        {
            sim.release(host_name(a), host_name(b));
            lock(&world).record(Event::Fault {
                what: format!("released n{a}-n{b}"),
            });
            hold = None;
        }
        let due: Vec<NodeIx> = crashed
            .iter()
            .filter(|(_, at)| now >= **at || heal_everything)
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            crashed.remove(&node);
            sim.bounce(host_name(node));
        }
        if heal_everything {
            sim.set_fail_rate(0.0);
            let hosts_up: Vec<NodeIx> = registered.difference(&left).copied().collect();
            for a in &hosts_up {
                for b in &hosts_up {
                    if a < b {
                        sim.repair(host_name(*a), host_name(*b));
                    }
                }
            }
            let mut w = lock(&world);
            w.healed = true;
            for r in w.running.values() {
                r.net.set_duplicate_rate(0.0);
                r.net.set_corrupt_rate(0.0);
            }
            drop(w);
            lock(&world).record(Event::Healed);
            healed_at = Some(now);
        }

        // --- samples ---
        if now.is_multiple_of(1000) {
            sample(&world, &mut checked_blobs);
            if let Some(healed) = healed_at {
                let all_up = registered
                    .difference(&left)
                    .all(|n| lock(&world).running.contains_key(n));
                if (all_up && settled(&world)) || now >= healed + bound_ms {
                    break;
                }
            }
        }

        observe_installs(&world);
        if let Err(e) = sim.step() {
            // A node's error names files in the run's temp directory, whose
            // name is random: the trace shows it as `$RUN`.
            let message =
                format!("simulation error: {e}").replace(&*run_dir.to_string_lossy(), "$RUN");
            lock(&world).record(Event::Panic { message });
            break;
        }
        for message in take_panics() {
            lock(&world).record(Event::Panic { message });
        }
        now += TICK_MS;
    }
    let mut w = lock(&world);
    let healthy: Vec<NodeIx> = w.running.keys().copied().collect();
    w.record(Event::End { healthy });
    let trace = std::mem::take(&mut w.trace);
    drop(w);
    drop(sim);
    (trace, Duration::from_millis(now))
}

/// Push number `n` on `node`.
fn do_push(world: &Shared, rng: &Rng, node: NodeIx, branch: &str, n: u64) {
    let mut w = lock(world);
    let env = workload::env_key(branch);
    let commit = format!("c{n:04}");
    let files = workload::push_files(rng, w.seed, n, branch);
    let marker = uniform(rng, 0, workload::FUNCTION_VERSIONS as u64 - 1) as u8;
    let function = workload::guest_version(&w.guest, marker);
    let r = &w.running[&node];
    let result = workload::push(
        &r.store,
        r.cluster.handle(),
        &env,
        &commit,
        &files,
        &function,
    );
    let state_path = state_path(&w.run_dir, node);
    match result {
        Ok((deployment, blobs)) => {
            // Acknowledged only once durable (on the node's disk, which a
            // crash may take unsynced writes from).
            let bytes = r.cluster.handle().save();
            let Some(disk) = w.disks.get(&node) else {
                return;
            };
            if let Err(e) =
                canopy_node::durable::write_atomically_on(disk.as_ref(), &state_path, &bytes, None)
            {
                w.record(Event::Fault {
                    what: format!("push on n{node} not saved: {e}"),
                });
                return;
            }
            let version = workload::version(&env, &deployment);
            w.pushes.insert(
                (version.env.clone(), version.seq, version.by.clone()),
                (version.clone(), blobs.clone(), marker),
            );
            w.record(Event::Push {
                node,
                version,
                blobs,
            });
        }
        Err(e) => w.record(Event::Fault {
            what: format!("push on n{node} failed: {e}"),
        }),
    }
}

/// Record what each node's deployer newly installed (its precedence names
/// the push; one that names none is reported as such).
fn observe_installs(world: &Shared) {
    let mut w = lock(world);
    let mut events = Vec::new();
    let mut seen = std::mem::take(&mut w.installed);
    seen.retain(|n, _| w.running.contains_key(n));
    for (ix, r) in &w.running {
        let now: BTreeMap<String, (u64, String)> = r
            .deployer
            .installed()
            .into_iter()
            .filter_map(|(k, p)| p.map(|(seq, by)| (k.to_string(), (seq, by.to_string()))))
            .collect();
        let before = seen.entry(*ix).or_default();
        for (env, (seq, by)) in &now {
            if before.get(env) == Some(&(*seq, by.clone())) {
                continue;
            }
            let version = match w.pushes.get(&(env.clone(), *seq, by.clone())) {
                Some((v, _, _)) => v.clone(),
                None => Version {
                    env: env.clone(),
                    commit: "(no such push)".into(),
                    seq: *seq,
                    by: by.clone(),
                },
            };
            events.push(Event::Live { node: *ix, version });
        }
        *before = now;
    }
    w.installed = seen;
    for e in events {
        w.record(e);
    }
}

/// Crash (or stop) `node`: its software and memory are gone, its peers see
/// the connections drop.
///
/// A dead host sends nothing: its links are cut while turmoil drops its
/// runtime, so the sockets its tasks drop send no FIN or RST. (That is also
/// what keeps a run replayable: tokio drops a runtime's tasks in an order
/// that depends on process-wide task ids, and each segment sent would draw
/// from turmoil's RNG in that order.) The links are then restored, with
/// the partition and hold under way, if any, put back.
fn stop_node(
    world: &Shared,
    sim: &mut turmoil::Sim<'_>,
    node: NodeIx,
    hosts: &[NodeIx],
    partition: &Option<(Vec<NodeIx>, u64)>,
    hold: Option<(NodeIx, NodeIx, u64)>,
) {
    let me = host_name(node);
    for other in hosts.iter().filter(|o| **o != node) {
        sim.partition(me.clone(), host_name(*other));
    }
    sim.crash(me.clone());
    for other in hosts.iter().filter(|o| **o != node) {
        sim.repair(me.clone(), host_name(*other));
    }
    if let Some((side, _)) = partition {
        for a in side {
            for b in hosts.iter().filter(|b| !side.contains(b)) {
                sim.partition(host_name(*a), host_name(*b));
            }
        }
    }
    if let Some((a, b, _)) = hold {
        sim.hold(host_name(a), host_name(b));
    }
    let mut w = lock(world);
    if w.running.remove(&node).is_some() {
        let id = w.ids[node];
        for r in w.running.values() {
            r.net.peer_down(id);
        }
    }
}

/// The crashed `node`'s disk loses what it had not made durable (drawn
/// from the run's RNG); the trace records what was lost. Call it after the
/// host is gone and before it restarts.
fn crash_disk(world: &Shared, rng: &Rng, node: NodeIx) {
    let mut w = lock(world);
    let Some(disk) = w.disks.get(&node).cloned() else {
        return;
    };
    match disk.crash(rng) {
        Ok(report) => w.record(Event::Fault {
            what: format!("crash n{node} {report}"),
        }),
        Err(e) => w.record(Event::Panic {
            message: format!("the simulated disk of n{node} failed to crash: {e}"),
        }),
    }
}

/// Flip one byte of a random blob on `node`'s disk.
fn corrupt_blob(world: &Shared, rng: &Rng, node: NodeIx) -> Option<String> {
    let w = lock(world);
    let store = &w.running.get(&node)?.store;
    let blobs = store.list().ok()?;
    if blobs.is_empty() {
        return None;
    }
    // Only blobs two other nodes hold too: losing a sole copy to the disk is
    // data loss no protocol can undo, not a bug the simulator should report.
    let me = w.ids[node];
    let r = &w.running[&node];
    let blobs: Vec<cid::Cid> = r.cluster.handle().read(|s| {
        blobs
            .into_iter()
            .filter(|c| s.holders(c).iter().filter(|h| **h != me).count() >= 2)
            .collect()
    });
    if blobs.is_empty() {
        return None;
    }
    let cid = blobs[uniform(rng, 0, blobs.len() as u64 - 1) as usize];
    let path = store.blob_path(&cid);
    let mut bytes = std::fs::read(&path).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let at = uniform(rng, 0, bytes.len() as u64 - 1) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, &bytes).ok()?;
    Some(cid.to_string())
}

/// Sample every running node's state hash; check the blobs it newly
/// announced it holds.
fn sample(world: &Shared, checked: &mut BTreeSet<(NodeIx, String)>) {
    let mut w = lock(world);
    let mut events = Vec::new();
    for (ix, r) in &w.running {
        let hash = r.cluster.state_hash();
        let state: String = hash.0.iter().map(|b| format!("{b:02x}")).collect();
        events.push(Event::Sample { node: *ix, state });
        let id = w.ids[*ix];
        let held: Vec<cid::Cid> = r.cluster.handle().read(|s| {
            s.allocations()
                .into_iter()
                .filter(|(_, holders)| holders.contains(&id))
                .map(|(cid, _)| cid)
                .collect()
        });
        for cid in held {
            let key = (*ix, cid.to_string());
            if checked.contains(&key) {
                continue;
            }
            let Ok(bytes) = std::fs::read(r.store.blob_path(&cid)) else {
                continue;
            };
            checked.insert(key);
            events.push(Event::BlobHeld {
                node: *ix,
                cid: cid.to_string(),
                matches: cid_of(&bytes) == cid,
            });
        }
    }
    for e in events {
        w.record(e);
    }
}

/// Whether the run may stop early: one state everywhere and every
/// environment's last push live on every node.
fn settled(world: &Shared) -> bool {
    let w = lock(world);
    let hashes: BTreeSet<_> = w.running.values().map(|r| r.cluster.state_hash()).collect();
    if hashes.len() > 1 {
        return false;
    }
    let mut winners: BTreeMap<&str, &crate::trace::Version> = BTreeMap::new();
    for e in &w.trace.entries {
        if let Event::Push { version, .. } = &e.event {
            let best = winners.entry(version.env.as_str()).or_insert(version);
            if version.precedence() > best.precedence() {
                *best = version;
            }
        }
    }
    w.running.keys().all(|ix| {
        let installed = w.installed.get(ix);
        winners
            .iter()
            .all(|(env, v)| installed.and_then(|m| m.get(*env)) == Some(&(v.seq, v.by.clone())))
    })
}

fn state_path(run_dir: &Path, node: NodeIx) -> PathBuf {
    run_dir.join(host_name(node)).join(STATE_FILE)
}

/// The first cluster state: one cluster, every node a member and admitted
/// (as after each joined with an invite).
fn base_state(rng: &Rng, ids: &[NodeId]) -> Vec<u8> {
    let mut state = ClusterState::new(ids[0], 0);
    let build = |state: &mut ClusterState| -> Result<(), canopy_node::cluster::ClusterError> {
        state.set_cluster_id(&ClusterId::generate(rng).to_string())?;
        for (ix, id) in ids.iter().enumerate() {
            state.admit(*id, ids[0])?;
            let joined_by = (ix > 0).then_some(ids[0]);
            state.upsert_member(
                *id,
                vec![format!("{}:{PORT}", host_name(ix))],
                Role::Full,
                joined_by,
            )?;
        }
        Ok(())
    };
    build(&mut state).expect("build the first cluster state");
    state.save()
}

/// One node's software: what `turmoil` starts on its host, and again after
/// every restart. The node's own code from here on.
async fn node_main(world: Shared, ix: NodeIx) -> turmoil::Result {
    let (id, hosts, dir, rng, anti_entropy, rates, base, boot) = {
        let mut w = lock(&world);
        let boot = {
            let b = w.boots.entry(ix).or_insert(0);
            *b += 1;
            *b
        };
        let rng = Rng::seeded(w.seed ^ ((ix as u64) << 32) ^ (boot << 48));
        let drift = w.drift_permille.get(ix).copied().unwrap_or(1000);
        (
            w.ids[ix],
            w.hosts.clone(),
            w.run_dir.join(host_name(ix)),
            rng,
            ANTI_ENTROPY * drift as u32 / 1000,
            // Restarted after the heal: no more transport faults.
            if w.healed {
                (0.0, 0.0)
            } else {
                (w.duplicate_rate, w.corrupt_read_rate)
            },
            w.base_state.clone(),
            boot,
        )
    };
    let disk = {
        let mut w = lock(&world);
        match w.disks.get(&ix) {
            Some(disk) => disk.clone(),
            None => {
                let disk = Arc::new(SimDisk::new(&dir)?);
                w.disks.insert(ix, disk.clone());
                disk
            }
        }
    };
    let env = Env {
        clock: Clock::tokio(),
        rng: rng.clone(),
        data_dir: dir.clone(),
        disk: disk.clone(),
    };
    let state_file = dir.join(STATE_FILE);
    if !state_file.exists() {
        canopy_node::durable::write_atomically_on(disk.as_ref(), &state_file, &base, None)?;
    }
    let store = Arc::new(BlobStore::open_on(disk, dir.join("store"))?);
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 2,
        max_memory_bytes: 64 << 20,
        // Functions run outside simulated time (see `workload::request`): a
        // slow tick keeps the runtime from waking every simulated 10 ms.
        epoch_tick: Duration::from_secs(5),
        // One compiled-code directory for every node of every run in this
        // process: each function version is compiled once.
        ..RuntimeConfig::new(compiled_dir())
    })?;
    let gateway = Gateway::new();
    let repos = canopy_node::git::Repos::new(dir.join("git"))?;
    let deployer = Deployer::new(env.clone(), store.clone(), runtime, gateway.clone(), repos)?;
    deployer.restore().await;

    let (net, events) = SimNet::new(id, hosts, NetConfig::default(), Rng::seeded(rng.next_u64()));
    net.set_duplicate_rate(rates.0);
    net.set_corrupt_rate(rates.1);
    tokio::spawn(net.clone().serve());
    let (admitted, _) = tokio::sync::watch::channel(BTreeSet::new());
    let cluster = ClusterNode::start(
        &env,
        Arc::new(net.clone()),
        events,
        store.clone(),
        deployer.clone(),
        admitted,
        ClusterOptions {
            found_if_new: false,
            addresses: vec![format!("{}:{PORT}", host_name(ix))],
            sync: SyncConfig {
                anti_entropy_interval: anti_entropy,
            },
            ..ClusterOptions::default()
        },
    )?;
    {
        let mut w = lock(&world);
        let others: Vec<NodeIx> = w.running.keys().copied().collect();
        for other in others {
            let other_id = w.ids[other];
            w.running[&other].net.peer_up(id);
            net.peer_up(other_id);
        }
        w.running.insert(
            ix,
            Running {
                net,
                cluster,
                store,
                deployer,
                gateway,
            },
        );
        w.record(Event::Boot { node: ix, boot });
    }
    std::future::pending::<()>().await;
    Ok(())
}
