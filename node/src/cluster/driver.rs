//! The tokio drivers of the cluster cores: they feed [`SyncCore`] and
//! [`ReplicateCore`] from [`NetEvent`]s and the node's clock, and carry out
//! what the cores ask — send requests, write blobs, answer peers' blob
//! requests from the store ([`super::blob_server`]). All protocol decisions
//! live in the cores.
//!
//! Time: the drivers read the node's [`Clock`] (the one the
//! [`ClusterHandle`] carries; tokio's, so simulated under turmoil) and hand
//! the cores `now` as a [`std::time::Instant`]; a core's
//! `poll_timeout` deadline becomes a tokio sleep again
//! ([`tokio::time::Instant::from_std`]). Drivers never read a clock of
//! their own.
//!
//! Wiring (all inside one tokio runtime):
//!
//! ```text
//! let cluster = ClusterHandle::with_clock(SyncCore::new(state, SyncConfig::default()), env.clock.clone());
//! let (sync_rx, blob_rx) = split_events(net_events);          // spawns a router task
//! tokio::spawn(run_sync(cluster.clone(), net.clone(), sync_rx));
//! let (replicate, commands) = replicate_channel();
//! tokio::spawn(run_replicate(cluster.clone(), store, net, blob_rx, commands, ReplicateConfig::default()));
//! replicate.fetch(cid).await?;                                  // on demand
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::blob_server;
use super::error::ClusterError;
use super::member::STATUS_PROTOCOL;
use super::placement::{self, default_replication_factor};
use super::replicate::{
    Action, BLOB_PROTOCOL, ReplicateConfig, ReplicateCore, RequestId, WriteOutcome,
};
use super::state::{ClusterState, StateHash};
use super::sync::{SYNC_PROTOCOL, SyncCore};
use super::watch;
use crate::env::Clock;
use crate::net::{JOIN_PROTOCOL, Net, NetError, NetEvent, NodeId, Responder};
use crate::store::{BlobStore, BlobWriter};

/// Events queued per protocol by [`split_events`].
const SPLIT_QUEUE_LEN: usize = 1024;
/// How often replication re-plans even without a state change (a fetch that
/// failed is retried then).
const REPLAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a fetched blob waits to be recorded as held, so that the blobs
/// fetched meanwhile are recorded in the same state change. Every change
/// costs each node a state hash, a journal write, a sync message and a
/// replan, all of which grow with the state: recorded one by one, the
/// ~1,000 blobs of a site a node catches up on cost more than fetching them.
const ANNOUNCE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// Fetched blobs recorded as held in one state change at most.
const MAX_ANNOUNCE_BATCH: usize = 1024;

/// Shared access to this node's cluster state and its sync core, and the
/// node's clock the drivers read. Cheap to clone; never hold the lock across
/// an await.
#[derive(Clone)]
pub struct ClusterHandle {
    core: Arc<Mutex<SyncCore>>,
    local_change: Arc<Notify>,
    hash: Arc<watch::Sender<StateHash>>,
    clock: Clock,
}

impl ClusterHandle {
    /// A handle whose drivers read tokio's clock ([`Clock::tokio`]).
    pub fn new(core: SyncCore) -> Self {
        Self::with_clock(core, Clock::tokio())
    }

    /// A handle whose drivers read `clock`: the node's
    /// ([`Env::clock`](crate::env::Env::clock)).
    pub fn with_clock(core: SyncCore, clock: Clock) -> Self {
        let hash = core.state().state_hash();
        Self {
            core: Arc::new(Mutex::new(core)),
            local_change: Arc::new(Notify::new()),
            hash: Arc::new(watch::channel(hash)),
            clock,
        }
    }

    /// The node's clock: where the drivers take `now` from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, SyncCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the state.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(self.lock().state())
    }

    /// Change the state; the change is synced to every peer.
    pub fn update<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        let (result, hash) = {
            let mut core = self.lock();
            let result = core.update(f);
            (result, core.state().state_hash())
        };
        self.hash.send_replace(hash);
        self.local_change.notify_one();
        result
    }

    /// The current state hash.
    pub fn state_hash(&self) -> StateHash {
        self.hash.borrow()
    }

    /// Watch the state hash: changes on every local or merged change.
    /// (A [`watch`] with a deterministic wake order, not tokio's.)
    pub fn subscribe(&self) -> watch::Receiver<StateHash> {
        self.hash.subscribe()
    }

    /// The document's bytes, for persisting.
    pub fn save(&self) -> Vec<u8> {
        self.lock().save()
    }

    /// The document's changes since the last save, for persisting.
    pub fn save_incremental(&self) -> Vec<u8> {
        self.lock().save_incremental()
    }

    fn publish_hash(&self) {
        let hash = self.lock().state().state_hash();
        self.hash.send_if_changed(hash);
    }
}

/// One node's [`NetEvent`]s, split by who handles them.
pub struct RoutedEvents {
    /// `state-sync/1` requests, and peer events.
    pub sync: mpsc::Receiver<NetEvent>,
    /// `blob/1` requests, and peer events.
    pub blob: mpsc::Receiver<NetEvent>,
    /// `join/1` and `status/1` requests (see [`super::member`]).
    pub control: mpsc::Receiver<NetEvent>,
}

/// Route one node's [`NetEvent`]s: peer events to the sync and blob
/// drivers, requests by protocol; requests of unknown protocols are refused.
/// Spawns the routing task (call inside a tokio runtime).
pub fn route_events(mut events: mpsc::Receiver<NetEvent>) -> RoutedEvents {
    let (sync_tx, sync) = mpsc::channel(SPLIT_QUEUE_LEN);
    let (blob_tx, blob) = mpsc::channel(SPLIT_QUEUE_LEN);
    let (control_tx, control) = mpsc::channel(SPLIT_QUEUE_LEN);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetEvent::PeerUp(p) => {
                    let _ = sync_tx.send(NetEvent::PeerUp(p)).await;
                    let _ = blob_tx.send(NetEvent::PeerUp(p)).await;
                }
                NetEvent::PeerDown(p) => {
                    let _ = sync_tx.send(NetEvent::PeerDown(p)).await;
                    let _ = blob_tx.send(NetEvent::PeerDown(p)).await;
                }
                NetEvent::Request {
                    from,
                    protocol,
                    payload,
                    reply,
                } => {
                    let target = match protocol.as_str() {
                        SYNC_PROTOCOL => &sync_tx,
                        BLOB_PROTOCOL => &blob_tx,
                        JOIN_PROTOCOL | STATUS_PROTOCOL => &control_tx,
                        _ => {
                            reply.err(format!("protocol {protocol:?} is not served here"));
                            continue;
                        }
                    };
                    if let Err(mpsc::error::SendError(event)) = target
                        .send(NetEvent::Request {
                            from,
                            protocol,
                            payload,
                            reply,
                        })
                        .await
                        && let NetEvent::Request { reply, .. } = event
                    {
                        reply.err("this node is shutting down");
                    }
                }
                NetEvent::Message { .. } => {}
            }
        }
    });
    RoutedEvents {
        sync,
        blob,
        control,
    }
}

/// [`route_events`] for a node that runs only sync and replication: join
/// and status requests are refused.
pub fn split_events(
    events: mpsc::Receiver<NetEvent>,
) -> (mpsc::Receiver<NetEvent>, mpsc::Receiver<NetEvent>) {
    let routed = route_events(events);
    let mut control = routed.control;
    tokio::spawn(async move {
        while let Some(event) = control.recv().await {
            if let NetEvent::Request { reply, .. } = event {
                reply.err("join and status are not served by this node");
            }
        }
    });
    (routed.sync, routed.blob)
}

/// Drive state sync until `events` closes (the network stopped).
pub async fn run_sync<N: Net>(
    cluster: ClusterHandle,
    net: N,
    mut events: mpsc::Receiver<NetEvent>,
) {
    let clock = cluster.clock().clone();
    let now = || clock.now().into_std();
    let mut in_flight = FuturesUnordered::new();
    {
        let now = now();
        let mut core = cluster.lock();
        for peer in net.peers() {
            core.handle_peer_up(peer, now);
        }
    }
    loop {
        let deadline = {
            let mut core = cluster.lock();
            while let Some((peer, payload)) = core.poll_transmit() {
                let request = net.request(peer, SYNC_PROTOCOL, payload);
                in_flight.push(async move { (peer, request.await) });
            }
            core.poll_timeout()
        };
        let timer = sleep_until_deadline(deadline);
        // `biased`: an unbiased select picks its first branch from tokio's
        // OS-seeded RNG, which would make simulated runs unreplayable. The
        // rare branches come first so a busy event queue cannot starve them.
        tokio::select! {
            biased;
            _ = timer => cluster.lock().handle_timeout(now()),
            Some((peer, result)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = &result {
                    tracing::debug!(peer = %peer, error = %e, "state sync: message not delivered");
                }
                cluster.lock().handle_transmit_done(peer, result.is_ok());
            }
            _ = cluster.local_change.notified() => {}
            event = events.recv() => {
                let Some(event) = event else { return };
                let now = now();
                match event {
                    NetEvent::PeerUp(peer) => cluster.lock().handle_peer_up(peer, now),
                    NetEvent::PeerDown(peer) => cluster.lock().handle_peer_down(peer),
                    NetEvent::Request { from, protocol, payload, reply } => {
                        if protocol != SYNC_PROTOCOL {
                            reply.err(format!("protocol {protocol:?} is not served by state sync"));
                            continue;
                        }
                        let result = cluster.lock().handle_message(from, &payload, now);
                        match result {
                            Ok(()) => reply.ok(Bytes::new()),
                            Err(e) => {
                                tracing::warn!(peer = %from, error = %e, "state sync: message rejected");
                                reply.err(e.to_string());
                            }
                        }
                        cluster.publish_hash();
                    }
                    NetEvent::Message { .. } => {}
                }
            }
        }
    }
}

/// What a finished fetch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The peer it came from; `None` if it was already local.
    pub from: Option<NodeId>,
    /// Peers whose copy was rejected (corrupt, or protocol broken).
    pub rejected: Vec<NodeId>,
}

type FetchReply = oneshot::Sender<Result<FetchReport, ClusterError>>;

/// A command for the replication driver.
#[derive(Debug)]
pub struct FetchCommand {
    cid: Cid,
    reply: FetchReply,
}

/// Asks the replication driver for blobs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplicateHandle {
    tx: mpsc::Sender<FetchCommand>,
}

/// A handle and the command queue to give [`run_replicate`].
pub fn replicate_channel() -> (ReplicateHandle, mpsc::Receiver<FetchCommand>) {
    let (tx, rx) = mpsc::channel(SPLIT_QUEUE_LEN);
    (ReplicateHandle { tx }, rx)
}

impl ReplicateHandle {
    /// Make `cid` local: fetched from a peer and verified, unless already
    /// stored. Resolves when it is in the store or the fetch gave up.
    pub async fn fetch(&self, cid: Cid) -> Result<FetchReport, ClusterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(FetchCommand { cid, reply })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }
}

/// Drive blob replication until `events` closes: serve `blob/1` requests
/// from `store`, fetch what the placement plan or a [`ReplicateHandle`]
/// asks for, and record this node as a holder of what it stores.
///
/// Blob file IO (≤ one chunk per step, and the final fsync) runs on this
/// task; run it on a multi-threaded runtime in production.
pub async fn run_replicate<N: Net>(
    cluster: ClusterHandle,
    store: Arc<BlobStore>,
    net: N,
    mut events: mpsc::Receiver<NetEvent>,
    mut commands: mpsc::Receiver<FetchCommand>,
    config: ReplicateConfig,
) {
    let mut state_changes = cluster.subscribe();
    let mut driver = ReplicateDriver::new(cluster, store, net, config);
    let mut replan = tokio::time::interval(REPLAN_INTERVAL);
    let mut commands_open = true;
    loop {
        while let Some(action) = driver.core.poll_action() {
            driver.carry_out(action);
        }
        let deadline = match (driver.core.poll_timeout(), driver.announce_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = sleep_until_deadline(deadline);
        // `biased` for replayable simulations (see `run_sync`); rare
        // branches first.
        tokio::select! {
            biased;
            _ = timer => {
                let now = driver.now();
                driver.core.handle_timeout(now);
                if driver.announce_due.is_some_and(|due| due <= now) {
                    driver.announce_fetched();
                }
            }
            _ = replan.tick() => driver.replan(),
            Some((id, result)) = driver.requests.next(), if !driver.requests.is_empty() => {
                let now = driver.now();
                driver.core.handle_response(id, result, now);
            }
            command = commands.recv(), if commands_open => match command {
                Some(command) => driver.handle_fetch_command(command),
                None => commands_open = false,
            },
            changed = state_changes.changed() => {
                if changed.is_ok() {
                    driver.replan();
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    driver.announce_fetched();
                    return;
                };
                driver.handle_net_event(event);
            }
        }
    }
}

/// A `blob/1` request on its way, and the answer it resolves to.
type PendingRequest = BoxFuture<'static, (RequestId, Result<Bytes, NetError>)>;

/// What [`run_replicate`] keeps between events: the core, and the IO it
/// carries out for it.
struct ReplicateDriver<N> {
    cluster: ClusterHandle,
    clock: Clock,
    store: Arc<BlobStore>,
    net: N,
    local: NodeId,
    /// The configured replication factor; `None`: from the admitted count.
    fixed_r: Option<usize>,
    core: ReplicateCore,
    requests: FuturesUnordered<PendingRequest>,
    /// Open blob writes, by the blob they must hash to.
    writers: BTreeMap<Cid, BlobWriter>,
    /// [`ReplicateHandle::fetch`] callers waiting for a blob.
    waiters: BTreeMap<Cid, Vec<FetchReply>>,
    /// Blobs fetched and not yet recorded as held (see [`ANNOUNCE_DELAY`]),
    /// and when they will be.
    unannounced: BTreeSet<Cid>,
    announce_due: Option<std::time::Instant>,
}

impl<N: Net> ReplicateDriver<N> {
    fn new(cluster: ClusterHandle, store: Arc<BlobStore>, net: N, config: ReplicateConfig) -> Self {
        let local = net.local_id();
        let fixed_r = config.replication_factor;
        let mut core = ReplicateCore::new(local, config);
        for peer in net.peers() {
            core.handle_peer_up(peer);
        }
        Self {
            clock: cluster.clock().clone(),
            cluster,
            store,
            net,
            local,
            fixed_r,
            core,
            requests: FuturesUnordered::new(),
            writers: BTreeMap::new(),
            waiters: BTreeMap::new(),
            unannounced: BTreeSet::new(),
            announce_due: None,
        }
    }

    /// The time to give the core.
    fn now(&self) -> std::time::Instant {
        self.clock.now().into_std()
    }

    /// Perform one of the core's actions.
    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { id, peer, payload } => {
                let request = self.net.request(peer, BLOB_PROTOCOL, payload);
                self.requests
                    .push(Box::pin(async move { (id, request.await) }));
            }
            Action::StartWrite { cid } => match self.store.begin_write(cid) {
                Ok(writer) => {
                    self.writers.insert(cid, writer);
                }
                Err(e) => {
                    tracing::error!(cid = %cid, error = %e, "blob replication: cannot start a write");
                }
            },
            Action::Write { cid, chunk } => {
                let failed = match self.writers.get_mut(&cid) {
                    Some(writer) => writer.write_chunk(&chunk).err(),
                    None => None,
                };
                if let Some(e) = failed {
                    tracing::error!(cid = %cid, error = %e, "blob replication: write failed");
                    self.writers.remove(&cid);
                }
            }
            Action::FinishWrite { cid } => {
                let outcome = match self.writers.remove(&cid) {
                    Some(writer) => WriteOutcome::from_store(self.store.finish_write(writer)),
                    None => WriteOutcome::LocalError(
                        "the write was not open (see the error logged before)".into(),
                    ),
                };
                let now = self.now();
                self.core.handle_write_finished(cid, outcome, now);
            }
            Action::AbortWrite { cid } => {
                self.writers.remove(&cid);
            }
            Action::Fetched {
                cid,
                from,
                rejected,
            } => self.fetched(cid, from, &rejected),
            Action::Failed {
                cid,
                attempts,
                reason,
            } => self.failed(cid, attempts, &reason),
        }
    }

    /// `cid` is stored and verified: answer whoever waits for it, and
    /// record this node as a holder with the others fetched meanwhile.
    fn fetched(&mut self, cid: Cid, from: NodeId, rejected: &[NodeId]) {
        tracing::debug!(cid = %cid, from = %from, "blob replication: fetched and verified");
        self.unannounced.insert(cid);
        if self.unannounced.len() >= MAX_ANNOUNCE_BATCH {
            self.announce_fetched();
        } else if self.announce_due.is_none() {
            self.announce_due = Some(self.now() + ANNOUNCE_DELAY);
        }
        for reply in self.waiters.remove(&cid).unwrap_or_default() {
            let _ = reply.send(Ok(FetchReport {
                from: Some(from),
                rejected: rejected.to_vec(),
            }));
        }
    }

    /// Record every blob fetched since the last time as held here, in one
    /// state change.
    fn announce_fetched(&mut self) {
        self.announce_due = None;
        if self.unannounced.is_empty() {
            return;
        }
        let fetched = std::mem::take(&mut self.unannounced);
        // On failure, the next replan announces what is stored but not
        // recorded.
        if self.record_held(&fetched) {
            tracing::info!(
                blobs = fetched.len(),
                "blob replication: fetched and recorded as held"
            );
        }
    }

    /// Record this node as holder of `cids`, in one state change; `false`
    /// (logged) if the state refused.
    fn record_held<'a>(&self, cids: impl IntoIterator<Item = &'a Cid>) -> bool {
        let local = self.local;
        let result = self.cluster.update(|s| {
            cids.into_iter()
                .try_for_each(|cid| s.add_holder(cid, local))
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "blob replication: cannot record held blobs");
        }
        result.is_ok()
    }

    /// The core gave up on `cid`: tell whoever waits for it.
    fn failed(&mut self, cid: Cid, attempts: u32, reason: &str) {
        tracing::warn!(cid = %cid, attempts, reason, "blob replication: fetch gave up");
        for reply in self.waiters.remove(&cid).unwrap_or_default() {
            let _ = reply.send(Err(ClusterError::FetchFailed {
                cid: cid.to_string(),
                attempts,
                reason: reason.to_owned(),
            }));
        }
    }

    /// A [`ReplicateHandle::fetch`]: answer at once if the blob is local,
    /// else want it and answer when the core is done.
    fn handle_fetch_command(&mut self, FetchCommand { cid, reply }: FetchCommand) {
        if self.store.contains(&cid) {
            let _ = reply.send(Ok(FetchReport {
                from: None,
                rejected: vec![],
            }));
            return;
        }
        self.waiters.entry(cid).or_default().push(reply);
        let holders = self.cluster.read(|s| s.holders(&cid));
        let now = self.now();
        self.core.handle_want(cid, holders, now);
    }

    fn handle_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::PeerUp(peer) => self.core.handle_peer_up(peer),
            NetEvent::PeerDown(peer) => self.core.handle_peer_down(peer),
            NetEvent::Request {
                from,
                protocol,
                payload,
                reply,
            } => self.serve(from, &protocol, &payload, reply),
            NetEvent::Message { .. } => {}
        }
    }

    /// Answer a peer's request from the local store ([`blob_server`]).
    fn serve(&self, from: NodeId, protocol: &str, payload: &[u8], reply: Responder) {
        if protocol != BLOB_PROTOCOL {
            reply.err(format!(
                "protocol {protocol:?} is not served by blob replication"
            ));
            return;
        }
        match blob_server::serve_request(&self.store, payload) {
            Ok(answer) => reply.ok(answer),
            Err(error) => {
                tracing::debug!(peer = %from, reason = %error, "blob replication: request refused");
                reply.err(error.to_string());
            }
        }
    }

    /// Fetch what placement says this node must hold; announce what it holds.
    fn replan(&mut self) {
        let (local, fixed_r, store) = (self.local, self.fixed_r, &self.store);
        let (plan, holders) = self.cluster.read(|s| {
            let r = fixed_r.unwrap_or_else(|| {
                let admitted = s.members().values().filter(|m| m.admitted).count();
                default_replication_factor(admitted.max(1))
            });
            let plan = placement::plan(s, local, r, |cid| store.contains(cid));
            let holders: BTreeMap<Cid, _> = plan.fetch.iter().map(|c| (*c, s.holders(c))).collect();
            (plan, holders)
        });
        // Blobs fetched and waiting for their batch are announced with it.
        let announce: Vec<&Cid> = plan.announce.difference(&self.unannounced).collect();
        if !announce.is_empty() {
            self.record_held(announce);
        }
        let now = self.now();
        for (cid, holders) in holders {
            if !self.core.is_fetching(&cid) {
                self.core.handle_want(cid, holders, now);
            }
        }
    }
}

/// Sleep until a core's next deadline; forever when it has none.
async fn sleep_until_deadline(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
