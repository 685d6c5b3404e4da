//! [`AppState`]: what every handler sees, and the path every read takes before it looks at the
//! registry: block for `?index=` (holding one of the client's waiting slots), then apply
//! `?consistent` and `?max_stale`. Native and Consul reads share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_api::ErrorCode;
use cairn_raft::Cluster;
use cairn_registry::acl::{AclMode, RightsCache};
use cairn_registry::model::{CheckKindSpec, InstanceSpec, ValidationError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::blocking::{self, WaitLimiter, Waiting};
use super::error::Failure;
use super::query::ReadQuery;
use crate::check_targets::{self, TargetError, TargetPolicy};
use crate::checks::Checker;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub checker: Arc<Checker>,
    /// Where health checks may connect; registrations are checked against it.
    pub targets: Arc<TargetPolicy>,
    /// Waiting requests per client address.
    pub limiter: Arc<WaitLimiter>,
    /// Cancelled when the agent shuts down: waiting reads return, streams end.
    pub shutdown: CancellationToken,
    /// Whether ACLs are enforced, and the default for what no rule decides.
    pub acl: AclMode,
    /// The rights of recently used tokens (`--acl-cache-size`), so a request does not hash its
    /// secret and merge its token's policies again.
    pub rights: Arc<RightsCache>,
    /// This node's data folder: `acl-bootstrap-reset` is read from it.
    pub data_dir: PathBuf,
    /// The largest backup `PUT /v1/snapshot` reads (`--max-restore-bytes`).
    pub max_restore_bytes: usize,
    /// What the DNS listeners held back (rate limiting, refused recursion), for `/metrics`.
    pub dns_stats: Arc<cairn_dns::DnsStats>,
    /// Each listener's connection counts, for `/metrics`.
    pub connections: Vec<Arc<cairn_tls::ConnStats>>,
    /// The HTTP API's request metrics, counted by the request layer.
    pub http_metrics: Arc<super::HttpMetrics>,
    /// The `prometheus-client` metrics of every part (HTTP, replication, checks), for `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

impl AppState {
    /// Refuses (400, naming the check's field and the rule) a registration whose active
    /// checks target an address the policy denies, after resolving names. A name that does
    /// not resolve yet is let through: the probe checks it each time it runs.
    pub(crate) async fn check_targets(&self, instance: &InstanceSpec) -> Result<(), Failure> {
        for (i, check) in instance.checks.iter().enumerate() {
            let (field, target) = match &check.kind {
                CheckKindSpec::Http { url, .. } => ("url", check_targets::url_target(url)),
                CheckKindSpec::Tcp { target } => ("target", check_targets::tcp_target(target)),
                CheckKindSpec::Ttl { .. } => continue,
            };
            let Some((host, port)) = target else { continue };
            let resolved = tokio::time::timeout(
                check_targets::REGISTRATION_RESOLVE_TIMEOUT,
                self.targets.resolve(&host, port),
            )
            .await;
            if let Ok(Err(TargetError::Refused(refused))) = resolved {
                return Err(ValidationError {
                    field: format!("checks[{i}].{field}"),
                    message: format!("health checks may not connect there: {refused}"),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Looks something up in this replica; on a miss, waits until the replica has applied
    /// everything the leader had committed and looks again. A client that registered through
    /// this node (the write is acknowledged once the leader applied it, maybe before this
    /// follower did) can so heartbeat or deregister through it at once.
    pub(super) async fn lookup_fresh<T>(
        &self,
        find: impl Fn() -> Option<T>,
    ) -> Result<Option<T>, Failure> {
        if let Some(found) = find() {
            return Ok(Some(found));
        }
        self.cluster.read_barrier().await?;
        Ok(find())
    }

    /// What a read does before it looks: for `?index=`, waits (holding one of `peer`'s waiting
    /// slots) until `rx`, the resource's index, moves past it or the wait ends; then applies
    /// `?consistent` and `?max_stale`.
    pub(super) async fn prepare_read(
        &self,
        peer: SocketAddr,
        q: &ReadQuery,
        rx: watch::Receiver<u64>,
    ) -> Result<(), Failure> {
        if let Some(index) = q.index {
            let _slot = self.limiter.acquire(peer.ip(), Waiting::Blocking)?;
            blocking::block(rx, index, q.wait, &self.shutdown).await;
        }
        self.freshness(q).await
    }

    /// `?consistent`: a read barrier, so the read sees every write committed before it began.
    /// `?max_stale`: refuse (503) when this follower last heard from the leader too long ago.
    async fn freshness(&self, q: &ReadQuery) -> Result<(), Failure> {
        if q.consistent {
            self.cluster.read_barrier().await?;
        }
        if let Some(max) = q.max_stale {
            if self.cluster.leader() != Some(self.cluster.id()) {
                let contact = self.cluster.last_contact_ms();
                if contact.is_none_or(|ms| u128::from(ms) > max.as_millis()) {
                    return Err(Failure::new(
                        ErrorCode::Unavailable,
                        match contact {
                            Some(ms) => format!(
                                "this node last heard from the leader {ms} ms ago, more than max_stale"
                            ),
                            None => "this node has not heard from a leader".into(),
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}
