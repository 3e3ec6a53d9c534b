//! The cluster state: one automerge document, reached only through a typed
//! API so callers never touch automerge paths.
//!
//! # Layout
//!
//! Everything lives in flat keys of the document's root map. No nested
//! objects are created, because two nodes creating the same nested map
//! concurrently would produce two conflicting objects (one hidden). Each
//! record is one JSON string written in one operation, so a reader sees a
//! whole record or none, never a mix of two writers' fields.
//!
//! Every value is a signed envelope naming its author ([`super::record`]);
//! a node acts only on records whose signature verifies and whose author
//! may write them ([`super::trust`]).
//!
//! ```text
//! member/<node hex>                              → {"addresses", "role", "joined_by"}
//! admitted/<node hex>                            → {"admitted_by", "invite"}  (the issued invite it presented)
//! deploy/<project>/<branch>/<seq:020>/<node hex> → {"commit", "manifest_cid", "artifacts", "pushed_at_seq", "pushed_by"}
//! alloc/<cid>/<node hex>                         → true  (that node holds the blob)
//! cluster/id                                     → {"id", "founder", "nonce"}: id = hash(founder, nonce), set once by the founder
//! issued/<nonce hex>                             → {"expires_at_unix_s"}, warranted by the admin who asked for the invite
//! invite/<nonce hex>                             → {"joined"}  (an invite token that was used)
//! token/<token id>                               → auth::TokenRecord (hash of the secret, never the secret)
//! revoked/<token id>                             → auth::Revocation  (permanent)
//! domain/<domain>                                → {"project"}  (its owner; first deploy, or an admin's transfer)
//! removed/<node hex>                             → {"seen"}  (an admin removed the node; what of it still counts)
//! ```
//!
//! # Which push wins
//!
//! Every push of an environment (project × branch) is a *candidate* record
//! under its own key. A push on node N gets `pushed_at_seq` = (the highest
//! `pushed_at_seq` of that environment N has seen) + 1 and removes the
//! candidates it has seen (they are older). The live deployment of an
//! environment is its candidate with the greatest
//! **(`pushed_at_seq`, `pushed_by`)** — a total order, so every node that has
//! the same candidates picks the same winner. Two concurrent pushes of one
//! branch on two nodes get the same `pushed_at_seq`; the one from the node
//! with the greater node id wins, whole (its commit, manifest and artifacts
//! together). A later push on any node that has seen both supersedes both.
//!
//! Deleting a branch writes a *tombstone* candidate the same way (greater
//! than every candidate seen). So precedence only ever grows per
//! environment — a node that missed the deletion and still serves the old
//! release sees a winner it must follow, and a later push of the same branch
//! outranks the tombstone.
//!
//! # Determinism
//!
//! The document's actor id is the node id followed by an 8-byte incarnation
//! number the caller supplies (from the node's RNG): derived from the node
//! key, never from the OS RNG, yet distinct across restarts, so a node that
//! lost its saved document cannot reuse an (actor, seq) pair. Commits carry
//! no timestamp.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use cid::Cid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ClusterError;
use super::ids::{hex, node_hex, parse_cid, parse_node_hex};
use super::record::{self, Signed};
use super::trust::{
    ADMITTED_PREFIX, AdmissionRecord, AnchorRecord, CLUSTER_ID_KEY, ISSUED_PREFIX, IssuedRecord,
    REMOVED_PREFIX, REVOKED_PREFIX, RemovalRecord, TOKEN_PREFIX, Trust,
};
use crate::auth::{Revocation, TokenEntry, TokenId, TokenRecord, Warrant};
use crate::deploy::state::EnvKey;
use crate::net::NodeId;
use crate::net::admission::{CLUSTER_NONCE_BYTES, ClusterId};
use crate::net::identity::NodeKey;

const MEMBER_PREFIX: &str = "member/";
const DEPLOY_PREFIX: &str = "deploy/";
const ALLOC_PREFIX: &str = "alloc/";
const INVITE_PREFIX: &str = "invite/";
const DOMAIN_PREFIX: &str = "domain/";

/// The owner of one domain, as cluster state keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DomainRecord {
    project: String,
}

/// What a node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves traffic, stores blobs, takes pushes.
    Full,
    /// Stores blobs and syncs state, serves no traffic.
    Storage,
}

/// A cluster member as the state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Addresses peers can dial (multiaddrs or `host:port`), sorted.
    pub addresses: Vec<String>,
    pub role: Role,
    /// Whether the node's key is in the admitted set.
    pub admitted: bool,
    /// The node that invited it (`None` for the node that founded the cluster).
    pub joined_by: Option<NodeId>,
}

/// An admitted node key and who admitted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub admitted_by: NodeId,
}

/// What a push asks to deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentUpdate {
    pub commit: String,
    /// CID of the release manifest blob.
    pub manifest_cid: Cid,
    /// CIDs of every artifact the manifest references.
    pub artifacts: Vec<Cid>,
    /// The pusher's warrant (see [`crate::auth::push_statement`]): without
    /// one no node follows the push.
    pub warrant: Option<Warrant>,
}

/// The live deployment of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub commit: String,
    pub manifest_cid: Cid,
    /// Sorted, without duplicates.
    pub artifacts: Vec<Cid>,
    /// The push's sequence number in its environment (see the module doc).
    pub pushed_at_seq: u64,
    pub pushed_by: NodeId,
}

impl Deployment {
    /// The total order that picks the winner among concurrent pushes.
    pub fn precedence(&self) -> (u64, NodeId) {
        (self.pushed_at_seq, self.pushed_by)
    }
}

/// The hash of a state's typed contents: equal on converged nodes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateHash(pub [u8; 32]);

impl fmt::Display for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHash({self})")
    }
}

/// The typed contents of a state, in canonical (sorted) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateContents {
    pub cluster_id: Option<String>,
    pub members: BTreeMap<NodeId, Member>,
    pub admitted: BTreeMap<NodeId, Admission>,
    pub deployments: BTreeMap<EnvKey, Deployment>,
    /// Environments whose winner is a deletion: (pushed_at_seq, pushed_by).
    pub removed: BTreeMap<EnvKey, (u64, NodeId)>,
    pub allocations: BTreeMap<Cid, BTreeSet<NodeId>>,
    /// Every token record, with its revocation if any.
    pub tokens: BTreeMap<TokenId, TokenEntry>,
    /// Domain → owning project.
    pub domains: BTreeMap<String, String>,
}

/// The record stored for a member (admission is kept apart).
#[derive(Serialize, Deserialize)]
struct MemberRecord {
    addresses: Vec<String>,
    role: Role,
    joined_by: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct InviteRecord {
    joined: String,
}

#[derive(Serialize, Deserialize)]
struct DeploymentRecord {
    commit: String,
    manifest_cid: String,
    artifacts: Vec<String>,
    pushed_at_seq: u64,
    pushed_by: String,
    /// A tombstone: the branch was deleted (commit and CIDs are empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
    /// The pusher's warrant for this push (or deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warrant: Option<Warrant>,
}

/// Where a put sits in the document's history: its op id, a Lamport
/// timestamp (counter, then actor), the order automerge itself uses to pick
/// a key's value, so every node that has the same changes sees the same
/// latest put.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OpOrder {
    pub counter: u64,
    pub actor: Vec<u8>,
}

/// One put of a record: where it sits in the history, the sequence number
/// of its change among its actor's, and the verified record.
#[derive(Clone, Debug)]
pub(super) struct Put {
    pub order: OpOrder,
    pub seq: u64,
    pub signed: Signed,
    /// For a deployment record: its pusher's warrant signs what it records
    /// (checked once, when the put is read).
    pub push_signed: bool,
}

/// Every signature-valid put of each key, oldest first.
pub(super) type Puts = BTreeMap<String, Vec<Put>>;

/// One candidate of an environment: a push or a deletion.
enum Candidate {
    Live(Deployment),
    Removed { precedence: (u64, NodeId) },
}

impl Candidate {
    fn precedence(&self) -> (u64, NodeId) {
        match self {
            Candidate::Live(d) => d.precedence(),
            Candidate::Removed { precedence } => *precedence,
        }
    }
}

/// One node's replica of the cluster state.
pub struct ClusterState {
    doc: AutoCommit,
    /// Signs every record this node writes.
    key: NodeKey,
    local: NodeId,
    /// The cluster this node founded or joined: the root of its trust.
    pin: Option<ClusterId>,
    /// Every put ever made to each key whose signature verified, in the
    /// document's (Lamport) order — read from the change history, not the
    /// document's current values, so that no later write or delete by a
    /// node that may not write the key can hide a valid record.
    puts: Puts,
    /// The document heads [`ClusterState::refresh`] has read up to.
    read_heads: Vec<automerge::ChangeHash>,
    /// What this node acts on: each key's latest put that the rules accept
    /// (tombstones removed). Readers use this, never the document.
    records: BTreeMap<String, Signed>,
    trust: Trust,
    /// Values this node sealed since the last refresh, with what reading
    /// them would find: their signatures need no checking (a verification
    /// costs ~40 µs, a push writes several records).
    sealed_here: BTreeMap<String, (Signed, bool)>,
}

impl fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterState")
            .field("local", &self.local)
            .field("state_hash", &self.state_hash())
            .finish()
    }
}

/// The actor id of `local`'s document in incarnation `incarnation`.
fn actor_for(local: &NodeId, incarnation: u64) -> ActorId {
    let mut bytes = Vec::with_capacity(40);
    bytes.extend_from_slice(&local.0);
    bytes.extend_from_slice(&incarnation.to_be_bytes());
    ActorId::from(bytes)
}

impl ClusterState {
    /// An empty state for the node with `key`. `incarnation` must differ
    /// between runs of the same node (take it from the node's `env::Rng`).
    pub fn new(key: NodeKey, incarnation: u64) -> Self {
        let local = key.node_id();
        Self {
            doc: AutoCommit::new().with_actor(actor_for(&local, incarnation)),
            key,
            local,
            pin: None,
            puts: Puts::new(),
            read_heads: Vec::new(),
            records: BTreeMap::new(),
            trust: Trust::default(),
            sealed_here: BTreeMap::new(),
        }
    }

    /// A state loaded from [`ClusterState::save`]'s bytes. It trusts the
    /// cluster id its document names (if that record is consistent): the
    /// node saved it.
    pub fn load(key: NodeKey, incarnation: u64, bytes: &[u8]) -> Result<Self, ClusterError> {
        Self::load_with_changes(key, incarnation, bytes, std::iter::empty()).map(|(s, _)| s)
    }

    /// A state loaded from a full save and the incremental saves after it
    /// ([`ClusterState::save_incremental`]), oldest first. Returns the
    /// indexes of the increments that could not be read (skipped: a peer
    /// resends whatever they held).
    pub fn load_with_changes<'a>(
        key: NodeKey,
        incarnation: u64,
        bytes: &[u8],
        changes: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(Self, Vec<usize>), ClusterError> {
        let mut doc = AutoCommit::load(bytes).map_err(|e| ClusterError::Load(Box::new(e)))?;
        let mut skipped = Vec::new();
        for (i, change) in changes.into_iter().enumerate() {
            if doc.load_incremental(change).is_err() {
                skipped.push(i);
            }
        }
        let mut state = Self::new(key, incarnation);
        state.doc = doc.with_actor(actor_for(&state.local, incarnation));
        state.refresh();
        if let Some(anchor) = state.puts.get(CLUSTER_ID_KEY).and_then(|p| p.first())
            && let Ok(record) = serde_json::from_str::<AnchorRecord>(&anchor.signed.body)
            && let Some(id) = ClusterId::parse(&record.id)
        {
            state.pin(id);
        }
        Ok((state, skipped))
    }

    /// Found a new cluster: write its id (a hash of this node's id and
    /// `nonce`) and admit this node, its first member.
    pub fn found(&mut self, nonce: [u8; CLUSTER_NONCE_BYTES]) -> Result<ClusterId, ClusterError> {
        // Checked in release builds too: a second id would split the cluster.
        assert!(self.cluster_id().is_none(), "a cluster's id is set once");
        let anchor = AnchorRecord::new(&self.local, &nonce);
        let id = ClusterId::derive(&self.local, &nonce);
        self.put_json(CLUSTER_ID_KEY, "cluster id", &anchor, None)?;
        self.pin(id);
        self.admit_founder()?;
        Ok(id)
    }

    /// Trust cluster `id`: the one this node is joining (its invite names
    /// it) or founded. Records of any other cluster are ignored.
    pub fn pin(&mut self, id: ClusterId) {
        self.pin = Some(id);
        self.retrust();
    }

    /// Read the changes merged into the document since the last call
    /// (sync, merge, local writes): verify each new put's signature, then
    /// recompute trust and the view.
    pub(crate) fn refresh(&mut self) {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for change in self.doc.get_changes(&self.read_heads) {
            let change = change.decode();
            for (i, op) in change.operations.iter().enumerate() {
                let (automerge::legacy::ObjectId::Root, automerge::legacy::Key::Map(key)) =
                    (&op.obj, &op.key)
                else {
                    continue;
                };
                let automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)) = &op.action
                else {
                    continue;
                };
                let order = OpOrder {
                    counter: change.start_op.get() + i as u64,
                    actor: change.actor_id.to_bytes().to_vec(),
                };
                let opened = match self.sealed_here.remove(text.as_str()) {
                    Some(known) => Ok(known),
                    None => record::open(key, text).map(|signed| {
                        let push_signed = push_signature_ok(key, &signed);
                        (signed, push_signed)
                    }),
                };
                match opened {
                    Ok((signed, push_signed)) => {
                        changed.insert(key.to_string());
                        let puts = self.puts.entry(key.to_string()).or_default();
                        let at = puts.partition_point(|put| put.order < order);
                        puts.insert(
                            at,
                            Put {
                                order,
                                seq: change.seq,
                                signed,
                                push_signed,
                            },
                        );
                    }
                    Err(why) => {
                        tracing::warn!(key = %key, %why, "cluster state: ignoring a record")
                    }
                }
            }
        }
        self.read_heads = self.doc.get_heads();
        self.sealed_here.clear();
        if changed.iter().any(|key| super::trust::shapes_trust(key)) {
            self.retrust();
        } else {
            // Trust is as it was: only the changed keys' view can differ.
            for key in changed {
                self.review(&key);
            }
        }
    }

    /// Seal `body` under `key` as this node (see [`record::seal`]), and
    /// remember what reading it back will find. Returns the value and
    /// whether it is a deployment record its pusher's warrant signs.
    fn seal_here(&mut self, key: &str, body: String, warrant: Option<&Warrant>) -> (String, bool) {
        let sealed = record::seal(&self.key, key, body.clone(), warrant);
        let signed = Signed {
            by: self.local,
            body,
            warrant: warrant.cloned(),
        };
        debug_assert_eq!(record::open(key, &sealed).as_ref(), Ok(&signed));
        // This node made the warrant from the pusher's token a moment ago
        // (`Deployer::mark_queued`): like its own seal, it needs no
        // verification here; the simulator's build still checks it.
        let push_signed = carries_push_warrant(key, &signed);
        debug_assert_eq!(
            push_signed,
            push_signature_ok(key, &signed),
            "{key}: a warrant this node made does not sign its push"
        );
        self.sealed_here
            .insert(sealed.clone(), (signed, push_signed));
        (sealed, push_signed)
    }

    /// What the view holds for `key` given `puts`, its puts: the latest
    /// put the rules accept, unless that is a tombstone.
    fn chosen(&self, key: &str, puts: &[Put]) -> Option<Signed> {
        puts.iter()
            .rev()
            .find(|put| self.acts_on(key, put))
            .filter(|put| !put.signed.is_tombstone())
            .map(|put| put.signed.clone())
    }

    /// Recompute `key`'s entry in the view.
    fn review(&mut self, key: &str) {
        match self.puts.get(key).and_then(|puts| self.chosen(key, puts)) {
            Some(signed) => {
                self.records.insert(key.to_owned(), signed);
            }
            None => {
                self.records.remove(key);
            }
        }
    }

    /// Recompute trust from every put, then the view from trust.
    fn retrust(&mut self) {
        self.trust = Trust::compute(&self.puts, self.pin, &self.trust);
        self.records = self
            .puts
            .iter()
            .filter_map(|(key, puts)| Some((key.clone(), self.chosen(key, puts)?)))
            .collect();
    }

    /// The whole document, compacted, for persisting.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes since the last [`ClusterState::save`] or
    /// `save_incremental`, for appending to a saved document (empty if
    /// none).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// The node this replica belongs to.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// The automerge document, for the sync protocol only.
    pub(crate) fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The document's heads: changes when anything is merged or written.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// Merge every change of `other` into this replica.
    pub fn merge(&mut self, other: &mut ClusterState) -> Result<(), ClusterError> {
        self.doc
            .merge(&mut other.doc)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "merge another replica",
            })?;
        self.refresh();
        Ok(())
    }

    // ----- members and admission -------------------------------------------

    /// Record (or replace) `node`'s member record.
    pub fn upsert_member(
        &mut self,
        node: NodeId,
        mut addresses: Vec<String>,
        role: Role,
        joined_by: Option<NodeId>,
    ) -> Result<(), ClusterError> {
        addresses.sort();
        addresses.dedup();
        let record = MemberRecord {
            addresses,
            role,
            joined_by: joined_by.as_ref().map(node_hex),
        };
        let key = format!("{MEMBER_PREFIX}{}", node_hex(&node));
        self.put_json(&key, "member", &record, None)
    }

    /// Put this node's own key in the admitted set: the founder's first
    /// record, the root of every other admission.
    fn admit_founder(&mut self) -> Result<(), ClusterError> {
        let key = format!("{ADMITTED_PREFIX}{}", node_hex(&self.local));
        let record = AdmissionRecord {
            admitted_by: node_hex(&self.local),
            invite: None,
        };
        self.put_json(&key, "admission", &record, None)
    }

    /// Put `node`'s key in the admitted set: it presented the invite with
    /// `nonce`, which this node issued (see
    /// [`ClusterState::record_invite_issued`]).
    pub fn admit_invited(&mut self, node: NodeId, nonce: &[u8]) -> Result<(), ClusterError> {
        let key = format!("{ADMITTED_PREFIX}{}", node_hex(&node));
        let record = AdmissionRecord {
            admitted_by: node_hex(&self.local),
            invite: Some(hex(nonce)),
        };
        self.put_json(&key, "admission", &record, None)
    }

    /// Record that this node issued the invite with `nonce`, at the request
    /// of the admin holding `warrantor`.
    pub fn record_invite_issued(
        &mut self,
        nonce: &[u8],
        expires_at_unix_s: u64,
        warrantor: &crate::auth::Token,
    ) -> Result<(), ClusterError> {
        let key = format!("{ISSUED_PREFIX}{}", hex(nonce));
        let record = IssuedRecord { expires_at_unix_s };
        self.put_warranted(&key, "invite", &record, warrantor)
    }

    /// Remove `node` from the cluster at the request of the admin holding
    /// `warrantor`: it is no longer admitted, and of its records only those
    /// this node has seen by now keep counting (see [`super::trust`]).
    pub fn remove_node(
        &mut self,
        node: NodeId,
        warrantor: &crate::auth::Token,
    ) -> Result<(), ClusterError> {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for put in self
            .puts
            .values()
            .flatten()
            .filter(|put| put.signed.by == node)
        {
            let last = seen.entry(hex(&put.order.actor)).or_default();
            *last = (*last).max(put.seq);
        }
        let key = format!("{REMOVED_PREFIX}{}", node_hex(&node));
        self.put_warranted(&key, "removal", &RemovalRecord { seen }, warrantor)
    }

    /// Write `body` under `key`, signed by this node, with no check at all:
    /// what a compromised node can do. Only for the simulator's rogue node
    /// and tests, which show that honest nodes ignore what it writes.
    #[doc(hidden)]
    pub fn forge(
        &mut self,
        key: &str,
        body: String,
        warrant: Option<&Warrant>,
    ) -> Result<(), ClusterError> {
        self.write(key, body, warrant, "write a record")
    }

    /// Nodes removed from the cluster.
    pub fn removed_nodes(&self) -> BTreeSet<NodeId> {
        self.trust.removed.keys().copied().collect()
    }

    /// Whether `node`'s key is admitted (by a chain of admissions from the
    /// founder).
    pub fn is_admitted(&self, node: &NodeId) -> bool {
        self.trust.is_admitted(node)
    }

    /// Every admitted node key.
    pub fn admitted(&self) -> BTreeMap<NodeId, Admission> {
        self.trust
            .admitted
            .iter()
            .map(|(node, by)| (*node, Admission { admitted_by: *by }))
            .collect()
    }

    /// Every member, with its admission flag.
    pub fn members(&self) -> BTreeMap<NodeId, Member> {
        let admitted = self.admitted();
        let mut out = BTreeMap::new();
        for (key, json) in self.entries(MEMBER_PREFIX) {
            let Some(node) = parse_node_hex(&key[MEMBER_PREFIX.len()..]) else {
                tracing::warn!(
                    key,
                    "cluster state: skipping a member key that is not a node id"
                );
                continue;
            };
            let Some(record) = decode::<MemberRecord>(&key, &json) else {
                continue;
            };
            out.insert(
                node,
                Member {
                    addresses: record.addresses,
                    role: record.role,
                    admitted: admitted.contains_key(&node),
                    joined_by: record.joined_by.as_deref().and_then(parse_node_hex),
                },
            );
        }
        out
    }

    // ----- deployments -----------------------------------------------------

    /// Record a push of `env` made on this node and return the deployment it
    /// becomes. See the module doc for how concurrent pushes are ordered.
    pub fn apply_deployment(
        &mut self,
        env: &EnvKey,
        update: DeploymentUpdate,
    ) -> Result<Deployment, ClusterError> {
        if !self.is_admitted(&self.local) {
            return Err(ClusterError::NotAdmitted(self.local));
        }
        let warrant = update.warrant.ok_or_else(|| ClusterError::Unwarranted {
            env: env.to_string(),
        })?;
        let mut artifacts = update.artifacts;
        artifacts.sort();
        artifacts.dedup();
        let record = DeploymentRecord {
            commit: update.commit.clone(),
            manifest_cid: update.manifest_cid.to_string(),
            artifacts: artifacts.iter().map(Cid::to_string).collect(),
            pushed_at_seq: 0,
            pushed_by: node_hex(&self.local),
            removed: false,
            warrant: Some(warrant),
        };
        let pushed_at_seq = self.supersede(env, record)?;
        let deployment = Deployment {
            commit: update.commit,
            manifest_cid: update.manifest_cid,
            artifacts,
            pushed_at_seq,
            pushed_by: self.local,
        };
        // Checked in release builds too: a local push that did not win would
        // be acknowledged and then lost to an older release on every node.
        assert_eq!(
            self.deployment(env).map(|d| d.precedence()),
            Some(deployment.precedence()),
            "a local push must win over every candidate it has seen"
        );
        Ok(deployment)
    }

    /// Remove `env`'s deployment (its branch was deleted): a tombstone that
    /// outranks every candidate this node has seen. A concurrent push of the
    /// same branch that this node has not seen may still win over it.
    /// Returns the tombstone's precedence; `None` if there was nothing to remove.
    pub fn remove_deployment(
        &mut self,
        env: &EnvKey,
        warrant: Option<&Warrant>,
    ) -> Result<Option<(u64, NodeId)>, ClusterError> {
        let live = matches!(
            self.candidates(env)
                .into_iter()
                .max_by_key(|(_, c)| c.precedence()),
            Some((_, Candidate::Live(_)))
        );
        if !live {
            return Ok(None);
        }
        let warrant = warrant.cloned().ok_or_else(|| ClusterError::Unwarranted {
            env: env.to_string(),
        })?;
        let tombstone = DeploymentRecord {
            commit: String::new(),
            manifest_cid: String::new(),
            artifacts: Vec::new(),
            pushed_at_seq: 0,
            pushed_by: node_hex(&self.local),
            removed: true,
            warrant: Some(warrant),
        };
        let pushed_at_seq = self.supersede(env, tombstone)?;
        Ok(Some((pushed_at_seq, self.local)))
    }

    /// Write `record` as `env`'s new candidate, ranked above every candidate
    /// this node has seen, and remove those, in one commit. Returns its
    /// `pushed_at_seq`.
    fn supersede(
        &mut self,
        env: &EnvKey,
        mut record: DeploymentRecord,
    ) -> Result<u64, ClusterError> {
        let seen = self.candidates(env);
        // No honest history reaches u64::MAX; a record there (forged or
        // corrupt) must not make this push wrap to 0 and lose to everything.
        record.pushed_at_seq = match seen.iter().map(|(_, c)| c.precedence()).max() {
            None => 1,
            Some((highest, written_by)) => {
                highest
                    .checked_add(1)
                    .ok_or_else(|| ClusterError::SequenceExhausted {
                        env: env.to_string(),
                        written_by,
                    })?
            }
        };
        let json = serde_json::to_string(&record).map_err(|source| ClusterError::Encode {
            what: "deployment",
            source,
        })?;
        let key = deploy_key(env, record.pushed_at_seq, &self.local);
        let (sealed, push_signed) = self.seal_here(&key, json.clone(), None);
        if !(push_signed && self.push_authorized(env, &json)) {
            self.sealed_here.clear();
            return Err(ClusterError::Unwarranted {
                env: env.to_string(),
            });
        }
        // This node's own older candidates go (tombstones: a node removes
        // only records it may write); other nodes' stay, outranked.
        let local = self.local;
        let own: Vec<String> = seen
            .into_iter()
            .map(|(old, _)| old)
            .filter(|old| parse_deploy_key(old).is_some_and(|(_, _, by)| by == local))
            .collect();
        for old in &own {
            let (tombstone, _) = self.seal_here(old, String::new(), None);
            self.doc
                .put(ROOT, old.as_str(), tombstone)
                .map_err(|source| ClusterError::Write {
                    source: Box::new(source),
                    action: "remove a superseded deployment",
                })?;
        }
        self.doc
            .put(ROOT, key.as_str(), sealed)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "write a deployment",
            })?;
        self.doc.commit();
        self.refresh();
        Ok(record.pushed_at_seq)
    }

    /// The live deployment of `env`, if any (none if its winner is a deletion).
    pub fn deployment(&self, env: &EnvKey) -> Option<Deployment> {
        match self
            .candidates(env)
            .into_iter()
            .map(|(_, c)| c)
            .max_by_key(Candidate::precedence)?
        {
            Candidate::Live(d) => Some(d),
            Candidate::Removed { .. } => None,
        }
    }

    /// The winning candidate of every environment.
    fn winners(&self) -> BTreeMap<EnvKey, Candidate> {
        let mut out: BTreeMap<EnvKey, Candidate> = BTreeMap::new();
        for (key, json) in self.entries(DEPLOY_PREFIX) {
            let Some((env, _, _)) = parse_deploy_key(&key) else {
                tracing::warn!(key, "cluster state: skipping a malformed deployment key");
                continue;
            };
            let Some(candidate) = decode_candidate(&key, &json) else {
                continue;
            };
            // The injected bug picks the oldest candidate instead.
            let stale = crate::bugs::active(crate::bugs::Bug::ApplyStaleDeployment);
            match out.get(&env) {
                Some(current)
                    if (current.precedence() >= candidate.precedence()) != stale
                        || current.precedence() == candidate.precedence() => {}
                _ => {
                    out.insert(env, candidate);
                }
            }
        }
        out
    }

    /// The live deployment of every environment.
    pub fn deployments(&self) -> BTreeMap<EnvKey, Deployment> {
        self.winners()
            .into_iter()
            .filter_map(|(env, c)| match c {
                Candidate::Live(d) => Some((env, d)),
                Candidate::Removed { .. } => None,
            })
            .collect()
    }

    /// Environments whose branch was deleted, with the deletion's precedence:
    /// a node serving a release of lower precedence must take it down.
    pub fn removed(&self) -> BTreeMap<EnvKey, (u64, NodeId)> {
        self.winners()
            .into_iter()
            .filter_map(|(env, c)| match c {
                Candidate::Removed { precedence } => Some((env, precedence)),
                Candidate::Live(_) => None,
            })
            .collect()
    }

    // ----- cluster identity and invites ------------------------------------

    /// The cluster's id, once founded (or synced from the founder): the
    /// pinned id, once its founder's record proves it.
    pub fn cluster_id(&self) -> Option<String> {
        self.trust.cluster.map(|id| id.to_string())
    }

    /// The node that founded the cluster, once known.
    pub fn founder(&self) -> Option<NodeId> {
        self.trust.founder
    }

    /// Record that the invite token with `nonce` admitted `node`.
    pub fn record_invite_used(&mut self, nonce: &[u8], node: NodeId) -> Result<(), ClusterError> {
        let key = format!("{INVITE_PREFIX}{}", hex(nonce));
        self.put_json(
            &key,
            "invite",
            &InviteRecord {
                joined: node_hex(&node),
            },
            None,
        )
    }

    /// The node an invite token (by nonce) admitted, if it was used.
    pub fn invite_used_by(&self, nonce: &[u8]) -> Option<NodeId> {
        let key = format!("{INVITE_PREFIX}{}", hex(nonce));
        let json = self.body(&key)?;
        let record: InviteRecord = decode(&key, &json)?;
        parse_node_hex(&record.joined)
    }

    /// Host name → environment, for the cloud's own zone (`localhost` in
    /// dream): `<project>.<zone>` reaches `main`, `<branch>.<project>.<zone>`
    /// reaches `<branch>`. Branches whose name is not a DNS label get no
    /// preview host.
    pub fn routes(&self, zone: &str) -> BTreeMap<String, EnvKey> {
        let mut out = BTreeMap::new();
        for env in self.deployments().into_keys() {
            let host = if env.branch == "main" {
                format!("{}.{zone}", env.project)
            } else if is_dns_label(&env.branch) {
                format!("{}.{}.{zone}", env.branch, env.project)
            } else {
                continue;
            };
            out.insert(host, env);
        }
        out
    }

    /// Every blob a live deployment references (manifests and artifacts):
    /// the blobs the cluster must keep.
    pub fn referenced_blobs(&self) -> BTreeSet<Cid> {
        let mut out = BTreeSet::new();
        for d in self.deployments().into_values() {
            out.insert(d.manifest_cid);
            out.extend(d.artifacts);
        }
        out
    }

    // ----- tokens ----------------------------------------------------------

    /// Record a new token (its id is random, so no other node writes it),
    /// warranted by the admin who asked (`warrantor`; the token itself for
    /// the founder's first admin token).
    pub fn put_token(
        &mut self,
        record: &TokenRecord,
        warrantor: &crate::auth::Token,
    ) -> Result<(), ClusterError> {
        let key = format!("{TOKEN_PREFIX}{}", record.id);
        self.put_warranted(&key, "token", record, warrantor)
    }

    /// Revoke token `id`. A revocation is its own key, never deleted: a
    /// node that has seen it refuses the token for good, whatever else
    /// merges later.
    pub fn revoke_token(
        &mut self,
        id: &TokenId,
        revocation: &Revocation,
        warrantor: &crate::auth::Token,
    ) -> Result<(), ClusterError> {
        let key = format!("{REVOKED_PREFIX}{id}");
        if self.trust.revoked_seen.contains_key(id) {
            return Ok(());
        }
        self.put_warranted(&key, "revocation", revocation, warrantor)
    }

    /// Token `id` and its revocation, if the state has a valid record.
    pub fn token(&self, id: &TokenId) -> Option<TokenEntry> {
        self.trust.tokens.get(id).cloned()
    }

    /// How many token records the state holds (revoked and invalid ones
    /// included): the bound [`crate::auth::MAX_TOKENS`] applies to this.
    pub fn token_count(&self) -> usize {
        super::trust::range(&self.puts, TOKEN_PREFIX).count()
    }

    /// Every valid token record, with its revocation.
    pub fn tokens(&self) -> BTreeMap<TokenId, TokenEntry> {
        self.trust.tokens.clone()
    }

    // ----- domains ---------------------------------------------------------

    /// Every claimed domain and the project that owns it.
    pub fn domain_owners(&self) -> BTreeMap<String, String> {
        self.keys(DOMAIN_PREFIX)
            .into_iter()
            .filter_map(|key| {
                let record: DomainRecord = decode(&key, &self.body(&key)?)?;
                Some((key[DOMAIN_PREFIX.len()..].to_owned(), record.project))
            })
            .collect()
    }

    /// Make `project` the owner of `domain`: a first claim (by the node a
    /// push of `project` reached), or an admin's transfer (`warrantor`: the
    /// admin's token).
    pub fn set_domain_owner(
        &mut self,
        domain: &str,
        project: &str,
        warrantor: Option<&crate::auth::Token>,
    ) -> Result<(), ClusterError> {
        let key = format!("{DOMAIN_PREFIX}{domain}");
        let record = DomainRecord {
            project: project.to_owned(),
        };
        if self.domain_owners().get(domain) == Some(&record.project) {
            return Ok(());
        }
        match warrantor {
            Some(warrantor) => self.put_warranted(&key, "domain", &record, warrantor),
            None => self.put_json(&key, "domain", &record, None),
        }
    }

    // ----- allocations -----------------------------------------------------

    /// Record that `node` holds blob `cid`.
    pub fn add_holder(&mut self, cid: &Cid, node: NodeId) -> Result<(), ClusterError> {
        let key = alloc_key(cid, &node);
        if self.records.get(&key).is_some_and(|r| r.by == self.local) {
            return Ok(());
        }
        self.put_json(&key, "allocation", &true, None)
    }

    /// Record that `node` no longer holds blob `cid`.
    pub fn remove_holder(&mut self, cid: &Cid, node: NodeId) -> Result<(), ClusterError> {
        self.delete_key(&alloc_key(cid, &node))
    }

    /// The nodes recorded as holding `cid`.
    pub fn holders(&self, cid: &Cid) -> BTreeSet<NodeId> {
        let prefix = format!("{ALLOC_PREFIX}{cid}/");
        self.keys(&prefix)
            .iter()
            .filter_map(|key| parse_node_hex(&key[prefix.len()..]))
            .collect()
    }

    /// Every blob's recorded holders.
    pub fn allocations(&self) -> BTreeMap<Cid, BTreeSet<NodeId>> {
        let mut out: BTreeMap<Cid, BTreeSet<NodeId>> = BTreeMap::new();
        for key in self.keys(ALLOC_PREFIX) {
            let rest = &key[ALLOC_PREFIX.len()..];
            let parsed = rest
                .split_once('/')
                .and_then(|(cid, node)| Some((parse_cid(cid)?, parse_node_hex(node)?)));
            match parsed {
                Some((cid, node)) => {
                    out.entry(cid).or_default().insert(node);
                }
                None => tracing::warn!(key, "cluster state: skipping a malformed allocation key"),
            }
        }
        out
    }

    // ----- the whole -------------------------------------------------------

    /// The typed contents, sorted.
    pub fn contents(&self) -> StateContents {
        StateContents {
            cluster_id: self.cluster_id(),
            members: self.members(),
            admitted: self.admitted(),
            deployments: self.deployments(),
            removed: self.removed(),
            allocations: self.allocations(),
            tokens: self.tokens(),
            domains: self.domain_owners(),
        }
    }

    /// A hash of [`ClusterState::contents`]: equal on nodes that converged.
    pub fn state_hash(&self) -> StateHash {
        let contents = self.contents();
        let mut sha = Sha256::new();
        // A length-prefixed, sorted encoding: no two contents share one.
        let mut field = |bytes: &[u8]| {
            sha.update((bytes.len() as u64).to_be_bytes());
            sha.update(bytes);
        };
        field(b"cluster");
        field(contents.cluster_id.as_deref().unwrap_or("").as_bytes());
        field(b"members");
        for (node, m) in &contents.members {
            field(&node.0);
            field(&(m.addresses.len() as u64).to_be_bytes());
            for a in &m.addresses {
                field(a.as_bytes());
            }
            field(&[m.role as u8, u8::from(m.admitted)]);
            field(m.joined_by.as_ref().map(|n| &n.0[..]).unwrap_or(&[]));
        }
        field(b"admitted");
        for (node, a) in &contents.admitted {
            field(&node.0);
            field(&a.admitted_by.0);
        }
        field(b"deployments");
        for (env, d) in &contents.deployments {
            field(env.project.as_bytes());
            field(env.branch.as_bytes());
            field(d.commit.as_bytes());
            field(&d.manifest_cid.to_bytes());
            field(&(d.artifacts.len() as u64).to_be_bytes());
            for c in &d.artifacts {
                field(&c.to_bytes());
            }
            field(&d.pushed_at_seq.to_be_bytes());
            field(&d.pushed_by.0);
        }
        field(b"removed");
        for (env, (seq, by)) in &contents.removed {
            field(env.project.as_bytes());
            field(env.branch.as_bytes());
            field(&seq.to_be_bytes());
            field(&by.0);
        }
        field(b"allocations");
        for (cid, holders) in &contents.allocations {
            field(&cid.to_bytes());
            for h in holders {
                field(&h.0);
            }
        }
        field(b"tokens");
        for (id, entry) in &contents.tokens {
            field(id.to_string().as_bytes());
            // The record's canonical JSON (field order is the struct's).
            field(&serde_json::to_vec(entry).expect("token entries serialise"));
        }
        field(b"domains");
        for (domain, project) in &contents.domains {
            field(domain.as_bytes());
            field(project.as_bytes());
        }
        StateHash(sha.finalize().into())
    }

    // ----- helpers ---------------------------------------------------------

    /// Write `record` under `key`, signed by this node (and warranted).
    fn put_json<T: Serialize>(
        &mut self,
        key: &str,
        what: &'static str,
        record: &T,
        warrant: Option<&Warrant>,
    ) -> Result<(), ClusterError> {
        let json = serde_json::to_string(record)
            .map_err(|source| ClusterError::Encode { what, source })?;
        self.write(key, json, warrant, "write a record")
    }

    /// Seal `body` under `key` as this node, write it in one commit and read
    /// it back into the view.
    fn write(
        &mut self,
        key: &str,
        body: String,
        warrant: Option<&Warrant>,
        action: &'static str,
    ) -> Result<(), ClusterError> {
        let (sealed, _) = self.seal_here(key, body, warrant);
        self.doc
            .put(ROOT, key, sealed)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action,
            })?;
        self.doc.commit();
        self.refresh();
        Ok(())
    }

    /// [`ClusterState::put_json`] with a warrant from `warrantor`'s holder.
    fn put_warranted<T: Serialize>(
        &mut self,
        key: &str,
        what: &'static str,
        record: &T,
        warrantor: &crate::auth::Token,
    ) -> Result<(), ClusterError> {
        let json = serde_json::to_string(record)
            .map_err(|source| ClusterError::Encode { what, source })?;
        let warrant = warrantor.warrant(&record::message(key, &json));
        self.write(key, json, Some(&warrant), "write a record")
    }

    /// Remove the record under `key`: a signed tombstone, which (unlike an
    /// automerge delete) names its author, so the rules decide whether it
    /// counts.
    fn delete_key(&mut self, key: &str) -> Result<(), ClusterError> {
        if !self.records.contains_key(key) {
            return Ok(());
        }
        self.write(key, String::new(), None, "remove a record")
    }

    /// The body of the record under `key`, if this node acts on it.
    fn body(&self, key: &str) -> Option<String> {
        self.records.get(key).map(|signed| signed.body.clone())
    }

    /// Whether this node acts on `signed`, the record under `key`: its
    /// author may write it (see [`super::trust`]). Admissions, tokens,
    /// revocations and the cluster id are judged as a whole by
    /// [`Trust::compute`] and read from there.
    fn acts_on(&self, key: &str, put: &Put) -> bool {
        let signed = &put.signed;
        if crate::bugs::active(crate::bugs::Bug::TrustAnySigner)
            && !key.starts_with(ADMITTED_PREFIX)
        {
            return true;
        }
        // A removed node's member and allocation records go with it; its
        // deployments and the rest count if they came before its removal.
        let member = self.trust.is_admitted(&signed.by);
        let admitted = self.trust.may_author(put);
        if let Some(rest) = key.strip_prefix(MEMBER_PREFIX) {
            member && parse_node_hex(rest) == Some(signed.by)
        } else if let Some(rest) = key.strip_prefix(ALLOC_PREFIX) {
            member
                && rest
                    .rsplit_once('/')
                    .and_then(|(_, node)| parse_node_hex(node))
                    == Some(signed.by)
        } else if key.starts_with(DEPLOY_PREFIX) {
            let Some((env, _, node)) = parse_deploy_key(key) else {
                return false;
            };
            // A node's own older candidate goes with a tombstone; anything
            // else needs its pusher's warrant.
            admitted
                && node == signed.by
                && (signed.is_tombstone()
                    || (put.push_signed && self.push_authorized(&env, &signed.body)))
        } else if key.starts_with(INVITE_PREFIX) {
            admitted
        } else if key.starts_with(DOMAIN_PREFIX) {
            admitted && (signed.warrant.is_none() || self.trust.admin_warranted(signed))
        } else {
            // Admissions, invites issued, tokens, revocations and the cluster
            // id: judged as a whole by [`Trust::compute`], read from there.
            false
        }
    }

    /// Whether the warrant in deployment record `body` is a valid token's
    /// that may deploy `env`'s project (its signature is checked on read).
    /// A token revoked later still vouches for what it pushed before.
    fn push_authorized(&self, env: &EnvKey, body: &str) -> bool {
        let Ok(DeploymentRecord {
            warrant: Some(warrant),
            ..
        }) = serde_json::from_str::<DeploymentRecord>(body)
        else {
            return false;
        };
        self.trust.tokens.get(&warrant.token).is_some_and(|entry| {
            entry.record.warrant_key.as_deref() == Some(hex(&warrant.key.0).as_str())
                && entry.record.principal.may_deploy(&env.project)
        })
    }

    /// Every (key, record body) under `prefix` this node acts on, in key order.
    fn entries(&self, prefix: &str) -> Vec<(String, String)> {
        super::trust::range(&self.records, prefix)
            .map(|(rest, signed)| (format!("{prefix}{rest}"), signed.body.clone()))
            .collect()
    }

    /// Every key under `prefix` whose record this node acts on, in key order.
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.entries(prefix)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Every candidate record of `env`: (key, deployment).
    fn candidates(&self, env: &EnvKey) -> Vec<(String, Candidate)> {
        let prefix = format!("{DEPLOY_PREFIX}{}/{}/", env.project, env.branch);
        self.entries(&prefix)
            .into_iter()
            .filter(|(key, _)| {
                parse_deploy_key(key).is_some_and(|(candidate_env, _, _)| candidate_env == *env)
            })
            .filter_map(|(key, json)| {
                let c = decode_candidate(&key, &json)?;
                Some((key, c))
            })
            .collect()
    }
}

fn deploy_key(env: &EnvKey, seq: u64, node: &NodeId) -> String {
    format!(
        "{DEPLOY_PREFIX}{}/{}/{seq:020}/{}",
        env.project,
        env.branch,
        node_hex(node)
    )
}

/// Split a deployment key into (environment, seq, node). The branch may
/// contain '/', the project (a DNS label) may not: parse from both ends.
fn parse_deploy_key(key: &str) -> Option<(EnvKey, u64, NodeId)> {
    let rest = key.strip_prefix(DEPLOY_PREFIX)?;
    let (project, rest) = rest.split_once('/')?;
    let (rest, node) = rest.rsplit_once('/')?;
    let (branch, seq) = rest.rsplit_once('/')?;
    if project.is_empty() || branch.is_empty() {
        return None;
    }
    Some((
        EnvKey {
            project: project.to_string(),
            branch: branch.to_string(),
        },
        seq.parse().ok()?,
        parse_node_hex(node)?,
    ))
}

fn alloc_key(cid: &Cid, node: &NodeId) -> String {
    format!("{ALLOC_PREFIX}{cid}/{}", node_hex(node))
}

/// Whether the deployment record under `key`, written by this node, carries
/// a pusher's warrant (unchecked: see [`ClusterState::seal_here`]).
fn carries_push_warrant(key: &str, signed: &Signed) -> bool {
    parse_deploy_key(key).is_some_and(|(_, _, node)| node == signed.by)
        && serde_json::from_str::<DeploymentRecord>(&signed.body)
            .is_ok_and(|record| record.warrant.is_some())
}

/// Whether the deployment record under `key` carries a pusher's warrant
/// that signs it: the push of its commit (or the deletion) to its
/// environment through its author. Tombstones and other records: false.
fn push_signature_ok(key: &str, signed: &Signed) -> bool {
    let Some((env, _, node)) = parse_deploy_key(key) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<DeploymentRecord>(&signed.body) else {
        return false;
    };
    let Some(warrant) = &record.warrant else {
        return false;
    };
    let commit = (!record.removed).then_some(record.commit.as_str());
    node == signed.by
        && warrant.verifies(&crate::auth::push_statement(
            &env.project,
            &env.branch,
            commit,
            &node,
        ))
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, json: &str) -> Option<T> {
    match serde_json::from_str(json) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(key, error = %e, "cluster state: skipping a record this version cannot read");
            None
        }
    }
}

fn decode_candidate(key: &str, json: &str) -> Option<Candidate> {
    let record: DeploymentRecord = decode(key, json)?;
    if record.removed {
        return Some(Candidate::Removed {
            precedence: (record.pushed_at_seq, parse_node_hex(&record.pushed_by)?),
        });
    }
    let manifest_cid = parse_cid(&record.manifest_cid)?;
    let artifacts = record
        .artifacts
        .iter()
        .map(|c| parse_cid(c))
        .collect::<Option<Vec<_>>>()?;
    Some(Candidate::Live(Deployment {
        commit: record.commit,
        manifest_cid,
        artifacts,
        pushed_at_seq: record.pushed_at_seq,
        pushed_by: parse_node_hex(&record.pushed_by)?,
    }))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Token};
    use crate::cluster::testing::{founded_state, joined_state, push_warrant, test_key};
    use crate::env::Rng;
    use crate::store::cid_of;

    fn node(n: u8) -> NodeId {
        test_key(n).node_id()
    }

    fn env(branch: &str) -> EnvKey {
        EnvKey {
            project: "shop".into(),
            branch: branch.into(),
        }
    }

    /// A push of `commit` to shop's `branch` on `s`, warranted by the test
    /// admin token.
    fn push(s: &mut ClusterState, branch: &str, commit: &str) -> Result<Deployment, ClusterError> {
        let node = s.local_id();
        s.apply_deployment(
            &env(branch),
            DeploymentUpdate {
                commit: commit.into(),
                manifest_cid: cid_of(commit.as_bytes()),
                artifacts: vec![cid_of(b"a"), cid_of(b"b")],
                warrant: Some(push_warrant(node, &env(branch), Some(commit))),
            },
        )
    }

    #[test]
    fn a_record_at_the_last_sequence_number_refuses_the_push_instead_of_wrapping() {
        let mut state = founded_state(1);
        let mut rogue = joined_state(2, &mut state);
        let shop = env("main");
        // Only a forged or corrupt record sits at u64::MAX.
        let forged = DeploymentRecord {
            commit: "forged".into(),
            manifest_cid: cid_of(b"forged").to_string(),
            artifacts: Vec::new(),
            pushed_at_seq: u64::MAX,
            pushed_by: node_hex(&node(2)),
            removed: false,
            warrant: Some(push_warrant(node(2), &shop, Some("forged"))),
        };
        rogue
            .put_json(
                &deploy_key(&shop, u64::MAX, &node(2)),
                "deployment",
                &forged,
                None,
            )
            .unwrap();
        state.merge(&mut rogue).unwrap();

        let error = push(&mut state, "main", "c1").unwrap_err();
        assert!(
            matches!(&error, ClusterError::SequenceExhausted { written_by, .. } if *written_by == node(2)),
            "{error}"
        );
        assert!(error.to_string().contains("shop@main"), "{error}");
        let error = state
            .remove_deployment(&shop, Some(&push_warrant(node(1), &shop, None)))
            .unwrap_err();
        assert!(
            matches!(error, ClusterError::SequenceExhausted { .. }),
            "{error}"
        );
        // Nothing was written: the state still has the one record.
        assert_eq!(
            state.deployment(&shop).map(|d| d.pushed_at_seq),
            Some(u64::MAX)
        );
    }

    #[test]
    fn domain_owners_are_records_in_the_state_hash() {
        let mut a = founded_state(1);
        let before = a.state_hash();
        a.set_domain_owner("shop.example.com", "shop", None)
            .unwrap();
        assert_eq!(a.domain_owners()["shop.example.com"], "shop");
        assert_ne!(a.state_hash(), before);
        let claimed = a.state_hash();
        // Writing the same owner again changes nothing.
        a.set_domain_owner("shop.example.com", "shop", None)
            .unwrap();
        assert_eq!(a.state_hash(), claimed);
        a.set_domain_owner("shop.example.com", "rival", None)
            .unwrap();
        assert_eq!(a.domain_owners()["shop.example.com"], "rival");
    }

    #[test]
    fn a_later_push_supersedes_and_prunes() {
        let mut s = founded_state(1);
        push(&mut s, "main", "c1").unwrap();
        let d = push(&mut s, "main", "c2").unwrap();
        assert_eq!(d.pushed_at_seq, 2);
        assert_eq!(s.deployment(&env("main")).unwrap().commit, "c2");
        assert_eq!(
            s.candidates(&env("main")).len(),
            1,
            "older candidate pruned"
        );
    }

    #[test]
    fn branches_with_slashes_are_separate_environments() {
        let mut s = founded_state(1);
        push(&mut s, "a", "c1").unwrap();
        push(&mut s, "a/b", "c2").unwrap();
        let all = s.deployments();
        assert_eq!(all[&env("a")].commit, "c1");
        assert_eq!(all[&env("a/b")].commit, "c2");
        assert_eq!(s.candidates(&env("a")).len(), 1);
        let routes = s.routes("localhost");
        assert_eq!(routes.get("a.shop.localhost"), Some(&env("a")));
        assert_eq!(routes.len(), 1, "a/b is not a DNS label: {routes:?}");
    }

    #[test]
    fn members_admission_and_holders() {
        let mut s = founded_state(1);
        let mut two = joined_state(2, &mut s);
        two.upsert_member(
            node(2),
            vec!["b".into(), "a".into()],
            Role::Full,
            Some(node(1)),
        )
        .unwrap();
        s.merge(&mut two).unwrap();
        let m = &s.members()[&node(2)];
        assert!(m.admitted);
        assert_eq!(m.addresses, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(m.joined_by, Some(node(1)));
        s.remove_node(node(2), &crate::cluster::testing::test_admin_token())
            .unwrap();
        // A node out of the admitted set is no member: its records are not read.
        assert!(!s.is_admitted(&node(2)));
        assert!(!s.members().contains_key(&node(2)));

        let c = cid_of(b"blob");
        let mut three = joined_state(3, &mut s);
        s.add_holder(&c, node(1)).unwrap();
        three.add_holder(&c, node(3)).unwrap();
        s.merge(&mut three).unwrap();
        assert_eq!(s.holders(&c), BTreeSet::from([node(1), node(3)]));
        s.remove_holder(&c, node(1)).unwrap();
        assert_eq!(s.holders(&c), BTreeSet::from([node(3)]));
        assert_eq!(s.allocations()[&c], BTreeSet::from([node(3)]));
    }

    #[test]
    fn save_and_load_keep_contents() {
        let mut s = founded_state(1);
        push(&mut s, "main", "c1").unwrap();
        let bytes = s.save();
        let mut loaded = ClusterState::load(test_key(1), 1, &bytes).unwrap();
        assert_eq!(loaded.state_hash(), s.state_hash());
        // The new incarnation can write on top of the old history.
        push(&mut loaded, "main", "c2").unwrap();
        assert_eq!(loaded.deployment(&env("main")).unwrap().pushed_at_seq, 2);
    }

    /// A token issued by `admin` (or self-warranted when `None`), as the
    /// admin API would write it.
    fn token_record(rng: &Rng, principal: Principal) -> (Token, TokenRecord) {
        let token = Token::generate(rng);
        let record = TokenRecord {
            id: token.id(),
            principal,
            label: "t".into(),
            secret_sha256: token.secret_hash(),
            created_at_unix_s: 1,
            expires_at_unix_s: None,
            created_by: "test".into(),
            warrant_key: Some(hex(&token.warrant_key().node_id().0)),
        };
        (token, record)
    }

    #[test]
    fn a_node_writes_only_its_own_member_allocation_and_deployment_records() {
        let mut honest = founded_state(1);
        let mut rogue = joined_state(3, &mut honest);
        let victim = node(2);
        let c = cid_of(b"blob");
        // Each is signed by the rogue but names another node.
        rogue
            .upsert_member(victim, vec!["evil:1".into()], Role::Full, None)
            .unwrap();
        rogue.add_holder(&c, victim).unwrap();
        let forged = DeploymentRecord {
            commit: "forged".into(),
            manifest_cid: cid_of(b"forged").to_string(),
            artifacts: Vec::new(),
            pushed_at_seq: 99,
            pushed_by: node_hex(&victim),
            removed: false,
            warrant: Some(push_warrant(victim, &env("main"), Some("forged"))),
        };
        rogue
            .put_json(
                &deploy_key(&env("main"), 99, &victim),
                "deployment",
                &forged,
                None,
            )
            .unwrap();
        let before = honest.state_hash();
        honest.merge(&mut rogue).unwrap();
        assert!(!honest.members().contains_key(&victim));
        assert!(honest.holders(&c).is_empty());
        assert_eq!(honest.deployment(&env("main")), None);
        assert_eq!(
            honest.state_hash(),
            before,
            "ignored records are not part of the state"
        );
    }

    #[test]
    fn records_of_unadmitted_nodes_altered_records_and_another_founder_are_ignored() {
        let mut honest = founded_state(1);
        // A node nobody admitted writes its own deployment.
        let mut outsider = ClusterState::new(test_key(9), 0);
        assert!(matches!(
            push(&mut outsider, "main", "outsider"),
            Err(ClusterError::NotAdmitted(_))
        ));
        let record = DeploymentRecord {
            commit: "outsider".into(),
            manifest_cid: cid_of(b"outsider").to_string(),
            artifacts: Vec::new(),
            pushed_at_seq: 1,
            pushed_by: node_hex(&node(9)),
            removed: false,
            warrant: Some(push_warrant(node(9), &env("main"), Some("outsider"))),
        };
        outsider
            .put_json(
                &deploy_key(&env("main"), 1, &node(9)),
                "deployment",
                &record,
                None,
            )
            .unwrap();
        honest.merge(&mut outsider).unwrap();
        assert_eq!(honest.deployment(&env("main")), None);

        // A rogue member founds "its own" cluster inside this one: it
        // rewrites the cluster id and admits itself.
        let mut rogue = joined_state(3, &mut honest);
        let id = honest.cluster_id();
        let anchor = AnchorRecord::new(&node(3), &[3; 16]);
        rogue
            .put_json(CLUSTER_ID_KEY, "cluster id", &anchor, None)
            .unwrap();
        // ... with an invite no admin asked for (a project token's warrant).
        let (project, _) = token_record(&Rng::seeded(8), Principal::project("shop").unwrap());
        rogue
            .record_invite_issued(&[4; 16], u64::MAX, &project)
            .unwrap();
        rogue.admit_invited(node(4), &[4; 16]).unwrap();
        honest.merge(&mut rogue).unwrap();
        assert_eq!(honest.cluster_id(), id, "the pinned cluster stays");
        assert!(!honest.is_admitted(&node(4)));

        // A node that joins after the rogue's rewrite still finds the
        // founder's record in the history.
        let mut other = joined_state(5, &mut honest);
        assert_eq!(other.cluster_id(), id);
        // A record altered after signing, or deleted behind the rules' back
        // (an automerge delete names no author): the signed one stays.
        push(&mut other, "main", "good").unwrap();
        let key = deploy_key(&env("main"), 1, &node(5));
        honest.merge(&mut other).unwrap();
        rogue.merge(&mut honest).unwrap();
        let sealed = match automerge::ReadDoc::get(&rogue.doc, ROOT, key.as_str()) {
            Ok(Some((automerge::Value::Scalar(v), _))) => v.as_str().map(str::to_owned),
            _ => None,
        };
        let altered = sealed
            .expect("the rogue has the record")
            .replace("good", "evil");
        rogue.doc.put(ROOT, key.as_str(), altered).unwrap();
        rogue.doc.commit();
        honest.merge(&mut rogue).unwrap();
        assert_eq!(honest.deployment(&env("main")).unwrap().commit, "good");
        rogue.doc.delete(ROOT, key.as_str()).unwrap();
        rogue.doc.commit();
        honest.merge(&mut rogue).unwrap();
        assert_eq!(honest.deployment(&env("main")).unwrap().commit, "good");
    }

    #[test]
    fn only_an_admins_warrant_makes_a_token_and_a_revocation_sticks() {
        let rng = Rng::seeded(3);
        let mut honest = founded_state(1);
        let (admin, admin_record) = token_record(&rng, Principal::Admin);
        honest.put_token(&admin_record, &admin).unwrap();
        assert!(
            honest.token(&admin.id()).is_some(),
            "the founder's first admin token"
        );

        let mut rogue = joined_state(3, &mut honest);
        // A rogue node mints an admin token for itself: self-warranted, but
        // it is not the founder.
        let (forged, forged_record) = token_record(&rng, Principal::Admin);
        rogue.put_token(&forged_record, &forged).unwrap();
        // ... and one warranted by a project token it saw.
        let (project, project_record) = token_record(&rng, Principal::project("shop").unwrap());
        honest.put_token(&project_record, &admin).unwrap();
        rogue.merge(&mut honest).unwrap();
        let (minted, minted_record) = token_record(&rng, Principal::Admin);
        rogue.put_token(&minted_record, &project).unwrap();
        // A token an admin asked for, through the rogue node: valid.
        let (asked, asked_record) = token_record(&rng, Principal::project("shop").unwrap());
        rogue.put_token(&asked_record, &admin).unwrap();
        honest.merge(&mut rogue).unwrap();
        assert!(honest.token(&forged.id()).is_none());
        assert!(honest.token(&minted.id()).is_none());
        assert!(honest.token(&project.id()).is_some());
        assert!(honest.token(&asked.id()).is_some());

        // A revocation without an admin's warrant is ignored.
        let revocation = Revocation {
            revoked_at_unix_s: 2,
            revoked_by: "rogue".into(),
        };
        rogue
            .revoke_token(&admin.id(), &revocation, &project)
            .unwrap();
        honest.merge(&mut rogue).unwrap();
        assert_eq!(honest.token(&admin.id()).unwrap().revoked, None);

        // An admin's revocation sticks, even if a rogue deletes the record.
        honest
            .revoke_token(&project.id(), &revocation, &admin)
            .unwrap();
        rogue.merge(&mut honest).unwrap();
        rogue
            .delete_key(&format!("{REVOKED_PREFIX}{}", project.id()))
            .unwrap();
        honest.merge(&mut rogue).unwrap();
        assert!(honest.token(&project.id()).unwrap().revoked.is_some());
    }

    #[test]
    fn a_domain_transfer_needs_an_admins_warrant() {
        let rng = Rng::seeded(4);
        let mut honest = founded_state(1);
        let (admin, admin_record) = token_record(&rng, Principal::Admin);
        honest.put_token(&admin_record, &admin).unwrap();
        let (project, project_record) = token_record(&rng, Principal::project("rival").unwrap());
        honest.put_token(&project_record, &admin).unwrap();
        honest
            .set_domain_owner("shop.example.com", "shop", None)
            .unwrap();
        let mut rogue = joined_state(3, &mut honest);
        rogue
            .set_domain_owner("shop.example.com", "rival", Some(&project))
            .unwrap();
        honest.merge(&mut rogue).unwrap();
        // No node acts on the forged transfer, and it hides nothing.
        assert_eq!(honest.domain_owners()["shop.example.com"], "shop");
        honest
            .set_domain_owner("shop.example.com", "rival", Some(&admin))
            .unwrap();
        assert_eq!(honest.domain_owners()["shop.example.com"], "rival");
    }

    #[test]
    fn a_removed_nodes_later_records_are_ignored_and_its_earlier_ones_kept() {
        let mut honest = founded_state(1);
        let mut gone = joined_state(2, &mut honest);
        push(&mut gone, "main", "before").unwrap();
        honest.merge(&mut gone).unwrap();
        honest
            .remove_node(node(2), &crate::cluster::testing::test_admin_token())
            .unwrap();
        assert!(honest.removed_nodes().contains(&node(2)));
        // Written after the removal, by a node that has not heard of it.
        push(&mut gone, "preview", "after").unwrap();
        gone.upsert_member(node(2), vec!["x".into()], Role::Full, None)
            .unwrap();
        honest.merge(&mut gone).unwrap();
        assert!(!honest.is_admitted(&node(2)));
        assert!(!honest.members().contains_key(&node(2)));
        assert_eq!(honest.deployment(&env("main")).unwrap().commit, "before");
        assert_eq!(honest.deployment(&env("preview")), None);
        // The node learns it was removed: it can no longer record pushes.
        gone.merge(&mut honest).unwrap();
        assert!(matches!(
            push(&mut gone, "main", "late"),
            Err(ClusterError::NotAdmitted(_))
        ));
        // A removal needs an admin's warrant: a project token's does not do.
        let mut rogue = joined_state(3, &mut honest);
        let (project, _) = token_record(&Rng::seeded(6), Principal::project("shop").unwrap());
        rogue.remove_node(node(1), &project).unwrap();
        let mut four = joined_state(4, &mut honest);
        rogue.remove_node(node(4), &project).unwrap();
        honest.merge(&mut rogue).unwrap();
        assert!(honest.is_admitted(&node(4)));
        four.merge(&mut honest).unwrap();
        assert!(four.is_admitted(&node(4)));
    }
}
