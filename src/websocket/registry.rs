//! The open WebSockets by subject, so an operator can end a subject's connections (logout)
//! and shutdown can end them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::Notify;

/// Why the gateway ended a connection from outside the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Evict,
    Shutdown,
}

struct Signal {
    notify: Notify,
    /// The first order given; later ones change nothing.
    order: OnceLock<Order>,
}

type Open = HashMap<String, HashMap<u64, Arc<Signal>>>;

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    open: Mutex<Open>,
}

/// One open connection's place in the registry; leaving it drops the place.
pub struct Ticket {
    registry: Arc<Registry>,
    subject: String,
    id: u64,
    signal: Arc<Signal>,
}

impl Registry {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic elsewhere while holding the lock leaves the map itself consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection of `subject` (empty for an anonymous one).
    pub fn register(self: &Arc<Self>, subject: &str) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal {
            notify: Notify::new(),
            order: OnceLock::new(),
        });
        self.open()
            .entry(subject.to_owned())
            .or_default()
            .insert(id, signal.clone());
        Ticket {
            registry: self.clone(),
            subject: subject.to_owned(),
            id,
            signal,
        }
    }

    /// Ends every connection of `subject`; returns how many there were.
    pub fn evict(&self, subject: &str) -> usize {
        let open = self.open();
        let Some(connections) = open.get(subject) else {
            return 0;
        };
        for signal in connections.values() {
            signal.send(Order::Evict);
        }
        connections.len()
    }

    /// Ends every connection; returns how many there were.
    pub fn close_all(&self) -> usize {
        let open = self.open();
        open.values()
            .flat_map(HashMap::values)
            .inspect(|s| s.send(Order::Shutdown))
            .count()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Signal {
    fn send(&self, order: Order) {
        let _ = self.order.set(order);
        // Stores a permit when the connection is not waiting right now: no order is lost.
        self.notify.notify_one();
    }
}

impl Ticket {
    /// Resolves when the connection is ordered to end.
    pub async fn ordered(&self) -> Order {
        loop {
            self.signal.notify.notified().await;
            if let Some(order) = self.signal.order.get() {
                return *order;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.registry.open();
        if let Some(connections) = open.get_mut(&self.subject) {
            connections.remove(&self.id);
            if connections.is_empty() {
                open.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn eviction_reaches_only_the_subject() {
        let registry = Arc::new(Registry::default());
        let alice = registry.register("alice");
        let alice2 = registry.register("alice");
        let bob = registry.register("bob");
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.evict("alice"), 2);
        assert_eq!(registry.evict("carol"), 0);
        assert_eq!(alice.ordered().await, Order::Evict);
        assert_eq!(alice2.ordered().await, Order::Evict);
        let waited = tokio::time::timeout(Duration::from_millis(50), bob.ordered()).await;
        assert!(waited.is_err(), "bob was not evicted");
        drop(alice);
        drop(alice2);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.close_all(), 1);
        assert_eq!(bob.ordered().await, Order::Shutdown);
        drop(bob);
        assert!(registry.is_empty());
    }
}
