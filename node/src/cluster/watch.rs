//! A watch channel with a deterministic wake order.
//!
//! `tokio::sync::watch` spreads its waiters over eight `Notify` shards
//! chosen with tokio's OS-seeded RNG, so the order in which watchers wake
//! after a change differs from run to run; in the simulator that reorders
//! tasks and makes a seed unreplayable. This one keeps every waiter on one
//! `Notify`, woken in the order they started waiting. Same semantics as
//! tokio's for what the cluster code uses: a value, a version, `changed()`
//! that resolves once per newer version and fails when the sender is gone.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Shared<T> {
    /// The value, its version, and whether the sender is gone.
    slot: Mutex<(T, u64, bool)>,
    notify: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, (T, u64, bool)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; dropping it closes the channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving side. Cheap to clone; each clone tracks what it has seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

/// The sender was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the watched value's sender is gone")]
pub struct Closed;

/// A channel holding `initial`.
pub fn channel<T: Clone>(initial: T) -> Sender<T> {
    Sender {
        shared: Arc::new(Shared {
            slot: Mutex::new((initial, 0, false)),
            notify: Notify::new(),
        }),
    }
}

impl<T: Clone + PartialEq> Sender<T> {
    /// Replace the value and wake every receiver.
    pub fn send_replace(&self, value: T) {
        {
            let mut slot = self.shared.lock();
            slot.0 = value;
            slot.1 += 1;
        }
        self.shared.notify.notify_waiters();
    }

    /// Replace the value only if it differs; wake receivers if it did.
    pub fn send_if_changed(&self, value: T) -> bool {
        {
            let mut slot = self.shared.lock();
            if slot.0 == value {
                return false;
            }
            slot.0 = value;
            slot.1 += 1;
        }
        self.shared.notify.notify_waiters();
        true
    }

    /// The current value.
    pub fn borrow(&self) -> T {
        self.shared.lock().0.clone()
    }

    /// A receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        let seen = self.shared.lock().1;
        Receiver {
            shared: self.shared.clone(),
            seen,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().2 = true;
        self.shared.notify.notify_waiters();
    }
}

impl<T: Clone> Receiver<T> {
    /// The current value.
    pub fn borrow(&self) -> T {
        self.shared.lock().0.clone()
    }

    /// The current value, marked as seen.
    pub fn borrow_and_update(&mut self) -> T {
        let slot = self.shared.lock();
        self.seen = slot.1;
        slot.0.clone()
    }

    /// Wait for a value newer than the last one seen (and mark it seen).
    /// Fails once the sender is gone and nothing newer is left.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let slot = self.shared.lock();
                if slot.1 != self.seen {
                    self.seen = slot.1;
                    return Ok(());
                }
                if slot.2 {
                    return Err(Closed);
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_resolves_once_per_version_and_fails_when_closed() {
        let tx = channel(1u32);
        let mut rx = tx.subscribe();
        tx.send_replace(2);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow(), 2);
        assert!(!tx.send_if_changed(2));
        let waiter = tokio::spawn(async move {
            let r = rx.changed().await;
            (r, rx.borrow())
        });
        tokio::task::yield_now().await;
        tx.send_replace(3);
        assert_eq!(waiter.await.unwrap(), (Ok(()), 3));
        let mut rx = tx.subscribe();
        drop(tx);
        assert_eq!(rx.changed().await, Err(Closed));
    }
}
