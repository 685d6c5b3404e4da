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
//! One task runs every active check of the node: a timer wheel holds when each is due, probes
//! that fall due within one [`TICK`] start together, and they run as futures of that task, at
//! most [`MAX_CONCURRENT_PROBES`] at once, on the keep-alive connections of one [`Pool`] (see
//! [`crate::prober`]). A check costs no task and no timer of its own, and a probe nothing but its
//! future: at a thousand probes a second, waking a task and a thread per probe was much of the
//! cost. TTL checks, which only wait, keep a task each.
//!
//! Which checks are this node's is decided again after every registry change and every second;
//! only services whose entry changed since (and all of them when the members that are up
//! change) are walked again.
//!
//! A new owner starts from the last committed status, never from the initial one. Time spans
//! (TTL, `deregister_after`) are measured on the owner's monotonic clock from events it saw
//! itself, so no decision depends on two clocks agreeing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::Cluster;
use cairn_registry::model::{CheckKindSpec, CheckSpec};
use cairn_registry::registry::ServiceEntry;
use cairn_registry::HealthStatus;
use cairn_registry::Op;
use cairn_tls::rustls;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::check_targets::TargetPolicy;
use crate::prober::{self, Conn, Connector, HttpProbe, Outcome, Pool};

/// Probes running at once on one node; more wait their turn, so a burst of checks cannot
/// exhaust sockets or starve the agent's other work.
pub const MAX_CONCURRENT_PROBES: usize = 256;
/// Probes due within one tick start together: the node wakes once per tick, not once per probe.
/// A probe starts at most this late, which no `fall` x `interval` (at least 100 ms) notices.
pub const TICK: Duration = Duration::from_millis(10);
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
    connector: Connector,
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

impl Checker {
    /// `extra_roots`: CA certificates that HTTPS checks trust besides the public roots
    /// (`--check-ca-file`), for targets with certificates of a private CA.
    /// `targets`: where probes may connect.
    pub fn new(
        cluster: Arc<Cluster>,
        targets: Arc<TargetPolicy>,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Arc<Checker>, rustls::Error> {
        Ok(Arc::new(Checker {
            cluster,
            targets,
            connector: Connector::new(extra_roots)?,
            heartbeats: Mutex::new(HashMap::new()),
            stats: CheckStats::default(),
        }))
    }

    /// What the checker counts, for `/metrics`.
    pub fn stats(&self) -> &CheckStats {
        &self.stats
    }

    /// Runs until `stop` is cancelled: keeps the checks that run here equal to the checks this
    /// node owns, and runs the active ones.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut changes = self.cluster.registry().subscribe();
        let mut checks = Scheduler::new(self.clone());
        let mut in_flight = FuturesUnordered::new();
        let reconcile = tokio::time::sleep_until(Instant::now());
        tokio::pin!(reconcile);
        let mut reconcile_soon = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    for job in checks.done(done) {
                        in_flight.push(self.clone().execute(job));
                    }
                }
                Some(due) = std::future::poll_fn(|cx| checks.wheel.poll_expired(cx)),
                    if !checks.wheel.is_empty() =>
                {
                    if let Some(job) = checks.due(due.into_inner()) {
                        in_flight.push(self.clone().execute(job));
                    }
                }
                () = &mut reconcile => {
                    checks.reconcile();
                    reconcile_soon = false;
                    reconcile.as_mut().reset(Instant::now() + RECONCILE_INTERVAL);
                }
                r = changes.changed(), if !reconcile_soon => {
                    if r.is_err() {
                        break;
                    }
                    // Coalesce a burst of changes into one pass.
                    reconcile_soon = true;
                    let soon = Instant::now() + RECONCILE_DELAY;
                    if soon < reconcile.deadline() {
                        reconcile.as_mut().reset(soon);
                    }
                }
            }
        }
        checks.stop_all();
    }

    /// Runs one probe or one write for the scheduler.
    async fn execute(self: Arc<Self>, job: Job) -> Done {
        match job {
            Job::Probe {
                id,
                probe,
                conn,
                timeout,
            } => {
                let started = Instant::now();
                let (outcome, conn) = match &*probe {
                    Probe::Http(http) => {
                        http.probe(&self.connector, &self.targets, conn, timeout)
                            .await
                    }
                    Probe::Tcp { target, .. } => (
                        prober::probe_tcp(&self.targets, target, timeout).await,
                        None,
                    ),
                    Probe::Broken { why, .. } => (Outcome::Failed(why.clone().into()), None),
                };
                let kind = probe.kind();
                self.stats
                    .probe_seconds
                    .get_or_create(&KindLabel { kind })
                    .observe(started.elapsed().as_secs_f64());
                self.stats.count(kind, outcome.health());
                Done::Probed { id, outcome, conn }
            }
            Job::Write { id, key, write } => {
                let (kind, done) = match write {
                    Write::Status(status, output) => {
                        (WriteKind::Status, self.propose(&key, status, output).await)
                    }
                    Write::Deregister => (WriteKind::Deregister, self.deregister(&key).await),
                };
                Done::Wrote { id, kind, done }
            }
        }
    }

    /// The checks this node owns in `svc`, by the rendezvous hash over `members`.
    fn owned_in<'a>(
        svc: &'a ServiceEntry,
        members: &'a [u64],
        me: u64,
    ) -> impl Iterator<Item = (CheckKey, &'a CheckSpec)> + 'a {
        svc.instances.values().flat_map(move |inst| {
            inst.spec.checks.iter().filter_map(move |spec| {
                let key = CheckKey {
                    service: svc.name.clone(),
                    instance: inst.spec.id.clone(),
                    check: spec.id.clone(),
                };
                (cairn_registry::hash::rendezvous_owner(&key.hash_key(), members) == Some(me))
                    .then_some((key, spec))
            })
        })
    }

    /// Whether this node runs checks now: it is up, and has heard from a leader lately.
    fn may_run(&self, members: &[u64]) -> bool {
        // A node that has not heard from a leader lately may hold a stale view of who is up
        // (it may just have restarted): it runs nothing until it is in touch again.
        let in_touch = self
            .cluster
            .last_contact_ms()
            .is_some_and(|ms| ms < IN_TOUCH_MS);
        members.contains(&self.cluster.id()) && in_touch
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

    /// Removes the check's instance; answers whether the removal was committed.
    async fn deregister(&self, key: &CheckKey) -> bool {
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

    /// Whether the instance is due for removal: its check committed critical for
    /// `deregister_after` in a row, counted from when this node first saw it so.
    fn deregister_due(
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
        critical_since.get_or_insert_with(Instant::now).elapsed() >= after
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
            if Self::deregister_due(&spec, &mut critical_since, self.committed(&key))
                && self.deregister(&key).await
            {
                return;
            }
        }
    }
}

/// How an active check probes, prepared when it starts.
enum Probe {
    Http(HttpProbe),
    Tcp {
        target: String,
    },
    /// A definition no probe can send (a method or URL stored before the rules existed): the
    /// check stays critical with this output.
    Broken {
        kind: &'static str,
        why: String,
    },
}

impl Probe {
    fn new(kind: &CheckKindSpec) -> (Probe, String) {
        match kind {
            CheckKindSpec::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                output_body,
            } => match HttpProbe::new(url, method, headers, *tls_skip_verify, *output_body) {
                Ok(http) => {
                    let what = http.what.clone();
                    (Probe::Http(http), what)
                }
                Err(why) => (
                    Probe::Broken { kind: "http", why },
                    format!("HTTP {method} {url}"),
                ),
            },
            CheckKindSpec::Tcp { target } => (
                Probe::Tcp {
                    target: target.clone(),
                },
                format!("TCP {target}"),
            ),
            CheckKindSpec::Ttl { .. } => (
                Probe::Broken {
                    kind: "ttl",
                    why: "not an active check".into(),
                },
                String::new(),
            ),
        }
    }

    /// The check's kind as a metric label.
    fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp { .. } => "tcp",
            Probe::Broken { kind, .. } => kind,
        }
    }
}

/// An active (http or tcp) check this node runs.
struct Active {
    key: CheckKey,
    spec: CheckSpec,
    probe: Arc<Probe>,
    /// `HTTP <method> <url>` or `TCP <target>`: the start of every output.
    what: String,
    /// When the next probe is due (the wheel rounds it up to a [`TICK`]).
    next: Instant,
    /// The last result and how many times in a row it came: a status changes after `rise`
    /// passing results in a row, or `fall` warning or critical ones in a row.
    streak: Option<(HealthStatus, u32)>,
    critical_since: Option<Instant>,
}

/// Work the scheduler hands to [`Checker::execute`].
enum Job {
    Probe {
        id: u64,
        probe: Arc<Probe>,
        /// An idle connection to the target, from the pool.
        conn: Option<Conn>,
        timeout: Duration,
    },
    Write {
        id: u64,
        key: CheckKey,
        write: Write,
    },
}

enum Write {
    Status(HealthStatus, String),
    Deregister,
}

#[derive(Debug, Clone, Copy)]
enum WriteKind {
    Status,
    Deregister,
}

/// A finished [`Job`].
enum Done {
    Probed {
        id: u64,
        outcome: Outcome,
        conn: Option<Conn>,
    },
    Wrote {
        id: u64,
        kind: WriteKind,
        /// The write was committed.
        done: bool,
    },
}

/// What runs for one check: a TTL check's task, or an active check's id in the scheduler.
enum Run {
    Ttl(JoinHandle<()>),
    Active(u64),
}

struct Running {
    spec: CheckSpec,
    run: Run,
}

/// The checks of one service that run here, and the service's entry they were decided on.
struct ServiceChecks {
    entry: Arc<ServiceEntry>,
    checks: HashMap<CheckKey, Running>,
}

/// The checks of this node: which run (decided by [`Scheduler::reconcile`]), when each active
/// one is due, and the connections their probes keep.
struct Scheduler {
    checker: Arc<Checker>,
    services: HashMap<String, ServiceChecks>,
    /// The members that were up, and whether this node could run checks, at the last pass.
    members: Vec<u64>,
    may_run: bool,
    actives: HashMap<u64, Active>,
    next_id: u64,
    wheel: DelayQueue<u64>,
    /// Checks due while [`MAX_CONCURRENT_PROBES`] probes ran, in the order they fell due.
    waiting: VecDeque<u64>,
    probing: usize,
    pool: Pool,
    /// Ticks are counted from here.
    epoch: Instant,
}

impl Scheduler {
    fn new(checker: Arc<Checker>) -> Scheduler {
        Scheduler {
            checker,
            services: HashMap::new(),
            members: Vec::new(),
            may_run: false,
            actives: HashMap::new(),
            next_id: 0,
            wheel: DelayQueue::new(),
            waiting: VecDeque::new(),
            probing: 0,
            pool: Pool::default(),
            epoch: Instant::now(),
        }
    }

    /// Makes the checks that run here the checks this node owns. Only services whose entry
    /// changed since the last pass are walked, unless the members that are up changed.
    fn reconcile(&mut self) {
        let cluster = &self.checker.cluster;
        let members = cluster.up_members();
        let me = cluster.id();
        let may_run = self.checker.may_run(&members);
        let everything = members != self.members || may_run != self.may_run;
        self.members = members;
        self.may_run = may_run;
        let mut before = std::mem::take(&mut self.services);
        if may_run {
            // Only the services with checks: the others cost nothing here, however many.
            for svc in &cluster.registry().checked_services() {
                let (name, old) = match before.remove_entry(&svc.name) {
                    Some((name, old)) if !everything && Arc::ptr_eq(&old.entry, svc) => {
                        self.services.insert(name, old);
                        continue;
                    }
                    Some((name, old)) => (name, old.checks),
                    None => (svc.name.clone(), HashMap::new()),
                };
                let checks = self.sync_service(svc, old, me);
                self.services.insert(
                    name,
                    ServiceChecks {
                        entry: svc.clone(),
                        checks,
                    },
                );
            }
        }
        // Services gone, left without checks, or all of them when this node may not run checks.
        for (_, gone) in before {
            for (_, r) in gone.checks {
                self.stop(r);
            }
        }
        let owned: usize = self.services.values().map(|s| s.checks.len()).sum();
        self.checker.stats.owned.set(owned as i64);
        self.pool.sweep();
        let services = &self.services;
        self.checker.heartbeats.lock().retain(|k, slot| {
            services
                .get(&k.service)
                .is_some_and(|s| s.checks.contains_key(k))
                || slot.created.elapsed() < PENDING_HEARTBEAT
        });
    }

    /// The checks of `svc` this node owns, keeping those of `old` that run unchanged.
    fn sync_service(
        &mut self,
        svc: &ServiceEntry,
        mut old: HashMap<CheckKey, Running>,
        me: u64,
    ) -> HashMap<CheckKey, Running> {
        let mut checks = HashMap::new();
        let members = self.members.clone();
        for (key, spec) in Checker::owned_in(svc, &members, me) {
            let running = match old.remove(&key) {
                Some(r) if r.spec == *spec && self.is_running(&r) => r,
                Some(r) => {
                    self.stop(r);
                    self.start(&key, spec)
                }
                None => self.start(&key, spec),
            };
            checks.insert(key, running);
        }
        for (_, r) in old {
            self.stop(r);
        }
        checks
    }

    fn is_running(&self, r: &Running) -> bool {
        match &r.run {
            Run::Ttl(task) => !task.is_finished(),
            Run::Active(id) => self.actives.contains_key(id),
        }
    }

    fn start(&mut self, key: &CheckKey, spec: &CheckSpec) -> Running {
        let run = match &spec.kind {
            CheckKindSpec::Ttl { ttl_ms } => {
                let notify = self.checker.heartbeat_slot(key);
                Run::Ttl(tokio::spawn(self.checker.clone().run_ttl(
                    key.clone(),
                    spec.clone(),
                    Duration::from_millis(*ttl_ms),
                    notify,
                )))
            }
            kind => {
                let (probe, what) = Probe::new(kind);
                // Spread first probes over the interval so that checks registered together do
                // not fire together; after that the period is exact, so that `fall` failures
                // are noticed within `fall` intervals (per-round jitter would stretch that).
                let first = rand::thread_rng().gen_range(0..=spec.interval_ms.max(1));
                let next = Instant::now() + Duration::from_millis(first);
                let id = self.next_id;
                self.next_id += 1;
                self.actives.insert(
                    id,
                    Active {
                        key: key.clone(),
                        spec: spec.clone(),
                        probe: Arc::new(probe),
                        what,
                        next,
                        streak: None,
                        critical_since: None,
                    },
                );
                self.wheel.insert_at(id, self.tick_of(next));
                Run::Active(id)
            }
        };
        Running {
            spec: spec.clone(),
            run,
        }
    }

    fn stop(&mut self, r: Running) {
        match r.run {
            Run::Ttl(task) => task.abort(),
            // Its wheel entry, queue place or job in flight find no check and are dropped.
            Run::Active(id) => {
                self.actives.remove(&id);
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, svc) in std::mem::take(&mut self.services) {
            for (_, r) in svc.checks {
                self.stop(r);
            }
        }
    }

    /// `at`, rounded up to the next tick.
    fn tick_of(&self, at: Instant) -> Instant {
        let tick = TICK.as_nanos();
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let ticks = since.div_ceil(tick);
        let nanos = u64::try_from(ticks * tick).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Check `id` fell due: its probe, unless [`MAX_CONCURRENT_PROBES`] run already.
    fn due(&mut self, id: u64) -> Option<Job> {
        if !self.actives.contains_key(&id) {
            return None;
        }
        if self.probing >= MAX_CONCURRENT_PROBES {
            self.waiting.push_back(id);
            return None;
        }
        self.start_probe(id)
    }

    fn start_probe(&mut self, id: u64) -> Option<Job> {
        let a = self.actives.get(&id)?;
        let conn = match &*a.probe {
            Probe::Http(http) => self.pool.take(http.key()),
            _ => None,
        };
        self.probing += 1;
        Some(Job::Probe {
            id,
            probe: a.probe.clone(),
            conn,
            timeout: Duration::from_millis(a.spec.timeout_ms),
        })
    }

    /// A job finished: what to do next for its check, and the probes that waited for a place.
    fn done(&mut self, done: Done) -> Vec<Job> {
        let mut jobs = Vec::new();
        match done {
            Done::Probed { id, outcome, conn } => {
                self.probing -= 1;
                jobs.extend(self.probed(id, outcome, conn));
                while self.probing < MAX_CONCURRENT_PROBES {
                    let Some(id) = self.waiting.pop_front() else {
                        break;
                    };
                    jobs.extend(self.start_probe(id));
                }
            }
            Done::Wrote { id, kind, done } => jobs.extend(self.wrote(id, kind, done)),
        }
        jobs
    }

    fn probed(&mut self, id: u64, outcome: Outcome, conn: Option<Conn>) -> Option<Job> {
        // A check stopped while its probe ran: the result is no one's.
        let a = self.actives.get_mut(&id)?;
        if let (Some(conn), Probe::Http(http)) = (conn, &*a.probe) {
            self.pool.put(http.key(), conn);
        }
        let Some(committed) = self.checker.committed(&a.key) else {
            // The check or its instance is gone; the next pass stops it for good.
            self.actives.remove(&id);
            return None;
        };
        let result = outcome.health();
        let count = match a.streak {
            Some((last, n)) if last == result => n.saturating_add(1),
            _ => 1,
        };
        a.streak = Some((result, count));
        let needed = if result == HealthStatus::Passing {
            a.spec.rise
        } else {
            a.spec.fall
        };
        if committed != result && count >= needed {
            return Some(Job::Write {
                id,
                key: a.key.clone(),
                write: Write::Status(result, outcome.output(&a.what)),
            });
        }
        self.settle(id, Some(committed))
    }

    fn wrote(&mut self, id: u64, kind: WriteKind, done: bool) -> Option<Job> {
        match kind {
            WriteKind::Status => {
                let committed = self.checker.committed(&self.actives.get(&id)?.key);
                self.settle(id, committed)
            }
            WriteKind::Deregister if done => {
                self.actives.remove(&id);
                None
            }
            WriteKind::Deregister => self.schedule(id),
        }
    }

    /// After a probe (and its status write, if any): the instance's removal when it is due,
    /// else the next probe.
    fn settle(&mut self, id: u64, committed: Option<HealthStatus>) -> Option<Job> {
        let a = self.actives.get_mut(&id)?;
        if Checker::deregister_due(&a.spec, &mut a.critical_since, committed) {
            return Some(Job::Write {
                id,
                key: a.key.clone(),
                write: Write::Deregister,
            });
        }
        self.schedule(id)
    }

    /// Puts the check's next probe on the wheel, one interval after the last was due.
    fn schedule(&mut self, id: u64) -> Option<Job> {
        let a = self.actives.get_mut(&id)?;
        a.next += Duration::from_millis(a.spec.interval_ms);
        let now = Instant::now();
        if a.next < now {
            // A probe overran its slot (waiting for a place, or slow): the next one now.
            a.next = now;
        }
        let at = a.next;
        self.wheel.insert_at(id, self.tick_of(at));
        None
    }
}
