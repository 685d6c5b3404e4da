//! Leaf: `/metrics` in Prometheus' text format: the node's Raft state, the registry's size and
//! its quotas, what the DNS listeners held back, and each listener's connections.
//! Instance and health counts come from each service's summary, which the registry keeps up to
//! date on every change, so a scrape costs one step per service, not per instance.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cairn_raft::{QuotaStatus, Status};
use cairn_registry::acl::Access;
use cairn_registry::quota::{QuotaKind, Usage};
use cairn_registry::ServiceEntry;
use cairn_tls::ConnStats;

use super::acl::Caller;
use super::blocking::{WaitLimiter, Waiting};
use super::error::Failure;
use super::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

/// Needs `operator:read` with ACLs on (Prometheus sends a token with `authorization:`).
async fn render(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let status = s.cluster.status();
    let (_, services) = s.cluster.registry().services();
    let usage = s.cluster.registry().usage();
    let mut body = text(&status, &services);
    body.push_str(&quota_text(usage, &services, &s.cluster.quotas()));
    body.push_str(&dns_text(&s.dns_stats));
    body.push_str(&connections(&s.connections));
    body.push_str(&waiting_text(&s.limiter));
    let _ = writeln!(
        body,
        "# HELP cairn_raft_apply_lag Entries committed but not yet applied to this node's registry.\n\
         # TYPE cairn_raft_apply_lag gauge\ncairn_raft_apply_lag {}",
        status.commit_index.saturating_sub(status.applied_index)
    );
    // Histograms and labelled counters kept by `prometheus-client` (HTTP requests, replication,
    // checks). Its counters are written as OpenMetrics does (`# TYPE x counter`, sample
    // `x_total`), which Prometheus' text parser takes as it is.
    let _ = prometheus_client::encoding::text::encode_registry(&mut body, &s.metrics);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Requests waiting now: blocking reads and watch streams.
fn waiting_text(limiter: &WaitLimiter) -> String {
    let mut out = String::with_capacity(256);
    for (name, help, kind) in [
        (
            "cairn_blocking_reads_open",
            "Blocking reads (?index=) waiting now.",
            Waiting::Blocking,
        ),
        (
            "cairn_watchers_open",
            "Watch streams open now.",
            Waiting::Watch,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            limiter.open(kind)
        );
    }
    out
}

/// The quotas' exposition text: each one's usage and limit (0: none), and, on the leader that
/// enforces them, the writes it refused and whether the quota is being hit now.
fn quota_text(usage: Usage, services: &[Arc<ServiceEntry>], quotas: &[QuotaStatus]) -> String {
    let largest = services
        .iter()
        .map(|s| s.instances.len() as u64)
        .max()
        .unwrap_or(0);
    let used = |kind: QuotaKind| match kind {
        QuotaKind::Bytes => usage.bytes,
        QuotaKind::Services => usage.services,
        QuotaKind::InstancesPerService => largest,
        QuotaKind::Checks => usage.checks,
    };
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&QuotaStatus) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for q in quotas {
            let _ = writeln!(out, "{name}{{quota=\"{}\"}} {}", q.kind.name(), value(q));
        }
    };
    family(
        "cairn_quota_usage",
        "gauge",
        "What each quota counts now (instances_per_service: the largest service).",
        &|q| used(q.kind),
    );
    family(
        "cairn_quota_limit",
        "gauge",
        "Each quota's limit (0: none).",
        &|q| q.limit,
    );
    family(
        "cairn_quota_refused_total",
        "counter",
        "Writes this node refused with 507 quota_exceeded while leading, by quota.",
        &|q| q.refused,
    );
    family(
        "cairn_quota_exceeded",
        "gauge",
        "1 while the last write that grew what the quota counts was refused (leader).",
        &|q| u64::from(q.exceeded),
    );
    out
}

/// The exposition text of `status` and `services`.
fn text(status: &Status, services: &[Arc<ServiceEntry>]) -> String {
    let mut by_health = [0u64; 3];
    let mut instances = 0u64;
    for svc in services {
        let summary = svc.summary();
        instances += u64::from(summary.instances);
        for (n, count) in
            by_health
                .iter_mut()
                .zip([summary.passing, summary.warning, summary.critical])
        {
            *n += u64::from(count);
        }
    }
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge("cairn_raft_term", "Current Raft term.", status.term);
    gauge(
        "cairn_raft_is_leader",
        "1 if this node is the leader.",
        u64::from(status.role == "leader"),
    );
    gauge(
        "cairn_raft_has_leader",
        "1 if this node knows a leader.",
        u64::from(status.leader.is_some()),
    );
    gauge(
        "cairn_raft_last_log_index",
        "Index of the last log entry.",
        status.last_log_index,
    );
    gauge(
        "cairn_raft_commit_index",
        "Highest committed index known.",
        status.commit_index,
    );
    gauge(
        "cairn_raft_applied_index",
        "Highest index applied to the registry.",
        status.applied_index,
    );
    gauge(
        "cairn_raft_snapshot_index",
        "Index of the last snapshot.",
        status.snapshot_index,
    );
    gauge(
        "cairn_raft_members",
        "Members of the cluster (voters and learners).",
        status.members.len() as u64,
    );
    gauge(
        "cairn_services",
        "Services with at least one instance.",
        services.len() as u64,
    );
    gauge("cairn_instances", "Registered instances.", instances);
    let _ = writeln!(
        out,
        "# HELP cairn_instances_by_health Registered instances by health.\n# TYPE cairn_instances_by_health gauge"
    );
    for (label, n) in ["passing", "warning", "critical"].iter().zip(by_health) {
        let _ = writeln!(out, "cairn_instances_by_health{{health=\"{label}\"}} {n}");
    }
    out
}

/// The DNS listeners' counters: answers the rate limiter dropped or truncated, recursion
/// refused to clients outside --recursors-allow, relayed answers truncated for UDP.
fn dns_text(stats: &cairn_dns::DnsStats) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::with_capacity(1024);
    let _ = writeln!(
        out,
        "# HELP cairn_dns_rrl_responses_total UDP answers held back by the response rate limit.\n\
         # TYPE cairn_dns_rrl_responses_total counter\n\
         cairn_dns_rrl_responses_total{{action=\"dropped\"}} {}\n\
         cairn_dns_rrl_responses_total{{action=\"slipped\"}} {}",
        load(&stats.rrl_dropped),
        load(&stats.rrl_slipped),
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "cairn_dns_recursion_refused_total",
        "Queries for names outside the zone refused to clients outside --recursors-allow.",
        load(&stats.recursion_refused),
    );
    counter(
        "cairn_dns_relayed_truncated_total",
        "Relayed answers larger than the UDP client takes, sent truncated.",
        load(&stats.relay_truncated),
    );
    let _ = writeln!(
        out,
        "# HELP cairn_dns_queries_total DNS queries answered, by question type and answer RCODE (relayed ones: forwarded).\n\
         # TYPE cairn_dns_queries_total counter"
    );
    for (qtype, row) in cairn_dns::QTYPE_LABELS.iter().zip(&stats.queries) {
        for (rcode, n) in cairn_dns::RCODE_LABELS.iter().zip(row) {
            // Only the pairs seen: 72 rows of zeros would drown the rest.
            let n = load(n);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "cairn_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
                );
            }
        }
    }
    let h = &stats.answer_latency;
    let _ = writeln!(
        out,
        "# HELP cairn_dns_answer_seconds Time to build DNS answers, from the received message to the bytes to send; a sample of one query in 16 (by message id).\n\
         # TYPE cairn_dns_answer_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, n) in cairn_dns::LATENCY_BOUNDS_US.iter().zip(&h.buckets) {
        cumulative += load(n);
        let _ = writeln!(
            out,
            "cairn_dns_answer_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += load(&h.over);
    let _ = writeln!(
        out,
        "cairn_dns_answer_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
         cairn_dns_answer_seconds_sum {}\n\
         cairn_dns_answer_seconds_count {cumulative}",
        load(&h.sum_ns) as f64 / 1e9
    );
    out
}

/// Each listener's open connections, and those its limits closed.
fn connections(listeners: &[Arc<ConnStats>]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    family(
        "cairn_connections_open",
        "gauge",
        "Connections open, by listener.",
        listeners
            .iter()
            .map(|l| (format!("listener=\"{}\"", l.listener), l.open()))
            .collect(),
    );
    family(
        "cairn_connections_refused_total",
        "counter",
        "Connections closed at accept: the listener's cap (max_conns) or the client's (per_client).",
        listeners
            .iter()
            .flat_map(|l| {
                [
                    ("max_conns", l.refused_full()),
                    ("per_client", l.refused_per_client()),
                ]
                .map(|(reason, n)| {
                    (
                        format!("listener=\"{}\",reason=\"{reason}\"", l.listener),
                        n,
                    )
                })
            })
            .collect(),
    );
    family(
        "cairn_connections_header_timeouts_total",
        "counter",
        "Connections closed because a request's headers did not arrive in time.",
        listeners
            .iter()
            .map(|l| (format!("listener=\"{}\"", l.listener), l.header_timeouts()))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_registry::model::validate_registration;
    use cairn_registry::{Command, Dirty, HealthStatus, Op, Registry};

    fn apply(r: &Registry, index: u64, op: Op) {
        let cmd = Command {
            by: Vec::new(),
            time_ms: 1000,
            ops: vec![op],
        };
        r.apply(index, &cmd, &mut Dirty::default());
    }

    fn register(r: &Registry, index: u64, service: &str, id: &str) {
        let body = serde_json::json!({"address": "10.0.0.1", "port": 80});
        let instance = validate_registration(id, &serde_json::from_value(body).unwrap()).unwrap();
        apply(
            r,
            index,
            Op::Register {
                service: service.into(),
                instance,
                health: None,
            },
        );
    }

    fn set_health(r: &Registry, index: u64, service: &str, id: &str, status: HealthStatus) {
        apply(
            r,
            index,
            Op::SetHealth {
                service: service.into(),
                id: id.into(),
                status,
                output: String::new(),
            },
        );
    }

    /// The registry of the test: two services, four instances, each health.
    fn registry() -> Registry {
        let r = Registry::default();
        register(&r, 1, "web", "a");
        register(&r, 2, "web", "b");
        register(&r, 3, "web", "c");
        register(&r, 4, "db", "x");
        set_health(&r, 5, "web", "b", HealthStatus::Warning);
        set_health(&r, 6, "db", "x", HealthStatus::Critical);
        apply(
            &r,
            7,
            Op::SetMaintenance {
                service: "web".into(),
                id: "c".into(),
                reason: Some("upgrade".into()),
            },
        );
        r
    }

    fn status() -> Status {
        Status {
            cluster: "test".into(),
            node_id: 1,
            role: "leader",
            leader: Some(1),
            term: 3,
            last_log_index: 7,
            commit_index: 7,
            applied_index: 7,
            snapshot_index: 0,
            last_contact_ms: Some(0),
            members: Vec::new(),
        }
    }

    #[test]
    fn health_counts_from_summaries_equal_a_walk_over_every_instance() {
        let r = registry();
        let (_, services) = r.services();
        let mut walked = [0u64; 3];
        for inst in services.iter().flat_map(|s| s.instances.values()) {
            walked[match inst.health() {
                HealthStatus::Passing => 0,
                HealthStatus::Warning => 1,
                HealthStatus::Critical => 2,
            }] += 1;
        }
        assert_eq!(
            walked,
            [1, 1, 2],
            "the registry of the test has each health"
        );
        let out = text(&status(), &services);
        assert!(out.contains("\ncairn_instances 4\n"), "{out}");
        for (label, n) in ["passing", "warning", "critical"].iter().zip(walked) {
            let line = format!("\ncairn_instances_by_health{{health=\"{label}\"}} {n}\n");
            assert!(out.contains(&line), "{line:?} in {out}");
        }
    }

    #[test]
    fn dns_counters_are_exposed() {
        let stats = cairn_dns::DnsStats::default();
        stats
            .rrl_slipped
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        stats
            .recursion_refused
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let out = dns_text(&stats);
        for line in [
            "cairn_dns_rrl_responses_total{action=\"dropped\"} 0",
            "cairn_dns_rrl_responses_total{action=\"slipped\"} 3",
            "cairn_dns_recursion_refused_total 2",
            "cairn_dns_relayed_truncated_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} in {out}");
        }
    }

    #[test]
    fn quota_usage_is_the_registrys_counts() {
        let r = registry();
        let (_, services) = r.services();
        let quotas: Vec<QuotaStatus> = QuotaKind::ALL
            .iter()
            .map(|&kind| QuotaStatus {
                kind,
                limit: 10,
                refused: u64::from(kind == QuotaKind::Services) * 3,
                exceeded: kind == QuotaKind::Services,
            })
            .collect();
        let usage = r.usage();
        assert!(usage.bytes > 0);
        let out = quota_text(usage, &services, &quotas);
        for line in [
            format!("cairn_quota_usage{{quota=\"bytes\"}} {}", usage.bytes),
            "cairn_quota_usage{quota=\"services\"} 2".into(),
            "cairn_quota_usage{quota=\"instances_per_service\"} 3".into(),
            "cairn_quota_usage{quota=\"checks\"} 0".into(),
            "cairn_quota_limit{quota=\"checks\"} 10".into(),
            "cairn_quota_refused_total{quota=\"services\"} 3".into(),
            "cairn_quota_refused_total{quota=\"bytes\"} 0".into(),
            "cairn_quota_exceeded{quota=\"services\"} 1".into(),
            "# TYPE cairn_quota_refused_total counter".into(),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line:?} in {out}");
        }
    }

    #[test]
    fn the_exposition_text_is_unchanged() {
        let r = registry();
        let (_, services) = r.services();
        let expected = "\
# HELP cairn_raft_term Current Raft term.
# TYPE cairn_raft_term gauge
cairn_raft_term 3
# HELP cairn_raft_is_leader 1 if this node is the leader.
# TYPE cairn_raft_is_leader gauge
cairn_raft_is_leader 1
# HELP cairn_raft_has_leader 1 if this node knows a leader.
# TYPE cairn_raft_has_leader gauge
cairn_raft_has_leader 1
# HELP cairn_raft_last_log_index Index of the last log entry.
# TYPE cairn_raft_last_log_index gauge
cairn_raft_last_log_index 7
# HELP cairn_raft_commit_index Highest committed index known.
# TYPE cairn_raft_commit_index gauge
cairn_raft_commit_index 7
# HELP cairn_raft_applied_index Highest index applied to the registry.
# TYPE cairn_raft_applied_index gauge
cairn_raft_applied_index 7
# HELP cairn_raft_snapshot_index Index of the last snapshot.
# TYPE cairn_raft_snapshot_index gauge
cairn_raft_snapshot_index 0
# HELP cairn_raft_members Members of the cluster (voters and learners).
# TYPE cairn_raft_members gauge
cairn_raft_members 0
# HELP cairn_services Services with at least one instance.
# TYPE cairn_services gauge
cairn_services 2
# HELP cairn_instances Registered instances.
# TYPE cairn_instances gauge
cairn_instances 4
# HELP cairn_instances_by_health Registered instances by health.
# TYPE cairn_instances_by_health gauge
cairn_instances_by_health{health=\"passing\"} 1
cairn_instances_by_health{health=\"warning\"} 1
cairn_instances_by_health{health=\"critical\"} 2
";
        assert_eq!(text(&status(), &services), expected);
    }

    #[test]
    fn each_listener_has_its_open_and_refused_connections() {
        let http = ConnStats::new("http");
        http.count_header_timeout();
        let out = connections(&[http, ConnStats::new("dns_tcp")]);
        for line in [
            "cairn_connections_open{listener=\"http\"} 0",
            "cairn_connections_refused_total{listener=\"http\",reason=\"per_client\"} 0",
            "cairn_connections_refused_total{listener=\"dns_tcp\",reason=\"max_conns\"} 0",
            "cairn_connections_header_timeouts_total{listener=\"http\"} 1",
            "# TYPE cairn_connections_refused_total counter",
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} in {out}");
        }
    }
}
