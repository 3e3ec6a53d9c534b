//! The fault model: each run draws its own fault ranges from its seed, so a
//! sweep over seeds covers calm runs and stormy ones.
//!
//! What a run can suffer during its active phase (see `docs/simulation.md`):
//! - message latency: turmoil's per-message latency, in a range per run;
//! - link failures: turmoil's `fail_rate` / `repair_rate` (a link drops every
//!   segment for a while; with TCP framing that is loss: requests time out);
//! - partitions: a random subset of nodes cut from the rest (silent: no
//!   connection event), healed after a random time;
//! - holds: one link stalls (messages queue) and is released later —
//!   bursts of delay and reordering across connections;
//! - duplication: a request sent twice by the transport;
//! - crashes and restarts: a host's software and memory are gone, its data
//!   directory survives as synced — its disk ([`crate::disk::SimDisk`])
//!   loses or tears what was not; restarted after a random downtime;
//! - clock drift: each node's timers run at its own rate (its anti-entropy
//!   interval is scaled by a factor per node), since turmoil gives every
//!   host the same rate of time;
//! - disk corruption: a byte flipped in a blob on one node's disk, and
//!   read corruption: a blob chunk served to a peer with a byte flipped.
//!
//! At the end of the active phase every fault is healed at once and the
//! crashed nodes restarted: that instant is the trace's `healed` event.

use std::time::Duration;

use canopy_node::env::Rng;

/// A uniform draw in `[lo, hi]`.
pub fn uniform(rng: &Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    lo + rng.next_u64() % (hi - lo + 1)
}

/// A draw in `[0, 1)`.
pub fn unit(rng: &Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// One run's fault and workload ranges, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Params {
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// turmoil's per-message chance that a link fails, and that it repairs.
    pub fail_rate: f64,
    pub repair_rate: f64,
    pub duplicate_rate: f64,
    /// Chance that a blob chunk a node serves is corrupted on the way out.
    pub corrupt_read_rate: f64,
    /// Chance per 100 ms slot that a fault of each kind starts.
    pub partition_chance: f64,
    pub hold_chance: f64,
    pub crash_chance: f64,
    pub corrupt_chance: f64,
    pub max_partition: Duration,
    pub max_hold: Duration,
    pub max_downtime: Duration,
    /// Chance per 100 ms slot of a push and of a request.
    pub push_chance: f64,
    pub request_chance: f64,
    /// Extra nodes that join during the run, and nodes that leave.
    pub joins: usize,
    pub leaves: usize,
    /// Each node's timer rate, per mille (1000 = no drift).
    pub drift_permille: Vec<u64>,
    /// Releases each node keeps per environment past the live one
    /// (`gc.history`): 1 in half the runs, so garbage collection removes
    /// releases a push old all through the workload; 10 (the default) in
    /// the others, so it removes little and the state is quiet when no
    /// push comes (what `skip-anti-entropy` needs to show).
    pub gc_history: usize,
}

impl Params {
    /// Draw a run's parameters for `nodes` initial nodes.
    pub fn draw(rng: &Rng, nodes: usize) -> Params {
        let min_latency = uniform(rng, 0, 20);
        let max_latency = min_latency + uniform(rng, 1, 200);
        let stormy = unit(rng) < 0.5;
        let scale = if stormy { 2.0 } else { 0.5 };
        let joins = usize::from(unit(rng) < 0.4);
        let leaves = usize::from(nodes > 2 && unit(rng) < 0.3);
        let mut params = Params {
            min_latency: Duration::from_millis(min_latency),
            max_latency: Duration::from_millis(max_latency),
            fail_rate: if unit(rng) < 0.5 {
                unit(rng) * 0.002
            } else {
                0.0
            },
            repair_rate: 0.05 + unit(rng) * 0.3,
            duplicate_rate: if unit(rng) < 0.5 {
                unit(rng) * 0.05
            } else {
                0.0
            },
            corrupt_read_rate: if unit(rng) < 0.6 {
                0.002 + unit(rng) * 0.03
            } else {
                0.0
            },
            partition_chance: scale * 0.004,
            hold_chance: scale * 0.003,
            crash_chance: scale * 0.003,
            corrupt_chance: scale * 0.002,
            max_partition: Duration::from_millis(uniform(rng, 1_000, 20_000)),
            max_hold: Duration::from_millis(uniform(rng, 200, 4_000)),
            max_downtime: Duration::from_millis(uniform(rng, 500, 15_000)),
            push_chance: 0.01 + unit(rng) * 0.03,
            request_chance: 0.05 + unit(rng) * 0.1,
            joins,
            leaves,
            drift_permille: (0..nodes + joins)
                .map(|_| uniform(rng, 800, 1250))
                .collect(),
            gc_history: 0,
        };
        // Drawn last: every draw before it is what it was before it existed.
        params.gc_history = if unit(rng) < 0.5 { 1 } else { 10 };
        params
    }

    /// The parameters as the trace's first line shows them.
    pub fn describe(&self) -> String {
        format!(
            "latency={}..{}ms fail_rate={:.5} repair_rate={:.3} duplicate_rate={:.3} corrupt_read_rate={:.3} partition={:.4}/{}ms hold={:.4}/{}ms crash={:.4}/{}ms corrupt={:.4} push={:.3} request={:.3} joins={} leaves={} drift={:?} gc_history={}",
            self.min_latency.as_millis(),
            self.max_latency.as_millis(),
            self.fail_rate,
            self.repair_rate,
            self.duplicate_rate,
            self.corrupt_read_rate,
            self.partition_chance,
            self.max_partition.as_millis(),
            self.hold_chance,
            self.max_hold.as_millis(),
            self.crash_chance,
            self.max_downtime.as_millis(),
            self.corrupt_chance,
            self.push_chance,
            self.request_chance,
            self.joins,
            self.leaves,
            self.drift_permille,
            self.gc_history,
        )
    }
}
