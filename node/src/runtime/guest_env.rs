//! What a function sees of time and randomness: the node's clock and the
//! node's random stream, never the host operating system's directly.
//!
//! A guest that reads `wasi:clocks` or `wasi:random` must see the same
//! values for the same seed in the simulator, so every instance gets its
//! clocks from a [`GuestClock`] and its generators seeded from the node's
//! [`Rng`](crate::env::Rng). In production that is the OS's wall clock,
//! tokio's monotonic clock and a ChaCha20 stream seeded from the OS — a
//! cryptographically secure generator, as `wasi:random/random` requires.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::env::{Env, Rng};
pub use crate::env::{GuestClock, NodeClock};

/// Time and randomness for the functions of one runtime.
#[derive(Clone, Debug)]
pub struct GuestEnv {
    clock: Arc<dyn GuestClock>,
    rng: Rng,
}

impl GuestEnv {
    /// The environment's guest clock, and a stream of the guests' own forked
    /// from the node's (so requests never shift the node's protocol draws).
    pub fn of(env: &Env) -> Self {
        Self::new(env.guest_clock.clone(), env.rng.fork())
    }

    /// Guests read `clock`; their generators are seeded from `rng`.
    pub fn new(clock: Arc<dyn GuestClock>, rng: Rng) -> Self {
        Self { clock, rng }
    }

    /// Give one instance its clocks and its own generators. Each instance
    /// gets fresh seeds, so two instances never share a stream.
    pub(crate) fn configure(&self, wasi: &mut WasiCtxBuilder) {
        let mut seeds = [0u8; 80];
        self.rng.fill_bytes(&mut seeds);
        let (secure, rest) = seeds.split_at(32);
        let (insecure, seed) = rest.split_at(32);
        wasi.wall_clock(Wall(self.clock.clone()))
            .monotonic_clock(Monotonic(self.clock.clone()))
            .secure_random(Stream::seeded(secure))
            .insecure_random(Stream::seeded(insecure))
            .insecure_random_seed(u128::from_le_bytes(
                seed.try_into().expect("80 bytes split 32 + 32 + 16"),
            ));
    }
}

struct Wall(Arc<dyn GuestClock>);

impl HostWallClock for Wall {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.wall()
    }
}

struct Monotonic(Arc<dyn GuestClock>);

impl HostMonotonicClock for Monotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.monotonic().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A ChaCha20 stream in the shape wasmtime-wasi's generators take
/// (`rand_core` 0.10's `TryRng`; the node's own RNG is on 0.9).
struct Stream(ChaCha20Rng);

impl Stream {
    fn seeded(seed: &[u8]) -> Self {
        let seed: [u8; 32] = seed.try_into().expect("a 32-byte seed");
        Self(ChaCha20Rng::from_seed(seed))
    }
}

impl wasi_rand_core::TryRng for Stream {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl wasi_rand_core::TryCryptoRng for Stream {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_replay_from_the_seed() {
        use wasi_rand_core::TryRng;
        let draw = |seed: u8| {
            let mut stream = Stream::seeded(&[seed; 32]);
            (0..4)
                .map(|_| stream.try_next_u64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
