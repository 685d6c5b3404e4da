//! Blocking queries: how long a read may wait, the wait itself, and the per-client limit on
//! waiting requests (blocking reads and watch streams alike), so that one client cannot hold all
//! of a node's connections.

use std::collections::HashMap;
use std::net::IpAddr;
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
}

/// A waiting request's place; released on drop.
pub struct WaitSlot {
    limiter: Arc<WaitLimiter>,
    ip: IpAddr,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
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
        })
    }

    /// A slot for one more waiting request from `ip`, or 429 with `Retry-After`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<WaitSlot, Failure> {
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
        Ok(WaitSlot {
            limiter: self.clone(),
            ip,
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
        let a = limiter.acquire(ip).unwrap();
        let _b = limiter.acquire(ip).unwrap();
        let refused = limiter.acquire(ip).err().unwrap();
        assert_eq!(refused.0.code, ErrorCode::TooManyRequests);
        assert!(limiter.acquire(other).is_ok(), "limits are per client");
        drop(a);
        assert!(limiter.acquire(ip).is_ok(), "a dropped slot is released");

        let zero = WaitLimiter::new(0);
        let _one = zero.acquire(ip).unwrap();
        assert!(zero.acquire(ip).is_err());
    }
}
