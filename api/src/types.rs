//! Request and response bodies of the native API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The health of a check or an instance. Ordered from best to worst, so the health of an
/// instance is the `max` of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an active or passive health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET url`: 2xx passing, 429 warning, anything else or a time-out critical.
    Http,
    /// A TCP connect to `target` (`host:port`).
    Tcp,
    /// Passive: the instance must heartbeat within `ttl`.
    Ttl,
}

/// Body of `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceRegistration {
    /// An IPv4 or IPv6 literal, or a DNS host name (answered as CNAME).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::address))]
    pub address: String,
    /// 1-65535.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u32,
    /// DNS labels; duplicates are folded.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::tags))]
    pub tags: Vec<String>,
    /// Free-form string pairs, bounded in count and size.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::meta))]
    pub meta: BTreeMap<String, String>,
    /// 1-65535, default 1: share of DNS answers and SRV weight.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub weight: Option<u32>,
    /// Health checks; none means the instance is passing.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub checks: Vec<CheckRegistration>,
}

/// One check in an [`InstanceRegistration`]. Which fields apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckRegistration {
    /// Unique within the instance; defaults to the kind, numbered when repeated (`http`, `http-2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::check_id))]
    pub id: Option<String>,
    pub kind: CheckKind,
    /// `http`: the URL to GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = "^https?://[!-~]+$")
    )]
    pub url: Option<String>,
    /// `http`: the method: `GET` (the default), `HEAD`, `POST` or `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(GET|HEAD|POST|PUT)$"))]
    pub method: Option<String>,
    /// `http`: extra request headers. Stored as given; every read shows their values as
    /// `<redacted>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::check_headers))]
    pub headers: BTreeMap<String, String>,
    /// `http`: accept any TLS certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// `http`: keep the start of the response body in the check's output (every reader of
    /// the service sees it); off, the output is the status line only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_body: bool,
    /// `tcp`: `host:port` to connect to; defaults to the instance's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::tcp_target))]
    pub target: Option<String>,
    /// `ttl`: how long a heartbeat keeps the check passing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::duration))]
    pub ttl: Option<String>,
    /// Active checks: time between probes (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::duration))]
    pub interval: Option<String>,
    /// Active checks: time a probe may take (default 5s, at most the interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::duration))]
    pub timeout: Option<String>,
    /// Successes in a row before passing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub rise: Option<u32>,
    /// Failures in a row before critical (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub fall: Option<u32>,
    /// Status until the first result (default critical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<HealthStatus>,
    /// Remove the instance once this check has been critical for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::duration))]
    pub deregister_after: Option<String>,
}

/// Body of `PUT /v1/services/{service}/instances/{id}/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthUpdate {
    pub status: HealthStatus,
    /// At most 4096 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub output: Option<String>,
}

/// Body of `PUT /v1/services/{service}/settings`, and (with `index`) the answer to its GET.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceSettingsBody {
    /// When no instance is healthy, DNS hands out all of them instead of none (like Cloud Map's
    /// HEALTHY_OR_ELSE_ALL). Default false.
    #[serde(default)]
    pub fail_open: Option<bool>,
    /// TTL of the service's DNS answers, e.g. `"30s"`; the agent's `--dns-ttl` when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::dns_ttl))]
    pub dns_ttl: Option<String>,
}

/// `GET /v1/services/{service}/settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSettingsView {
    pub fail_open: bool,
    pub dns_ttl: Option<String>,
    /// Index of the last change to the settings; 0 when never set.
    pub index: u64,
}

/// Body of `PUT /v1/services/{service}/instances/{id}/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MaintenanceUpdate {
    pub enable: bool,
    /// At most 4096 bytes; `maintenance` when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub reason: Option<String>,
}

/// Answer to every successful write: the Raft log index that committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResult {
    pub index: u64,
}

/// Answer to a restore (`PUT /v1/snapshot`): the index that committed it, and what the backup
/// held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreResult {
    /// The Raft index of the restore: every restored record carries it.
    pub index: u64,
    /// The index and term the backup was taken at.
    pub backup_index: u64,
    pub backup_term: u64,
    pub services: u64,
    pub instances: u64,
    pub tokens: u64,
    pub policies: u64,
}

/// One row of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSummary {
    pub name: String,
    /// Index of the last change to this service or its instances.
    pub index: u64,
    /// Union of the instances' tags, sorted.
    pub tags: Vec<String>,
    pub instances: u32,
    pub passing: u32,
    pub warning: u32,
    pub critical: u32,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceList {
    /// Moves when a service appears or disappears or its set of tags changes.
    pub index: u64,
    pub services: Vec<ServiceSummary>,
}

/// `GET /v1/services/{service}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceInstances {
    pub name: String,
    pub index: u64,
    pub instances: Vec<InstanceInfo>,
}

/// An instance as stored, with its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceInfo {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weight: u16,
    /// The worst of the checks and the custom health; passing when there are none.
    pub health: HealthStatus,
    pub checks: Vec<CheckInfo>,
    /// Health set directly through `PUT .../health`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_health: Option<CheckState>,
    /// Present while the instance is in maintenance (critical, out of DNS and passing queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<CheckState>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A check's definition and its last committed result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckInfo {
    pub id: String,
    pub definition: CheckRegistration,
    #[serde(flatten)]
    pub state: CheckState,
}

/// A status with its output and the leader-stamped time (Unix ms) it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckState {
    pub status: HealthStatus,
    pub output: String,
    pub changed_at_ms: u64,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub cluster: String,
    /// The node that answered.
    pub node_id: u64,
    /// Its Raft role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Milliseconds since this node last heard from the leader (0 on the leader itself, `None`
    /// when it never has).
    pub last_contact_ms: Option<u64>,
    pub members: Vec<MemberInfo>,
    /// Only in the leader's answer: how far each member's log is known to match the leader's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<MemberProgress>,
}

/// A member's replication progress, as the leader knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberProgress {
    pub id: u64,
    /// The last log index known to be on the member (the leader's own last index for itself);
    /// its replication lag is the leader's `last_log_index` minus this.
    pub matched_index: u64,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberInfo {
    pub id: u64,
    pub rpc_addr: String,
    /// Voters make the quorum; learners only replicate.
    pub voter: bool,
}

/// Body of `POST /v1/cluster/members`: add a node, as a learner until caught up, then a voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub id: u64,
    /// `host:port` of the new node's cluster RPC listener, as the others reach it.
    pub rpc_addr: String,
}

/// Answer to `PUT /v1/services/{service}/instances/{id}/heartbeat`: the TTL checks passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResult {
    pub checks: Vec<String>,
}

/// `GET /v1/cluster/digest`: a hash of this replica's registry at its applied index; replicas
/// at the same index must agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterDigest {
    pub node_id: u64,
    pub applied_index: u64,
    /// 16 hexadecimal digits.
    pub digest: String,
}

/// `GET /v1/operator/raft`: replication as the leader sees it (served by the leader, asked of it
/// by any other node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaftReplication {
    pub leader: u64,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub members: Vec<ReplicaInfo>,
}

/// One member of [`RaftReplication`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaInfo {
    pub id: u64,
    pub rpc_addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    pub voter: bool,
    /// The last log index the leader knows this member holds; absent until it knows.
    pub match_index: Option<u64>,
    /// Entries of the leader's log this member does not hold yet.
    pub lag: Option<u64>,
    /// Milliseconds since this member last answered the leader (0 for the leader); absent when
    /// it never has.
    pub last_contact_ms: Option<u64>,
    /// `healthy`; `lagging` (trails by more than 250 entries, or answered last over 500 ms ago);
    /// `unreachable` (no answer for 2 s, or never).
    pub health: String,
}

/// `GET /v1/live`: `{"status": "live"}` while the process serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveStatus {
    pub status: String,
}

/// `GET /v1/ready`: this node knows a leader, so it can serve reads and accept writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyStatus {
    pub status: String,
    pub leader: u64,
}

/// One target group of `GET /v1/prometheus/sd`, in Prometheus' `http_sd_configs` format: the
/// targets (`host:port`) and the labels Prometheus attaches to each of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrometheusTargetGroup {
    pub targets: Vec<String>,
    /// `__meta_cairn_service`, `__meta_cairn_instance`, `__meta_cairn_node`,
    /// `__meta_cairn_health`, `__meta_cairn_tags` and one `__meta_cairn_meta_<key>` per meta key.
    pub labels: BTreeMap<String, String>,
}
