//! The node's environment: everything that differs between a production node,
//! `canopy dream` and the simulator.
//!
//! Protocol code takes time, randomness, the data directory and the disk it
//! writes durable files through ([`Disk`]) from here and never from the
//! operating system directly, so the simulator can build the same node from
//! simulated parts, replay a run from a seed, and crash a node's disk.

mod disk;
mod guest_clock;

pub use disk::{Disk, DiskFile, OsDisk, missing_dirs, os_disk};
pub use guest_clock::{GuestClock, NodeClock};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A node's view of time.
///
/// Backed by tokio's clock, which the simulator (turmoil) and paused-time
/// tests control; never by `std::time::Instant::now()`.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: wall-clock time is the OS's. `Some((at, unix_s))`: the
    /// simulator's wall clock, which read `unix_s` at tokio instant `at`.
    simulated_wall: Option<(tokio::time::Instant, u64)>,
}

impl Clock {
    /// The clock of the tokio runtime the node runs on.
    pub fn tokio() -> Self {
        Self {
            simulated_wall: None,
        }
    }

    /// A clock whose wall-clock time starts at `unix_s` now and advances
    /// with tokio's (simulated) time: for the simulator.
    pub fn simulated(unix_s: u64) -> Self {
        Self {
            simulated_wall: Some((tokio::time::Instant::now(), unix_s)),
        }
    }

    /// Wall-clock time in seconds since the Unix epoch: only for things that
    /// must be compared across machines (an invite token's expiry), never
    /// for measuring durations.
    pub fn unix_now_s(&self) -> u64 {
        self.unix_now().as_secs()
    }

    /// [`Clock::unix_now_s`] to the nanosecond: what functions read as
    /// `wasi:clocks/wall-clock`.
    #[allow(
        clippy::disallowed_methods,
        reason = "the production clock: the OS's wall clock"
    )]
    pub fn unix_now(&self) -> std::time::Duration {
        match self.simulated_wall {
            Some((at, unix_s)) => {
                std::time::Duration::from_secs(unix_s) + (tokio::time::Instant::now() - at)
            }
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// The current instant on the node's clock.
    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// Wait for `duration` on the node's clock.
    pub async fn sleep(&self, duration: std::time::Duration) {
        tokio::time::sleep(duration).await
    }
}

/// The node's source of randomness: a ChaCha20 stream seeded once, from the
/// OS in production and from the run's seed in the simulator.
#[derive(Clone, Debug)]
pub struct Rng {
    inner: Arc<Mutex<ChaCha20Rng>>,
}

impl Rng {
    /// A generator seeded from the operating system (production, dream).
    #[allow(
        clippy::disallowed_methods,
        reason = "the production generator's seed: the OS's randomness"
    )]
    pub fn from_os() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    /// A generator that replays the same stream for the same seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ChaCha20Rng::from_seed(seed))),
        }
    }

    /// A generator seeded from a small number (the simulator's seeds).
    pub fn seeded(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ChaCha20Rng::seed_from_u64(seed))),
        }
    }

    pub fn next_u64(&self) -> u64 {
        self.inner.lock().expect("rng lock poisoned").next_u64()
    }

    /// A generator of its own, seeded with 256 bits of this one's stream:
    /// for a consumer whose draws must not shift this stream's later ones.
    pub fn fork(&self) -> Rng {
        let mut seed = [0u8; 32];
        self.fill_bytes(&mut seed);
        Rng::from_seed(seed)
    }

    pub fn fill_bytes(&self, dest: &mut [u8]) {
        self.inner
            .lock()
            .expect("rng lock poisoned")
            .fill_bytes(dest)
    }
}

thread_local! {
    static INLINE_BLOCKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static INLINE_BLOCKING_COST: std::cell::Cell<std::time::Duration> =
        const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

/// Run blocking work (file IO, compilation) where it cannot stall the async
/// workers: on tokio's blocking pool — unless this thread asked for it to
/// run inline ([`set_inline_blocking`]), which the simulator does so a run
/// stays on its one thread and replays from its seed (a pool thread would
/// finish in real time, interleaving differently each run). Production
/// never sets it.
#[allow(
    clippy::disallowed_methods,
    reason = "the seam itself: outside the simulator, blocking work runs on tokio's pool"
)]
pub async fn spawn_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingError> {
    if INLINE_BLOCKING.with(|inline| inline.get()) {
        let done = work();
        // Work done inline takes no simulated time by itself; the cost
        // stands for the real time it takes, so what races with it (a
        // collection during a deploy) happens in the simulation too.
        let cost = INLINE_BLOCKING_COST.with(std::cell::Cell::get);
        if !cost.is_zero() {
            tokio::time::sleep(cost).await;
        }
        return Ok(done);
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

/// Run [`spawn_blocking`] work inline on this thread from now on (`true`),
/// or on tokio's blocking pool again (`false`). For the simulator.
pub fn set_inline_blocking(inline: bool) {
    INLINE_BLOCKING.with(|cell| cell.set(inline));
}

/// The time (of tokio's clock: simulated time in the simulator) each piece
/// of inline [`spawn_blocking`] work takes on this thread. For the
/// simulator.
pub fn set_inline_blocking_cost(cost: std::time::Duration) {
    INLINE_BLOCKING_COST.with(|cell| cell.set(cost));
}

/// Blocking work did not finish (it panicked or the runtime shut down).
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct BlockingError(String);

/// Everything a node is built from.
#[derive(Clone, Debug)]
pub struct Env {
    pub clock: Clock,
    pub rng: Rng,
    /// Root of everything the node persists: store, git repositories,
    /// deployments, compiled code.
    pub data_dir: PathBuf,
    /// What durable writes below `data_dir` go through (the store, cluster
    /// state, deployment state): the OS disk, or the simulator's.
    pub disk: Arc<dyn Disk>,
    /// What functions read as `wasi:clocks`: the node's [`Clock`] in
    /// production, the simulation's own reading of time in the simulator.
    pub guest_clock: Arc<dyn GuestClock>,
}

impl Env {
    /// The production environment: tokio's clock, an OS-seeded RNG, the OS
    /// disk.
    pub fn production(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            clock: Clock::tokio(),
            rng: Rng::from_os(),
            data_dir: data_dir.into(),
            disk: os_disk(),
            guest_clock: Arc::new(NodeClock::new(Clock::tokio())),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rng_replays() {
        let a = Rng::seeded(7);
        let b = Rng::seeded(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::seeded(8).next_u64(), xs[0]);
    }

    #[test]
    fn a_fork_replays_and_leaves_the_parent_its_own_stream() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        let (fa, fb) = (a.fork(), b.fork());
        assert_eq!(fa.next_u64(), fb.next_u64());
        // The fork took 32 bytes: the parents continue in step, and apart
        // from the fork's stream.
        let parent = a.next_u64();
        assert_eq!(parent, b.next_u64());
        assert_ne!(parent, fa.next_u64());
    }
}
