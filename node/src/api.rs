//! The native HTTP API under `/v1`.
//!
//! Reads come from this node's registry view; writes go through [`Cluster::write`], which
//! forwards them to the leader. Every error leaves through [`Failure`], the one place that maps
//! error codes to statuses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, Path, Query, RawQuery, Request, State,
};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use cairn_api::{
    ApiError, ErrorCode, HealthUpdate, InstanceRegistration, JoinRequest, MaintenanceUpdate,
    ServiceInstances, ServiceList, ServiceSettingsBody, ServiceSettingsView, WriteResult,
    INDEX_HEADER,
};
use cairn_raft::{Cluster, WriteError, Written};
use cairn_registry::model::{self, ValidationError};
use cairn_registry::HealthStatus;
use cairn_registry::Op;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::checks::{CheckKey, Checker};
use crate::metrics;
use crate::reads::{self, ReadOptions, WaitLimiter};

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub checker: Arc<Checker>,
    /// Waiting requests per client address.
    pub limiter: Arc<WaitLimiter>,
    /// Cancelled when the agent shuts down: waiting reads return, streams end.
    pub shutdown: CancellationToken,
}

/// How long relaying a heartbeat to the check's owner may take.
const HEARTBEAT_RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the API router. `max_body` bounds every request body (413 beyond it).
pub fn router(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(get_service))
        .route("/v1/services/{service}/watch", get(watch_service))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/health",
            put(set_health),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/services/{service}/instances/{id}/maintenance",
            put(maintenance),
        )
        .route(
            "/v1/services/{service}/settings",
            get(get_settings).put(put_settings),
        )
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/digest", get(cluster_digest))
        .route("/v1/cluster/members", axum::routing::post(join))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/live", get(live))
        .route("/v1/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .merge(crate::consul::routes())
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Routes added to the cluster RPC listener (behind its admission layer): TTL heartbeats
/// relayed to a check's owner.
pub fn rpc_routes(state: AppState) -> Router {
    Router::new()
        .route("/raft/heartbeat", axum::routing::post(relayed_heartbeat))
        .with_state(state)
}

/// A TTL heartbeat relayed between nodes.
#[derive(Debug, serde::Serialize, Deserialize)]
struct HeartbeatRelay {
    service: String,
    instance: String,
    check: String,
}

async fn relayed_heartbeat(
    State(s): State<AppState>,
    Json(body): Json<HeartbeatRelay>,
) -> Response {
    let key = CheckKey {
        service: body.service,
        instance: body.instance,
        check: body.check,
    };
    let res: Result<(), ApiError> = if s.cluster.owner_of(&key.hash_key()) == Some(s.cluster.id()) {
        s.checker.heartbeat(&key);
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "this node does not run that check (ownership is moving); retry",
        ))
    };
    Json(res).into_response()
}

/// `?check=<id>` picks one TTL check; without it, every TTL check of the instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatQuery {
    check: Option<String>,
}

async fn heartbeat(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    query: Result<Query<HeartbeatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let service = model::validate_service_name(&service)?;
    model::validate_id("id", &id)?;
    let not_found = || {
        Failure(ApiError::new(
            ErrorCode::NotFound,
            format!("service {service:?} has no instance {id:?}"),
        ))
    };
    let registry = s.cluster.registry();
    let inst = s
        .lookup_fresh(|| registry.service(&service)?.instances.get(&id).cloned())
        .await?
        .ok_or_else(not_found)?;
    let ttl_checks: Vec<String> = inst
        .spec
        .checks
        .iter()
        .filter(|c| matches!(c.kind, model::CheckKindSpec::Ttl { .. }))
        .filter(|c| q.check.as_ref().is_none_or(|want| *want == c.id))
        .map(|c| c.id.clone())
        .collect();
    if ttl_checks.is_empty() {
        return Err(Failure(ApiError::new(
            ErrorCode::NotFound,
            match &q.check {
                Some(c) => format!("instance {id:?} has no TTL check {c:?}"),
                None => format!("instance {id:?} has no TTL check"),
            },
        )));
    }
    for check in &ttl_checks {
        let key = CheckKey {
            service: service.clone(),
            instance: id.clone(),
            check: check.clone(),
        };
        relay_heartbeat(&s, key).await?;
    }
    Ok(Json(serde_json::json!({"checks": ttl_checks})).into_response())
}

/// Hands a TTL heartbeat to the node that runs the check (this one, or another over the
/// cluster RPC).
pub(crate) async fn relay_heartbeat(s: &AppState, key: CheckKey) -> Result<(), Failure> {
    let owner = s.cluster.owner_of(&key.hash_key()).ok_or_else(|| {
        Failure(ApiError::new(
            ErrorCode::NoLeader,
            "no member is up to run checks",
        ))
    })?;
    if owner == s.cluster.id() {
        s.checker.heartbeat(&key);
        return Ok(());
    }
    let relay = HeartbeatRelay {
        service: key.service,
        instance: key.instance,
        check: key.check,
    };
    let res: Result<Result<(), ApiError>, String> = s
        .cluster
        .call_member(owner, "/raft/heartbeat", &relay, HEARTBEAT_RELAY_TIMEOUT)
        .await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure(e)),
        Err(e) => Err(Failure(ApiError::new(
            ErrorCode::Unavailable,
            format!("cannot reach node {owner}, which runs the check: {e}"),
        ))),
    }
}

async fn maintenance(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<MaintenanceUpdate>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    model::validate_id("id", &id)?;
    let reason = if body.enable {
        let r = body.reason.unwrap_or_else(|| "maintenance".into());
        model::validate_output(&r)?;
        Some(r)
    } else {
        None
    };
    let w = s
        .cluster
        .write(Op::SetMaintenance {
            service,
            id,
            reason,
        })
        .await?;
    Ok(written(w))
}

/// An error response: `{"code", "message"}` with the code's status, and `Retry-After` when
/// trying again later may help.
pub struct Failure(pub ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(self.0)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<ValidationError> for Failure {
    fn from(e: ValidationError) -> Self {
        Failure(ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
    }
}

impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Self {
        let code = match &e {
            WriteError::NoLeader(_) => ErrorCode::NoLeader,
            WriteError::Unavailable(_) => ErrorCode::Unavailable,
            WriteError::NotFound(_) => ErrorCode::NotFound,
            WriteError::Conflict(_) => ErrorCode::Conflict,
            WriteError::Invalid(_) => ErrorCode::InvalidArgument,
            WriteError::Internal(_) => ErrorCode::Internal,
        };
        Failure(ApiError::new(code, e.to_string()))
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure(ApiError::new(ErrorCode::InvalidArgument, message))
}

/// A JSON body read whatever its Content-Type, with size and syntax errors as API errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Failure(ApiError::new(
                    ErrorCode::BodyTooLarge,
                    "request body is larger than this node accepts (--max-body-bytes)",
                ))
            }
            other => invalid(format!("cannot read the request body: {other}")),
        })?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| invalid(format!("invalid JSON body: {e}")))
    }
}

fn written(w: Written) -> Response {
    let mut res = Json(WriteResult { index: w.index }).into_response();
    set_header(res.headers_mut(), INDEX_HEADER, w.index.to_string());
    res
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// A read's response with the index and how fresh this replica is.
fn read_response<T: serde::Serialize>(cluster: &Cluster, index: u64, body: T) -> Response {
    let mut res = Json(body).into_response();
    let h = res.headers_mut();
    set_header(h, INDEX_HEADER, index.max(1).to_string());
    set_header(
        h,
        "x-cairn-known-leader",
        cluster.leader().is_some().to_string(),
    );
    if let Some(ms) = cluster.last_contact_ms() {
        set_header(h, "x-cairn-last-contact", ms.to_string());
    }
    res
}

async fn register(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<InstanceRegistration>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    let instance = model::validate_registration(&id, &body)?;
    let w = s.cluster.write(Op::Register { service, instance }).await?;
    Ok(written(w))
}

async fn deregister(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    model::validate_id("id", &id)?;
    let w = s.cluster.write(Op::Deregister { service, id }).await?;
    Ok(written(w))
}

async fn set_health(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<HealthUpdate>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    model::validate_id("id", &id)?;
    let output = body.output.unwrap_or_default();
    model::validate_output(&output)?;
    let w = s
        .cluster
        .write(Op::SetHealth {
            service,
            id,
            status: body.status.into(),
            output,
        })
        .await?;
    Ok(written(w))
}

async fn put_settings(
    State(s): State<AppState>,
    Path(service): Path<String>,
    Body(body): Body<ServiceSettingsBody>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    let settings = model::validate_settings(&body)?;
    let w = s
        .cluster
        .write(Op::SetSettings { service, settings })
        .await?;
    Ok(written(w))
}

async fn get_settings(
    State(s): State<AppState>,
    Path(service): Path<String>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    let stored = s.cluster.registry().settings(&service);
    let (spec, index) = stored
        .map(|st| (st.settings.clone(), st.modify_index))
        .unwrap_or_default();
    let body = ServiceSettingsView {
        fail_open: spec.fail_open,
        dns_ttl: spec.dns_ttl_s.map(|t| format!("{t}s")),
        index,
    };
    Ok(read_response(&s.cluster, index, body))
}

impl AppState {
    /// Looks something up in this replica; on a miss, waits until the replica has applied
    /// everything the leader had committed and looks again. A client that registered through
    /// this node (the write is acknowledged once the leader applied it, maybe before this
    /// follower did) can so heartbeat or deregister through it at once.
    pub(crate) async fn lookup_fresh<T>(
        &self,
        find: impl Fn() -> Option<T>,
    ) -> Result<Option<T>, Failure> {
        if let Some(found) = find() {
            return Ok(Some(found));
        }
        self.cluster.read_barrier().await?;
        Ok(find())
    }

    /// Applies `?consistent` and `?max_stale` before a read is served.
    async fn freshness(&self, opts: &ReadOptions) -> Result<(), Failure> {
        if opts.consistent {
            self.cluster.read_barrier().await?;
        }
        if let Some(max) = opts.max_stale {
            if self.cluster.leader() != Some(self.cluster.id()) {
                let contact = self.cluster.last_contact_ms();
                if contact.is_none_or(|ms| u128::from(ms) > max.as_millis()) {
                    return Err(Failure(ApiError::new(
                        ErrorCode::Unavailable,
                        match contact {
                            Some(ms) => format!(
                                "this node last heard from the leader {ms} ms ago, more than max_stale"
                            ),
                            None => "this node has not heard from a leader".into(),
                        },
                    )));
                }
            }
        }
        Ok(())
    }

    /// For `?index=`: waits (holding one of the client's waiting slots) until `rx` moves.
    async fn wait_for_change(
        &self,
        peer: SocketAddr,
        opts: &ReadOptions,
        rx: tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), Failure> {
        if let Some(index) = opts.index {
            let _slot = self.limiter.acquire(peer.ip())?;
            reads::block(rx, index, opts.wait, &self.shutdown).await;
        }
        Ok(())
    }
}

async fn list_services(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let opts = ReadOptions::parse(raw.as_deref(), &[])?;
    let registry = s.cluster.registry();
    s.wait_for_change(peer, &opts, registry.watches().subscribe_list())
        .await?;
    s.freshness(&opts).await?;
    let (index, services) = registry.services();
    let body = ServiceList {
        index: index.max(1),
        services: services.iter().map(|e| e.summary()).collect(),
    };
    Ok(read_response(&s.cluster, index, body))
}

async fn get_service(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let opts = ReadOptions::parse(raw.as_deref(), &["health", "tag"])?;
    let name = model::validate_service_name(&service)?;
    let passing_only = match opts.rest.get("health").map(String::as_str) {
        None | Some("any") => false,
        Some("passing") => true,
        Some(other) => {
            return Err(invalid(format!(
                "health: {other:?} is not \"passing\" or \"any\""
            )))
        }
    };
    let tag = opts.rest.get("tag").map(|t| t.to_ascii_lowercase());
    let registry = s.cluster.registry();
    let rx = registry
        .watches()
        .subscribe_service(&name, registry.service_index(&name));
    s.wait_for_change(peer, &opts, rx).await?;
    s.freshness(&opts).await?;
    let index = registry.service_index(&name);
    let Some(entry) = registry.service(&name) else {
        // Still carries the index, so a watcher can wait for the service to appear.
        let mut res = Failure(ApiError::new(
            ErrorCode::NotFound,
            format!("service {name:?} has no instances"),
        ))
        .into_response();
        set_header(res.headers_mut(), INDEX_HEADER, index.to_string());
        return Ok(res);
    };
    let body = ServiceInstances {
        name,
        index,
        instances: instance_infos(&entry, passing_only, tag.as_deref()),
    };
    Ok(read_response(&s.cluster, index, body))
}

fn instance_infos(
    entry: &cairn_registry::ServiceEntry,
    passing_only: bool,
    tag: Option<&str>,
) -> Vec<cairn_api::InstanceInfo> {
    entry
        .instances
        .values()
        .filter(|i| !passing_only || i.health() == HealthStatus::Passing)
        .filter(|i| tag.is_none_or(|t| i.spec.tags.contains(t)))
        .map(|i| i.to_info())
        .collect()
}

/// `GET /v1/services/{service}/watch`: the service as Server-Sent Events. The first event
/// (`state`) is the whole service; then each change is a `change` event whose id is its index.
/// A client reconnecting with `Last-Event-ID` (or `?index=`) is replayed every change after it,
/// or sent a `state` event when that index is too old to replay.
async fn watch_service(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let opts = ReadOptions::parse(raw.as_deref(), &[])?;
    let name = model::validate_service_name(&service)?;
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("Last-Event-ID: {v:?} is not an index")))?,
        ),
        None => opts.index,
    };
    let slot = s.limiter.acquire(peer.ip())?;
    let registry = s.cluster.registry().clone();
    let rx = registry
        .watches()
        .subscribe_service(&name, registry.service_index(&name));
    let stream = reads::service_events(registry, name, resume, rx, s.shutdown.clone(), slot);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn cluster_status(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let opts = ReadOptions::parse(raw.as_deref(), &[])?;
    s.wait_for_change(peer, &opts, s.cluster.registry().subscribe())
        .await?;
    s.freshness(&opts).await?;
    let status = cluster_status_body(s.cluster.status());
    let index = status.applied_index;
    Ok(read_response(&s.cluster, index, status))
}

/// The cluster's view of itself, in the API's shape.
pub(crate) fn cluster_status_body(st: cairn_raft::Status) -> cairn_api::ClusterStatus {
    cairn_api::ClusterStatus {
        cluster: st.cluster,
        node_id: st.node_id,
        role: st.role.to_owned(),
        leader: st.leader,
        term: st.term,
        last_log_index: st.last_log_index,
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        snapshot_index: st.snapshot_index,
        last_contact_ms: st.last_contact_ms,
        members: st
            .members
            .into_iter()
            .map(|m| cairn_api::MemberInfo {
                id: m.id,
                rpc_addr: m.rpc_addr,
                voter: m.voter,
            })
            .collect(),
    }
}

/// This replica's state digest at its applied index: replicas at the same index must agree.
async fn cluster_digest(State(s): State<AppState>) -> Result<Response, Failure> {
    let registry = s.cluster.registry().clone();
    let (index, digest) = tokio::task::spawn_blocking(move || registry.digest())
        .await
        .map_err(|e| Failure(ApiError::new(ErrorCode::Internal, e.to_string())))?;
    let body = serde_json::json!({
        "node_id": s.cluster.id(),
        "applied_index": index,
        "digest": format!("{digest:016x}"),
    });
    Ok(read_response(&s.cluster, index, body))
}

async fn join(
    State(s): State<AppState>,
    Body(body): Body<JoinRequest>,
) -> Result<Response, Failure> {
    if body.id == 0 {
        return Err(invalid("id: must be a positive integer"));
    }
    let addr_ok = body.rpc_addr.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && h.len() <= 255 && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !addr_ok {
        return Err(invalid(format!(
            "rpc_addr: {:?} is not HOST:PORT",
            body.rpc_addr.chars().take(80).collect::<String>()
        )));
    }
    let w = s.cluster.join(body.id, body.rpc_addr).await?;
    Ok(written(w))
}

async fn remove_member(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id: u64 = id
        .parse()
        .map_err(|_| invalid(format!("id: {id:?} is not a node id")))?;
    let w = s.cluster.remove(id).await?;
    Ok(written(w))
}

async fn live() -> Response {
    Json(serde_json::json!({"status": "live"})).into_response()
}

/// Ready when this node knows a leader: it can then serve reads and accept writes.
async fn ready(State(s): State<AppState>) -> Result<Response, Failure> {
    match s.cluster.leader() {
        Some(leader) => {
            Ok(Json(serde_json::json!({"status": "ready", "leader": leader})).into_response())
        }
        None => Err(Failure(ApiError::new(
            ErrorCode::NoLeader,
            "this node knows no leader yet",
        ))),
    }
}

async fn unknown_route() -> Failure {
    Failure(ApiError::new(ErrorCode::NotFound, "no such endpoint"))
}
