//! Known bugs the simulator can switch on, to prove it finds them.
//!
//! Compiled in only with the cargo feature `sim-bugs`, which only
//! `canopy-sim` enables; without it [`active`] is a constant `false` and the
//! checks vanish from production builds.
//!
//! The switches are per thread: the simulator runs each seed's whole
//! simulation on one thread, so seeds run in parallel (or tests in one
//! binary) never see each other's switches.

/// A bug that can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// `cluster::sync`: the periodic anti-entropy round does nothing, so a
    /// node that missed changes during a silent partition is never re-synced.
    SkipAntiEntropy,
    /// `store::finish_write`: a blob fetched from a peer is published under
    /// the CID it was asked for without checking its content.
    AcceptUnverifiedBlob,
    /// `cluster::state`: the winner of concurrent pushes is the candidate of
    /// lowest precedence, so followers install a stale release.
    ApplyStaleDeployment,
    /// `durable::write_atomically_on` and the blob store skip their file and
    /// directory syncs, so what they wrote may be lost or torn by a crash.
    SkipFsync,
    /// `cluster::replicate`: the core starts every queued fetch at once,
    /// past `max_concurrent_fetches`. The blobs still arrive, so no
    /// cluster invariant sees it: only the core's `debug_assert!` on its
    /// bound does — the proof that the CI sweep runs with the node's debug
    /// assertions live (`--profile sim`).
    ExceedFetchLimit,
    /// `cluster::state`: a node acts on every record whose signature
    /// verifies, whoever wrote it (no author rules): a rogue node's forged
    /// member records and deployments are followed.
    TrustAnySigner,
    /// `cluster::trust`: revocation records are not read, so a revoked
    /// token keeps working on every node.
    IgnoreRevocations,
    /// `gc` and `store::remove_untouched`: garbage collection removes every
    /// unreferenced blob at once, with no grace period and no regard for
    /// blobs a deploy in flight has just stored.
    SkipGcGrace,
}

impl Bug {
    pub const ALL: [Bug; 8] = [
        Bug::SkipAntiEntropy,
        Bug::AcceptUnverifiedBlob,
        Bug::ApplyStaleDeployment,
        Bug::SkipFsync,
        Bug::ExceedFetchLimit,
        Bug::TrustAnySigner,
        Bug::IgnoreRevocations,
        Bug::SkipGcGrace,
    ];

    /// The switch's name on the `canopy-sim` command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipAntiEntropy => "skip-anti-entropy",
            Bug::AcceptUnverifiedBlob => "accept-unverified-blob",
            Bug::ApplyStaleDeployment => "apply-stale-deployment",
            Bug::SkipFsync => "skip-fsync",
            Bug::ExceedFetchLimit => "exceed-fetch-limit",
            Bug::TrustAnySigner => "trust-any-signer",
            Bug::IgnoreRevocations => "ignore-revocations",
            Bug::SkipGcGrace => "skip-gc-grace",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    #[cfg(feature = "sim-bugs")]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(feature = "sim-bugs")]
thread_local! {
    static ACTIVE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether `bug` is switched on for this thread.
#[cfg(feature = "sim-bugs")]
pub fn active(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() & bug.bit() != 0)
}

/// Whether `bug` is switched on: never, in a build without `sim-bugs`.
#[cfg(not(feature = "sim-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}

/// Switch exactly `bugs` on for this thread (the simulator, per run).
#[cfg(feature = "sim-bugs")]
pub fn set_active(bugs: &[Bug]) {
    let bits = bugs.iter().fold(0, |acc, b| acc | b.bit());
    ACTIVE.with(|a| a.set(bits));
}
