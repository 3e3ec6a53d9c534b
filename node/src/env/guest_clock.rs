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
