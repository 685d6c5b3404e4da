//! What replication counts for `/metrics`, and the request id a forwarded write carries.
//!
//! [`RaftStats`] holds `prometheus-client` metrics that the write path, the snapshot code and a
//! small watcher task update; the agent registers them with [`RaftStats::register`]. Gauges that
//! openraft already keeps (term, indexes) are read from its metrics at scrape time instead.
//!
//! [`REQUEST_ID`] is the id of the HTTP request a write was made for: the HTTP layer runs each
//! request inside [`with_request_id`], a forwarded write takes the id to the leader
//! ([`crate::rpc::Forward::Write`]), and both nodes' log lines of that write show it.

use std::future::Future;
use std::time::Duration;

use axum::http::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::task::futures::TaskLocalFuture;

/// The longest request id taken from a client or a member: ids are for logs, and an unbounded
/// one would let a client write as much as it likes into every node's log.
pub const MAX_REQUEST_ID_LEN: usize = 64;

tokio::task_local! {
    /// The id of the HTTP request the current task serves (see the module docs).
    static REQUEST_ID: HeaderValue;
}

/// Runs `f` as the request with id `id`: writes it makes carry the id to the leader. A named
/// future, so that the HTTP layer's own future can hold it without boxing.
/// The id is kept as the response header's value, so that a request costs one copy of it.
pub fn with_request_id<F: Future>(id: HeaderValue, f: F) -> TaskLocalFuture<HeaderValue, F> {
    REQUEST_ID.scope(id, f)
}

/// The id of the request the current task serves, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

/// Whether `id` is a request id we take as it is: 1 to [`MAX_REQUEST_ID_LEN`] characters of
/// `A-Za-z0-9` and `-_.:` (what UUIDs, ULIDs and tracing ids are made of), so it goes into a log
/// line and a header unescaped.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// How a write forwarded to the leader ended, as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Replication's metrics. Cheap to update: each is an atomic or a short uncontended lock.
#[derive(Debug)]
pub struct RaftStats {
    /// Leader only: from proposing a batch of writes to its being applied here, per batch.
    pub commit_seconds: Histogram,
    /// Times this node saw the leader change (to another node, or to none).
    pub leader_changes: Counter,
    /// Snapshots this node built, and how long each took.
    pub snapshot_build_seconds: Histogram,
    /// Snapshots from the leader this node installed, and how long each took to install.
    pub snapshot_install_seconds: Histogram,
    /// Writes this node forwarded to the leader, by how they ended.
    pub forwarded: Family<Outcome, Counter>,
}

/// The outcomes of a forwarded write exported from the start (at 0), so that the series exist
/// before the first forward; the leader's rarer errors appear when they happen.
const FORWARD_OUTCOMES: [&str; 8] = [
    "ok",
    "rejected",
    "no_leader",
    "unavailable",
    "unreachable",
    "lost",
    "timeout",
    "refused",
];

impl Default for RaftStats {
    fn default() -> Self {
        let forwarded = Family::<Outcome, Counter>::default();
        for outcome in FORWARD_OUTCOMES {
            let _ = forwarded.get_or_create(&Outcome { outcome });
        }
        RaftStats {
            // 0.5 ms to ~4 s: a commit on a local disk is about a millisecond, fsync on a slow
            // disk tens, a stalled quorum seconds.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            leader_changes: Counter::default(),
            // 1 ms to ~65 s: a small registry snapshots in milliseconds, 100k instances in seconds.
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 9)),
            snapshot_install_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 9)),
            forwarded,
        }
    }
}

impl RaftStats {
    /// Adds the metrics to `registry` under their `cairn_raft_*` and `cairn_forwarded_*` names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_raft_commit_seconds",
            "Leader: time from proposing a batch of writes to its being applied, per batch",
            self.commit_seconds.clone(),
        );
        registry.register(
            "cairn_raft_leader_changes",
            "Times this node saw the leader change",
            self.leader_changes.clone(),
        );
        registry.register(
            "cairn_raft_snapshot_build_seconds",
            "Snapshots this node built and the time each took",
            self.snapshot_build_seconds.clone(),
        );
        registry.register(
            "cairn_raft_snapshot_install_seconds",
            "Snapshots from the leader this node installed and the time each took",
            self.snapshot_install_seconds.clone(),
        );
        registry.register(
            "cairn_forwarded_writes",
            "Writes this node forwarded to the leader, by outcome (ok, rejected: the leader applied it with a not-found, denied or conflict result, or the error)",
            self.forwarded.clone(),
        );
    }

    pub(crate) fn count_forwarded(&self, outcome: &'static str) {
        self.forwarded.get_or_create(&Outcome { outcome }).inc();
    }
}

/// `d` in seconds, as histograms take it.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id("7f3a-01HZX.trace:1_a"));
        assert!(valid_request_id(&"a".repeat(MAX_REQUEST_ID_LEN)));
        for bad in ["", "has space", "new\nline", "quote\"", "é"] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
        assert!(!valid_request_id(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
    }

    #[tokio::test]
    async fn the_request_id_is_seen_inside_its_scope_only() {
        assert_eq!(request_id(), None);
        let inside = with_request_id(HeaderValue::from_static("r-1"), async { request_id() }).await;
        assert_eq!(inside.as_deref(), Some("r-1"));
        assert_eq!(request_id(), None);
    }
}
