//! Per-peer admission of inbound requests as a sans-IO core: how many
//! requests one peer may have open on this node at once, and how fast it may
//! send them.
//!
//! Each admitted peer gets at most [`PeerLimitsConfig::max_in_flight`]
//! requests open (admitted and not yet answered: the net implementation
//! calls [`PeerLimits::release`] when the answer is sent or the responder
//! dropped) and a token bucket of [`PeerLimitsConfig::burst`] tokens that
//! refills at [`PeerLimitsConfig::max_requests_per_second`]. A request over
//! either bound is refused at once with a [`Busy`] reason — the requester
//! sees [`NetError::Busy`](crate::net::NetError::Busy), "retry later" — never
//! queued, and the peer is not disconnected for it. One peer's state never
//! touches another's, so a flood from one peer refuses nobody else.
//!
//! In quinn-proto's shape: the net implementation (the libp2p driver, the
//! simulator's net) feeds it requests, answers and peers going down with the
//! time (`now`, a plain [`Instant`] from the node's clock) and obeys its
//! decisions. It does no IO, never reads a clock and does not depend on
//! tokio. Memory is bounded: state is kept per peer while the peer is up, and
//! after it went down only until its state is as good as a new peer's
//! (nothing open, bucket full — so reconnecting resets nothing), for at most
//! `max_peers` peers; refusal counts (for `canopy status`) for at most
//! `max_peers` peers too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::NodeId;

/// The default [`PeerLimitsConfig::max_in_flight`]: the node's own drivers
/// keep at most about ten requests open to one peer (blob replication: 4
/// fetches × 2 chunks; state sync: 1; status: 1).
pub const DEFAULT_MAX_IN_FLIGHT_PER_PEER: u32 = 64;
/// The default [`PeerLimitsConfig::max_requests_per_second`].
pub const DEFAULT_MAX_REQUESTS_PER_SECOND_PER_PEER: u32 = 1_000;
/// The default [`PeerLimitsConfig::burst`]: a replication pass over a
/// 1,000-file site asks at most two requests per blob (`Have`, `Get`).
pub const DEFAULT_REQUEST_BURST_PER_PEER: u32 = 2_000;

/// At most one warning per peer per this interval, however many requests
/// are refused.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// What one peer may ask of this node (`limits.cluster.*_per_peer` in the
/// node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimitsConfig {
    /// Requests of one peer admitted and not answered yet.
    pub max_in_flight: u32,
    /// The sustained rate of one peer's requests.
    pub max_requests_per_second: u32,
    /// How many requests one peer may send at once above the rate (the
    /// bucket's size; it starts full).
    pub burst: u32,
}

impl Default for PeerLimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT_PER_PEER,
            max_requests_per_second: DEFAULT_MAX_REQUESTS_PER_SECOND_PER_PEER,
            burst: DEFAULT_REQUEST_BURST_PER_PEER,
        }
    }
}

/// A [`PeerLimitsConfig`] that would refuse every request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "limits.cluster.{field}: 0 would refuse every request from peers; leave it out for the default ({default})"
)]
pub struct ZeroLimit {
    pub field: &'static str,
    pub default: u32,
}

impl PeerLimitsConfig {
    /// Every bound must be above zero; the error names the config field.
    pub fn check(&self) -> Result<(), ZeroLimit> {
        let fields = [
            (
                "max_requests_in_flight_per_peer",
                self.max_in_flight,
                DEFAULT_MAX_IN_FLIGHT_PER_PEER,
            ),
            (
                "max_requests_per_second_per_peer",
                self.max_requests_per_second,
                DEFAULT_MAX_REQUESTS_PER_SECOND_PER_PEER,
            ),
            (
                "request_burst_per_peer",
                self.burst,
                DEFAULT_REQUEST_BURST_PER_PEER,
            ),
        ];
        match fields.into_iter().find(|(_, value, _)| *value == 0) {
            Some((field, _, default)) => Err(ZeroLimit { field, default }),
            None => Ok(()),
        }
    }
}

/// Why a request was refused: this node is busy with the peer, the peer
/// should retry later. Its text is what the requester sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error(
        "busy: {max} requests from this node are open here already (limits.cluster.max_requests_in_flight_per_peer); retry when one is answered"
    )]
    InFlight { max: u32 },
    #[error(
        "busy: more than {per_second} requests per second (burst {burst}) from this node (limits.cluster.max_requests_per_second_per_peer); retry later"
    )]
    Rate { per_second: u32, burst: u32 },
    #[error("busy: this node tracks {max_peers} peers with requests open already; retry later")]
    TooManyPeers { max_peers: usize },
}

/// A refused request: why, whether to log it (at most once per peer per
/// [`WARN_INTERVAL`]), and how many of the peer's requests were refused so
/// far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub busy: Busy,
    pub warn: bool,
    pub refused_total: u64,
}

/// A token is this many units: the bucket refills `rate` units per
/// nanosecond, so integer math is exact.
const UNITS_PER_TOKEN: u128 = 1_000_000_000;

#[derive(Debug)]
struct PeerState {
    in_flight: u32,
    /// Tokens × [`UNITS_PER_TOKEN`], as of `refilled_at`.
    bucket_units: u128,
    refilled_at: Instant,
    last_warned: Option<Instant>,
    /// Went down: forgotten once its state is as good as new.
    down: bool,
}

/// The inbound-request limits of every peer of one node.
#[derive(Debug)]
pub struct PeerLimits {
    config: PeerLimitsConfig,
    max_peers: usize,
    peers: BTreeMap<NodeId, PeerState>,
    refused: BTreeMap<NodeId, u64>,
}

impl PeerLimits {
    /// Limits of `config` per peer, with state for at most `max_peers` peers.
    pub fn new(config: PeerLimitsConfig, max_peers: usize) -> Self {
        debug_assert!(config.check().is_ok(), "{config:?}");
        debug_assert!(max_peers > 0);
        Self {
            config,
            max_peers,
            peers: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &PeerLimitsConfig {
        &self.config
    }

    fn capacity_units(&self) -> u128 {
        u128::from(self.config.burst) * UNITS_PER_TOKEN
    }

    /// A request from `peer` arrived at `now`: admit it (the caller must
    /// [`PeerLimits::release`] it once answered) or refuse it.
    pub fn admit(&mut self, peer: NodeId, now: Instant) -> Result<(), Refusal> {
        if !self.peers.contains_key(&peer) && !self.make_room(now) {
            let busy = Busy::TooManyPeers {
                max_peers: self.max_peers,
            };
            return Err(self.refuse(peer, busy, None));
        }
        let capacity = self.capacity_units();
        let rate = u128::from(self.config.max_requests_per_second);
        let state = self.peers.entry(peer).or_insert(PeerState {
            in_flight: 0,
            bucket_units: capacity,
            refilled_at: now,
            last_warned: None,
            down: false,
        });
        // Time never runs backwards on the node's clock; a stale `now` just
        // refills nothing.
        let elapsed = now.saturating_duration_since(state.refilled_at).as_nanos();
        state.bucket_units = (state.bucket_units + elapsed * rate).min(capacity);
        state.refilled_at = state.refilled_at.max(now);
        let busy = if state.in_flight >= self.config.max_in_flight {
            Some(Busy::InFlight {
                max: self.config.max_in_flight,
            })
        } else if state.bucket_units < UNITS_PER_TOKEN {
            Some(Busy::Rate {
                per_second: self.config.max_requests_per_second,
                burst: self.config.burst,
            })
        } else {
            None
        };
        if let Some(busy) = busy {
            let warn = state
                .last_warned
                .is_none_or(|at| now.saturating_duration_since(at) >= WARN_INTERVAL);
            if warn {
                state.last_warned = Some(now);
            }
            return Err(self.refuse(peer, busy, Some(warn)));
        }
        state.bucket_units -= UNITS_PER_TOKEN;
        state.in_flight += 1;
        debug_assert!(state.in_flight <= self.config.max_in_flight);
        Ok(())
    }

    /// Count a refusal; `warn: None` when the peer has no state to remember
    /// its last warning in (warned every time: only when over `max_peers`).
    fn refuse(&mut self, peer: NodeId, busy: Busy, warn: Option<bool>) -> Refusal {
        let refused_total = if let Some(count) = self.refused.get_mut(&peer) {
            *count += 1;
            *count
        } else if self.refused.len() < self.max_peers {
            self.refused.insert(peer, 1);
            1
        } else {
            // Full: the count is lost, the refusal still happens.
            1
        };
        Refusal {
            busy,
            warn: warn.unwrap_or(true),
            refused_total,
        }
    }

    /// Whether `state` at `now` is as good as a new peer's (nothing open,
    /// bucket full): forgetting it changes no decision.
    fn is_as_new(&self, state: &PeerState, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(state.refilled_at).as_nanos();
        let rate = u128::from(self.config.max_requests_per_second);
        state.in_flight == 0 && state.bucket_units + elapsed * rate >= self.capacity_units()
    }

    /// Make room for one more peer's state: forget an idle peer whose state
    /// is as good as new. Whether there is room.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.peers.len() < self.max_peers {
            return true;
        }
        let idle = self
            .peers
            .iter()
            .find(|(_, s)| self.is_as_new(s, now))
            .map(|(peer, _)| *peer);
        match idle {
            Some(peer) => {
                self.peers.remove(&peer);
                true
            }
            None => false,
        }
    }

    /// An admitted request of `peer` was answered (or its responder
    /// dropped) at `now`: its slot is free.
    pub fn release(&mut self, peer: NodeId, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else {
            debug_assert!(
                false,
                "released a request of {peer} that was never admitted"
            );
            return;
        };
        debug_assert!(state.in_flight > 0, "released more than admitted");
        state.in_flight = state.in_flight.saturating_sub(1);
        self.forget_gone(now);
    }

    /// `peer`'s connections are gone at `now`: its state is forgotten once
    /// it is as good as new — nothing open, bucket full — so reconnecting
    /// resets neither its open requests nor its rate.
    pub fn handle_peer_down(&mut self, peer: NodeId, now: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.down = true;
        }
        self.forget_gone(now);
    }

    /// Forget the peers that are down and whose state is as good as new.
    fn forget_gone(&mut self, now: Instant) {
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, s)| s.down && self.is_as_new(s, now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
        }
    }

    /// `peer` is up (again): keep its state if it has requests open.
    pub fn handle_peer_up(&mut self, peer: NodeId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.down = false;
        }
    }

    /// `peer` is no longer admitted: forget its refusal count as well.
    pub fn forget(&mut self, peer: NodeId, now: Instant) {
        self.handle_peer_down(peer, now);
        self.refused.remove(&peer);
    }

    /// Requests of `peer` admitted and not answered yet.
    pub fn in_flight(&self, peer: &NodeId) -> u32 {
        self.peers.get(peer).map_or(0, |s| s.in_flight)
    }

    /// Peers whose state is kept.
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }

    /// Requests refused per peer so far.
    pub fn refusals(&self) -> &BTreeMap<NodeId, u64> {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn config(max_in_flight: u32, per_second: u32, burst: u32) -> PeerLimitsConfig {
        PeerLimitsConfig {
            max_in_flight,
            max_requests_per_second: per_second,
            burst,
        }
    }

    #[test]
    fn in_flight_is_bounded_and_an_answer_frees_a_slot() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut limits = PeerLimits::new(config(2, 1000, 1000), 8);
        assert!(limits.admit(node(1), t0).is_ok());
        assert!(limits.admit(node(1), t0).is_ok());
        let refusal = limits.admit(node(1), t0).unwrap_err();
        assert_eq!(refusal.busy, Busy::InFlight { max: 2 });
        assert!(refusal.warn);
        assert_eq!(refusal.refused_total, 1);
        // Another peer is not affected.
        assert!(limits.admit(node(2), t0).is_ok());
        limits.release(node(1), t0);
        assert!(limits.admit(node(1), t0).is_ok());
        assert_eq!(limits.in_flight(&node(1)), 2);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut limits = PeerLimits::new(config(100, 10, 3), 8);
        for _ in 0..3 {
            limits.admit(node(1), t0).unwrap();
            limits.release(node(1), t0);
        }
        let refusal = limits.admit(node(1), t0).unwrap_err();
        assert_eq!(
            refusal.busy,
            Busy::Rate {
                per_second: 10,
                burst: 3
            }
        );
        // 10 per second: one token per 100 ms.
        assert!(
            limits
                .admit(node(1), t0 + Duration::from_millis(99))
                .is_err()
        );
        limits
            .admit(node(1), t0 + Duration::from_millis(100))
            .unwrap();
        assert!(
            limits
                .admit(node(1), t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn warnings_are_spaced_by_the_interval() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut limits = PeerLimits::new(config(1, 1000, 1000), 8);
        limits.admit(node(1), t0).unwrap();
        let warned: Vec<bool> = (0..5)
            .map(|_| limits.admit(node(1), t0).unwrap_err().warn)
            .collect();
        assert_eq!(warned, [true, false, false, false, false]);
        let later = limits.admit(node(1), t0 + WARN_INTERVAL).unwrap_err();
        assert!(later.warn);
        assert_eq!(later.refused_total, 6);
        assert_eq!(limits.refusals().get(&node(1)), Some(&6));
    }

    #[test]
    fn state_is_dropped_when_the_peer_goes_down_once_it_is_as_new() {
        let t0 = tokio::time::Instant::now().into_std();
        // 10 per second: a token per 100 ms.
        let mut limits = PeerLimits::new(config(1, 10, 1), 8);
        limits.admit(node(1), t0).unwrap();
        limits.handle_peer_down(node(1), t0);
        // Reconnecting resets neither what is open nor the bucket.
        limits.handle_peer_up(node(1));
        assert_eq!(limits.in_flight(&node(1)), 1);
        assert!(limits.admit(node(1), t0).is_err());
        limits.handle_peer_down(node(1), t0);
        limits.release(node(1), t0);
        assert_eq!(limits.tracked_peers(), 1, "its bucket is empty still");
        limits.handle_peer_down(node(1), t0 + Duration::from_millis(100));
        assert_eq!(limits.tracked_peers(), 0);
    }

    #[test]
    fn tracked_peers_are_bounded_and_idle_ones_make_room() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut limits = PeerLimits::new(config(4, 1000, 1000), 2);
        limits.admit(node(1), t0).unwrap();
        limits.admit(node(2), t0).unwrap();
        assert_eq!(
            limits.admit(node(3), t0).unwrap_err().busy,
            Busy::TooManyPeers { max_peers: 2 }
        );
        // Peer 1 answered and its bucket refilled: its state is as new.
        limits.release(node(1), t0);
        limits.admit(node(3), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(limits.tracked_peers(), 2);
    }

    #[test]
    fn zero_is_refused_naming_the_field() {
        let err = config(64, 0, 10).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.cluster.max_requests_per_second_per_peer: 0 would refuse every request from peers; leave it out for the default (1000)"
        );
        assert!(config(0, 1, 1).check().is_err());
        assert!(config(1, 1, 0).check().is_err());
        assert!(PeerLimitsConfig::default().check().is_ok());
    }

    /// One step of a run: a request from a peer after `gap_ms`, or the
    /// answer to one of its open requests, or the peer going down.
    #[derive(Clone, Debug)]
    enum Step {
        Request { peer: u8, gap_us: u64 },
        Answer { peer: u8 },
        Down { peer: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..3, 0u64..20_000).prop_map(|(peer, gap_us)| Step::Request { peer, gap_us }),
            3 => (0u8..3).prop_map(|peer| Step::Answer { peer }),
            1 => (0u8..3).prop_map(|peer| Step::Down { peer }),
        ]
    }

    proptest! {
        /// Never more than `max_in_flight` open per peer; the rate is never
        /// exceeded over any window (at most `burst + rate × window`
        /// admitted); peer 0 floods (every request is followed by another at
        /// once) and never makes another peer's request refused unless that
        /// peer itself is over its own bounds.
        #[test]
        fn bounds_hold_per_peer(
            max_in_flight in 1u32..6,
            per_second in 1u32..400,
            burst in 1u32..8,
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let cfg = config(max_in_flight, per_second, burst);
            let mut limits = PeerLimits::new(cfg, 8);
            let mut shadow = PeerLimits::new(cfg, 8);
            let t0 = tokio::time::Instant::now().into_std();
            let mut now = t0;
            let mut open = [0u32; 3];
            let mut admitted_at: [Vec<Instant>; 3] = Default::default();
            for step in steps {
                match step {
                    Step::Request { peer, gap_us } => {
                        now += Duration::from_micros(gap_us);
                        let id = node(peer);
                        let result = limits.admit(id, now);
                        if peer != 0 {
                            // The same run without peer 0's flood decides the same.
                            let alone = shadow.admit(id, now);
                            prop_assert_eq!(result.is_ok(), alone.is_ok());
                        }
                        if result.is_ok() {
                            open[peer as usize] += 1;
                            admitted_at[peer as usize].push(now);
                        }
                        prop_assert!(open[peer as usize] <= max_in_flight);
                        prop_assert_eq!(limits.in_flight(&id), open[peer as usize]);
                        if peer == 0 {
                            // The flood: as many more at once as there is room for, and more.
                            for _ in 0..(max_in_flight + burst) {
                                if limits.admit(id, now).is_ok() {
                                    open[0] += 1;
                                    admitted_at[0].push(now);
                                }
                                prop_assert!(open[0] <= max_in_flight);
                            }
                        }
                    }
                    Step::Answer { peer } => {
                        if open[peer as usize] > 0 {
                            open[peer as usize] -= 1;
                            limits.release(node(peer), now);
                            if peer != 0 {
                                shadow.release(node(peer), now);
                            }
                        }
                    }
                    Step::Down { peer } => {
                        limits.handle_peer_down(node(peer), now);
                        if peer != 0 {
                            shadow.handle_peer_down(node(peer), now);
                        }
                    }
                }
            }
            for times in &admitted_at {
                for (i, start) in times.iter().enumerate() {
                    for (j, end) in times.iter().enumerate().skip(i) {
                        let count = (j - i + 1) as u128;
                        let window_ns = end.duration_since(*start).as_nanos();
                        prop_assert!(
                            count * UNITS_PER_TOKEN
                                <= u128::from(burst) * UNITS_PER_TOKEN + window_ns * u128::from(per_second),
                            "{} admitted within {} ns", count, window_ns
                        );
                    }
                }
            }
        }
    }
}
