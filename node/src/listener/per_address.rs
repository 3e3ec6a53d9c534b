//! Open connections per client address: one address may hold at most a
//! fixed number of a listener's connections, so that one client cannot take
//! every slot of the listener-wide cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts of open connections by client address. An address is in the map
/// only while it holds a connection, so the map never has more entries than
/// the listener has connection permits.
pub(crate) struct AddressSlots {
    max_per_address: usize,
    /// The listener's `max_connections`: every entry holds one of its
    /// permits, so this bounds the map.
    max_entries: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's count; given back on drop.
pub(crate) struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl AddressSlots {
    pub(crate) fn new(max_per_address: usize, max_entries: usize) -> Arc<Self> {
        debug_assert!(
            max_per_address > 0,
            "an address must be allowed one connection"
        );
        Arc::new(AddressSlots {
            max_per_address,
            max_entries,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when `ip` already holds
    /// `max_per_address`. IPv4-mapped IPv6 addresses count as their IPv4
    /// address (a dual-stack socket must not double a client's share).
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        debug_assert!(
            counts.len() <= self.max_entries,
            "more addresses hold connections than there are connection permits"
        );
        Some(AddressSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip` (for tests and logs).
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts
            .get_mut(&self.ip)
            .expect("a held slot's address is counted");
        debug_assert!(*count > 0);
        *count -= 1;
        if *count == 0 {
            counts.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_entries_go_with_their_last_slot() {
        let slots = AddressSlots::new(2, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.try_take(a).unwrap();
        let second = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none(), "a third slot for one address");
        // The same address written as IPv4-mapped IPv6 is the same client.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(slots.try_take(mapped).is_none());
        let other = slots.try_take(b).unwrap();
        assert_eq!((slots.held(a), slots.held(b)), (2, 1));

        drop(first);
        let again = slots.try_take(a).expect("a freed slot is taken again");
        drop((second, again, other));
        assert_eq!(slots.addresses(), 0, "no entry outlives its connections");
    }
}
