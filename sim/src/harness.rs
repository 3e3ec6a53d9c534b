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
//! route table, Git remote (`GitHttp`) and deployer, and its cluster side
//! (`ClusterNode`: state sync and anti-entropy, verified chunked replication
//! and placement, the ledger, the follower that installs each environment's
//! winner through the deployer once every blob is fetched and verified,
//! admission, state persistence).
//!
//! Joins are real: node 0 founds the cluster; every other node, at its
//! first boot or mid-run, asks a random admitted running node for an invite
//! (`ClusterNode::invite`, issued on the inviter's host) and presents it
//! (`ClusterNode::join`, the `join/1` exchange over the simulated net),
//! again with a fresh invite after every failure. A restarted node finds its
//! admission in its saved state and does not join again.
//!
//! Pushes are real: the workload builds a commit and its pack in process
//! ([`crate::git_push`]) and hands the push to a random admitted node's
//! host, where a task plays the client: it reads the branch's old value
//! from the ref advertisement and posts the pack to the node's Git HTTP
//! handler, which stores it and hands the push to the deployer (check out,
//! parse `canopy.yaml`, store and compile, go live through the ledger). A
//! crash of the host mid-push loses the task. Requests go through the
//! gateway's handler (see [`crate::workload::request`]).
//!
//! A node's software and the work handed to its host are in [`crate::host`];
//! what the harness and the hosts share is in [`crate::world`].
//!
//! Everything runs on the calling thread: turmoil steps every host's
//! runtime in turn, so a run is a pure function of its seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use canopy_node::bugs::Bug;
use canopy_node::deploy::DeployEvent;
use canopy_node::env::Rng;
use canopy_node::net::NodeId;
use canopy_node::store::cid_of;
use tokio::sync::broadcast;

use crate::faults::{Params, uniform, unit};
use crate::git_push;
use crate::guest_clock::{EPOCH_S, SimulatedNow};
use crate::host::node_main;
use crate::invariants::{self, Violation};
use crate::rogue;
use crate::trace::{Event, NodeIx, Trace, Version};
use crate::workload;
use crate::workload::Pushed;
use crate::world::{
    Job, PushJob, Shared, Started, World, host_name, lock, node_key, report_pushes,
};

/// A partition under way: the nodes on one side, and when it heals (ms).
type Partition = Option<(Vec<NodeIx>, u64)>;
/// A held link under way: its two nodes, and when it is released (ms).
type Hold = Option<(NodeIx, NodeIx, u64)>;

/// Simulated time per turmoil step.
pub const TICK: Duration = Duration::from_millis(10);

/// The simulated time each piece of a node's blocking work (a checkout,
/// storing a site, compiling a component) takes: without it such work is
/// instantaneous, and nothing could run while a deploy is under way.
const BLOCKING_WORK: Duration = Duration::from_millis(20);
const TICK_MS: u64 = TICK.as_millis() as u64;
/// The workload and fault generators roll once per slot.
const SLOT_MS: u64 = 100;

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

thread_local! {
    /// The panics of the run on this thread; `None` outside a run.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Record panics of a thread while it runs a simulation (tasks inside it
/// included) instead of printing them; the run reports them as violations.
/// Other panics (of other threads, or a test's own assertions) print as
/// usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            let captured = PANICS
                .try_with(|p| p.borrow_mut().as_mut().map(|panics| panics.push(message)))
                .is_ok_and(|pushed| pushed.is_some());
            if !captured || std::env::var_os("CANOPY_SIM_SHOW_PANICS").is_some() {
                default(info);
            }
        }));
    });
}

/// Record this thread's panics from now on.
fn capture_panics() {
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

/// The panics recorded since [`capture_panics`] or the last drain; keeps
/// recording (the run's every tick drains them into the trace).
fn drain_panics() -> Vec<String> {
    PANICS.with(|p| {
        p.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    })
}

/// The panics recorded since the last drain; stops recording (the run is over).
fn take_panics() -> Vec<String> {
    PANICS.with(|p| p.borrow_mut().take().unwrap_or_default())
}

/// Run one scenario. Never panics: a panic is a violation in the result.
pub fn run(config: &RunConfig) -> RunResult {
    install_panic_hook();
    canopy_node::bugs::set_active(&config.bugs);
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
    capture_panics();
    canopy_node::env::set_inline_blocking(true);
    canopy_node::env::set_inline_blocking_cost(BLOCKING_WORK);
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
    let mut run = Run::start(config, run_dir, &guest);
    while run.tick() {}
    run.finish()
}

/// One run under way: turmoil's simulation, the world it shares with the
/// hosts, and the harness's own account of nodes and faults. Every random
/// draw comes from `rng`, in an order fixed by the seed.
struct Run<'a> {
    sim: turmoil::Sim<'a>,
    world: Shared,
    rng: Rng,
    params: Params,
    run_dir: &'a Path,
    /// The end of the active phase (workload and faults), ms.
    active_ms: u64,
    /// How long after healing the run may go on to settle, ms.
    bound_ms: u64,
    /// Every node given a host so far (initial and joined).
    registered: BTreeSet<NodeIx>,
    /// Nodes that left for good.
    left: BTreeSet<NodeIx>,
    /// Crashed nodes, and when each restarts (ms).
    crashed: BTreeMap<NodeIx, u64>,
    partition: Partition,
    hold: Hold,
    joins_left: usize,
    leaves_left: usize,
    join_at: u64,
    leave_at: u64,
    /// Pushes drawn so far (numbering every push, handed out or not).
    pushes: u64,
    /// Blobs whose bytes were checked (or corrupted on purpose) per node.
    checked_blobs: BTreeSet<(NodeIx, String)>,
    healed_at: Option<u64>,
    /// When a node turns rogue, and what it forged once it has.
    rogue_at: u64,
    forged: Option<rogue::Forged>,
    forged_reported: BTreeSet<(NodeIx, &'static str)>,
    /// When the operator revokes the project token, and whether it has.
    revoke_at: u64,
    revoked: bool,
    /// Node → the boot in which it first refused the revoked token.
    token_refused: BTreeMap<NodeIx, u64>,
    /// Simulated time, ms.
    now: u64,
}

impl<'a> Run<'a> {
    /// Draw the run's parameters, build the world and the simulation, and
    /// give the initial nodes their hosts.
    fn start(config: &RunConfig, run_dir: &'a Path, guest: &[u8]) -> Self {
        let rng = Rng::seeded(config.seed);
        let params = Params::draw(&rng, config.nodes);
        let world = new_world(config, &params, run_dir, guest);
        lock(&world).record(Event::Params(format!(
            "seed={} nodes={} steps={} bugs={:?} {}",
            config.seed,
            config.nodes,
            config.steps,
            config.bugs.iter().map(|b| b.name()).collect::<Vec<_>>(),
            params.describe()
        )));
        let sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(100_000))
            .tick_duration(TICK)
            .min_message_latency(params.min_latency)
            .max_message_latency(params.max_latency)
            .fail_rate(params.fail_rate)
            .repair_rate(params.repair_rate)
            .rng_seed(config.seed)
            // A fixed wall-clock epoch (turmoil's default is the real time).
            .epoch(std::time::UNIX_EPOCH + Duration::from_secs(EPOCH_S))
            .build();
        let active_ms = config.steps * 1000;
        let mut run = Run {
            sim,
            world,
            joins_left: params.joins,
            leaves_left: params.leaves,
            params,
            run_dir,
            active_ms,
            bound_ms: config.convergence_bound.as_millis() as u64,
            registered: (0..config.nodes).collect(),
            left: BTreeSet::new(),
            crashed: BTreeMap::new(),
            partition: None,
            hold: None,
            join_at: 0,
            leave_at: 0,
            pushes: 0,
            checked_blobs: BTreeSet::new(),
            healed_at: None,
            rogue_at: 0,
            forged: None,
            forged_reported: BTreeSet::new(),
            revoke_at: 0,
            revoked: false,
            token_refused: BTreeMap::new(),
            now: 0,
            rng,
        };
        for ix in 0..config.nodes {
            run.add_host(ix);
        }
        run.join_at = uniform(&run.rng, active_ms / 4, active_ms * 3 / 4);
        run.leave_at = uniform(&run.rng, active_ms / 4, active_ms * 3 / 4);
        run.rogue_at = uniform(&run.rng, active_ms / 4, active_ms * 3 / 4);
        run.revoke_at = uniform(&run.rng, active_ms / 4, active_ms * 3 / 4);
        run
    }

    /// Once their time has come: a node turns rogue and forges records; the
    /// operator revokes the project token (whatever the network's state).
    fn bad_actors(&mut self, running: &[NodeIx]) {
        if self.forged.is_none() && self.now >= self.rogue_at {
            self.forged = rogue::go_rogue(&self.world, &self.rng, running);
        }
        if !self.revoked && self.now >= self.revoke_at {
            self.revoked = rogue::revoke(&self.world, &self.rng, running);
        }
    }

    /// Start node `ix`'s software on a host of its own.
    fn add_host(&mut self, ix: NodeIx) {
        let world = self.world.clone();
        self.sim
            .host(host_name(ix), move || node_main(world.clone(), ix));
    }

    /// The hosts that have not left (running or crashed).
    fn hosts_up(&self) -> Vec<NodeIx> {
        self.registered.difference(&self.left).copied().collect()
    }

    /// One tick of simulated time: in the active phase, every slot rolls the
    /// workload, joins and leaves, and faults; then faults due heal, the
    /// nodes are sampled, and turmoil steps. `false`: the run is over.
    fn tick(&mut self) -> bool {
        lock(&self.world).simulated_now.set(self.now);
        let running: Vec<NodeIx> = lock(&self.world).running.keys().copied().collect();
        if self.now < self.active_ms && self.now.is_multiple_of(SLOT_MS) && !running.is_empty() {
            self.workload(&running);
            self.membership(&running);
            self.faults(&running);
            self.bad_actors(&running);
        }
        self.heal_due();
        if self.now.is_multiple_of(1000) && self.sample_and_settle() {
            return false;
        }
        observe_installs(&self.world);
        if let Err(e) = self.sim.step() {
            // A node's error names files in the run's temp directory, whose
            // name is random: the trace shows it as `$RUN`.
            let message =
                format!("simulation error: {e}").replace(&*self.run_dir.to_string_lossy(), "$RUN");
            lock(&self.world).record(Event::Panic { message });
            return false;
        }
        for message in drain_panics() {
            lock(&self.world).record(Event::Panic { message });
        }
        self.now += TICK_MS;
        true
    }

    /// Maybe a push to a random admitted node, maybe a request (and a read of
    /// the guest's view) through a random node's gateway.
    fn workload(&mut self, running: &[NodeIx]) {
        let rng = &self.rng;
        if unit(rng) < self.params.push_chance {
            let admitted: Vec<NodeIx> = {
                let w = lock(&self.world);
                running
                    .iter()
                    .copied()
                    .filter(|n| w.running[n].cluster.is_admitted())
                    .collect()
            };
            let node = (!admitted.is_empty())
                .then(|| admitted[uniform(rng, 0, admitted.len() as u64 - 1) as usize]);
            let branch = workload::BRANCHES[uniform(rng, 0, 1) as usize];
            self.pushes += 1;
            if let Some(node) = node {
                start_push(&self.world, rng, node, branch, self.pushes);
            }
        }
        if unit(rng) < self.params.request_chance {
            let node = running[uniform(rng, 0, running.len() as u64 - 1) as usize];
            let branch = workload::BRANCHES[uniform(rng, 0, 1) as usize];
            let mut w = lock(&self.world);
            let gateway = w.running[&node].gateway.clone();
            let function = unit(rng) < 0.5;
            let event = workload::request(
                node,
                &workload::env_key(branch),
                function,
                &gateway,
                &w.pushes,
            );
            w.record(event);
            if function && unit(rng) < 0.2 {
                let event = workload::guest_read(node, &workload::env_key(branch), &gateway);
                w.record(event);
            }
        }
    }

    /// A new node joins once its time has come; a random node leaves once
    /// its time has come (if more than two run).
    fn membership(&mut self, running: &[NodeIx]) {
        if self.joins_left > 0 && self.now >= self.join_at {
            self.joins_left -= 1;
            let ix = self.registered.len();
            self.registered.insert(ix);
            self.add_host(ix);
            lock(&self.world).record(Event::Fault {
                what: format!("join n{ix}"),
            });
        }
        if self.leaves_left > 0 && self.now >= self.leave_at && running.len() > 2 {
            // An operator drains a node before it leaves for good: a node
            // that alone holds a blob of a release (a push it just took)
            // leaves only once another node holds it too.
            let drained: Vec<NodeIx> = running
                .iter()
                .copied()
                .filter(|ix| !sole_holder(&self.world, *ix))
                .collect();
            if drained.is_empty() {
                return;
            }
            self.leaves_left -= 1;
            let node = drained[uniform(&self.rng, 0, drained.len() as u64 - 1) as usize];
            self.stop(node);
            self.left.insert(node);
            lock(&self.world).record(Event::Leave { node });
        }
    }

    /// Maybe start a partition, a held link, a crash, a corrupted blob.
    fn faults(&mut self, running: &[NodeIx]) {
        let hosts_up = self.hosts_up();
        if self.partition.is_none()
            && self.hold.is_none()
            && unit(&self.rng) < self.params.partition_chance
        {
            self.start_partition(&hosts_up);
        }
        if self.partition.is_none()
            && self.hold.is_none()
            && hosts_up.len() >= 2
            && unit(&self.rng) < self.params.hold_chance
        {
            self.start_hold(&hosts_up);
        }
        if running.len() > 2 && unit(&self.rng) < self.params.crash_chance {
            let node = running[uniform(&self.rng, 0, running.len() as u64 - 1) as usize];
            self.stop(node);
            let restart_at =
                self.now + uniform(&self.rng, 100, self.params.max_downtime.as_millis() as u64);
            self.crashed.insert(node, restart_at);
            lock(&self.world).record(Event::Crash { node });
            crash_disk(&self.world, &self.rng, node);
        }
        if unit(&self.rng) < self.params.corrupt_chance {
            let node = running[uniform(&self.rng, 0, running.len() as u64 - 1) as usize];
            if let Some(cid) = corrupt_blob(&self.world, &self.rng, node) {
                self.checked_blobs.insert((node, cid.clone()));
                lock(&self.world).record(Event::Fault {
                    what: format!("corrupt n{node} {cid}"),
                });
            }
        }
    }

    /// Cut a random side of `hosts_up` from the rest, until a random time.
    fn start_partition(&mut self, hosts_up: &[NodeIx]) {
        let side: Vec<NodeIx> = hosts_up
            .iter()
            .copied()
            .filter(|_| unit(&self.rng) < 0.5)
            .collect();
        if side.is_empty() || side.len() >= hosts_up.len() {
            return;
        }
        for a in &side {
            for b in hosts_up.iter().filter(|b| !side.contains(b)) {
                self.sim.partition(host_name(*a), host_name(*b));
            }
        }
        let heal_at =
            self.now + uniform(&self.rng, 500, self.params.max_partition.as_millis() as u64);
        lock(&self.world).record(Event::Fault {
            what: format!("partition {:?} until {heal_at}", side),
        });
        self.partition = Some((side, heal_at));
    }

    /// Stall the link between two random hosts, until a random time.
    fn start_hold(&mut self, hosts_up: &[NodeIx]) {
        let a = hosts_up[uniform(&self.rng, 0, hosts_up.len() as u64 - 1) as usize];
        let b = hosts_up[uniform(&self.rng, 0, hosts_up.len() as u64 - 1) as usize];
        if a == b {
            return;
        }
        self.sim.hold(host_name(a), host_name(b));
        let until = self.now + uniform(&self.rng, 100, self.params.max_hold.as_millis() as u64);
        lock(&self.world).record(Event::Fault {
            what: format!("hold n{a}-n{b} until {until}"),
        });
        self.hold = Some((a, b, until));
    }

    /// Crash or stop `node` (see [`stop_node`]).
    fn stop(&mut self, node: NodeIx) {
        let others = self.hosts_up();
        stop_node(
            &self.world,
            &mut self.sim,
            node,
            &others,
            (&self.partition, self.hold),
            self.params.fail_rate,
        );
    }

    /// Heal the partition and release the hold whose time has come, restart
    /// the crashed nodes whose downtime is over; at the end of the active
    /// phase, all of them and every other fault at once.
    fn heal_due(&mut self) {
        let heal_everything = self.now >= self.active_ms && self.healed_at.is_none();
        if let Some((side, at)) = &self.partition
            && (self.now >= *at || heal_everything)
        {
            let hosts_up = self.hosts_up();
            for a in side {
                for b in hosts_up.iter().filter(|b| !side.contains(b)) {
                    self.sim.repair(host_name(*a), host_name(*b));
                }
            }
            lock(&self.world).record(Event::Fault {
                what: "partition healed".into(),
            });
            self.partition = None;
        }
        if let Some((a, b, at)) = self.hold
            && (self.now >= at || heal_everything)
        {
            self.sim.release(host_name(a), host_name(b));
            lock(&self.world).record(Event::Fault {
                what: format!("released n{a}-n{b}"),
            });
            self.hold = None;
        }
        let due: Vec<NodeIx> = self
            .crashed
            .iter()
            .filter(|(_, at)| self.now >= **at || heal_everything)
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            self.crashed.remove(&node);
            self.sim.bounce(host_name(node));
        }
        if heal_everything {
            self.heal_everything();
        }
    }

    /// The end of the active phase: no more loss, every link repaired, no
    /// more duplicated or corrupted messages.
    fn heal_everything(&mut self) {
        self.sim.set_fail_rate(0.0);
        // Links a crash gave a loss rate of their own (see `stop_node`).
        for a in &self.registered {
            for b in self.registered.iter().filter(|b| a < *b) {
                self.sim
                    .set_link_fail_rate(host_name(*a), host_name(*b), 0.0);
            }
        }
        let hosts_up = self.hosts_up();
        for a in &hosts_up {
            for b in &hosts_up {
                if a < b {
                    self.sim.repair(host_name(*a), host_name(*b));
                }
            }
        }
        let mut w = lock(&self.world);
        w.healed = true;
        for r in w.running.values() {
            r.net.set_duplicate_rate(0.0);
            r.net.set_corrupt_rate(0.0);
        }
        drop(w);
        lock(&self.world).record(Event::Healed);
        self.healed_at = Some(self.now);
    }

    /// Sample every node; after healing, whether the run may stop: every
    /// host up and [`settled`], or the convergence bound is over.
    fn sample_and_settle(&mut self) -> bool {
        sample(&self.world, &mut self.checked_blobs);
        if let Some(forged) = &self.forged {
            rogue::check_forged(&self.world, forged, &mut self.forged_reported);
        }
        rogue::check_token(&self.world, &mut self.token_refused);
        let Some(healed) = self.healed_at else {
            return false;
        };
        let all_up = self
            .registered
            .difference(&self.left)
            .all(|n| lock(&self.world).running.contains_key(n));
        (all_up && settled(&self.world)) || self.now >= healed + self.bound_ms
    }

    /// The trace, ended with the nodes still running, and the simulated time.
    fn finish(self) -> (Trace, Duration) {
        rogue::check_token_refused_everywhere(&self.world);
        let mut w = lock(&self.world);
        let healthy: Vec<NodeIx> = w.running.keys().copied().collect();
        w.record(Event::End { healthy });
        let trace = std::mem::take(&mut w.trace);
        drop(w);
        drop(self.sim);
        (trace, Duration::from_millis(self.now))
    }
}

/// The world of a run before any node starts.
fn new_world(config: &RunConfig, params: &Params, run_dir: &Path, guest: &[u8]) -> Shared {
    let total_nodes = config.nodes + params.joins;
    let ids: Vec<NodeId> = (0..total_nodes)
        .map(|ix| node_key(config.seed, ix).node_id())
        .collect();
    let hosts = ids
        .iter()
        .enumerate()
        .map(|(ix, id)| (*id, host_name(ix)))
        .collect();
    Arc::new(Mutex::new(World {
        seed: config.seed,
        run_dir: run_dir.to_path_buf(),
        ids,
        hosts,
        running: BTreeMap::new(),
        boots: BTreeMap::new(),
        disks: BTreeMap::new(),
        drift_permille: params.drift_permille.clone(),
        gc_history: params.gc_history,
        admin: None,
        project_token: None,
        token_revoked: false,
        duplicate_rate: params.duplicate_rate,
        corrupt_read_rate: params.corrupt_read_rate,
        pushes: BTreeMap::new(),
        started: BTreeMap::new(),
        functions: (0..workload::FUNCTION_VERSIONS)
            .map(|v| Arc::new(workload::guest_version(guest, v)))
            .collect(),
        installed: BTreeMap::new(),
        healed: false,
        simulated_now: SimulatedNow::default(),
        trace: Trace::default(),
    }))
}

/// Push number `n` to `node`: build its commit and pack (pure, on the run's
/// thread) and hand it to the node's host, which plays the client.
fn start_push(world: &Shared, rng: &Rng, node: NodeIx, branch: &'static str, n: u64) {
    let mut w = lock(world);
    let env = workload::env_key(branch).to_string();
    let site = workload::push_files(rng, w.seed, n, branch);
    let marker = uniform(rng, 0, workload::FUNCTION_VERSIONS as u64 - 1) as u8;
    let function = w.functions[marker as usize].clone();
    let blobs = workload::content_cids(&site, &function);
    let files = workload::commit_files(&site, function);
    let pack = match git_push::build(&files, n, EPOCH_S as i64) {
        Ok(pack) => pack,
        Err(e) => {
            w.record(Event::Panic {
                message: format!("building push {n}: {e:#}"),
            });
            return;
        }
    };
    let commit = pack.commit.to_string();
    let r = &w.running[&node];
    let boot = r.boot;
    if r.jobs.send(Job::Push(PushJob { branch, pack })).is_err() {
        return;
    }
    w.started.insert(
        commit.clone(),
        Started {
            node,
            boot,
            env: env.clone(),
            file0: blobs[0].clone(),
            blobs,
            marker,
            in_flight: true,
            acknowledged: false,
            reported: false,
        },
    );
    w.record(Event::PushStarted { node, env, commit });
}

/// Read what each node's deployer reported: a push going live through the
/// ledger of the node it was pushed to (seen there, or as it is installed
/// elsewhere) is recorded with its precedence.
fn observe_ledgers(world: &Shared) {
    let mut w = lock(world);
    let mut lives = Vec::new();
    for r in w.running.values_mut() {
        loop {
            match r.deploy_events.try_recv() {
                Ok(DeployEvent::Live {
                    key,
                    commit,
                    precedence: Some((seq, by)),
                    ..
                }) => lives.push((key.to_string(), commit, seq, by)),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }
    let mut events = Vec::new();
    for (env, commit, seq, by) in lives {
        let Some(started) = w.started.get(&commit) else {
            continue;
        };
        let by = by.to_string();
        if started.env != env || w.ids[started.node].to_string() != by {
            continue;
        }
        let key = (env.clone(), seq, by.clone());
        if w.pushes.contains_key(&key) {
            continue;
        }
        let version = Version {
            env,
            commit,
            seq,
            by,
        };
        events.push(Event::Recorded {
            node: started.node,
            version: version.clone(),
        });
        let pushed = Pushed {
            version,
            blobs: started.blobs.clone(),
            file0: started.file0.clone(),
            marker: started.marker,
        };
        w.pushes.insert(key, pushed);
    }
    for e in events {
        w.record(e);
    }
    report_pushes(&mut w);
}

/// Record what each node's deployer newly installed (its precedence names
/// the push; one that names none is reported as such).
fn observe_installs(world: &Shared) {
    observe_ledgers(world);
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
                Some(p) => p.version.clone(),
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
    (partition, hold): (&Partition, Hold),
    fail_rate: f64,
) {
    let me = host_name(node);
    let others = || hosts.iter().filter(|o| **o != node).map(|o| host_name(*o));
    // While the runtime is dropped, its sockets still hand turmoil a FIN
    // each, and turmoil draws its loss dice for every message it is given,
    // even on a cut link, unless the link's loss rate is zero. tokio drops
    // tasks in an order that depends on process-wide task ids (other runs on
    // other threads spawn tasks too), so those draws would land in a
    // different order each time: no loss on these links while the host dies.
    for other in others() {
        sim.set_link_fail_rate(me.clone(), other.clone(), 0.0);
        sim.partition(me.clone(), other);
    }
    sim.crash(me.clone());
    for other in others() {
        sim.repair(me.clone(), other.clone());
        sim.set_link_fail_rate(me.clone(), other, fail_rate);
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

/// Whether running node `ix` is, in its own view of cluster state, the
/// only holder of a blob some release needs.
fn sole_holder(world: &Shared, ix: NodeIx) -> bool {
    let w = lock(world);
    let Some(r) = w.running.get(&ix) else {
        return false;
    };
    let id = w.ids[ix];
    r.cluster.handle().read(|s| {
        s.referenced_blobs().iter().any(|cid| {
            let holders = s.holders(cid);
            holders.len() == 1 && holders.contains(&id)
        })
    })
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
        for (env, blobs) in r.deployer.live_blobs() {
            for cid in blobs {
                let on_disk = r.store.blob_path(&cid).is_file()
                    || r.store
                        .root()
                        .join("quarantine")
                        .join(cid.to_string())
                        .is_file();
                if !on_disk {
                    events.push(Event::LiveBlobMissing {
                        node: *ix,
                        env: env.to_string(),
                        cid: cid.to_string(),
                    });
                }
            }
        }
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

/// Whether the run may stop early: no push in flight on a running node, one
/// state everywhere, and for every environment one release live on every
/// node, at least as recent as the last acknowledged push.
fn settled(world: &Shared) -> bool {
    let w = lock(world);
    let in_flight = w
        .started
        .values()
        .any(|p| p.in_flight && w.running.get(&p.node).is_some_and(|r| r.boot == p.boot));
    if in_flight {
        return false;
    }
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
    winners.iter().all(|(env, v)| {
        let live: BTreeSet<Option<&(u64, String)>> = w
            .running
            .keys()
            .map(|ix| w.installed.get(ix).and_then(|m| m.get(*env)))
            .collect();
        live.len() == 1
            && live
                .iter()
                .all(|l| l.is_some_and(|(seq, by)| (*seq, by.as_str()) >= v.precedence()))
    })
}
