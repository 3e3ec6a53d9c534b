//! The cluster side of one node: everything that makes a node a member.
//!
//! [`ClusterNode::start`] takes the node's [`Net`] (libp2p in production, the
//! simulator's network in `canopy-sim`) and runs, as tokio tasks:
//!
//! - state sync and blob replication ([`super::driver`]);
//! - the **ledger**: pushes that go live here are recorded in cluster state
//!   ([`Ledger`] for the deployer);
//! - the **follower**: for every environment, the state's winning release is
//!   fetched blob by blob from peers, verified, and installed through the
//!   deployer — a node never serves what it has not verified, and never
//!   replaces a release with one of lower precedence. The decisions are the
//!   sans-IO [`FollowCore`]'s; the task here is its driver;
//! - **admission**: join requests carrying an invite token are checked and
//!   the newcomer is admitted in cluster state; the admitted set feeds the
//!   net's connection filter;
//! - **persistence** of the state document in the data directory;
//! - **status**: peers answer `status/1` so any node can report on all.
//!
//! The tasks read time from the node's clock ([`Env::clock`], carried by the
//! [`ClusterHandle`]). It must not read the OS clock or RNG, spawn OS
//! threads, or talk to peers except through [`Net`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::AbortHandle;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::driver::{ClusterHandle, ReplicateHandle, replicate_channel, route_events};
use super::error::ClusterError;
use super::follow::{FollowAction, FollowCore, InstallId};
use super::journal::Journal;
use super::replicate::ReplicateConfig;
use super::state::{ClusterState, DeploymentUpdate, Role, StateHash};
use super::sync::{SyncConfig, SyncCore};
use crate::deploy::{
    Deployer, EnvKey, InvalidCid, Ledger, LedgerError, LoadError, Precedence, WantedRelease,
    release_blobs,
};
use crate::env::Env;
use crate::net::admission::{CLUSTER_NONCE_BYTES, ClusterId, InviteError, InviteToken};
use crate::net::identity::NodeKey;
use crate::net::{JOIN_PROTOCOL, Net, NetEvent, NodeId, Responder};
use crate::store::{BlobStore, StoreError};

/// Peers answer this with a [`PeerReport`].
pub const STATUS_PROTOCOL: &str = "status/1";

/// How often the follower plans again when neither the state changed nor a
/// failed install's retry ([`super::follow::INSTALL_RETRY_DELAY`]) fell due:
/// a backstop for what the state does not announce (the deployer's installs).
const REPLAN_INTERVAL: Duration = Duration::from_secs(2);
/// How long `canopy status` waits for each peer's report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// The cluster-state document, below the data directory.
const STATE_FILE: &str = "cluster/state.automerge";

/// How this node takes part in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Found a new cluster if the saved state names none and no invite is
    /// given (the first node).
    pub found_if_new: bool,
    /// Join through the node that issued this token.
    pub invite: Option<InviteToken>,
    /// Addresses peers can dial this node at (recorded in its member record).
    pub addresses: Vec<String>,
    pub role: Role,
    /// Copies of every blob; `None`: min(3, admitted nodes).
    pub replication_factor: Option<usize>,
    pub sync: SyncConfig,
    /// What this node tells peers asking for its status.
    pub http: String,
    pub admin: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            found_if_new: true,
            invite: None,
            addresses: Vec::new(),
            role: Role::Full,
            replication_factor: None,
            sync: SyncConfig::default(),
            http: String::new(),
            admin: String::new(),
        }
    }
}

/// What a node answers on `status/1`, and what `canopy status` shows per node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub id: String,
    pub version: String,
    pub role: String,
    pub http: String,
    pub admin: String,
    pub state_hash: String,
    /// Connected peers (short ids), sorted.
    pub peers: Vec<String>,
    /// `project@branch` → commit, for every release serving here.
    pub serving: BTreeMap<String, String>,
    /// Blobs recorded as held by this node.
    pub holds: usize,
    /// Requests this node refused as busy, per peer (short id): the peer was
    /// over its per-peer limits (`limits.cluster.*_per_peer`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub busy_refusals: BTreeMap<String, u64>,
}

/// A join request: the token and where the newcomer can be reached.
#[derive(Serialize, Deserialize)]
struct JoinRequest {
    token: String,
    addresses: Vec<String>,
    role: Role,
}

#[derive(Serialize, Deserialize)]
struct JoinAnswer {
    cluster_id: String,
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Invite(#[from] InviteError),
    #[error("the inviter {inviter} refused to admit this node: {reason}")]
    Refused { inviter: NodeId, reason: String },
    #[error(
        "this node already belongs to cluster {current}; the token is for cluster {token}. Start it with an empty data directory to join another cluster"
    )]
    OtherCluster { current: String, token: String },
}

/// Why a node's cluster side could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the saved cluster state {}: {source} (check the data directory's permissions)", path.display())]
    ReadState {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] ClusterError),
    #[error(transparent)]
    Join(#[from] JoinError),
}

/// Why a node issued no invite.
#[derive(Debug, thiserror::Error)]
pub enum InviteRefusal {
    #[error(
        "this node is not an admitted member of a cluster yet, so it cannot invite others (ask a member that is)"
    )]
    NotAdmitted,
    #[error(
        "this node's cluster state names no valid cluster id (it has not founded or joined one yet)"
    )]
    NoClusterId,
    /// Recording the invite in cluster state failed.
    #[error(transparent)]
    State(ClusterError),
}

/// Why a node was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveRefusal {
    #[error(
        "{0:?} is not a node id: give at least its first 16 hex digits, as `canopy status` shows them"
    )]
    BadId(String),
    #[error("no admitted member's id starts with {0}; `canopy status` lists them")]
    NotAMember(String),
    #[error("more than one member's id starts with {0}; give more digits")]
    Ambiguous(String),
    #[error(
        "node {0} founded the cluster: its records are the root every node trusts, so it cannot be removed"
    )]
    Founder(NodeId),
    #[error(transparent)]
    State(#[from] ClusterError),
}

/// The cluster side of a running node. Stop with [`ClusterNode::stop`].
pub struct ClusterNode {
    local: NodeId,
    handle: ClusterHandle,
    net: Arc<dyn Net>,
    admitted: watch::Sender<BTreeSet<NodeId>>,
    /// Admitted locally though not (yet) in state: the inviter we join through.
    extra_admitted: Mutex<BTreeSet<NodeId>>,
    report_base: PeerReport,
    addresses: Vec<String>,
    role: Role,
    deployer: Arc<Deployer>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ClusterNode {
    /// Load (or found) this node's cluster state and start every cluster task
    /// on `net`. `admitted` is the set the net accepts peers from; from now on
    /// it follows the state's admitted set.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a seam the node hands over; a struct would only name them twice"
    )]
    pub fn start(
        env: &Env,
        key: &NodeKey,
        net: Arc<dyn Net>,
        events: mpsc::Receiver<NetEvent>,
        store: Arc<BlobStore>,
        deployer: Arc<Deployer>,
        admitted: watch::Sender<BTreeSet<NodeId>>,
        options: ClusterOptions,
    ) -> Result<Arc<ClusterNode>, StartError> {
        let local = net.local_id();
        assert_eq!(key.node_id(), local, "the cluster signs with the net's key");
        let path = env.data_dir.join(STATE_FILE);
        let incarnation = env.rng.next_u64();
        let (journal, saved) = match Journal::open(env.disk.clone(), &path) {
            Ok(opened) => opened,
            Err(source) => return Err(StartError::ReadState { path, source }),
        };
        let mut state = match &saved.document {
            Some(document) => {
                let changes = saved.changes.iter().map(|(_, c)| c.as_slice());
                let (state, skipped) =
                    ClusterState::load_with_changes(key.clone(), incarnation, document, changes)?;
                for i in skipped {
                    // Written whole or not at all, so this is damage on
                    // disk; peers resend what the file held.
                    tracing::warn!(file = %saved.changes[i].0.display(), "a saved cluster-state change file cannot be read; skipped");
                }
                state
            }
            None => ClusterState::new(key.clone(), incarnation),
        };
        if let (Some(current), Some(token)) = (state.cluster_id(), &options.invite)
            && current != token.cluster_id.to_string()
        {
            return Err(JoinError::OtherCluster {
                current,
                token: token.cluster_id.to_string(),
            }
            .into());
        }
        if let Some(token) = &options.invite
            && state.cluster_id().is_none()
        {
            state.pin(token.cluster_id);
        }
        if state.cluster_id().is_none() && options.invite.is_none() && options.found_if_new {
            let mut nonce = [0u8; CLUSTER_NONCE_BYTES];
            env.rng.fill_bytes(&mut nonce);
            let id = state.found(nonce)?;
            tracing::info!(cluster = %id, "founded a new cluster");
        }
        if state.is_admitted(&local) {
            // Addresses change between runs (ports, hosts): keep them current.
            let joined_by = state.members().get(&local).and_then(|m| m.joined_by);
            state.upsert_member(local, options.addresses.clone(), options.role, joined_by)?;
        }
        let handle = ClusterHandle::with_clock(
            SyncCore::new(state, options.sync.clone()),
            env.clock.clone(),
        );

        let (replicate, commands) = replicate_channel();
        let routed = route_events(events);
        let replicate_config = ReplicateConfig {
            replication_factor: options.replication_factor,
            ..ReplicateConfig::default()
        };
        let node = Arc::new(ClusterNode {
            local,
            handle: handle.clone(),
            net: net.clone(),
            admitted,
            extra_admitted: Mutex::new(options.invite.iter().map(|t| t.inviter).collect()),
            report_base: PeerReport {
                id: local.to_string(),
                version: crate::version().to_owned(),
                role: format!("{:?}", options.role).to_lowercase(),
                http: options.http.clone(),
                admin: options.admin.clone(),
                state_hash: String::new(),
                peers: Vec::new(),
                serving: BTreeMap::new(),
                holds: 0,
                busy_refusals: BTreeMap::new(),
            },
            addresses: options.addresses.clone(),
            role: options.role,
            deployer: deployer.clone(),
            tasks: Mutex::new(Vec::new()),
        });
        node.publish_admitted();
        deployer.set_ledger(Arc::new(StateLedger {
            handle: handle.clone(),
            local,
        }));
        deployer.record_unrecorded();
        // Domains claimed before the node joined keep their owners, unless
        // the cluster already gave them to another project.
        let local_owners = deployer.domain_owners();
        let cluster_domains = Arc::new(super::domains::ClusterDomains::new(handle.clone()));
        for (domain, project) in local_owners {
            use crate::deploy::domains::DomainBook as _;
            if let Err(error) = cluster_domains.claim(&project, std::slice::from_ref(&domain)) {
                tracing::warn!(%domain, %project, %error, "a domain claimed here belongs to another project in the cluster");
            }
        }
        deployer.set_domain_book(cluster_domains);

        let tasks = vec![
            tokio::spawn(super::driver::run_sync(
                handle.clone(),
                net.clone(),
                routed.sync,
            )),
            tokio::spawn(super::driver::run_replicate(
                handle.clone(),
                store.clone(),
                net.clone(),
                routed.blob,
                commands,
                replicate_config,
            )),
            tokio::spawn(follow(handle.clone(), deployer, replicate, store)),
            tokio::spawn(persist(handle.clone(), journal)),
            tokio::spawn(serve_control(node.clone(), env.clone(), routed.control)),
            tokio::spawn(track_admitted(node.clone())),
        ];
        *lock(&node.tasks) = tasks;
        Ok(node)
    }

    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// The cluster state.
    pub fn handle(&self) -> &ClusterHandle {
        &self.handle
    }

    /// The cluster's id, once founded or learned from a peer.
    pub fn cluster_id(&self) -> Option<String> {
        self.handle.read(|s| s.cluster_id())
    }

    /// Whether this node's key is in the admitted set of its state.
    pub fn is_admitted(&self) -> bool {
        self.handle.read(|s| s.is_admitted(&self.local))
    }

    /// Ask the inviter (the caller has connected to it) to admit this node,
    /// then wait until the admission reached this node's own state.
    pub async fn join(&self, token: &InviteToken, wait: Duration) -> Result<(), JoinError> {
        // Trust the inviter until this node's own state admits it: its state
        // (with our admission) must reach us. A retry may bring a token from
        // another inviter than the one given at start.
        lock(&self.extra_admitted).insert(token.inviter);
        self.publish_admitted();
        // Trust the cluster the token names: records of any other are ignored.
        if self.cluster_id().is_none() {
            self.handle.update(|s| s.pin(token.cluster_id));
        }
        let request = JoinRequest {
            token: token.encode(),
            addresses: self.addresses.clone(),
            role: self.role,
        };
        let payload = Bytes::from(serde_json::to_vec(&request).expect("join request encodes"));
        let answer = self
            .net
            .request(token.inviter, JOIN_PROTOCOL, payload)
            .await
            .map_err(|e| JoinError::Refused {
                inviter: token.inviter,
                reason: e.to_string(),
            })?;
        let answer: JoinAnswer =
            serde_json::from_slice(&answer).map_err(|e| JoinError::Refused {
                inviter: token.inviter,
                reason: format!("unreadable answer: {e}"),
            })?;
        tracing::info!(cluster = %answer.cluster_id, inviter = %token.inviter, "admitted; syncing cluster state");
        let mut changes = self.handle.subscribe();
        let admitted = tokio::time::timeout(wait, async {
            loop {
                if self.is_admitted() {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        admitted.map_err(|_| JoinError::Refused {
            inviter: token.inviter,
            reason: format!(
                "it accepted the token but its state did not reach this node within {} s",
                wait.as_secs()
            ),
        })
    }

    /// Issue an invite token for this cluster, valid for `ttl`, at the
    /// request of the admin holding `warrantor`: the invite is recorded in
    /// cluster state with the admin's warrant, which every node checks
    /// before it honours the admission the invite leads to.
    pub fn invite(
        &self,
        key: &NodeKey,
        env: &Env,
        ttl: Duration,
        warrantor: &crate::auth::Token,
    ) -> Result<InviteToken, InviteRefusal> {
        if !self.is_admitted() {
            return Err(InviteRefusal::NotAdmitted);
        }
        let cluster = self
            .cluster_id()
            .and_then(|id| parse_cluster_id(&id))
            .ok_or(InviteRefusal::NoClusterId)?;
        let expires = env.clock.unix_now_s() + ttl.as_secs();
        let token = InviteToken::issue(key, cluster, expires, &env.rng);
        self.handle
            .update(|s| s.record_invite_issued(&token.nonce, expires, warrantor))
            .map_err(InviteRefusal::State)?;
        Ok(token)
    }

    /// Remove the member whose id starts with `node` (at least 16 hex
    /// digits, as `canopy status` shows it) at the request of the admin
    /// holding `warrantor`. Every node stops admitting it, closes its
    /// connections and ignores what it writes from now on. Returns its
    /// full id.
    pub fn remove(
        &self,
        node: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<NodeId, RemoveRefusal> {
        let node = node.trim().to_ascii_lowercase();
        if node.len() < 16 || !node.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RemoveRefusal::BadId(node));
        }
        self.handle.update(|s| {
            let matches: Vec<NodeId> = s
                .admitted()
                .into_keys()
                .filter(|id| super::ids::node_hex(id).starts_with(&node))
                .collect();
            let found = match matches.as_slice() {
                [] => return Err(RemoveRefusal::NotAMember(node.clone())),
                [one] => *one,
                _ => return Err(RemoveRefusal::Ambiguous(node.clone())),
            };
            if Some(found) == s.founder() {
                return Err(RemoveRefusal::Founder(found));
            }
            s.remove_node(found, warrantor)?;
            Ok(found)
        })
    }

    /// This node's peer-to-peer addresses, as it tells its peers.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// This node's report, as peers get it on `status/1`.
    pub fn report(&self) -> PeerReport {
        let (state_hash, holds) = self.handle.read(|s| {
            let holds = s
                .allocations()
                .values()
                .filter(|holders| holders.contains(&self.local))
                .count();
            (s.state_hash(), holds)
        });
        let serving = self
            .deployer
            .status()
            .into_iter()
            .filter_map(|e| Some((format!("{}@{}", e.project, e.branch), e.live_commit?)))
            .collect();
        PeerReport {
            state_hash: state_hash.to_string(),
            peers: self.net.peers().iter().map(NodeId::to_string).collect(),
            serving,
            holds,
            busy_refusals: self
                .net
                .busy_refusals()
                .into_iter()
                .map(|(peer, count)| (peer.to_string(), count))
                .collect(),
            ..self.report_base.clone()
        }
    }

    /// Every connected peer's report (peers that do not answer in time are
    /// left out), sorted by id.
    pub async fn peer_reports(&self) -> Vec<PeerReport> {
        let mut asks: FuturesUnordered<_> = self
            .net
            .peers()
            .into_iter()
            .map(|peer| {
                let request = self.net.request(peer, STATUS_PROTOCOL, Bytes::new());
                async move { tokio::time::timeout(STATUS_TIMEOUT, request).await }
            })
            .collect();
        let mut out = Vec::new();
        while let Some(answer) = asks.next().await {
            if let Ok(Ok(bytes)) = answer
                && let Ok(report) = serde_json::from_slice::<PeerReport>(&bytes)
            {
                out.push(report);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The state hash right now.
    pub fn state_hash(&self) -> StateHash {
        self.handle.state_hash()
    }

    /// Stop every cluster task.
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn publish_admitted(&self) {
        let mut set: BTreeSet<NodeId> = self.handle.read(|s| s.admitted().into_keys().collect());
        set.extend(lock(&self.extra_admitted).iter().copied());
        self.admitted.send_if_modified(|current| {
            let changed = *current != set;
            *current = set;
            changed
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_cluster_id(text: &str) -> Option<ClusterId> {
    super::ids::parse_hex(text).map(ClusterId)
}

/// Records pushes in cluster state for the deployer.
struct StateLedger {
    handle: ClusterHandle,
    local: NodeId,
}

impl Ledger for StateLedger {
    fn author(&self) -> NodeId {
        self.local
    }

    fn record_push(
        &self,
        key: &EnvKey,
        commit: &str,
        manifest_cid: cid::Cid,
        artifacts: Vec<cid::Cid>,
        warrant: Option<&crate::auth::Warrant>,
    ) -> Result<Precedence, LedgerError> {
        self.handle
            .update(|s| {
                for cid in &artifacts {
                    s.add_holder(cid, self.local)?;
                }
                s.apply_deployment(
                    key,
                    DeploymentUpdate {
                        commit: commit.to_owned(),
                        manifest_cid,
                        artifacts,
                        warrant: warrant.cloned(),
                    },
                )
            })
            .map(|d| d.precedence())
            .map_err(LedgerError::new)
    }

    fn record_removal(
        &self,
        key: &EnvKey,
        warrant: Option<&crate::auth::Warrant>,
    ) -> Result<(), LedgerError> {
        self.handle
            .update(|s| s.remove_deployment(key, warrant))
            .map(|_| ())
            .map_err(LedgerError::new)
    }
}

/// Keep the net's admitted set equal to the state's.
async fn track_admitted(node: Arc<ClusterNode>) {
    let mut changes = node.handle.subscribe();
    while changes.changed().await.is_ok() {
        if node.handle.read(|s| s.is_admitted(&node.local)) {
            // Joined: from now on the state alone decides.
            lock(&node.extra_admitted).clear();
        }
        node.publish_admitted();
    }
}

/// Save the state document whenever it changes, through the node's disk:
/// the changes since the last save, or the whole document when the
/// journal wants it (see [`super::journal`]).
async fn persist(handle: ClusterHandle, mut journal: Journal) {
    let mut changes = handle.subscribe();
    let mut saved: Option<StateHash> = None;
    loop {
        let hash = handle.state_hash();
        if saved != Some(hash) {
            let written = if journal.wants_full_save() {
                journal.save_full(&handle.save())
            } else {
                let changes = handle.save_incremental();
                if changes.is_empty() {
                    Ok(())
                } else {
                    journal.save_changes(&changes)
                }
            };
            match written {
                Ok(()) => saved = Some(hash),
                Err(e) => tracing::error!(error = %e, "cannot save cluster state"),
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Answer join and status requests.
async fn serve_control(node: Arc<ClusterNode>, env: Env, mut events: mpsc::Receiver<NetEvent>) {
    while let Some(event) = events.recv().await {
        let NetEvent::Request {
            from,
            protocol,
            payload,
            reply,
        } = event
        else {
            continue;
        };
        match protocol.as_str() {
            JOIN_PROTOCOL => admit(&node, &env, from, &payload, reply),
            STATUS_PROTOCOL => {
                if !node.handle.read(|s| s.is_admitted(&from)) {
                    reply.err("not an admitted member of this cluster");
                    continue;
                }
                let report = serde_json::to_vec(&node.report()).expect("report encodes");
                reply.ok(Bytes::from(report));
            }
            other => reply.err(format!("protocol {other:?} is not served here")),
        }
    }
}

/// Answer a join request: admit its sender, or say why not.
fn admit(node: &ClusterNode, env: &Env, from: NodeId, payload: &[u8], reply: Responder) {
    match check_and_admit(node, env, from, payload) {
        Ok(cluster_id) => {
            tracing::info!(node = %from, "admitted a new node with an invite token");
            let answer = serde_json::to_vec(&JoinAnswer { cluster_id }).expect("answer encodes");
            reply.ok(Bytes::from(answer));
        }
        Err(reason) => {
            tracing::warn!(node = %from, %reason, "refused a join request");
            reply.err(reason.to_string());
        }
    }
}

/// Why a join request was refused. Its text is what the newcomer sees (the
/// wire carries it as the request's error).
#[derive(Debug, thiserror::Error)]
enum JoinRefusal {
    #[error("the join request is not valid: {0}")]
    BadRequest(serde_json::Error),
    /// The token is malformed, forged, expired or for another cluster.
    #[error(transparent)]
    Invite(#[from] InviteError),
    #[error("this node has no cluster state yet; ask another node")]
    NoCluster,
    #[error("the invite token was already used by node {0}; run `canopy cluster invite` again")]
    TokenUsed(NodeId),
    /// Recording the admission in cluster state failed.
    #[error(transparent)]
    State(#[from] ClusterError),
}

/// Check a join request and admit its sender; the cluster id to tell it.
fn check_and_admit(
    node: &ClusterNode,
    env: &Env,
    from: NodeId,
    payload: &[u8],
) -> Result<String, JoinRefusal> {
    let request: JoinRequest = serde_json::from_slice(payload).map_err(JoinRefusal::BadRequest)?;
    let token = InviteToken::decode(&request.token)?;
    let (cluster, trusted, used_by) = node.handle.read(|s| {
        (
            s.cluster_id(),
            s.admitted().into_keys().collect::<BTreeSet<_>>(),
            s.invite_used_by(&token.nonce),
        )
    });
    let cluster = cluster
        .as_deref()
        .and_then(parse_cluster_id)
        .ok_or(JoinRefusal::NoCluster)?;
    token.verify(env.clock.unix_now_s(), cluster, &trusted)?;
    if let Some(joined) = used_by.filter(|joined| *joined != from) {
        return Err(JoinRefusal::TokenUsed(joined));
    }
    node.handle.update(|s| {
        s.admit_invited(from, &token.nonce)?;
        s.upsert_member(
            from,
            request.addresses.clone(),
            request.role,
            Some(node.local),
        )?;
        s.record_invite_used(&token.nonce, from)
    })?;
    Ok(cluster.to_string())
}

/// Install the state's winning release of every environment once its blobs
/// are local and verified; take down environments whose branch was deleted.
///
/// The driver of [`FollowCore`], which decides; this task reads the state,
/// runs the installs it asks for and aborts the ones it gives up.
async fn follow(
    handle: ClusterHandle,
    deployer: Arc<Deployer>,
    replicate: ReplicateHandle,
    store: Arc<BlobStore>,
) {
    let mut changes = handle.subscribe();
    let mut core = FollowCore::new();
    let mut aborts: BTreeMap<InstallId, AbortHandle> = BTreeMap::new();
    let mut installs = FuturesUnordered::new();
    let mut domain_owners = handle.read(|s| s.domain_owners());
    loop {
        let (wanted, removed, owners) =
            handle.read(|s| (s.deployments(), s.removed(), s.domain_owners()));
        // A transfer (or a claim that won elsewhere) moves a domain's routes.
        if owners != domain_owners {
            domain_owners = owners;
            deployer.publish_routes();
        }
        let now = handle.clock().now();
        core.handle_state(wanted, &removed, &deployer.installed(), now.into_std());
        while let Some(action) = core.poll_action() {
            match action {
                FollowAction::Install {
                    id,
                    key,
                    deployment,
                } => {
                    let (deployer, replicate, store) =
                        (deployer.clone(), replicate.clone(), store.clone());
                    let key_for_task = key.clone();
                    let (install, abort) = futures::future::abortable(async move {
                        fetch_and_install(&deployer, &replicate, &store, &key_for_task, deployment)
                            .await
                    });
                    aborts.insert(id, abort);
                    installs.push(async move { (id, key, install.await) });
                }
                FollowAction::Abort { id } => {
                    if let Some(abort) = aborts.remove(&id) {
                        abort.abort();
                    }
                }
                FollowAction::Retire { key, precedence } => deployer.retire(&key, precedence),
            }
        }
        let next_pass = core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(now + REPLAN_INTERVAL, |due| due.min(now + REPLAN_INTERVAL));
        // `biased`: an unbiased select draws from tokio's OS-seeded RNG
        // (unreplayable in canopy-sim).
        tokio::select! {
            biased;
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some((id, key, result)) = installs.next(), if !installs.is_empty() => {
                aborts.remove(&id);
                match result {
                    Ok(Ok(())) | Err(futures::future::Aborted) => core.handle_install_done(id),
                    Ok(Err(error)) => {
                        tracing::warn!(env = %key, %error, "cannot install the cluster's release yet; retrying");
                        core.handle_install_failed(id, handle.clock().now().into_std());
                    }
                }
            }
            () = tokio::time::sleep_until(next_pass) => {}
        }
    }
}

/// Why installing a release of the cluster's failed (it is tried again).
#[derive(Debug, thiserror::Error)]
enum InstallError {
    /// A blob of the release could not be fetched.
    #[error(transparent)]
    Fetch(#[from] ClusterError),
    /// The fetched manifest could not be read from the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest is not valid.
    #[error("manifest {cid} is not valid: {source}")]
    BadManifest {
        cid: cid::Cid,
        source: serde_json::Error,
    },
    /// The manifest names a blob by something that is not a CID.
    #[error("manifest {cid} names a blob by an invalid CID: {source}")]
    BlobCid { cid: cid::Cid, source: InvalidCid },
    /// The deployer could not load the release from its blobs.
    #[error(transparent)]
    Load(#[from] LoadError),
}

async fn fetch_and_install(
    deployer: &Deployer,
    replicate: &ReplicateHandle,
    store: &Arc<BlobStore>,
    key: &EnvKey,
    deployment: super::state::Deployment,
) -> Result<(), InstallError> {
    let _hold = store.hold();
    replicate.fetch(deployment.manifest_cid).await?;
    let manifest: crate::deploy::manifest::Manifest =
        serde_json::from_slice(&store.get(&deployment.manifest_cid)?).map_err(|source| {
            InstallError::BadManifest {
                cid: deployment.manifest_cid,
                source,
            }
        })?;
    let mut blobs: BTreeSet<cid::Cid> = release_blobs(deployment.manifest_cid, &manifest)
        .map_err(|source| InstallError::BlobCid {
            cid: deployment.manifest_cid,
            source,
        })?
        .into_iter()
        .collect();
    blobs.extend(deployment.artifacts.iter().copied());
    let fetches: Vec<_> = blobs.iter().map(|cid| replicate.fetch(*cid)).collect();
    for result in futures::future::join_all(fetches).await {
        result?;
    }
    deployer
        .install(
            key,
            WantedRelease {
                commit: deployment.commit.clone(),
                manifest_cid: deployment.manifest_cid,
                precedence: deployment.precedence(),
            },
        )
        .await?;
    Ok(())
}
