//! The grace period, as a sans-IO core: which unreferenced blobs are due
//! for removal in this pass.
//!
//! A blob is due once it has been unreferenced, and not stored again, for a
//! whole grace period, measured in this node's passes: the first pass that
//! finds it unreferenced starts its clock, a pass that finds it stored again
//! since the last one (a deploy in flight re-used it) restarts it, and a
//! pass that finds it referenced forgets it. The core keeps no time of its
//! own (`now` is an argument) and does no IO.
//!
//! After a restart nothing is known: every unreferenced blob waits a whole
//! grace period again, which is safe (only later, never sooner).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cid::Cid;

use crate::bugs::{self, Bug};

/// Unreferenced blobs and since when.
#[derive(Debug, Default)]
pub struct Grace {
    unreferenced_since: BTreeMap<Cid, Instant>,
}

impl Grace {
    pub fn new() -> Self {
        Self::default()
    }

    /// One pass: `unreferenced` are the stored blobs nothing kept
    /// references, `touched` the blobs stored (again) since the previous
    /// pass. Returns those due for removal, in CID order.
    pub fn due(
        &mut self,
        now: Instant,
        grace: Duration,
        unreferenced: &BTreeSet<Cid>,
        touched: &BTreeSet<Cid>,
    ) -> Vec<Cid> {
        if bugs::active(Bug::SkipGcGrace) {
            self.unreferenced_since.clear();
            return unreferenced.iter().copied().collect();
        }
        self.unreferenced_since
            .retain(|cid, _| unreferenced.contains(cid));
        let mut due = Vec::new();
        for cid in unreferenced {
            if touched.contains(cid) {
                self.unreferenced_since.insert(*cid, now);
                continue;
            }
            let since = *self.unreferenced_since.entry(*cid).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                due.push(*cid);
            }
        }
        debug_assert!(
            due.iter().all(|c| !touched.contains(c)),
            "a blob stored since the last pass is never due"
        );
        due
    }

    /// Unreferenced blobs still within their grace period.
    pub fn waiting(&self) -> usize {
        self.unreferenced_since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::store::cid_of;

    const GRACE: Duration = Duration::from_secs(60);

    /// A starting instant (tokio's clock: tests follow the node's rules).
    fn start() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn cid(n: u8) -> Cid {
        cid_of(&[n])
    }

    fn set(ns: &[u8]) -> BTreeSet<Cid> {
        ns.iter().map(|n| cid(*n)).collect()
    }

    #[test]
    fn a_blob_is_due_after_a_whole_grace_period_unreferenced() {
        let start = start();
        let mut g = Grace::new();
        assert!(g.due(start, GRACE, &set(&[1]), &set(&[])).is_empty());
        assert_eq!(g.waiting(), 1);
        let later = start + GRACE - Duration::from_secs(1);
        assert!(g.due(later, GRACE, &set(&[1]), &set(&[])).is_empty());
        assert_eq!(g.due(start + GRACE, GRACE, &set(&[1]), &set(&[])), [cid(1)]);
    }

    #[test]
    fn storing_it_again_or_referencing_it_restarts_the_clock() {
        let start = start();
        let mut g = Grace::new();
        g.due(start, GRACE, &set(&[1, 2]), &set(&[]));
        // 1 is stored again by a deploy; 2 becomes referenced for a while.
        let t1 = start + GRACE / 2;
        g.due(t1, GRACE, &set(&[1]), &set(&[1]));
        let t2 = start + GRACE;
        assert!(g.due(t2, GRACE, &set(&[1, 2]), &set(&[])).is_empty());
        assert_eq!(g.due(t1 + GRACE, GRACE, &set(&[1, 2]), &set(&[])), [cid(1)]);
        assert_eq!(g.due(t2 + GRACE, GRACE, &set(&[2]), &set(&[])), [cid(2)]);
    }

    proptest! {
        /// Whatever the passes, a blob is due only if some pass a whole
        /// grace period ago found it unreferenced, and every pass since
        /// found it unreferenced and not stored again.
        #[test]
        fn nothing_is_due_within_its_grace_period(
            passes in prop::collection::vec(
                (1u64..40, prop::collection::btree_set(0u8..6, 0..6), prop::collection::btree_set(0u8..6, 0..3)),
                1..40,
            )
        ) {
            let mut g = Grace::new();
            let mut now = start();
            // Per pass: (time, unreferenced, touched).
            let mut seen: Vec<(Instant, BTreeSet<u8>, BTreeSet<u8>)> = Vec::new();
            for (step_s, unref, touched) in passes {
                now += Duration::from_secs(step_s);
                let unref_cids: BTreeSet<Cid> = unref.iter().map(|n| cid(*n)).collect();
                let touched_cids: BTreeSet<Cid> = touched.iter().map(|n| cid(*n)).collect();
                let due = g.due(now, GRACE, &unref_cids, &touched_cids);
                seen.push((now, unref, touched));
                for c in &due {
                    let n = (0u8..6).find(|n| cid(*n) == *c).unwrap();
                    let started = (0..seen.len()).any(|p| {
                        now.duration_since(seen[p].0) >= GRACE
                            && seen[p..].iter().all(|(_, u, _)| u.contains(&n))
                            && seen[p + 1..].iter().all(|(_, _, t)| !t.contains(&n))
                    });
                    prop_assert!(started, "blob {n} due at {:?}", now);
                }
            }
        }
    }
}
