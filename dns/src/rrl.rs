//! Response rate limiting (RRL) for answers over UDP, after Knot's and BIND's: a UDP source
//! address can be forged, so a server that answers every datagram reflects (and amplifies)
//! traffic at whoever the forger names. Each client prefix (/24 for IPv4, /56 for IPv6, as
//! Knot and BIND count) gets a token bucket of `rate` responses a second; past it, every
//! `slip`th response goes out truncated (TC=1, no records: a real resolver retries over TCP,
//! which a forger cannot) and the others are dropped.
//!
//! The table is a fixed array of buckets indexed by a keyed hash of the prefix, so a flood
//! from forged sources cannot make it grow. Two prefixes that meet in one bucket share it while
//! it is in use (both are then limited together, the safe side); a bucket idle long enough to
//! have refilled is taken over by the next prefix. Each bucket has its own lock: queries from
//! different prefixes do not wait on each other.
//!
//! Only UDP is limited: an answer over TCP (or TLS, or HTTPS) goes to an address that completed
//! a handshake.

use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Responses a second per client prefix; 0 turns RRL off (Knot's default too).
pub const DEFAULT_RATE: u32 = 0;
/// Every limited response is sent truncated rather than dropped: Knot's default, which it
/// advises keeping (a resolver behind a limited prefix retries over TCP at once instead of
/// waiting out a timeout), and still no amplification: a truncated answer is no larger than
/// the question it repeats.
pub const DEFAULT_SLIP: u32 = 1;
/// Buckets in the table: 65536 of 32 bytes, 2 MiB, allocated only when RRL is on.
pub const DEFAULT_TABLE_SIZE: usize = 65_536;
/// The prefix lengths that make one client: a /24 or a /56 is typically one site or customer.
pub const IPV4_PREFIX_LEN: u8 = 24;
pub const IPV6_PREFIX_LEN: u8 = 56;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: send it.
    Send,
    /// Over the rate, and this one slips: send a truncated answer instead.
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// RRL settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses a second per prefix, also the burst a quiet prefix may send at once; 0: off.
    pub rate: u32,
    /// Every `slip`th limited response is sent truncated; 0: all are dropped.
    pub slip: u32,
    /// Buckets in the table.
    pub table_size: usize,
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            rate: DEFAULT_RATE,
            slip: DEFAULT_SLIP,
            table_size: DEFAULT_TABLE_SIZE,
        }
    }
}

/// One token in the bucket's fixed-point count: tokens are kept in millionths, so that a
/// refill of `rate` a second is exact per microsecond.
const TOKEN: u64 = 1_000_000;

#[derive(Debug, Default)]
struct Bucket {
    /// The prefix that owns the bucket ([`prefix_key`]); 0 for none yet.
    key: u64,
    /// Millionths of a response.
    tokens: u64,
    /// When `tokens` was last brought up to date, in microseconds since the limiter started.
    stamp_us: u64,
    /// Responses limited since the bucket was taken, for the slip.
    limited: u32,
}

/// The limiter: the table, and counters of what it held back.
pub struct Limiter {
    rate: u64,
    slip: u32,
    seed: u64,
    start: Instant,
    buckets: Box<[Mutex<Bucket>]>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rate", &self.rate)
            .field("slip", &self.slip)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl Limiter {
    /// A limiter for `config`; `None` when RRL is off (rate 0).
    pub fn new(config: RrlConfig) -> Option<Limiter> {
        if config.rate == 0 {
            return None;
        }
        let buckets = (0..config.table_size.max(1))
            .map(|_| Mutex::new(Bucket::default()))
            .collect();
        Some(Limiter {
            rate: u64::from(config.rate),
            slip: config.slip,
            // Keyed, so that a forger cannot choose prefixes that all land in one bucket.
            seed: rand::random(),
            start: Instant::now(),
            buckets,
        })
    }

    /// Counts one response to `client` and says whether to send it.
    pub fn check(&self, client: IpAddr) -> Verdict {
        let now = self.start.elapsed().as_micros() as u64;
        self.check_at(client, now)
    }

    fn check_at(&self, client: IpAddr, now_us: u64) -> Verdict {
        let key = prefix_key(client);
        let index = (mix(key ^ self.seed) % self.buckets.len() as u64) as usize;
        let full = self.rate * TOKEN;
        let Some(bucket) = self.buckets.get(index) else {
            return Verdict::Send;
        };
        let mut b = bucket.lock();
        let refill = now_us.saturating_sub(b.stamp_us).saturating_mul(self.rate);
        let tokens = b.tokens.saturating_add(refill).min(full);
        if b.key != key && (b.key == 0 || tokens == full) {
            // Free, or idle long enough to have refilled: the new prefix takes it over.
            *b = Bucket {
                key,
                tokens: full,
                stamp_us: now_us,
                limited: 0,
            };
        } else {
            b.tokens = tokens;
            b.stamp_us = now_us.max(b.stamp_us);
        }
        if b.tokens >= TOKEN {
            b.tokens -= TOKEN;
            return Verdict::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        if self.slip != 0 && b.limited % self.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// The client's prefix as a nonzero number, IPv4 and IPv6 apart; an IPv4-mapped IPv6 address
/// is its IPv4 address.
fn prefix_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (1 << 62) | u64::from(u32::from(v4) >> (32 - IPV4_PREFIX_LEN)),
        IpAddr::V6(v6) => (1 << 63) | (u128::from(v6) >> (128 - IPV6_PREFIX_LEN)) as u64,
    }
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, slip: u32, table_size: usize) -> Limiter {
        Limiter::new(RrlConfig {
            rate,
            slip,
            table_size,
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn count(verdicts: &[Verdict]) -> (usize, usize, usize) {
        let n = |v| verdicts.iter().filter(|x| **x == v).count();
        (n(Verdict::Send), n(Verdict::Slip), n(Verdict::Drop))
    }

    #[test]
    fn off_at_rate_zero() {
        assert!(Limiter::new(RrlConfig::default()).is_none());
    }

    #[test]
    fn a_burst_gets_the_rate_then_every_slipth_response_truncated() {
        let l = limiter(10, 3, 1024);
        let v: Vec<_> = (0..40).map(|_| l.check_at(ip("192.0.2.1"), 0)).collect();
        assert_eq!(&v[..10], &[Verdict::Send; 10]);
        // 30 limited: every third slips.
        assert_eq!(count(&v), (10, 10, 20));
        assert_eq!(v[12], Verdict::Slip);
    }

    #[test]
    fn slip_zero_drops_every_limited_response_and_slip_one_truncates_every_one() {
        let drop_all = limiter(5, 0, 1024);
        let v: Vec<_> = (0..20)
            .map(|_| drop_all.check_at(ip("10.0.0.1"), 0))
            .collect();
        assert_eq!(count(&v), (5, 0, 15));
        let slip_all = limiter(5, 1, 1024);
        let v: Vec<_> = (0..20)
            .map(|_| slip_all.check_at(ip("10.0.0.1"), 0))
            .collect();
        assert_eq!(count(&v), (5, 15, 0));
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let l = limiter(100, 0, 1024);
        let c = ip("198.51.100.7");
        for _ in 0..100 {
            assert_eq!(l.check_at(c, 0), Verdict::Send);
        }
        assert_eq!(l.check_at(c, 0), Verdict::Drop);
        // 100 a second: one every 10 ms.
        assert_eq!(l.check_at(c, 9_999), Verdict::Drop);
        assert_eq!(l.check_at(c, 10_000), Verdict::Send);
        assert_eq!(l.check_at(c, 10_000), Verdict::Drop);
        // A long quiet time refills to the rate, no more.
        let sent = (0..200)
            .filter(|_| l.check_at(c, 60_000_000) == Verdict::Send)
            .count();
        assert_eq!(sent, 100);
    }

    #[test]
    fn the_prefix_is_the_client_a_24_or_a_56() {
        let l = limiter(2, 0, 4096);
        // One /24: .1 and .200 share two tokens.
        assert_eq!(l.check_at(ip("192.0.2.1"), 0), Verdict::Send);
        assert_eq!(l.check_at(ip("192.0.2.200"), 0), Verdict::Send);
        assert_eq!(l.check_at(ip("192.0.2.9"), 0), Verdict::Drop);
        // The mapped form is the same client.
        assert_eq!(l.check_at(ip("::ffff:192.0.2.9"), 0), Verdict::Drop);
        // The next /24 has its own.
        assert_eq!(l.check_at(ip("192.0.3.1"), 0), Verdict::Send);
        // IPv6: one /56, then another.
        assert_eq!(l.check_at(ip("2001:db8:0:100::1"), 0), Verdict::Send);
        assert_eq!(l.check_at(ip("2001:db8:0:1ff::2"), 0), Verdict::Send);
        assert_eq!(l.check_at(ip("2001:db8:0:1ff::3"), 0), Verdict::Drop);
        assert_eq!(l.check_at(ip("2001:db8:0:200::1"), 0), Verdict::Send);
        assert_ne!(prefix_key(ip("0.0.0.1")), prefix_key(ip("::1")));
    }

    #[test]
    fn the_table_never_grows_and_a_busy_bucket_is_not_taken_over() {
        let l = limiter(1, 0, 8);
        let flooded = ip("203.0.113.5");
        assert_eq!(l.check_at(flooded, 0), Verdict::Send);
        assert_eq!(l.check_at(flooded, 0), Verdict::Drop);
        // A million forged prefixes, in one second: still eight buckets.
        for i in 0..1_000_000u32 {
            let _ = l.check_at(
                IpAddr::from((i << 8).to_be_bytes()),
                1 + u64::from(i % 1000),
            );
        }
        assert_eq!(l.buckets.len(), 8);
        // The flooded prefix's bucket was in use all along: still limited.
        assert_eq!(l.check_at(flooded, 1000), Verdict::Drop);
    }
}
