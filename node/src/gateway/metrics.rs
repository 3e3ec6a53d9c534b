//! Request counters: per host, per status class, in atomics.
//!
//! Only hosts that a route table has served get their own counters; every
//! other `Host` a client sends is counted under [`UNKNOWN_HOST`], so a
//! client cannot grow the map without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The key under which requests for unserved hosts are counted.
pub const UNKNOWN_HOST: &str = "(unknown host)";

/// Counts of responses by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub informational_1xx: u64,
    pub success_2xx: u64,
    pub redirection_3xx: u64,
    pub client_error_4xx: u64,
    pub server_error_5xx: u64,
}

impl StatusCounts {
    /// All responses counted.
    pub fn total(&self) -> u64 {
        self.informational_1xx
            + self.success_2xx
            + self.redirection_3xx
            + self.client_error_4xx
            + self.server_error_5xx
    }
}

/// A snapshot of the gateway's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Responses sent, all hosts.
    pub total: u64,
    /// Per host (normalized), plus [`UNKNOWN_HOST`].
    pub hosts: BTreeMap<String, StatusCounts>,
}

#[derive(Debug, Default)]
struct HostCounters {
    /// Index 0 is 1xx … index 4 is 5xx.
    by_class: [AtomicU64; 5],
}

/// The live counters behind [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    total: AtomicU64,
    hosts: RwLock<BTreeMap<String, Arc<HostCounters>>>,
}

impl Counters {
    /// Count one response with `status` for `host` (a key from the route
    /// table, or [`UNKNOWN_HOST`]).
    pub(crate) fn record(&self, host: &str, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        let existing = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned();
        let counters = match existing {
            Some(c) => c,
            None => {
                let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
                hosts.entry(host.to_string()).or_default().clone()
            }
        };
        counters.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let hosts = hosts
            .iter()
            .map(|(host, c)| {
                let n = |i: usize| c.by_class[i].load(Ordering::Relaxed);
                let counts = StatusCounts {
                    informational_1xx: n(0),
                    success_2xx: n(1),
                    redirection_3xx: n(2),
                    client_error_4xx: n(3),
                    server_error_5xx: n(4),
                };
                (host.clone(), counts)
            })
            .collect();
        Metrics {
            total: self.total.load(Ordering::Relaxed),
            hosts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_host_and_class() {
        let c = Counters::default();
        c.record("shop.localhost", http::StatusCode::OK);
        c.record("shop.localhost", http::StatusCode::NOT_MODIFIED);
        c.record("shop.localhost", http::StatusCode::NOT_FOUND);
        c.record(UNKNOWN_HOST, http::StatusCode::NOT_FOUND);
        c.record("shop.localhost", http::StatusCode::INTERNAL_SERVER_ERROR);
        let m = c.snapshot();
        assert_eq!(m.total, 5);
        let shop = m.hosts["shop.localhost"];
        assert_eq!(
            (
                shop.success_2xx,
                shop.redirection_3xx,
                shop.client_error_4xx,
                shop.server_error_5xx
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(shop.total(), 4);
        assert_eq!(m.hosts[UNKNOWN_HOST].client_error_4xx, 1);
    }
}
