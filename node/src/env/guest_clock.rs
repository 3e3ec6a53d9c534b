//! What functions read as time: a [`GuestClock`], part of the node's
//! environment because the simulator runs functions outside its simulated
//! hosts and hands them its own reading of simulated time.

use std::fmt::Debug;
use std::time::Duration;

use super::Clock;

/// A clock as guests read it.
pub trait GuestClock: Send + Sync + Debug {
    /// Time since the Unix epoch (`wasi:clocks/wall-clock`).
    fn wall(&self) -> Duration;
    /// Time since an arbitrary origin that never goes back
    /// (`wasi:clocks/monotonic-clock`).
    fn monotonic(&self) -> Duration;
}

/// The node's [`Clock`]: wall time as the node knows it, monotonic time
/// from when the runtime started.
#[derive(Debug)]
pub struct NodeClock {
    clock: Clock,
    origin: tokio::time::Instant,
}

impl NodeClock {
    pub fn new(clock: Clock) -> Self {
        let origin = clock.now();
        Self { clock, origin }
    }
}

impl GuestClock for NodeClock {
    fn wall(&self) -> Duration {
        self.clock.unix_now()
    }

    fn monotonic(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn node_clock_follows_the_nodes_time() {
        let clock = NodeClock::new(Clock::simulated(1_800_000_000));
        assert_eq!(clock.monotonic(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.monotonic(), Duration::from_millis(1500));
        assert_eq!(clock.wall(), Duration::from_millis(1_800_000_001_500));
    }
}
