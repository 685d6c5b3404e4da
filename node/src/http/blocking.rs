//! Blocking queries: how long a read may wait, the wait itself, and the per-client limit on
//! waiting requests (blocking reads and watch streams alike), so that one client cannot hold all
//! of a node's connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::ErrorCode;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::Failure;

/// Wait of a blocking query when `wait` is absent (Consul's default too).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The most a blocking query may wait; longer `wait`s are cut to it. Consul caps at 10 minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Default limit on one client address's waiting requests (blocking queries and streams).
pub const DEFAULT_MAX_WAITING_PER_CLIENT: usize = 1024;

/// Counts each client address's waiting requests.
pub struct WaitLimiter {
    /// At least 1: a limit of 0 would refuse every blocking read.
    max_per_client: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
    /// Blocking reads waiting now, for `/metrics`.
    blocking: AtomicU64,
    /// Watch streams open now, for `/metrics`.
    watching: AtomicU64,
}

/// What a waiting request is, for the gauges of [`WaitLimiter::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A read with `?index=` waiting for a change.
    Blocking,
    /// A watch stream (server-sent events).
    Watch,
}

/// A waiting request's place; released on drop.
pub struct WaitSlot {
    limiter: Arc<WaitLimiter>,
    ip: IpAddr,
    kind: Waiting,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.limiter
            .gauge(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.limiter.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl WaitLimiter {
    /// A limiter of `max_per_client` waiting requests per client address. A limit of 0 is
    /// taken as 1 (the configuration refuses 0 before it gets here).
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(WaitLimiter {
            max_per_client: max_per_client.max(1),
            counts: Mutex::new(HashMap::new()),
            blocking: AtomicU64::new(0),
            watching: AtomicU64::new(0),
        })
    }

    fn gauge(&self, kind: Waiting) -> &AtomicU64 {
        match kind {
            Waiting::Blocking => &self.blocking,
            Waiting::Watch => &self.watching,
        }
    }

    /// How many requests of `kind` wait now, over all clients.
    pub fn open(&self, kind: Waiting) -> u64 {
        self.gauge(kind).load(Ordering::Relaxed)
    }

    /// A slot for one more waiting request of `kind` from `ip`, or 429 with `Retry-After`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, kind: Waiting) -> Result<WaitSlot, Failure> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Failure::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{ip} already has {} waiting requests (the limit); retry later",
                    self.max_per_client
                ),
            ));
        }
        *n += 1;
        self.gauge(kind).fetch_add(1, Ordering::Relaxed);
        Ok(WaitSlot {
            limiter: self.clone(),
            ip,
            kind,
        })
    }
}

/// Waits until the value in `rx` differs from `index`, `wait` (plus up to 1/16 of jitter, so
/// that many watchers do not all come back at once) passes, or the agent shuts down.
pub(super) async fn block(
    mut rx: watch::Receiver<u64>,
    index: u64,
    wait: Duration,
    shutdown: &CancellationToken,
) {
    let jitter_ms = (wait.as_millis() as u64) / 16;
    let wait = wait + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms));
    let until = tokio::time::Instant::now() + wait;
    loop {
        // Indexes shown to clients are at least 1; a channel that still holds 0 means 1.
        if (*rx.borrow_and_update()).max(1) != index {
            return;
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(until) => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_limit_of_slots_and_a_zero_limit_is_one() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let limiter = WaitLimiter::new(2);
        let a = limiter.acquire(ip, Waiting::Blocking).unwrap();
        let _b = limiter.acquire(ip, Waiting::Blocking).unwrap();
        let refused = limiter.acquire(ip, Waiting::Blocking).err().unwrap();
        assert_eq!(refused.0.code, ErrorCode::TooManyRequests);
        assert!(
            limiter.acquire(other, Waiting::Blocking).is_ok(),
            "limits are per client"
        );
        drop(a);
        assert!(
            limiter.acquire(ip, Waiting::Blocking).is_ok(),
            "a dropped slot is released"
        );

        let zero = WaitLimiter::new(0);
        let _one = zero.acquire(ip, Waiting::Blocking).unwrap();
        assert!(zero.acquire(ip, Waiting::Blocking).is_err());
    }

    #[test]
    fn the_open_gauges_count_each_kind_until_its_slot_is_dropped() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let limiter = WaitLimiter::new(10);
        let read = limiter.acquire(ip, Waiting::Blocking).unwrap();
        let watch = limiter.acquire(ip, Waiting::Watch).unwrap();
        let _watch2 = limiter.acquire(ip, Waiting::Watch).unwrap();
        assert_eq!(limiter.open(Waiting::Blocking), 1);
        assert_eq!(limiter.open(Waiting::Watch), 2);
        drop((read, watch));
        assert_eq!(limiter.open(Waiting::Blocking), 0);
        assert_eq!(limiter.open(Waiting::Watch), 1);
    }
}
