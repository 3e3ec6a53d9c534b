//! Who may write which record: the rules every honest node applies before it
//! acts on a record of cluster state.
//!
//! A record's signature ([`super::record`]) says which node wrote it; these
//! rules say whether that node (and the person whose token warrants it) was
//! allowed to:
//!
//! | record | valid when |
//! |---|---|
//! | `cluster/id` | written by the founder it names, and that founder and nonce hash to the cluster id this node joined |
//! | `admitted/X` | written by the founder for itself, or by an admitted node that issued the invite X presented |
//! | `issued/N` | written by an admitted node, warranted by a valid admin token (an admin asked for invite N) |
//! | `member/X`, `alloc/…/X`, `deploy/…/X` | written by X itself, and X is admitted |
//! | `token/T` | written by an admitted node, warranted by a valid admin token; or the founder's first admin token, warranting itself |
//! | `revoked/T` | written by an admitted node, warranted by a valid admin token |
//! | `domain/D` | written by an admitted node; a transfer (warranted) by a valid admin token |
//! | `invite/N` | written by an admitted node |
//! | `removed/X` | written by an admitted node, warranted by a valid admin token |
//!
//! A removed node is no longer admitted. Of its records, only those the
//! remover had seen when it removed it still count (the removal lists, per
//! automerge actor of that node, the last change it had seen): whatever it
//! writes later, or claims to have written earlier but nobody had seen, is
//! ignored. Its member and allocation records go with it.
//!
//! Anything else is ignored: it is not in the node's view of the state, so
//! no node acts on it, and the state hash (which every node computes from
//! that view) does not count it.
//!
//! Revocations are monotone per node: once a node has seen a valid
//! revocation it keeps refusing the token even if the record later vanishes
//! from the document (see [`Trust::revoked_seen`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{hex, parse_hex, parse_node_hex};
use super::record::Signed;
use super::state::{Put, Puts};
use crate::auth::{Revocation, TokenEntry, TokenId, TokenRecord};
use crate::net::NodeId;
use crate::net::admission::{CLUSTER_NONCE_BYTES, ClusterId};

pub(super) const CLUSTER_ID_KEY: &str = "cluster/id";
pub(super) const ADMITTED_PREFIX: &str = "admitted/";
pub(super) const TOKEN_PREFIX: &str = "token/";
pub(super) const REVOKED_PREFIX: &str = "revoked/";
pub(super) const ISSUED_PREFIX: &str = "issued/";
pub(super) const REMOVED_PREFIX: &str = "removed/";

/// The body of `cluster/id`: the id and what proves its founder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AnchorRecord {
    pub id: String,
    pub founder: String,
    pub nonce: String,
}

impl AnchorRecord {
    pub fn new(founder: &NodeId, nonce: &[u8; CLUSTER_NONCE_BYTES]) -> Self {
        Self {
            id: ClusterId::derive(founder, nonce).to_string(),
            founder: hex(&founder.0),
            nonce: hex(nonce),
        }
    }

    /// The (cluster id, founder) this record proves, if it is consistent.
    fn verify(&self) -> Option<(ClusterId, NodeId)> {
        let founder = parse_node_hex(&self.founder)?;
        let nonce: [u8; CLUSTER_NONCE_BYTES] = parse_hex(&self.nonce)?;
        let id = ClusterId::derive(&founder, &nonce);
        (id.to_string() == self.id).then_some((id, founder))
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct AdmissionRecord {
    pub admitted_by: String,
    /// The nonce (hex) of the invite the node presented; `None` only for
    /// the founder's own admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

/// An invite a node issued at an admin's request (the record's warrant).
#[derive(Serialize, Deserialize)]
pub(super) struct IssuedRecord {
    pub expires_at_unix_s: u64,
}

/// A node's removal: the last change (per automerge actor, hex) of the
/// removed node that the remover had seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RemovalRecord {
    pub seen: BTreeMap<String, u64>,
}

/// What a node trusts, computed from its verified records.
#[derive(Clone, Debug, Default)]
pub(super) struct Trust {
    pub cluster: Option<ClusterId>,
    pub founder: Option<NodeId>,
    /// Admitted (and not removed) node → the node that admitted it.
    pub admitted: BTreeMap<NodeId, NodeId>,
    /// Removed node → per actor (bytes), the last change of it that counts.
    pub removed: BTreeMap<NodeId, BTreeMap<Vec<u8>, u64>>,
    /// Nodes admitted at some point, removed ones included.
    ever_admitted: BTreeMap<NodeId, NodeId>,
    /// Valid token records, with their valid revocations.
    pub tokens: BTreeMap<TokenId, TokenEntry>,
    /// Valid admin tokens' warrant keys: who may warrant admin writes.
    pub admin_keys: BTreeMap<TokenId, NodeId>,
    /// Every revocation this node has ever accepted: never forgotten.
    pub revoked_seen: BTreeMap<TokenId, Revocation>,
}

impl Trust {
    /// Whether `node` is admitted (and not removed).
    pub fn is_admitted(&self, node: &NodeId) -> bool {
        self.admitted.contains_key(node)
    }

    /// Whether `put`'s author may write it as far as membership goes: it
    /// is admitted, or it was and `put` came before its removal.
    pub fn may_author(&self, put: &Put) -> bool {
        let by = put.signed.by;
        match self.removed.get(&by) {
            None => self.ever_admitted.contains_key(&by),
            Some(cutoff) => {
                self.ever_admitted.contains_key(&by)
                    && cutoff
                        .get(&put.order.actor)
                        .is_some_and(|last| put.seq <= *last)
            }
        }
    }

    /// Whether `signed` carries a warrant from a valid admin token.
    pub fn admin_warranted(&self, signed: &Signed) -> bool {
        signed
            .warrant
            .as_ref()
            .is_some_and(|w| self.admin_keys.get(&w.token) == Some(&w.key))
    }

    /// Recompute from `puts` (every verified put, by key), for the cluster
    /// `pin` (the id this node founded or joined; `None`: it is in no
    /// cluster yet and trusts nothing). Keeps what `previous` had seen
    /// revoked, and its founder.
    pub fn compute(puts: &Puts, pin: Option<ClusterId>, previous: &Trust) -> Trust {
        let anchor = all(puts, CLUSTER_ID_KEY).find_map(|put| {
            let record: AnchorRecord = serde_json::from_str(&put.signed.body).ok()?;
            let (id, founder) = record.verify()?;
            (put.signed.by == founder && Some(id) == pin).then_some((id, founder))
        });
        // Once proven, the founder is remembered.
        let anchor = anchor.or_else(|| {
            previous
                .cluster
                .zip(previous.founder)
                .filter(|(id, _)| Some(*id) == pin)
        });
        let Some((cluster, founder)) = anchor else {
            return Trust {
                revoked_seen: previous.revoked_seen.clone(),
                ..Trust::default()
            };
        };
        // Removals shrink what counts, so they are found first, with
        // everything else as if nobody had been removed; then all again
        // with their cutoffs.
        let unremoved = Self::grow(puts, cluster, founder, BTreeMap::new(), previous);
        let removed: BTreeMap<NodeId, BTreeMap<Vec<u8>, u64>> = every(puts, REMOVED_PREFIX)
            .filter(|(_, put)| unremoved.may_author(put) && unremoved.admin_warranted(&put.signed))
            .filter_map(|(rest, put)| {
                let node = parse_node_hex(rest)?;
                let record: RemovalRecord = serde_json::from_str(&put.signed.body).ok()?;
                let seen = record
                    .seen
                    .iter()
                    .filter_map(|(actor, seq)| Some((decode_hex(actor)?, *seq)))
                    .collect();
                // The founder is the root: it cannot be removed.
                (node != founder).then_some((node, seen))
            })
            .collect();
        if removed.is_empty() {
            return unremoved;
        }
        Self::grow(puts, cluster, founder, removed, previous)
    }

    /// Admissions and tokens depend on each other (an admission needs an
    /// invite an admin token warranted; a token needs an admitted writer),
    /// so both grow together from the founder's own admission and first
    /// admin token until neither grows.
    fn grow(
        puts: &Puts,
        cluster: ClusterId,
        founder: NodeId,
        removed: BTreeMap<NodeId, BTreeMap<Vec<u8>, u64>>,
        previous: &Trust,
    ) -> Trust {
        let mut trust = Trust {
            cluster: Some(cluster),
            founder: Some(founder),
            removed,
            revoked_seen: previous.revoked_seen.clone(),
            ..Trust::default()
        };
        let admissions: Vec<(NodeId, &Put, Option<String>)> = every(puts, ADMITTED_PREFIX)
            .filter_map(|(rest, put)| {
                let node = parse_node_hex(rest)?;
                let record: AdmissionRecord = serde_json::from_str(&put.signed.body).ok()?;
                (parse_node_hex(&record.admitted_by)? == put.signed.by).then_some((
                    node,
                    put,
                    record.invite,
                ))
            })
            .collect();
        let candidates: Vec<(TokenRecord, &Put)> = every(puts, TOKEN_PREFIX)
            .filter_map(|(rest, put)| {
                let record: TokenRecord = serde_json::from_str(&put.signed.body).ok()?;
                (record.id.to_string() == rest).then_some((record, put))
            })
            .collect();
        let warrant_key =
            |record: &TokenRecord| record.warrant_key.as_deref().and_then(parse_node_hex);
        if admissions.iter().any(|(node, put, invite)| {
            *node == founder && put.signed.by == founder && invite.is_none()
        }) {
            trust.ever_admitted.insert(founder, founder);
        }
        let mut valid: BTreeMap<TokenId, TokenRecord> = BTreeMap::new();
        fixpoint(|| {
            let mut grew = false;
            for (node, put, invite) in &admissions {
                if trust.ever_admitted.contains_key(node) || !trust.may_author(put) {
                    continue;
                }
                let issued = invite.as_ref().is_some_and(|nonce| {
                    all(puts, &format!("{ISSUED_PREFIX}{nonce}")).any(|issued| {
                        issued.signed.by == put.signed.by
                            && trust.may_author(issued)
                            && trust.admin_warranted(&issued.signed)
                    })
                });
                if issued {
                    trust.ever_admitted.insert(*node, put.signed.by);
                    grew = true;
                }
            }
            for (record, put) in &candidates {
                if valid.contains_key(&record.id) || !trust.may_author(put) {
                    continue;
                }
                // The founder's first admin token warrants itself.
                let bootstrap = put.signed.by == founder
                    && record.principal.is_admin()
                    && put.signed.warrant.as_ref().is_some_and(|w| {
                        w.token == record.id && Some(w.key) == warrant_key(record)
                    });
                if bootstrap || trust.admin_warranted(&put.signed) {
                    valid.insert(record.id, record.clone());
                    if record.principal.is_admin()
                        && let Some(key) = warrant_key(record)
                    {
                        trust.admin_keys.insert(record.id, key);
                    }
                    grew = true;
                }
            }
            grew
        });
        trust.admitted = trust
            .ever_admitted
            .iter()
            .filter(|(node, _)| !trust.removed.contains_key(node))
            .map(|(node, by)| (*node, *by))
            .collect();

        let ignore = crate::bugs::active(crate::bugs::Bug::IgnoreRevocations);
        for (rest, put) in every(puts, REVOKED_PREFIX).filter(|_| !ignore) {
            let Ok(id) = rest.parse::<TokenId>() else {
                continue;
            };
            if !trust.may_author(put) || !trust.admin_warranted(&put.signed) {
                continue;
            }
            if let Ok(revocation) = serde_json::from_str::<Revocation>(&put.signed.body) {
                trust.revoked_seen.entry(id).or_insert(revocation);
            }
        }
        trust.tokens = valid
            .into_iter()
            .map(|(id, record)| {
                let revoked = trust.revoked_seen.get(&id).cloned();
                (id, TokenEntry { record, revoked })
            })
            .collect();
        trust
    }
}

/// Whether a put under `key` can change [`Trust`]: the cluster id,
/// admissions, invites issued, tokens, revocations, removals. Any other
/// put changes only its own key's view.
pub(super) fn shapes_trust(key: &str) -> bool {
    key == CLUSTER_ID_KEY
        || [
            ADMITTED_PREFIX,
            ISSUED_PREFIX,
            TOKEN_PREFIX,
            REVOKED_PREFIX,
            REMOVED_PREFIX,
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// Run `step` until it reports no growth. Each step adds at least one
/// element to a finite set, so this ends.
fn fixpoint(mut step: impl FnMut() -> bool) {
    while step() {}
}

/// The entries of `map` whose key starts with `prefix`: (the key after
/// it, value).
pub(super) fn range<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a V)> + 'a {
    map.range::<str, _>((
        std::ops::Bound::Included(prefix),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(key, _)| key.starts_with(prefix))
    .map(move |(key, value)| (&key[prefix.len()..], value))
}

/// Every put of every key under `prefix`: (the key after it, put).
fn every<'a>(puts: &'a Puts, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Put)> + 'a {
    range(puts, prefix).flat_map(|(rest, puts)| puts.iter().map(move |put| (rest, put)))
}

/// Every put of `key`, oldest first.
fn all<'a>(puts: &'a Puts, key: &str) -> impl Iterator<Item = &'a Put> + 'a {
    puts.get(key).into_iter().flatten()
}

/// Bytes from lower-case hex of any even length.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}
