//! Change notification for readers that wait: one `watch` channel per service carrying its
//! index, one for the service list, and a short history of each service's recent versions so a
//! watcher that reconnects can be replayed every change it missed.
//!
//! Per-service channels mean a watcher of one service is never woken by another's changes, and
//! a waiting reader costs a channel receiver, not a task or a buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::registry::ServiceEntry;

/// Versions kept per service for replay. A watcher further behind gets the full state instead.
pub const HISTORY_PER_SERVICE: usize = 32;
/// Versions kept for replay across all services, the oldest dropped first. Each old version
/// holds copies of the nodes its change touched (about 1 KiB for a small service): without this
/// bound, 100,000 services of 10 instances, registered one by one, kept 1.3 GB of versions
/// nobody would replay. A watcher that reconnects within the last this-many changes anywhere
/// (and its service's last 32) is still replayed; one further behind gets the full state.
pub const HISTORY_TOTAL: usize = 16_384;
/// Services with watch state kept; beyond this, state nobody listens to is dropped.
const MAX_WATCHED_SERVICES: usize = 100_000;

/// A service as it was after the change at `index`; `None` when that change removed it.
#[derive(Debug, Clone)]
pub struct Version {
    pub index: u64,
    pub entry: Option<Arc<ServiceEntry>>,
}

struct ServiceWatch {
    tx: watch::Sender<u64>,
    history: VecDeque<Version>,
}

impl ServiceWatch {
    fn new(index: u64) -> Self {
        ServiceWatch {
            tx: watch::Sender::new(index),
            history: VecDeque::new(),
        }
    }
}

/// Per-service watch state, and the order in which versions entered the histories.
#[derive(Default)]
struct State {
    services: HashMap<String, ServiceWatch>,
    /// (service, index) of every version pushed, oldest first, for [`HISTORY_TOTAL`]. A version
    /// already dropped by its service's own bound stays here until its turn: popping it is a
    /// no-op, and the histories never hold more than this many.
    order: VecDeque<(String, u64)>,
}

impl State {
    /// Drops the oldest versions until the order is within [`HISTORY_TOTAL`].
    fn trim(&mut self) {
        while self.order.len() > HISTORY_TOTAL {
            let Some((name, index)) = self.order.pop_front() else {
                return;
            };
            if let Some(w) = self.services.get_mut(&name) {
                if w.history.front().is_some_and(|v| v.index == index) {
                    w.history.pop_front();
                }
            }
        }
    }
}

/// All the channels of one registry.
pub struct Watches {
    services: Mutex<State>,
    list: watch::Sender<u64>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("services", &self.services.lock().services.len())
            .finish()
    }
}

impl Default for Watches {
    fn default() -> Self {
        Watches {
            services: Mutex::new(State::default()),
            list: watch::Sender::new(0),
        }
    }
}

impl Watches {
    /// Records that `name` changed at `index` (to `entry`, or removed) and wakes its watchers.
    pub(crate) fn service_changed(&self, name: &str, index: u64, entry: Option<Arc<ServiceEntry>>) {
        let mut state = self.services.lock();
        let map = &mut state.services;
        if map.len() >= MAX_WATCHED_SERVICES && !map.contains_key(name) {
            map.retain(|_, w| w.tx.receiver_count() > 0);
        }
        let w = map
            .entry(name.to_owned())
            .or_insert_with(|| ServiceWatch::new(index));
        w.history.push_back(Version { index, entry });
        if w.history.len() > HISTORY_PER_SERVICE {
            w.history.pop_front();
        }
        w.tx.send_replace(index);
        state.order.push_back((name.to_owned(), index));
        state.trim();
    }

    pub(crate) fn list_changed(&self, index: u64) {
        self.list.send_replace(index);
    }

    /// After a snapshot replaced everything: history no longer connects, so it is dropped, and
    /// every watcher is woken with its service's index now.
    pub(crate) fn reset(&self, index_of: impl Fn(&str) -> Option<u64>, list_index: u64) {
        let mut state = self.services.lock();
        state.order.clear();
        for (name, w) in state.services.iter_mut() {
            w.history.clear();
            let index = index_of(name).unwrap_or(*w.tx.borrow()).max(*w.tx.borrow());
            w.tx.send_replace(index);
        }
        self.list.send_replace(list_index);
    }

    /// A receiver of `name`'s index. `current` is the index to start from when the service has
    /// no watch state yet.
    pub fn subscribe_service(&self, name: &str, current: u64) -> watch::Receiver<u64> {
        let map = &mut self.services.lock().services;
        if map.len() >= MAX_WATCHED_SERVICES && !map.contains_key(name) {
            map.retain(|_, w| w.tx.receiver_count() > 0);
        }
        map.entry(name.to_owned())
            .or_insert_with(|| ServiceWatch::new(current))
            .tx
            .subscribe()
    }

    pub fn subscribe_list(&self) -> watch::Receiver<u64> {
        self.list.subscribe()
    }

    /// The last index a service changed at, as far as watch state knows (0 when unknown).
    pub fn last_index(&self, name: &str) -> u64 {
        self.services
            .lock()
            .services
            .get(name)
            .map_or(0, |w| *w.tx.borrow())
    }

    /// Every version of `name` after `after`, oldest first, if the history still reaches back
    /// that far; `None` when changes were dropped and the caller must send the full state.
    pub fn since(&self, name: &str, after: u64) -> Option<Vec<Version>> {
        let state = self.services.lock();
        let w = state.services.get(name)?;
        let oldest = w.history.front()?;
        if oldest.index > after {
            return None;
        }
        Some(
            w.history
                .iter()
                .filter(|v| v.index > after)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_replays_or_admits_it_cannot() {
        let w = Watches::default();
        for i in 1..=40 {
            w.service_changed("web", i, None);
        }
        // Versions 9..=40 are kept.
        let v = w.since("web", 20).unwrap();
        assert_eq!(v.first().unwrap().index, 21);
        assert_eq!(v.len(), 20);
        assert!(w.since("web", 40).unwrap().is_empty());
        assert!(w.since("web", 3).is_none(), "too old to replay");
        assert!(w.since("db", 0).is_none(), "never seen");
    }

    /// Versions across services are bounded in all, oldest first; a service's recent ones stay
    /// replayable, and one whose versions went gets the full state (`None`), never a gap.
    #[test]
    fn history_in_all_is_bounded_oldest_first() {
        let w = Watches::default();
        let services = HISTORY_TOTAL as u64;
        // Two versions of each of HISTORY_TOTAL services: twice the bound.
        for i in 1..=2 * services {
            w.service_changed(&format!("s{}", (i - 1) % services), i, None);
        }
        let kept: usize = w
            .services
            .lock()
            .services
            .values()
            .map(|s| s.history.len())
            .sum();
        assert_eq!(kept, HISTORY_TOTAL);
        // s0 changed at 1 and at services + 1: the first went, so a watcher from before the
        // second gets the state.
        assert!(w.since("s0", 0).is_none());
        assert!(w.since("s0", 1).is_none());
        assert!(w.since("s0", services + 1).unwrap().is_empty());
        // The per-service bound still holds, and a service's own churn does not evict others'
        // versions beyond the total.
        for i in 1..=40 {
            w.service_changed("web", 10 * services + i, None);
        }
        // Versions 9..=40 are kept: a watcher from 9 is replayed the 31 after it.
        assert_eq!(w.since("web", 10 * services + 9).unwrap().len(), 31);
        assert!(w.since("web", 10 * services + 8).is_none());
        // After a reset, nothing is replayed and the bound starts over.
        w.reset(|_| None, 0);
        assert!(w.services.lock().order.is_empty());
    }

    #[test]
    fn a_watcher_wakes_only_for_its_service() {
        let w = Watches::default();
        let mut web = w.subscribe_service("web", 0);
        let db = w.subscribe_service("db", 0);
        w.service_changed("web", 5, None);
        assert!(web.has_changed().unwrap());
        assert_eq!(*web.borrow_and_update(), 5);
        assert!(!db.has_changed().unwrap());
    }
}
