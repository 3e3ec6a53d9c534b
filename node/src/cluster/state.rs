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
//! ```text
//! member/<node hex>                              → {"addresses", "role", "joined_by"}
//! admitted/<node hex>                            → {"admitted_by"}
//! deploy/<project>/<branch>/<seq:020>/<node hex> → {"commit", "manifest_cid", "artifacts", "pushed_at_seq", "pushed_by"}
//! alloc/<cid>/<node hex>                         → true  (that node holds the blob)
//! cluster/id                                     → the cluster id (hex), set once by the founder
//! invite/<nonce hex>                             → {"joined"}  (an invite token that was used)
//! token/<token id>                               → auth::TokenRecord (hash of the secret, never the secret)
//! revoked/<token id>                             → auth::Revocation  (permanent)
//! domain/<domain>                                → {"project"}  (its owner; first deploy, or an admin's transfer)
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
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc, ScalarValueRef, ValueRef};
use cid::Cid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ClusterError;
use super::ids::{hex, node_hex, parse_cid, parse_node_hex};
use crate::auth::{Revocation, TokenEntry, TokenId, TokenRecord};
use crate::deploy::state::EnvKey;
use crate::net::NodeId;

const MEMBER_PREFIX: &str = "member/";
const ADMITTED_PREFIX: &str = "admitted/";
const DEPLOY_PREFIX: &str = "deploy/";
const ALLOC_PREFIX: &str = "alloc/";
const CLUSTER_ID_KEY: &str = "cluster/id";
const INVITE_PREFIX: &str = "invite/";
const TOKEN_PREFIX: &str = "token/";
const REVOKED_PREFIX: &str = "revoked/";
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
struct AdmissionRecord {
    admitted_by: String,
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
}

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
    local: NodeId,
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
    /// An empty state for node `local`. `incarnation` must differ between
    /// runs of the same node (take it from the node's `env::Rng`).
    pub fn new(local: NodeId, incarnation: u64) -> Self {
        Self {
            doc: AutoCommit::new().with_actor(actor_for(&local, incarnation)),
            local,
        }
    }

    /// A state loaded from [`ClusterState::save`]'s bytes.
    pub fn load(local: NodeId, incarnation: u64, bytes: &[u8]) -> Result<Self, ClusterError> {
        let doc = AutoCommit::load(bytes).map_err(|e| ClusterError::Load(Box::new(e)))?;
        Ok(Self {
            doc: doc.with_actor(actor_for(&local, incarnation)),
            local,
        })
    }

    /// The whole document, compacted, for persisting.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
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
            .map(|_| ())
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "merge another replica",
            })
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
        self.put_json(&key, "member", &record)
    }

    /// Put `node`'s key in the admitted set.
    pub fn admit(&mut self, node: NodeId, admitted_by: NodeId) -> Result<(), ClusterError> {
        let key = format!("{ADMITTED_PREFIX}{}", node_hex(&node));
        let record = AdmissionRecord {
            admitted_by: node_hex(&admitted_by),
        };
        self.put_json(&key, "admission", &record)
    }

    /// Take `node`'s key out of the admitted set.
    pub fn revoke(&mut self, node: NodeId) -> Result<(), ClusterError> {
        let key = format!("{ADMITTED_PREFIX}{}", node_hex(&node));
        self.delete_key(&key)
    }

    /// Whether `node`'s key is admitted.
    pub fn is_admitted(&self, node: &NodeId) -> bool {
        let key = format!("{ADMITTED_PREFIX}{}", node_hex(node));
        matches!(self.doc.get(ROOT, key.as_str()), Ok(Some(_)))
    }

    /// Every admitted node key.
    pub fn admitted(&self) -> BTreeMap<NodeId, Admission> {
        let mut out = BTreeMap::new();
        for (key, json) in self.entries(ADMITTED_PREFIX) {
            let record: Option<AdmissionRecord> = decode(&key, &json);
            let node = parse_node_hex(&key[ADMITTED_PREFIX.len()..]);
            if let (Some(node), Some(record)) = (node, record)
                && let Some(by) = parse_node_hex(&record.admitted_by)
            {
                out.insert(node, Admission { admitted_by: by });
            }
        }
        out
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
        let tombstone = DeploymentRecord {
            commit: String::new(),
            manifest_cid: String::new(),
            artifacts: Vec::new(),
            pushed_at_seq: 0,
            pushed_by: node_hex(&self.local),
            removed: true,
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
        for (key, _) in &seen {
            self.doc
                .delete(ROOT, key.as_str())
                .map_err(|source| ClusterError::Write {
                    source: Box::new(source),
                    action: "remove a superseded deployment",
                })?;
        }
        let key = deploy_key(env, record.pushed_at_seq, &self.local);
        self.doc
            .put(ROOT, key.as_str(), json)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "write a deployment",
            })?;
        self.doc.commit();
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

    /// Record the cluster's id (the founder does, once).
    pub fn set_cluster_id(&mut self, id: &str) -> Result<(), ClusterError> {
        // Checked in release builds too: a second id would split the cluster.
        assert!(
            self.cluster_id().is_none_or(|current| current == id),
            "a cluster's id is set once"
        );
        self.doc
            .put(ROOT, CLUSTER_ID_KEY, id)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "record the cluster id",
            })?;
        self.doc.commit();
        Ok(())
    }

    /// The cluster's id, once founded (or synced from the founder).
    pub fn cluster_id(&self) -> Option<String> {
        self.get_str(CLUSTER_ID_KEY)
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
        )
    }

    /// The node an invite token (by nonce) admitted, if it was used.
    pub fn invite_used_by(&self, nonce: &[u8]) -> Option<NodeId> {
        let key = format!("{INVITE_PREFIX}{}", hex(nonce));
        let json = self.get_str(&key)?;
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

    /// Record a new token (its id is random, so no other node writes it).
    pub fn put_token(&mut self, record: &TokenRecord) -> Result<(), ClusterError> {
        let key = format!("{TOKEN_PREFIX}{}", record.id);
        self.put_json(&key, "token", record)
    }

    /// Revoke token `id`. A revocation is its own key, never deleted: a
    /// node that has seen it refuses the token for good, whatever else
    /// merges later.
    pub fn revoke_token(
        &mut self,
        id: &TokenId,
        revocation: &Revocation,
    ) -> Result<(), ClusterError> {
        let key = format!("{REVOKED_PREFIX}{id}");
        if self.get_str(&key).is_some() {
            return Ok(());
        }
        self.put_json(&key, "revocation", revocation)
    }

    /// Token `id` and its revocation, if the state has its record.
    pub fn token(&self, id: &TokenId) -> Option<TokenEntry> {
        let key = format!("{TOKEN_PREFIX}{id}");
        let record: TokenRecord = decode(&key, &self.get_str(&key)?)?;
        if record.id != *id {
            tracing::warn!(
                key,
                "cluster state: skipping a token record under another id"
            );
            return None;
        }
        Some(TokenEntry {
            revoked: self.revocation(id),
            record,
        })
    }

    fn revocation(&self, id: &TokenId) -> Option<Revocation> {
        let key = format!("{REVOKED_PREFIX}{id}");
        decode(&key, &self.get_str(&key)?)
    }

    /// How many token records the state holds (revoked ones included),
    /// without decoding them.
    pub fn token_count(&self) -> usize {
        self.keys(TOKEN_PREFIX).len()
    }

    /// Every token record, with its revocation.
    pub fn tokens(&self) -> BTreeMap<TokenId, TokenEntry> {
        let mut out = BTreeMap::new();
        for key in self.keys(TOKEN_PREFIX) {
            if let Some(entry) = key[TOKEN_PREFIX.len()..]
                .parse::<TokenId>()
                .ok()
                .and_then(|id| self.token(&id))
            {
                out.insert(entry.record.id, entry);
            }
        }
        out
    }

    // ----- domains ---------------------------------------------------------

    /// Every claimed domain and the project that owns it.
    pub fn domain_owners(&self) -> BTreeMap<String, String> {
        self.keys(DOMAIN_PREFIX)
            .into_iter()
            .filter_map(|key| {
                let record: DomainRecord = decode(&key, &self.get_str(&key)?)?;
                Some((key[DOMAIN_PREFIX.len()..].to_owned(), record.project))
            })
            .collect()
    }

    /// Make `project` the owner of `domain`.
    pub fn set_domain_owner(&mut self, domain: &str, project: &str) -> Result<(), ClusterError> {
        let key = format!("{DOMAIN_PREFIX}{domain}");
        let record = DomainRecord {
            project: project.to_owned(),
        };
        if self
            .get_str(&key)
            .and_then(|json| decode::<DomainRecord>(&key, &json))
            == Some(record.clone())
        {
            return Ok(());
        }
        self.put_json(&key, "domain", &record)
    }

    // ----- allocations -----------------------------------------------------

    /// Record that `node` holds blob `cid`.
    pub fn add_holder(&mut self, cid: &Cid, node: NodeId) -> Result<(), ClusterError> {
        let key = alloc_key(cid, &node);
        if matches!(self.doc.get(ROOT, key.as_str()), Ok(Some(_))) {
            return Ok(());
        }
        self.doc
            .put(ROOT, key.as_str(), true)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "record a blob holder",
            })?;
        self.doc.commit();
        Ok(())
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

    fn put_json<T: Serialize>(
        &mut self,
        key: &str,
        what: &'static str,
        record: &T,
    ) -> Result<(), ClusterError> {
        let json = serde_json::to_string(record)
            .map_err(|source| ClusterError::Encode { what, source })?;
        self.doc
            .put(ROOT, key, json)
            .map_err(|source| ClusterError::Write {
                source: Box::new(source),
                action: "write a record",
            })?;
        self.doc.commit();
        Ok(())
    }

    fn get_str(&self, key: &str) -> Option<String> {
        match self.doc.get(ROOT, key) {
            Ok(Some((automerge::Value::Scalar(value), _))) => value.as_str().map(str::to_owned),
            _ => None,
        }
    }

    fn delete_key(&mut self, key: &str) -> Result<(), ClusterError> {
        if matches!(self.doc.get(ROOT, key), Ok(Some(_))) {
            self.doc
                .delete(ROOT, key)
                .map_err(|source| ClusterError::Write {
                    source: Box::new(source),
                    action: "delete a record",
                })?;
            self.doc.commit();
        }
        Ok(())
    }

    /// Every (key, string value) under `prefix`, in key order.
    fn entries(&self, prefix: &str) -> Vec<(String, String)> {
        self.doc
            .map_range(ROOT, prefix_range(prefix))
            .filter_map(|item| match item.value {
                ValueRef::Scalar(ScalarValueRef::Str(s)) => {
                    Some((item.key.into_owned(), s.into_owned()))
                }
                _ => None,
            })
            .collect()
    }

    /// Every key under `prefix`, in key order.
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.doc
            .map_range(ROOT, prefix_range(prefix))
            .map(|item| item.key.into_owned())
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

/// Keys from `prefix` (inclusive) to the first key past every key with it.
fn prefix_range(prefix: &str) -> std::ops::Range<String> {
    debug_assert!(prefix.ends_with('/'), "prefixes end with '/'");
    // '0' is the character after '/': every key with the prefix sorts before.
    let end = format!("{}0", &prefix[..prefix.len() - 1]);
    prefix.to_string()..end
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
    use crate::store::cid_of;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn env(branch: &str) -> EnvKey {
        EnvKey {
            project: "shop".into(),
            branch: branch.into(),
        }
    }

    fn update(commit: &str) -> DeploymentUpdate {
        DeploymentUpdate {
            commit: commit.into(),
            manifest_cid: cid_of(commit.as_bytes()),
            artifacts: vec![cid_of(b"a"), cid_of(b"b")],
        }
    }

    #[test]
    fn a_record_at_the_last_sequence_number_refuses_the_push_instead_of_wrapping() {
        let mut state = ClusterState::new(node(1), 1);
        let shop = env("main");
        // Only a forged or corrupt record sits at u64::MAX.
        let forged = DeploymentRecord {
            commit: "forged".into(),
            manifest_cid: cid_of(b"forged").to_string(),
            artifacts: Vec::new(),
            pushed_at_seq: u64::MAX,
            pushed_by: node_hex(&node(2)),
            removed: false,
        };
        state
            .put_json(
                &deploy_key(&shop, u64::MAX, &node(2)),
                "deployment",
                &forged,
            )
            .unwrap();

        let error = state.apply_deployment(&shop, update("c1")).unwrap_err();
        assert!(
            matches!(&error, ClusterError::SequenceExhausted { written_by, .. } if *written_by == node(2)),
            "{error}"
        );
        assert!(error.to_string().contains("shop@main"), "{error}");
        let error = state.remove_deployment(&shop).unwrap_err();
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
        let mut a = ClusterState::new(node(1), 1);
        let before = a.state_hash();
        a.set_domain_owner("shop.example.com", "shop").unwrap();
        assert_eq!(a.domain_owners()["shop.example.com"], "shop");
        assert_ne!(a.state_hash(), before);
        let claimed = a.state_hash();
        // Writing the same owner again changes nothing.
        a.set_domain_owner("shop.example.com", "shop").unwrap();
        assert_eq!(a.state_hash(), claimed);
        a.set_domain_owner("shop.example.com", "rival").unwrap();
        assert_eq!(a.domain_owners()["shop.example.com"], "rival");
    }

    #[test]
    fn a_later_push_supersedes_and_prunes() {
        let mut s = ClusterState::new(node(1), 0);
        s.apply_deployment(&env("main"), update("c1")).unwrap();
        let d = s.apply_deployment(&env("main"), update("c2")).unwrap();
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
        let mut s = ClusterState::new(node(1), 0);
        s.apply_deployment(&env("a"), update("c1")).unwrap();
        s.apply_deployment(&env("a/b"), update("c2")).unwrap();
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
        let mut s = ClusterState::new(node(1), 0);
        s.upsert_member(
            node(2),
            vec!["b".into(), "a".into()],
            Role::Full,
            Some(node(1)),
        )
        .unwrap();
        s.admit(node(2), node(1)).unwrap();
        let m = &s.members()[&node(2)];
        assert!(m.admitted);
        assert_eq!(m.addresses, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(m.joined_by, Some(node(1)));
        s.revoke(node(2)).unwrap();
        assert!(!s.members()[&node(2)].admitted);

        let c = cid_of(b"blob");
        s.add_holder(&c, node(2)).unwrap();
        s.add_holder(&c, node(3)).unwrap();
        assert_eq!(s.holders(&c), BTreeSet::from([node(2), node(3)]));
        s.remove_holder(&c, node(2)).unwrap();
        assert_eq!(s.holders(&c), BTreeSet::from([node(3)]));
        assert_eq!(s.allocations()[&c], BTreeSet::from([node(3)]));
    }

    #[test]
    fn save_and_load_keep_contents() {
        let mut s = ClusterState::new(node(1), 0);
        s.apply_deployment(&env("main"), update("c1")).unwrap();
        let bytes = s.save();
        let mut loaded = ClusterState::load(node(1), 1, &bytes).unwrap();
        assert_eq!(loaded.state_hash(), s.state_hash());
        // The new incarnation can write on top of the old history.
        loaded.apply_deployment(&env("main"), update("c2")).unwrap();
        assert_eq!(loaded.deployment(&env("main")).unwrap().pushed_at_seq, 2);
    }
}
