//! How reads wait and how fresh they are: blocking queries (`?index=&wait=`), consistency modes
//! (`?consistent`, `?max_stale=`), watch streams (Server-Sent Events), and the per-client limit
//! on waiting requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::{parse_duration, ApiError, ErrorCode};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::Failure;

/// Wait of a blocking query when `wait` is absent, and the most it may ask for.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Default limit on one client address's waiting requests (blocking queries and streams).
pub const DEFAULT_MAX_WAITING_PER_CLIENT: usize = 1024;

/// The query parameters every read understands, plus the endpoint's own.
#[derive(Debug, Default)]
pub struct ReadOptions {
    /// Block until the resource's index differs from this one.
    pub index: Option<u64>,
    pub wait: Duration,
    /// Linearizable read.
    pub consistent: bool,
    /// Refuse when this node last heard from the leader longer ago than this.
    pub max_stale: Option<Duration>,
    /// Parameters the endpoint reads itself (e.g. `health`, `tag`).
    pub rest: HashMap<String, String>,
}

fn percent_decode(s: &str) -> Result<String, Failure> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid("bad percent-encoding in the query string"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid("the query string is not UTF-8"))
}

fn invalid(m: impl Into<String>) -> Failure {
    Failure(ApiError::new(ErrorCode::InvalidArgument, m))
}

/// A flag parameter: present with no value, empty, or a true-ish value.
fn flag(name: &str, value: &str) -> Result<bool, Failure> {
    match value {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(invalid(format!("{name}: {other:?} is not a flag value"))),
    }
}

impl ReadOptions {
    /// Parses a raw query string; `allowed` names the endpoint's own parameters.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<ReadOptions, Failure> {
        let mut o = ReadOptions {
            wait: DEFAULT_WAIT,
            ..ReadOptions::default()
        };
        let Some(raw) = raw else {
            return Ok(o);
        };
        if raw.len() > 4096 {
            return Err(invalid("query string longer than 4096 bytes"));
        }
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k)?, percent_decode(v)?);
            match k.as_str() {
                "index" => {
                    o.index = Some(v.parse().map_err(|_| {
                        invalid(format!("index: {v:?} is not a non-negative integer"))
                    })?)
                }
                "wait" => {
                    let d = parse_duration(&v).map_err(|e| invalid(format!("wait: {e}")))?;
                    o.wait = d.min(MAX_WAIT);
                }
                "consistent" => o.consistent = flag("consistent", &v)?,
                "stale" => {
                    flag("stale", &v)?;
                }
                "max_stale" => {
                    o.max_stale =
                        Some(parse_duration(&v).map_err(|e| invalid(format!("max_stale: {e}")))?)
                }
                other if allowed.contains(&other) => {
                    o.rest.insert(k, v);
                }
                other => return Err(invalid(format!("unknown query parameter {other:?}"))),
            }
        }
        Ok(o)
    }
}

/// Counts each client address's waiting requests.
#[derive(Default)]
pub struct WaitLimiter {
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
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(WaitLimiter {
            max_per_client,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more waiting request from `ip`, or 429 with `Retry-After`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<WaitSlot, Failure> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Failure(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{ip} already has {} waiting requests (the limit); retry later",
                    self.max_per_client
                ),
            )));
        }
        *n += 1;
        Ok(WaitSlot {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn waiting(&self) -> usize {
        self.counts.lock().values().sum()
    }
}

/// Waits until the value in `rx` differs from `index`, `wait` (plus up to 1/16 of jitter, so
/// that many watchers do not all come back at once) passes, or the agent shuts down.
pub async fn block(
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

/// What a watch stream still has to send, and where it is.
struct Watcher {
    registry: Arc<cairn_registry::Registry>,
    name: String,
    /// The index of the last event sent; `None` before the first.
    last: Option<u64>,
    rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
    pending: std::collections::VecDeque<axum::response::sse::Event>,
    _slot: WaitSlot,
}

fn event(
    kind: &str,
    name: &str,
    index: u64,
    entry: Option<&cairn_registry::ServiceEntry>,
) -> axum::response::sse::Event {
    let body = cairn_api::ServiceInstances {
        name: name.to_owned(),
        index,
        instances: entry.map_or_else(Vec::new, |e| {
            e.instances.values().map(|i| i.to_info()).collect()
        }),
    };
    let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    axum::response::sse::Event::default()
        .event(kind)
        .id(index.to_string())
        .data(data)
}

impl Watcher {
    /// Queues what happened since `last`: each change from history, or the whole state.
    fn catch_up(&mut self) {
        let current = self.registry.service_index(&self.name);
        match self.last {
            Some(last) if current == last => {}
            Some(last) => match self.registry.watches().since(&self.name, last) {
                Some(versions) if !versions.is_empty() => {
                    for v in versions {
                        self.pending.push_back(event(
                            "change",
                            &self.name,
                            v.index,
                            v.entry.as_deref(),
                        ));
                        self.last = Some(v.index);
                    }
                }
                // The view moved before its history was recorded: the next wake-up has it.
                Some(_) => {}
                None => self.send_state(current),
            },
            None => self.send_state(current),
        }
    }

    fn send_state(&mut self, current: u64) {
        let entry = self.registry.service(&self.name);
        self.pending
            .push_back(event("state", &self.name, current, entry.as_deref()));
        self.last = Some(current);
    }
}

/// The events of one watch stream; it ends when the agent shuts down.
pub fn service_events(
    registry: Arc<cairn_registry::Registry>,
    name: String,
    resume: Option<u64>,
    rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
    slot: WaitSlot,
) -> impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> {
    let w = Watcher {
        registry,
        name,
        last: resume,
        rx,
        shutdown,
        pending: std::collections::VecDeque::new(),
        _slot: slot,
    };
    futures::stream::unfold(w, |mut w| async move {
        loop {
            if let Some(ev) = w.pending.pop_front() {
                return Some((Ok(ev), w));
            }
            w.rx.borrow_and_update();
            w.catch_up();
            if !w.pending.is_empty() {
                continue;
            }
            tokio::select! {
                r = w.rx.changed() => {
                    if r.is_err() {
                        return None;
                    }
                }
                _ = w.shutdown.cancelled() => return None,
            }
        }
    })
}
