//! What functions read as time inside the simulator: the simulation's own
//! clock, never the host's.
//!
//! Requests run their function on a runtime of their own, outside the
//! simulated hosts (see [`crate::workload::request`]), where tokio's clock
//! is real time. So a function's `wasi:clocks` read this shared reading of
//! simulated time, which the harness advances every tick; the same seed
//! then shows a function the same times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canopy_node::runtime::GuestClock;

/// The simulation's wall-clock epoch, in seconds since the Unix epoch
/// (turmoil's default would be the real time).
pub const EPOCH_S: u64 = 1_800_000_000;

/// Simulated time since the run started, shared by the harness (which
/// advances it) and every node's guest clock (which reads it).
#[derive(Clone, Debug, Default)]
pub struct SimulatedNow(Arc<AtomicU64>);

impl SimulatedNow {
    pub fn set(&self, elapsed_ms: u64) {
        debug_assert!(elapsed_ms >= self.elapsed_ms(), "simulated time goes back");
        self.0.store(elapsed_ms, Ordering::Relaxed);
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The clock functions of a node booted now see: wall time from
    /// [`EPOCH_S`], monotonic time from this boot.
    pub fn guest_clock(&self) -> Arc<dyn GuestClock> {
        Arc::new(SimulatedGuestClock {
            now: self.clone(),
            boot_ms: self.elapsed_ms(),
        })
    }
}

#[derive(Debug)]
struct SimulatedGuestClock {
    now: SimulatedNow,
    boot_ms: u64,
}

impl GuestClock for SimulatedGuestClock {
    fn wall(&self) -> Duration {
        Duration::from_secs(EPOCH_S) + Duration::from_millis(self.now.elapsed_ms())
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.now.elapsed_ms().saturating_sub(self.boot_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_see_simulated_time_from_their_boot() {
        let now = SimulatedNow::default();
        now.set(2_000);
        let clock = now.guest_clock();
        now.set(2_750);
        assert_eq!(clock.monotonic(), Duration::from_millis(750));
        assert_eq!(
            clock.wall(),
            Duration::from_secs(EPOCH_S) + Duration::from_millis(2_750)
        );
    }
}
