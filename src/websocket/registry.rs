//! The open WebSockets by subject (and by browser session), so an operator can end a
//! subject's connections, a logout its session's, and shutdown all of them.

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
    /// The subject, and the session if the connection has one.
    keys: Vec<String>,
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
        self.register_as(&[subject])
    }

    /// Registers a connection under several keys (its subject, its session): evicting any
    /// of them ends it.
    pub fn register_as(self: &Arc<Self>, keys: &[&str]) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal {
            notify: Notify::new(),
            order: OnceLock::new(),
        });
        let mut open = self.open();
        for key in keys {
            open.entry((*key).to_owned())
                .or_default()
                .insert(id, signal.clone());
        }
        Ticket {
            registry: self.clone(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            id,
            signal,
        }
    }

    /// Ends every connection of `key` (a subject, or a session's key); returns how many
    /// there were.
    pub fn evict(&self, key: &str) -> usize {
        let open = self.open();
        let Some(connections) = open.get(key) else {
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
        let all: HashMap<u64, &Arc<Signal>> = open
            .values()
            .flat_map(|c| c.iter())
            .map(|(id, s)| (*id, s))
            .collect();
        for signal in all.values() {
            signal.send(Order::Shutdown);
        }
        all.len()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        let open = self.open();
        let ids: std::collections::HashSet<u64> =
            open.values().flat_map(|c| c.keys().copied()).collect();
        ids.len()
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
        for key in &self.keys {
            if let Some(connections) = open.get_mut(key) {
                connections.remove(&self.id);
                if connections.is_empty() {
                    open.remove(key);
                }
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
        // A session's connection ends by its session's key, and counts once.
        let session = registry.register_as(&["bob", "session:1"]);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.evict("session:1"), 1);
        assert_eq!(session.ordered().await, Order::Evict);
        drop(session);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.close_all(), 1);
        assert_eq!(bob.ordered().await, Order::Shutdown);
        drop(bob);
        assert!(registry.is_empty());
    }
}
