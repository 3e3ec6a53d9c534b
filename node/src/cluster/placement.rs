//! Which nodes must hold a blob: replication factor R and rendezvous
//! (highest-random-weight) hashing of CID × node id.
//!
//! Every node computes the same answer from the same cluster state, so once
//! states converge exactly the nodes that must fetch a blob do, without any
//! coordination. A node that already holds a blob counts towards R whoever
//! it is (the node a push reached holds every blob of it first).

use std::collections::BTreeSet;

use cid::Cid;
use sha2::{Digest, Sha256};

use super::state::ClusterState;
use crate::net::NodeId;

/// The default replication factor: min(3, number of nodes).
pub fn default_replication_factor(node_count: usize) -> usize {
    node_count.clamp(1, 3)
}

/// `node`'s rendezvous weight for `cid`: the first 8 bytes of
/// sha256(cid bytes ‖ node id).
pub fn weight(cid: &Cid, node: &NodeId) -> u64 {
    let mut sha = Sha256::new();
    sha.update(cid.to_bytes());
    sha.update(node.0);
    let digest = sha.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// `nodes` ranked for `cid`, best first (ties, which need a sha256
/// collision, go to the greater node id).
pub fn rank(cid: &Cid, nodes: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> = nodes.into_iter().map(|n| (weight(cid, &n), n)).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// The nodes that should fetch `cid` now: when fewer than `r` of `members`
/// hold it, the best-ranked members that do not hold it, as many as are
/// missing.
pub fn fetchers(
    cid: &Cid,
    members: &BTreeSet<NodeId>,
    holders: &BTreeSet<NodeId>,
    r: usize,
) -> Vec<NodeId> {
    let held = holders.iter().filter(|h| members.contains(h)).count();
    let missing = r.min(members.len()).saturating_sub(held);
    rank(
        cid,
        members.iter().copied().filter(|m| !holders.contains(m)),
    )
    .into_iter()
    .take(missing)
    .collect()
}

/// What `local` must do about blobs, given the state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Referenced blobs this node must fetch (it is a chosen fetcher).
    pub fetch: BTreeSet<Cid>,
    /// Referenced blobs this node holds but is not recorded as holding.
    pub announce: BTreeSet<Cid>,
}

/// Plan for `local`: `r` is the replication factor (use
/// [`default_replication_factor`] of the member count unless configured),
/// `has_local` tells whether the local store holds a blob.
pub fn plan(
    state: &ClusterState,
    local: NodeId,
    r: usize,
    has_local: impl Fn(&Cid) -> bool,
) -> Plan {
    // Only admitted members hold blobs for the cluster.
    let mut members: BTreeSet<NodeId> = state
        .members()
        .into_iter()
        .filter(|(_, m)| m.admitted)
        .map(|(n, _)| n)
        .collect();
    members.insert(local);
    let mut out = Plan::default();
    for cid in state.referenced_blobs() {
        let holders = state.holders(&cid);
        if has_local(&cid) {
            if !holders.contains(&local) {
                out.announce.insert(cid);
            }
            continue;
        }
        if fetchers(&cid, &members, &holders, r).contains(&local) {
            out.fetch.insert(cid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cid_of;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn fetchers_fill_up_to_r() {
        let members: BTreeSet<_> = (1..=5).map(node).collect();
        let cid = cid_of(b"x");
        let none = BTreeSet::new();
        let first = fetchers(&cid, &members, &none, 3);
        assert_eq!(first.len(), 3);
        assert_eq!(first, rank(&cid, members.iter().copied())[..3].to_vec());
        let one = BTreeSet::from([node(5)]);
        let f = fetchers(&cid, &members, &one, 3);
        assert_eq!(f.len(), 2);
        assert!(!f.contains(&node(5)));
        let all3: BTreeSet<_> = first.into_iter().collect();
        assert!(fetchers(&cid, &members, &all3, 3).is_empty());
        // R larger than the cluster: every node holds it.
        assert_eq!(fetchers(&cid, &members, &none, 9).len(), 5);
    }

    #[test]
    fn default_r() {
        assert_eq!(default_replication_factor(1), 1);
        assert_eq!(default_replication_factor(2), 2);
        assert_eq!(default_replication_factor(7), 3);
    }
}
