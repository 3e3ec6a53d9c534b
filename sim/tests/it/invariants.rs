//! Every invariant checker fires on a hand-made bad trace, and stays quiet
//! on a good one.

use canopy_sim::invariants::{self, Violation};
use canopy_sim::trace::{Event, Trace, Version};

fn v(commit: &str, seq: u64, by: &str) -> Version {
    Version {
        env: "shop@main".into(),
        commit: commit.into(),
        seq,
        by: by.into(),
    }
}

fn push(t: &mut Trace, at: u64, node: usize, version: Version) {
    t.push(
        at,
        Event::Push {
            node,
            version,
            blobs: vec![],
        },
    );
}

fn live(t: &mut Trace, at: u64, node: usize, version: Version) {
    t.push(at, Event::Live { node, version });
}

fn sample(t: &mut Trace, at: u64, node: usize, state: &str) {
    t.push(
        at,
        Event::Sample {
            node,
            state: state.into(),
        },
    );
}

/// Two nodes; one push that goes live on both; converged after the heal.
fn good() -> Trace {
    let mut t = Trace::default();
    push(&mut t, 100, 0, v("c1", 1, "aa"));
    live(&mut t, 100, 0, v("c1", 1, "aa"));
    live(&mut t, 300, 1, v("c1", 1, "aa"));
    t.push(
        400,
        Event::Served {
            node: 1,
            env: "shop@main".into(),
            path: "/file0.bin".into(),
            served: Some(v("c1", 1, "aa")),
            blobs_ok: true,
        },
    );
    t.push(
        500,
        Event::BlobHeld {
            node: 1,
            cid: "bafk".into(),
            matches: true,
        },
    );
    t.push(1000, Event::Healed);
    sample(&mut t, 1000, 0, "s1");
    sample(&mut t, 1000, 1, "s2");
    sample(&mut t, 2000, 0, "s1");
    sample(&mut t, 2000, 1, "s1");
    t.push(
        2000,
        Event::End {
            healthy: vec![0, 1],
        },
    );
    t
}

fn fired(violations: &[Violation], invariant: &str) -> bool {
    !violations.is_empty() && violations.iter().all(|v| v.invariant == invariant)
}

#[test]
fn a_good_trace_has_no_violations() {
    assert_eq!(invariants::check_all(&good(), 5_000), vec![]);
}

#[test]
fn convergence_fires_when_nodes_stay_apart() {
    let mut t = good();
    t.entries
        .retain(|e| !matches!(e.event, Event::Sample { .. } | Event::End { .. }));
    sample(&mut t, 2000, 0, "s1");
    sample(&mut t, 2000, 1, "s2");
    sample(&mut t, 9000, 0, "s1");
    sample(&mut t, 9000, 1, "s1"); // too late: bound is 5 s after 1000
    t.push(
        9000,
        Event::End {
            healthy: vec![0, 1],
        },
    );
    let found = invariants::convergence(&t, 5_000);
    assert!(fired(&found, invariants::CONVERGENCE), "{found:?}");
    assert_eq!(invariants::convergence(&t, 10_000), vec![]);
}

#[test]
fn served_only_pushed_fires_on_a_version_nobody_pushed() {
    let mut t = good();
    t.entries.insert(
        4,
        canopy_sim::trace::Entry {
            at_ms: 450,
            event: Event::Served {
                node: 0,
                env: "shop@main".into(),
                path: "/fn/hello".into(),
                served: Some(v("forged", 1, "aa")),
                blobs_ok: true,
            },
        },
    );
    let found = invariants::served_only_pushed(&t);
    assert!(fired(&found, invariants::SERVED_PUSHED), "{found:?}");
}

#[test]
fn served_only_pushed_accepts_a_push_that_reached_a_ledger_unacknowledged() {
    // n0 crashed after its push went live (recorded) but before answering.
    let mut t = good();
    let end = t.entries.pop().unwrap();
    t.push(
        1000,
        Event::PushStarted {
            node: 0,
            env: "shop@main".into(),
            commit: "c2".into(),
        },
    );
    t.push(
        1010,
        Event::Recorded {
            node: 0,
            version: v("c2", 2, "aa"),
        },
    );
    t.push(1020, Event::Crash { node: 0 });
    live(&mut t, 1200, 1, v("c2", 2, "aa"));
    t.entries.push(end);
    assert_eq!(invariants::served_only_pushed(&t), vec![]);
    // Started alone (never recorded) is no licence to serve it.
    let mut t = good();
    t.push(
        1000,
        Event::PushStarted {
            node: 0,
            env: "shop@main".into(),
            commit: "c3".into(),
        },
    );
    live(&mut t, 1200, 1, v("c3", 2, "aa"));
    let found = invariants::served_only_pushed(&t);
    assert!(fired(&found, invariants::SERVED_PUSHED), "{found:?}");
}

#[test]
fn no_rollback_fires_when_a_node_goes_back() {
    let mut t = good();
    let mut bad = Trace::default();
    push(&mut bad, 100, 0, v("c1", 1, "aa"));
    push(&mut bad, 200, 0, v("c2", 2, "aa"));
    live(&mut bad, 300, 1, v("c2", 2, "aa"));
    live(&mut bad, 400, 1, v("c1", 1, "aa"));
    let found = invariants::no_rollback(&bad);
    assert!(fired(&found, invariants::NO_ROLLBACK), "{found:?}");
    // Same precedence again (a restart re-installing) is not a rollback.
    live(&mut t, 600, 1, v("c1", 1, "aa"));
    assert_eq!(invariants::no_rollback(&t), vec![]);
}

#[test]
fn blob_matches_cid_fires_on_a_bad_copy() {
    let mut t = good();
    t.push(
        600,
        Event::BlobHeld {
            node: 0,
            cid: "bafk".into(),
            matches: false,
        },
    );
    let found = invariants::blob_matches_cid(&t);
    assert!(fired(&found, invariants::BLOB_MATCHES_CID), "{found:?}");
    let mut t = good();
    t.push(
        600,
        Event::Served {
            node: 0,
            env: "shop@main".into(),
            path: "/file0.bin".into(),
            served: Some(v("c1", 1, "aa")),
            blobs_ok: false,
        },
    );
    let found = invariants::blob_matches_cid(&t);
    assert!(fired(&found, invariants::BLOB_MATCHES_CID), "{found:?}");
}

#[test]
fn live_blobs_kept_fires_when_a_served_release_lost_a_blob() {
    assert_eq!(invariants::live_blobs_kept(&good()), vec![]);
    let mut t = good();
    t.push(
        600,
        Event::LiveBlobMissing {
            node: 1,
            env: "shop@main".into(),
            cid: "bafk".into(),
        },
    );
    let found = invariants::live_blobs_kept(&t);
    assert!(fired(&found, invariants::LIVE_BLOBS_KEPT), "{found:?}");
    assert!(
        found[0].message.contains("n1 serves shop@main"),
        "{found:?}"
    );
}

#[test]
fn push_live_everywhere_fires_when_a_push_is_lost_or_left_behind() {
    // A later push that never went live anywhere.
    let mut t = good();
    let end = t.entries.pop().unwrap();
    push(&mut t, 1500, 1, v("c2", 2, "bb"));
    t.entries.push(end);
    let found = invariants::push_live_everywhere(&t);
    assert!(fired(&found, invariants::PUSH_LIVE_EVERYWHERE), "{found:?}");
    assert_eq!(found.len(), 2);
    // An unacknowledged push (recorded, never answered) need not be live
    // everywhere; a newer one that is live everywhere satisfies the
    // acknowledged winner.
    let mut t = good();
    let end = t.entries.pop().unwrap();
    t.push(
        1500,
        Event::Recorded {
            node: 1,
            version: v("c2", 2, "bb"),
        },
    );
    t.entries.push(end);
    assert_eq!(invariants::push_live_everywhere(&t), vec![]);
    let mut t = good();
    let end = t.entries.pop().unwrap();
    live(&mut t, 1500, 0, v("c2", 2, "bb"));
    live(&mut t, 1500, 1, v("c2", 2, "bb"));
    t.entries.push(end);
    assert_eq!(invariants::push_live_everywhere(&t), vec![]);
    // Two healthy nodes serving different versions.
    let mut t = good();
    let end = t.entries.pop().unwrap();
    live(&mut t, 1500, 1, v("c2", 2, "bb"));
    t.entries.push(end);
    let found = invariants::push_live_everywhere(&t);
    assert!(fired(&found, invariants::PUSH_LIVE_EVERYWHERE), "{found:?}");
    // A node that crashed lost what it had live until it installs again.
    let mut t = good();
    let end = t.entries.pop().unwrap();
    t.push(1500, Event::Crash { node: 1 });
    t.entries.push(end);
    let found = invariants::push_live_everywhere(&t);
    assert!(fired(&found, invariants::PUSH_LIVE_EVERYWHERE), "{found:?}");
}

#[test]
fn no_panic_and_run_finishes_fire() {
    let mut t = good();
    t.push(
        2000,
        Event::Panic {
            message: "boom".into(),
        },
    );
    let found = invariants::no_panic(&t);
    assert!(fired(&found, invariants::NO_PANIC), "{found:?}");
    let mut t = good();
    t.entries.pop();
    let found = invariants::run_finishes(&t);
    assert!(fired(&found, invariants::RUN_FINISHES), "{found:?}");
}

#[test]
fn no_forged_record_fires_when_an_honest_node_takes_one() {
    let mut t = good();
    t.push(
        2000,
        Event::ForgedAccepted {
            node: 1,
            what: "another node's member record".into(),
        },
    );
    let found = invariants::no_forged_record(&t);
    assert!(fired(&found, invariants::NO_FORGED_RECORD), "{found:?}");
    assert!(invariants::no_forged_record(&good()).is_empty());
}

#[test]
fn revocation_sticks_fires_on_a_token_taken_again_or_still_taken_at_the_end() {
    let mut t = good();
    t.push(2000, Event::TokenRefused { node: 1 });
    assert!(invariants::revocation_sticks(&t).is_empty());
    t.push(3000, Event::TokenAcceptedAgain { node: 1 });
    let found = invariants::revocation_sticks(&t);
    assert!(fired(&found, invariants::REVOCATION_STICKS), "{found:?}");
    let mut t = good();
    t.push(4000, Event::TokenStillAccepted { node: 2 });
    let found = invariants::revocation_sticks(&t);
    assert!(fired(&found, invariants::REVOCATION_STICKS), "{found:?}");
}
