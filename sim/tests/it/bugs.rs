//! Proof the simulator finds bugs: each known bug (`canopy_node::bugs`,
//! compiled in by the `sim-bugs` feature only) is found within a bounded
//! number of seeds, with a replay command that reproduces it exactly; with
//! no bug switched on, the same seeds run clean.

use canopy_node::bugs::Bug;
use canopy_sim::{RunConfig, RunResult, invariants, run};

/// Seeds tried per bug before the test gives up.
const MAX_SEEDS: u64 = 40;

fn config(seed: u64, bugs: Vec<Bug>) -> RunConfig {
    RunConfig {
        bugs,
        ..RunConfig::new(seed)
    }
}

fn find(bug: Bug) -> RunResult {
    find_within(bug, MAX_SEEDS)
}

fn find_within(bug: Bug, max_seeds: u64) -> RunResult {
    for seed in 0..max_seeds {
        let result = run(&config(seed, vec![bug]));
        if !result.violations.is_empty() {
            return result;
        }
    }
    panic!("{} not found in {max_seeds} seeds", bug.name());
}

/// The reported run replays: same seed and switches, same trace and
/// violations; the replay command names them.
fn replays(found: &RunResult, bug: Bug) {
    let command = found.config.replay_command();
    assert!(
        command.contains(&format!("--seed {} ", found.config.seed))
            && command.contains(&format!("--bug {}", bug.name())),
        "{command}"
    );
    let again = run(&found.config);
    assert_eq!(again.hash, found.hash, "replay of {command}");
    assert_eq!(again.violations, found.violations);
    // And the same seed without the bug is clean.
    let clean = run(&config(found.config.seed, vec![]));
    assert_eq!(
        clean.violations,
        vec![],
        "seed {} without the bug",
        found.config.seed
    );
}

#[test]
fn skipping_anti_entropy_is_found() {
    // It shows only when the state is quiet after a silent partition; a
    // node's garbage collection and deploys changing it (every change is
    // synced to every peer) heal most such partitions on their own, so it
    // takes more seeds than the others (the first is seed 71).
    let found = find_within(Bug::SkipAntiEntropy, 100);
    eprintln!(
        "skip-anti-entropy: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::CONVERGENCE
                || v.invariant == invariants::PUSH_LIVE_EVERYWHERE),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::SkipAntiEntropy);
}

#[test]
fn accepting_an_unverified_blob_is_found() {
    let found = find(Bug::AcceptUnverifiedBlob);
    eprintln!(
        "accept-unverified-blob: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::BLOB_MATCHES_CID),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::AcceptUnverifiedBlob);
}

#[test]
fn trusting_any_signer_is_found() {
    let found = find(Bug::TrustAnySigner);
    eprintln!(
        "trust-any-signer: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::NO_FORGED_RECORD),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::TrustAnySigner);
}

#[test]
fn ignoring_revocations_is_found() {
    let found = find(Bug::IgnoreRevocations);
    eprintln!(
        "ignore-revocations: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::REVOCATION_STICKS),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::IgnoreRevocations);
}

#[test]
fn applying_a_stale_deployment_is_found() {
    let found = find(Bug::ApplyStaleDeployment);
    eprintln!(
        "apply-stale-deployment: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::PUSH_LIVE_EVERYWHERE
                || v.invariant == invariants::NO_ROLLBACK),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::ApplyStaleDeployment);
}

#[test]
fn skipping_fsync_is_found() {
    let found = find(Bug::SkipFsync);
    eprintln!(
        "skip-fsync: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    // What a crash takes from a node that did not sync: an acknowledged
    // push, a blob's tail, or a state file's tail (the node cannot boot).
    assert!(
        found.violations.iter().any(|v| {
            v.invariant == invariants::PUSH_LIVE_EVERYWHERE
                || v.invariant == invariants::BLOB_MATCHES_CID
                || (v.invariant == invariants::NO_PANIC
                    && (v.message.contains("not valid") || v.message.contains("unreadable")))
        }),
        "{:?}",
        found.violations
    );
    assert!(
        found
            .trace
            .entries
            .iter()
            .any(|e| e.event.to_string().contains("unsynced writes")),
        "the trace records what the crash lost"
    );
    replays(&found, Bug::SkipFsync);
}

#[test]
fn skipping_the_gc_grace_period_is_found() {
    let found = find(Bug::SkipGcGrace);
    eprintln!(
        "skip-gc-grace: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    // A collection during a deploy takes a blob the release then serves
    // without (or that no other node can fetch any more).
    assert!(
        found
            .violations
            .iter()
            .any(|v| v.invariant == invariants::LIVE_BLOBS_KEPT),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::SkipGcGrace);
}

#[test]
fn without_bugs_seeds_run_clean() {
    for seed in 0..10 {
        let result = run(&config(seed, vec![]));
        assert_eq!(
            result.violations,
            vec![],
            "seed {seed}: {}",
            result.summary_line()
        );
    }
}

/// A bound broken where no cluster invariant can see it: only the
/// replication core's `debug_assert!` catches it, as a panic. (This test
/// runs with debug assertions, as CI's sweep does with `--profile sim`;
/// `.ci/run` checks the sweep's build finds it too.)
#[test]
fn exceeding_the_fetch_limit_is_found_by_a_debug_assertion() {
    let found = find(Bug::ExceedFetchLimit);
    eprintln!(
        "exceed-fetch-limit: seed {} — {}",
        found.config.seed, found.violations[0]
    );
    assert!(
        found.violations.iter().any(
            |v| v.invariant == invariants::NO_PANIC && v.message.contains("concurrent fetches")
        ),
        "{:?}",
        found.violations
    );
    replays(&found, Bug::ExceedFetchLimit);
}
