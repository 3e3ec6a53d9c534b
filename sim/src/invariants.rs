//! The invariants, as checkers over a finished [`Trace`]. Each returns the
//! violations it found; a clean run has none. `sim/tests/invariants.rs`
//! shows each one firing on a hand-made bad trace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::trace::{Event, NodeIx, Trace, Version};

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub at_ms: u64,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "violation [{}] at {} ms: {}",
            self.invariant, self.at_ms, self.message
        )
    }
}

pub const CONVERGENCE: &str = "convergence";
pub const SERVED_PUSHED: &str = "served-only-pushed";
pub const NO_ROLLBACK: &str = "no-rollback";
pub const BLOB_MATCHES_CID: &str = "blob-matches-cid";
pub const LIVE_BLOBS_KEPT: &str = "live-blobs-kept";
pub const PUSH_LIVE_EVERYWHERE: &str = "push-live-everywhere";
pub const NO_PANIC: &str = "no-panic";
pub const NO_FORGED_RECORD: &str = "no-forged-record";
pub const REVOCATION_STICKS: &str = "revocation-sticks";
pub const RUN_FINISHES: &str = "run-finishes";

/// Every checker, in a fixed order.
pub fn check_all(trace: &Trace, convergence_bound_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(run_finishes(trace));
    out.extend(convergence(trace, convergence_bound_ms));
    out.extend(served_only_pushed(trace));
    out.extend(no_rollback(trace));
    out.extend(blob_matches_cid(trace));
    out.extend(live_blobs_kept(trace));
    out.extend(push_live_everywhere(trace));
    out.extend(no_panic(trace));
    out.extend(no_forged_record(trace));
    out.extend(revocation_sticks(trace));
    out
}

/// Garbage collection never takes a blob of a release that serves: every
/// blob of every release a node serves is on that node's disk (so on at
/// least one node), whatever ran while the release was built or fetched.
pub fn live_blobs_kept(trace: &Trace) -> Vec<Violation> {
    trace
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::LiveBlobMissing { node, env, cid } => Some(Violation {
                invariant: LIVE_BLOBS_KEPT,
                at_ms: e.at_ms,
                message: format!("n{node} serves {env} but its blob {cid} is gone from its disk"),
            }),
            _ => None,
        })
        .collect()
}

/// No honest node acts on a record the rogue node forged (another node's
/// member record, a token no admin warranted, a deployment nobody pushed).
pub fn no_forged_record(trace: &Trace) -> Vec<Violation> {
    trace
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::ForgedAccepted { node, what } => Some(Violation {
                invariant: NO_FORGED_RECORD,
                at_ms: e.at_ms,
                message: format!("n{node} acts on a forged record: {what}"),
            }),
            _ => None,
        })
        .collect()
}

/// Once a node refuses a revoked token it never takes it again (in that
/// boot), and by the end every healthy node refuses it.
pub fn revocation_sticks(trace: &Trace) -> Vec<Violation> {
    trace
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::TokenAcceptedAgain { node } => Some(Violation {
                invariant: REVOCATION_STICKS,
                at_ms: e.at_ms,
                message: format!("n{node} took the token again after refusing it as revoked"),
            }),
            Event::TokenStillAccepted { node } => Some(Violation {
                invariant: REVOCATION_STICKS,
                at_ms: e.at_ms,
                message: format!("n{node} still takes the revoked token at the end"),
            }),
            _ => None,
        })
        .collect()
}

fn end(trace: &Trace) -> Option<(u64, &[NodeIx])> {
    trace.entries.iter().rev().find_map(|e| match &e.event {
        Event::End { healthy } => Some((e.at_ms, healthy.as_slice())),
        _ => None,
    })
}

/// No deadlock: the run reached its end.
pub fn run_finishes(trace: &Trace) -> Vec<Violation> {
    match end(trace) {
        Some(_) => vec![],
        None => vec![Violation {
            invariant: RUN_FINISHES,
            at_ms: trace.entries.last().map_or(0, |e| e.at_ms),
            message: "the run did not reach its end".into(),
        }],
    }
}

/// Every healthy node has the same cluster-state hash at some sample no
/// later than `bound_ms` after the last fault healed.
pub fn convergence(trace: &Trace, bound_ms: u64) -> Vec<Violation> {
    let Some((_, healthy)) = end(trace) else {
        return vec![];
    };
    let healed = trace
        .entries
        .iter()
        .rev()
        .find(|e| matches!(e.event, Event::Healed))
        .map_or(0, |e| e.at_ms);
    let mut samples: BTreeMap<u64, BTreeMap<NodeIx, &str>> = BTreeMap::new();
    for e in &trace.entries {
        if let Event::Sample { node, state } = &e.event
            && e.at_ms >= healed
        {
            samples.entry(e.at_ms).or_default().insert(*node, state);
        }
    }
    let converged_at = samples.iter().find_map(|(at, by_node)| {
        let states: BTreeSet<Option<&&str>> = healthy.iter().map(|n| by_node.get(n)).collect();
        let all_same = states.len() == 1 && states.iter().all(|s| s.is_some());
        all_same.then_some(*at)
    });
    match converged_at {
        Some(at) if at <= healed + bound_ms => vec![],
        _ => {
            let last = samples
                .values()
                .last()
                .map(|m| {
                    m.iter()
                        .map(|(n, s)| format!("n{n}={}", &s[..s.len().min(12)]))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| "no samples".into());
            vec![Violation {
                invariant: CONVERGENCE,
                at_ms: healed + bound_ms,
                message: format!(
                    "healthy nodes did not reach one cluster state within {} ms after the last fault healed (at {healed} ms); last sample: {last}",
                    bound_ms
                ),
            }]
        }
    }
}

/// A node only serves (and only installs) a version some push made: one a
/// ledger recorded as it went live on the node pushed to (acknowledged or
/// not: a crash may come between going live and answering the client).
pub fn served_only_pushed(trace: &Trace) -> Vec<Violation> {
    let mut pushed: BTreeSet<&Version> = BTreeSet::new();
    let mut out = Vec::new();
    for e in &trace.entries {
        let (node, version, what) = match &e.event {
            Event::Push { version, .. } | Event::Recorded { version, .. } => {
                pushed.insert(version);
                continue;
            }
            Event::Served {
                node,
                served: Some(v),
                ..
            } => (node, v, "served"),
            Event::Live { node, version } => (node, version, "installed"),
            _ => continue,
        };
        if !pushed.contains(version) {
            out.push(Violation {
                invariant: SERVED_PUSHED,
                at_ms: e.at_ms,
                message: format!("n{node} {what} {version}, which no push made"),
            });
        }
    }
    out
}

/// The version a node has live for an environment never goes back to an
/// older push (lower `(seq, pushed_by)`), across restarts too.
pub fn no_rollback(trace: &Trace) -> Vec<Violation> {
    let mut live: BTreeMap<(NodeIx, &str), &Version> = BTreeMap::new();
    let mut out = Vec::new();
    for e in &trace.entries {
        if let Event::Live { node, version } = &e.event {
            if let Some(before) = live.get(&(*node, version.env.as_str()))
                && version.precedence() < before.precedence()
            {
                out.push(Violation {
                    invariant: NO_ROLLBACK,
                    at_ms: e.at_ms,
                    message: format!("n{node} went back from {before} to the older {version}"),
                });
            }
            live.insert((*node, version.env.as_str()), version);
        }
    }
    out
}

/// A blob a node holds (announced) or serves always matches its CID.
pub fn blob_matches_cid(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    for e in &trace.entries {
        match &e.event {
            Event::BlobHeld {
                node,
                cid,
                matches: false,
            } => out.push(Violation {
                invariant: BLOB_MATCHES_CID,
                at_ms: e.at_ms,
                message: format!(
                    "n{node} announced it holds {cid} but its copy does not hash to it"
                ),
            }),
            Event::Served {
                node,
                served: Some(v),
                blobs_ok: false,
                ..
            } => out.push(Violation {
                invariant: BLOB_MATCHES_CID,
                at_ms: e.at_ms,
                message: format!("n{node} served {v} from a blob that does not match its CID"),
            }),
            _ => {}
        }
    }
    out
}

/// At the end, for every environment, every healthy node has live one and
/// the same version, of precedence at least that of the winner of all
/// acknowledged pushes (a later push that reached a ledger but was never
/// acknowledged may rank above it): no acknowledged push was lost or left
/// behind.
pub fn push_live_everywhere(trace: &Trace) -> Vec<Violation> {
    let Some((end_ms, healthy)) = end(trace) else {
        return vec![];
    };
    let mut winners: BTreeMap<&str, &Version> = BTreeMap::new();
    let mut live: BTreeMap<(NodeIx, &str), &Version> = BTreeMap::new();
    for e in &trace.entries {
        match &e.event {
            Event::Push { version, .. } => {
                let w = winners.entry(version.env.as_str()).or_insert(version);
                if version.precedence() > w.precedence() {
                    *w = version;
                }
            }
            Event::Live { node, version } => {
                live.insert((*node, version.env.as_str()), version);
            }
            Event::Crash { node } | Event::Leave { node } => {
                live.retain(|(n, _), _| n != node);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (env, winner) in &winners {
        let mut serving: BTreeSet<&Version> = BTreeSet::new();
        for node in healthy {
            let has = live.get(&(*node, *env));
            if let Some(v) = has {
                serving.insert(v);
            }
            if has.is_none_or(|v| v.precedence() < winner.precedence()) {
                let has = has.map_or("nothing".to_string(), |v| v.to_string());
                out.push(Violation {
                    invariant: PUSH_LIVE_EVERYWHERE,
                    at_ms: end_ms,
                    message: format!(
                        "n{node} has {has} live; the last acknowledged push is {winner}"
                    ),
                });
            }
        }
        if serving.len() > 1 {
            let all: Vec<String> = serving.iter().map(|v| v.to_string()).collect();
            out.push(Violation {
                invariant: PUSH_LIVE_EVERYWHERE,
                at_ms: end_ms,
                message: format!(
                    "healthy nodes serve different versions of {env}: {}",
                    all.join("; ")
                ),
            });
        }
    }
    out
}

/// Nothing panicked.
pub fn no_panic(trace: &Trace) -> Vec<Violation> {
    trace
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Panic { message } => Some(Violation {
                invariant: NO_PANIC,
                at_ms: e.at_ms,
                message: format!("panic: {message}"),
            }),
            _ => None,
        })
        .collect()
}
