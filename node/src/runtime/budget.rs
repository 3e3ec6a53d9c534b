//! The node-wide memory budget for functions: the linear memory all running
//! instances hold together.
//!
//! Each function has its own `limits.memory`, but a thousand pool slots at
//! up to 4 GiB each would let a burst of requests ask the host for far more
//! than it has. So every growth of a guest's memory (its initial size
//! included) is also taken from this budget, and given back when the
//! instance ends. A growth the budget cannot cover is refused like one past
//! the function's own limit: the guest sees `memory.grow` fail, the request
//! gets a 503 that names the budget, and other requests go on. A function
//! whose own limit is larger than the whole budget could never run and is
//! refused at deploy.

use std::sync::atomic::{AtomicU64, Ordering};

/// The default `limits.wasm.memory_budget`.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 2 << 30;

/// Linear memory handed out to running instances, against a fixed budget.
#[derive(Debug)]
pub struct MemoryBudget {
    budget_bytes: u64,
    in_use_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    refused: AtomicU64,
}

/// What the budget reports in status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryBudgetReport {
    pub budget_bytes: u64,
    /// Held by running instances now.
    pub in_use_bytes: u64,
    /// The most ever held at once since the node started.
    pub peak_bytes: u64,
    /// Growths refused because the budget was in use.
    pub refused: u64,
}

impl MemoryBudget {
    pub fn new(budget_bytes: u64) -> Self {
        assert!(budget_bytes > 0, "a memory budget of 0 runs nothing");
        Self {
            budget_bytes,
            in_use_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Take `bytes` if they fit in what is left; `false` (and counted as a
    /// refusal) if not.
    pub fn try_take(&self, bytes: u64) -> bool {
        let taken = self
            .in_use_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use
                    .checked_add(bytes)
                    .filter(|&total| total <= self.budget_bytes)
            });
        match taken {
            Ok(before) => {
                self.peak_bytes.fetch_max(before + bytes, Ordering::AcqRel);
                true
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Give back `bytes` taken before.
    pub fn give_back(&self, bytes: u64) {
        let before = self.in_use_bytes.fetch_sub(bytes, Ordering::AcqRel);
        // Checked in release builds too: an underflow would wrap to a full
        // budget and refuse every request from then on.
        assert!(before >= bytes, "gave back {bytes} bytes of {before} taken");
    }

    pub fn report(&self) -> MemoryBudgetReport {
        MemoryBudgetReport {
            budget_bytes: self.budget_bytes,
            in_use_bytes: self.in_use_bytes.load(Ordering::Acquire),
            peak_bytes: self.peak_bytes.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takes_up_to_the_budget_and_no_more() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_take(60));
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
        budget.give_back(40);
        assert!(budget.try_take(30));
        let report = budget.report();
        assert_eq!(report.in_use_bytes, 90);
        assert_eq!(report.peak_bytes, 100);
        assert_eq!(report.refused, 1);
        assert!(
            !budget.try_take(u64::MAX),
            "no overflow wraps into the budget"
        );
    }

    proptest! {
        /// Whatever the order of takes and give-backs, the budget is never
        /// exceeded and what is in use is exactly what was taken and not
        /// given back.
        #[test]
        fn in_use_is_what_was_taken(ops in proptest::collection::vec((any::<bool>(), 0u64..50), 0..200)) {
            let budget = MemoryBudget::new(200);
            let mut held: Vec<u64> = Vec::new();
            for (take, bytes) in ops {
                if take || held.is_empty() {
                    let fits = held.iter().sum::<u64>() + bytes <= 200;
                    prop_assert_eq!(budget.try_take(bytes), fits);
                    if fits {
                        held.push(bytes);
                    }
                } else {
                    budget.give_back(held.pop().unwrap());
                }
                let report = budget.report();
                prop_assert_eq!(report.in_use_bytes, held.iter().sum::<u64>());
                prop_assert!(report.in_use_bytes <= report.peak_bytes && report.peak_bytes <= 200);
            }
        }
    }
}
