//! `/metrics` in Prometheus' text format: the node's Raft state and the registry's size.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use cairn_registry::HealthStatus;

use crate::api::AppState;

pub async fn render(State(s): State<AppState>) -> Response {
    let status = s.cluster.status();
    let (_, services) = s.cluster.registry().services();
    let mut by_health = [0u64; 3];
    let mut instances = 0u64;
    for svc in &services {
        for inst in svc.instances.values() {
            instances += 1;
            by_health[match inst.health() {
                HealthStatus::Passing => 0,
                HealthStatus::Warning => 1,
                HealthStatus::Critical => 2,
            }] += 1;
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
