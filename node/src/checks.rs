//! The health checker. Every node runs the checks it owns (rendezvous hashing over the members
//! that are up, see [`Cluster::owner_of`]) and writes a check's status through Raft only when it
//! changes: steady probing and steady heartbeats write nothing.
//!
//! - `http`: 2xx passing, 429 warning, anything else, an error or a time-out critical; the
//!   output is the status line, and the start of the body only when the check asks
//!   (`output_body`);
//! - `tcp`: a connection within the time-out is passing; the output says `connected` or the
//!   class of the failure (refused, timed out, unreachable), no more, so that checks are not a
//!   port scanner whose results every reader sees;
//! - `ttl`: passing while heartbeats arrive within the TTL; heartbeats may reach any node and are
//!   relayed to the owner, which keeps the deadline in memory. A new owner grants a full TTL from
//!   the moment it took the check over, so ownership changes never expire a check early.
//!
//! Active checks connect only where [`TargetPolicy`] allows, checked on the resolved addresses
//! before every probe (see [`crate::check_targets`]).
//!
//! A new owner starts from the last committed status, never from the initial one. Time spans
//! (TTL, `deregister_after`) are measured on the owner's monotonic clock from events it saw
//! itself, so no decision depends on two clocks agreeing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::Cluster;
use cairn_registry::model::{CheckKindSpec, CheckSpec, CHECK_METHODS, MAX_OUTPUT_LEN};
use cairn_registry::HealthStatus;
use cairn_registry::Op;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::check_targets::{self, CheckedResolver, TargetPolicy};

/// Probes running at once on one node; more wait their turn, so a burst of checks cannot
/// exhaust sockets or starve the agent's other work.
pub const MAX_CONCURRENT_PROBES: usize = 256;
/// Coalescing delay after a registry change before re-deciding ownership.
const RECONCILE_DELAY: Duration = Duration::from_millis(100);
/// Ownership is also re-decided this often (membership changes do not pass through apply).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// A node runs checks only while it has heard from the leader within this many milliseconds.
const IN_TOUCH_MS: u64 = 3_000;

/// Identifies a check: service, instance, check id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckKey {
    pub service: String,
    pub instance: String,
    pub check: String,
}

impl CheckKey {
    /// The string ownership is hashed on.
    pub fn hash_key(&self) -> String {
        format!("{}/{}/{}", self.service, self.instance, self.check)
    }
}

struct Running {
    spec: CheckSpec,
    task: JoinHandle<()>,
}

/// How long a heartbeat for a TTL check that is not running here yet is kept for it: the check
/// may have been registered a moment ago, not yet applied on this node.
const PENDING_HEARTBEAT: Duration = Duration::from_secs(5);

/// A TTL check's heartbeat signal; a heartbeat that arrives before the check's task starts is
/// kept (as a stored permit) and counts as soon as it does.
struct HeartbeatSlot {
    notify: Arc<Notify>,
    created: Instant,
}

/// The checks this node runs, and the TTL heartbeats waiting for them.
pub struct Checker {
    cluster: Arc<Cluster>,
    targets: Arc<TargetPolicy>,
    http: reqwest::Client,
    http_insecure: reqwest::Client,
    probes: Arc<Semaphore>,
    heartbeats: Mutex<HashMap<CheckKey, HeartbeatSlot>>,
    stats: CheckStats,
}

/// A check result as metric labels: the check's kind and the result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// A check's kind as a metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// What the checker counts for `/metrics`.
#[derive(Debug)]
pub struct CheckStats {
    /// Probe results (http, tcp) and TTL events (a heartbeat passes, an expiry is critical).
    pub results: Family<ResultLabels, Counter>,
    /// How long each probe took, by kind.
    pub probe_seconds: Family<KindLabel, Histogram>,
    /// The checks this node runs now.
    pub owned: Gauge,
}

impl Default for CheckStats {
    fn default() -> Self {
        let stats = CheckStats {
            results: Family::default(),
            // 1 ms to ~16 s: a local TCP connect takes well under a millisecond, a time-out the
            // check's timeout (at most a minute; those land in +Inf).
            probe_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 8))
            }),
            owned: Gauge::default(),
        };
        // Every series from the start (at 0), so dashboards find them on a node without checks.
        for kind in ["http", "tcp", "ttl"] {
            for result in ["passing", "warning", "critical"] {
                let _ = stats.results.get_or_create(&ResultLabels { kind, result });
            }
        }
        for kind in ["http", "tcp"] {
            let _ = stats.probe_seconds.get_or_create(&KindLabel { kind });
        }
        stats
    }
}

impl CheckStats {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_check_results",
            "Check results on this node: probes of http and tcp checks, heartbeats (passing) and expiries (critical) of ttl checks",
            self.results.clone(),
        );
        registry.register(
            "cairn_check_probe_seconds",
            "How long each probe took, by kind",
            self.probe_seconds.clone(),
        );
        registry.register(
            "cairn_checks_owned",
            "Checks this node runs now (each check runs on one live node)",
            self.owned.clone(),
        );
    }

    fn count(&self, kind: &'static str, result: HealthStatus) {
        let result = match result {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        };
        self.results
            .get_or_create(&ResultLabels { kind, result })
            .inc();
    }
}

fn kind_label(kind: &CheckKindSpec) -> &'static str {
    match kind {
        CheckKindSpec::Http { .. } => "http",
        CheckKindSpec::Tcp { .. } => "tcp",
        CheckKindSpec::Ttl { .. } => "ttl",
    }
}

impl Checker {
    /// `extra_roots`: CA certificates that HTTPS checks trust besides the public roots
    /// (`--check-ca-file`), for targets with certificates of a private CA.
    /// `targets`: where probes may connect.
    pub fn new(
        cluster: Arc<Cluster>,
        targets: Arc<TargetPolicy>,
        extra_roots: &[reqwest::Certificate],
    ) -> Result<Arc<Checker>, reqwest::Error> {
        let build = |insecure: bool| {
            let mut builder = reqwest::Client::builder()
                // Every address a connection is made to passes the policy, whatever the name
                // resolved to a moment earlier.
                .dns_resolver(Arc::new(CheckedResolver(targets.clone())))
                // No proxy from the environment: the policy judges the target, not a proxy.
                .no_proxy();
            for root in extra_roots {
                builder = builder.add_root_certificate(root.clone());
            }
            builder
                .danger_accept_invalid_certs(insecure)
                .redirect(reqwest::redirect::Policy::none())
                // Keep-alive: a probe every few seconds reuses its connection instead of paying
                // a TCP (and TLS) handshake each time; a dead target still fails the next probe.
                .pool_idle_timeout(Duration::from_secs(90))
                .user_agent(concat!("cairn-health-check/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        let (http, http_insecure) = (build(false)?, build(true)?);
        Ok(Arc::new(Checker {
            cluster,
            targets,
            http,
            http_insecure,
            probes: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            heartbeats: Mutex::new(HashMap::new()),
            stats: CheckStats::default(),
        }))
    }

    /// What the checker counts, for `/metrics`.
    pub fn stats(&self) -> &CheckStats {
        &self.stats
    }

    /// Runs until `stop` is cancelled: keeps the set of running check tasks equal to the
    /// checks this node owns.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut changes = self.cluster.registry().subscribe();
        let mut running: HashMap<CheckKey, Running> = HashMap::new();
        loop {
            self.reconcile(&mut running);
            tokio::select! {
                _ = stop.cancelled() => break,
                r = changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                    tokio::time::sleep(RECONCILE_DELAY).await;
                }
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            }
        }
        for (_, r) in running {
            r.task.abort();
        }
    }

    /// The checks this node owns now, with their specs.
    fn owned(&self) -> HashMap<CheckKey, CheckSpec> {
        let members = self.cluster.up_members();
        let me = self.cluster.id();
        let mut out = HashMap::new();
        // A node that has not heard from a leader lately may hold a stale view of who is up
        // (it may just have restarted): it runs nothing until it is in touch again.
        let in_touch = self
            .cluster
            .last_contact_ms()
            .is_some_and(|ms| ms < IN_TOUCH_MS);
        if !members.contains(&me) || !in_touch {
            return out;
        }
        let (_, services) = self.cluster.registry().services();
        // Services whose instances have no checks cost nothing here, however large.
        for svc in services.iter().filter(|s| s.checked_instances() > 0) {
            for inst in svc.instances.values() {
                for spec in &inst.spec.checks {
                    let key = CheckKey {
                        service: svc.name.clone(),
                        instance: inst.spec.id.clone(),
                        check: spec.id.clone(),
                    };
                    if cairn_registry::hash::rendezvous_owner(&key.hash_key(), &members) == Some(me)
                    {
                        out.insert(key, spec.clone());
                    }
                }
            }
        }
        out
    }

    fn reconcile(self: &Arc<Self>, running: &mut HashMap<CheckKey, Running>) {
        let mut owned = self.owned();
        running.retain(|key, r| {
            let keep = !r.task.is_finished() && owned.get(key) == Some(&r.spec);
            if !keep {
                r.task.abort();
            }
            keep
        });
        owned.retain(|key, _| !running.contains_key(key));
        for (key, spec) in owned {
            let task = match &spec.kind {
                CheckKindSpec::Ttl { ttl_ms } => {
                    let notify = self.heartbeat_slot(&key);
                    tokio::spawn(self.clone().run_ttl(
                        key.clone(),
                        spec.clone(),
                        Duration::from_millis(*ttl_ms),
                        notify,
                    ))
                }
                _ => tokio::spawn(self.clone().run_active(key.clone(), spec.clone())),
            };
            running.insert(key, Running { spec, task });
        }
        self.stats.owned.set(running.len() as i64);
        let mut hb = self.heartbeats.lock();
        hb.retain(|k, slot| running.contains_key(k) || slot.created.elapsed() < PENDING_HEARTBEAT);
    }

    fn heartbeat_slot(&self, key: &CheckKey) -> Arc<Notify> {
        self.heartbeats
            .lock()
            .entry(key.clone())
            .or_insert_with(|| HeartbeatSlot {
                notify: Arc::new(Notify::new()),
                created: Instant::now(),
            })
            .notify
            .clone()
    }

    /// A heartbeat for a TTL check that ownership puts on this node. If its task is not running
    /// yet, the heartbeat waits for it.
    pub fn heartbeat(&self, key: &CheckKey) {
        self.heartbeat_slot(key).notify_one();
    }

    /// The committed status of a check, or `None` when the check (or its instance) is gone.
    fn committed(&self, key: &CheckKey) -> Option<HealthStatus> {
        let svc = self.cluster.registry().service(&key.service)?;
        let inst = svc.instances.get(&key.instance)?;
        inst.check(&key.check).map(|(_, st)| st.status)
    }

    /// Proposes a new status; answers whether it was committed.
    async fn propose(&self, key: &CheckKey, status: HealthStatus, output: String) -> bool {
        let op = Op::SetCheckStatus {
            service: key.service.clone(),
            id: key.instance.clone(),
            check: key.check.clone(),
            status,
            output,
        };
        match self.cluster.write(op).await {
            Ok(_) => {
                tracing::info!(check = %key.hash_key(), %status, "check status changed");
                true
            }
            Err(e) => {
                tracing::warn!(check = %key.hash_key(), "cannot record check status: {e}");
                false
            }
        }
    }

    /// Removes the instance once its check has been critical for `deregister_after`.
    async fn maybe_deregister(
        &self,
        key: &CheckKey,
        spec: &CheckSpec,
        critical_since: &mut Option<Instant>,
        committed: Option<HealthStatus>,
    ) -> bool {
        let Some(after) = spec.deregister_after_ms.map(Duration::from_millis) else {
            return false;
        };
        if committed != Some(HealthStatus::Critical) {
            *critical_since = None;
            return false;
        }
        let since = *critical_since.get_or_insert_with(Instant::now);
        if since.elapsed() < after {
            return false;
        }
        let op = Op::Deregister {
            service: key.service.clone(),
            id: key.instance.clone(),
        };
        match self.cluster.write(op).await {
            Ok(_) => {
                tracing::info!(check = %key.hash_key(), "critical past deregister_after; instance removed");
                true
            }
            Err(e) => {
                tracing::warn!(check = %key.hash_key(), "cannot deregister: {e}");
                false
            }
        }
    }

    async fn run_active(self: Arc<Self>, key: CheckKey, spec: CheckSpec) {
        let interval = Duration::from_millis(spec.interval_ms);
        let timeout = Duration::from_millis(spec.timeout_ms);
        // Spread first probes over the interval so that checks registered together do not fire
        // together; after that the period is exact, so that `fall` failures are noticed within
        // `fall` intervals (per-round jitter would stretch that bound).
        let first = rand::thread_rng().gen_range(0..=spec.interval_ms.max(1));
        let mut next = Instant::now() + Duration::from_millis(first);
        tokio::time::sleep_until(next).await;
        // The last result and how many times in a row it came: a status changes after `rise`
        // passing results in a row, or `fall` warning or critical ones in a row.
        let mut streak: Option<(HealthStatus, u32)> = None;
        let mut critical_since = None;
        loop {
            let Some(committed) = self.committed(&key) else {
                return;
            };
            let (result, output) = {
                let Ok(_permit) = self.probes.acquire().await else {
                    return;
                };
                let started = Instant::now();
                let probed = self.probe(&spec.kind, timeout).await;
                let kind = kind_label(&spec.kind);
                self.stats
                    .probe_seconds
                    .get_or_create(&KindLabel { kind })
                    .observe(started.elapsed().as_secs_f64());
                self.stats.count(kind, probed.0);
                probed
            };
            let committed = self.committed(&key).unwrap_or(committed);
            let count = match streak {
                Some((last, n)) if last == result => n.saturating_add(1),
                _ => 1,
            };
            streak = Some((result, count));
            let needed = if result == HealthStatus::Passing {
                spec.rise
            } else {
                spec.fall
            };
            if committed != result && count >= needed {
                self.propose(&key, result, output).await;
            }
            if self
                .maybe_deregister(&key, &spec, &mut critical_since, self.committed(&key))
                .await
            {
                return;
            }
            next += interval;
            if next < Instant::now() {
                // A probe overran its slot (waiting for a permit): start the next one now.
                next = Instant::now();
            }
            tokio::time::sleep_until(next).await;
        }
    }

    async fn run_ttl(
        self: Arc<Self>,
        key: CheckKey,
        spec: CheckSpec,
        ttl: Duration,
        heartbeat: Arc<Notify>,
    ) {
        // A full TTL from takeover: the previous owner's heartbeats are not known here.
        let mut deadline = Instant::now() + ttl;
        let mut expired = false;
        let mut critical_since = None;
        // Wake at least this often to check deregister_after.
        let tick = spec
            .deregister_after_ms
            .map_or(ttl, |d| Duration::from_millis(d).min(ttl))
            .min(Duration::from_secs(1));
        loop {
            let Some(committed) = self.committed(&key) else {
                return;
            };
            tokio::select! {
                _ = heartbeat.notified() => {
                    self.stats.count("ttl", HealthStatus::Passing);
                    deadline = Instant::now() + ttl;
                    expired = false;
                    if self.committed(&key) != Some(HealthStatus::Passing) {
                        self.propose(&key, HealthStatus::Passing, "TTL heartbeat received".into()).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !expired => {
                    expired = true;
                    self.stats.count("ttl", HealthStatus::Critical);
                    if committed != HealthStatus::Critical {
                        let output = format!("TTL of {} expired without a heartbeat",
                            cairn_api::format_duration(ttl));
                        self.propose(&key, HealthStatus::Critical, output).await;
                    }
                }
                _ = tokio::time::sleep(tick) => {}
            }
            if self
                .maybe_deregister(&key, &spec, &mut critical_since, self.committed(&key))
                .await
            {
                return;
            }
        }
    }

    async fn probe(&self, kind: &CheckKindSpec, timeout: Duration) -> (HealthStatus, String) {
        let critical = |output: String| (HealthStatus::Critical, cut(output));
        match kind {
            CheckKindSpec::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                output_body,
            } => {
                let what = format!("HTTP {method} {url}");
                // Stored before the method rule existed, or forwarded by an older node.
                let allowed = CHECK_METHODS.contains(&method.as_str());
                let Some(method) = reqwest::Method::from_bytes(method.as_bytes())
                    .ok()
                    .filter(|_| allowed)
                else {
                    return critical(format!(
                        "{what}: the method is not one of {}",
                        CHECK_METHODS.join(", ")
                    ));
                };
                let Some((host, port)) = check_targets::url_target(url) else {
                    return critical(format!("{what}: not a URL"));
                };
                // The connection checks the addresses it uses (CheckedResolver), by range; this
                // also checks the port (the node's own listeners) and catches a name that moved
                // into a denied range while a pooled connection to its old address is open.
                match tokio::time::timeout(timeout, self.targets.resolve(&host, port)).await {
                    Err(_) => return critical(format!("{what}: timed out resolving {host}")),
                    Ok(Err(e)) => return critical(format!("{what}: {e}")),
                    Ok(Ok(_)) => {}
                }
                let client = if *tls_skip_verify {
                    &self.http_insecure
                } else {
                    &self.http
                };
                let mut req = client.request(method, url).timeout(timeout);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let work = async {
                    let mut res = req.send().await?;
                    let status = res.status();
                    // Read (a bounded part of) the body either way, so the connection can be
                    // reused.
                    let mut body = Vec::new();
                    while body.len() < MAX_OUTPUT_LEN {
                        match res.chunk().await? {
                            Some(chunk) => body.extend_from_slice(&chunk),
                            None => break,
                        }
                    }
                    Ok::<_, reqwest::Error>((status, body))
                };
                match tokio::time::timeout(timeout, work).await {
                    Ok(Ok((status, body))) => {
                        let health = if status.is_success() {
                            HealthStatus::Passing
                        } else if status.as_u16() == 429 {
                            HealthStatus::Warning
                        } else {
                            HealthStatus::Critical
                        };
                        let mut output = format!("{what}: {status}");
                        if *output_body {
                            output.push('\n');
                            output.push_str(&String::from_utf8_lossy(&body));
                        }
                        (health, cut(output))
                    }
                    Ok(Err(e)) => critical(format!("{what}: {}", http_failure(&e, timeout))),
                    Err(_) => critical(format!("{what}: timed out after {timeout:?}")),
                }
            }
            CheckKindSpec::Tcp { target } => {
                let what = format!("TCP {target}");
                let Some((host, port)) = check_targets::tcp_target(target) else {
                    return critical(format!("{what}: not host:port"));
                };
                let deadline = tokio::time::Instant::now() + timeout;
                let addrs = match tokio::time::timeout_at(
                    deadline,
                    self.targets.resolve(&host, port),
                )
                .await
                {
                    Err(_) => return critical(format!("{what}: timed out resolving {host}")),
                    Ok(Err(e)) => return critical(format!("{what}: {e}")),
                    Ok(Ok(addrs)) => addrs,
                };
                // The addresses just checked, not the name again: nothing can swap them between
                // the check and the connection.
                let mut failure = "unreachable";
                for addr in addrs {
                    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(_)) => return (HealthStatus::Passing, format!("{what}: connected")),
                        Ok(Err(e)) => failure = io_failure(&e),
                        Err(_) => return critical(format!("{what}: timed out after {timeout:?}")),
                    }
                }
                critical(format!("{what}: {failure}"))
            }
            CheckKindSpec::Ttl { .. } => (HealthStatus::Critical, "not an active check".into()),
        }
    }
}

/// The class of a failed connection: what a health check needs to show, and no more.
fn io_failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused",
        TimedOut => "timed out",
        HostUnreachable | NetworkUnreachable | AddrNotAvailable => "unreachable",
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "connection lost",
        _ => "connection failed",
    }
}

/// The class of a failed HTTP probe; a target the policy refused is named with its rule.
fn http_failure(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<check_targets::Refused>() {
            return refused.to_string();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_failure(io).to_owned();
        }
        source = s.source();
    }
    if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "bad response body".into()
    } else {
        "request failed".into()
    }
}

/// Output is kept to [`MAX_OUTPUT_LEN`] bytes, cut on a character boundary.
fn cut(mut s: String) -> String {
    if s.len() > MAX_OUTPUT_LEN {
        let mut end = MAX_OUTPUT_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
