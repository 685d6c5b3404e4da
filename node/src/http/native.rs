//! Leaf: the native API under `/v1`: services and their instances (`/v1/services...`), the
//! cluster (`/v1/cluster...`), backup and restore (`/v1/snapshot`), liveness and readiness.
//!
//! Reads come from this node's registry view, through the core's read path (blocking,
//! consistency) and headers; writes go through [`Cluster::write`](cairn_raft::Cluster::write),
//! which forwards them to the leader. The native query dialect is strict: an unknown parameter
//! is a 400.

mod snapshot;
mod watch;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use cairn_api::{
    ClusterDigest, ClusterStatus, ErrorCode, HealthUpdate, HeartbeatResult, InstanceInfo,
    InstanceRegistration, JoinRequest, LiveStatus, MaintenanceUpdate, ReadyStatus,
    ServiceInstances, ServiceList, ServiceSettingsBody, ServiceSettingsView, WriteResult,
};
use cairn_raft::Written;
use cairn_registry::acl::Access;
use cairn_registry::model::{self, CheckKindSpec};
use cairn_registry::{HealthStatus, Op, ServiceEntry};

use super::acl::{Caller, FILTERED_HEADER};
use super::blocking::Waiting;
use super::body::Body;
use super::doc::{InstancePath, ReadParams, ServicePath};
use super::error::Failure;
use super::headers::{read_response, set_index};
use super::path::Path;
use super::query::{Dialect, ReadQuery};
use super::state::AppState;
use crate::checks::CheckKey;

/// How often an idle watch stream sends a comment, so proxies keep it open.
const WATCH_KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<AppState> {
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
            get(get_settings).put(put_settings).delete(delete_settings),
        )
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/digest", get(cluster_digest))
        .route("/v1/cluster/members", post(join))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/snapshot", get(snapshot::save).put(snapshot::restore))
        .route("/v1/live", get(live))
        .route("/v1/ready", get(ready))
}

/// The routes above, as the OpenAPI document describes them (composed in `http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_services,
    get_service,
    watch_service,
    register,
    deregister,
    set_health,
    heartbeat,
    maintenance,
    get_settings,
    put_settings,
    delete_settings,
    cluster_status,
    cluster_digest,
    join,
    remove_member,
    snapshot::save,
    snapshot::restore,
    live,
    ready
))]
pub(super) struct Doc;

/// A write's response: its index, in the body and in `X-Cairn-Index`.
fn written(w: Written) -> Response {
    let mut res = Json(WriteResult { index: w.index }).into_response();
    set_index(res.headers_mut(), w.index);
    res
}

fn respond<T: serde::Serialize>(s: &AppState, index: u64, body: T) -> Response {
    read_response(&s.cluster, Dialect::Native, index, body)
}

#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "services",
    summary = "Register or replace an instance",
    params(InstancePath), request_body = InstanceRegistration, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 413), (status = 503), (status = 507)))]
async fn register(
    State(s): State<AppState>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<InstanceRegistration>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    let instance = model::validate_registration(&id, &body)?;
    s.check_targets(&instance).await?;
    let w = s
        .cluster
        .write_as(
            Op::Register {
                service,
                instance,
                health: None,
            },
            caller.accessor(),
        )
        .await?;
    Ok(written(w))
}

#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "services",
    summary = "Deregister an instance",
    params(InstancePath), security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 503)))]
async fn deregister(
    State(s): State<AppState>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    model::validate_id("id", &id)?;
    let w = s
        .cluster
        .write_as(Op::Deregister { service, id }, caller.accessor())
        .await?;
    Ok(written(w))
}

#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/health", tag = "services",
    summary = "Set an instance's custom health",
    params(InstancePath), request_body = HealthUpdate, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 413), (status = 503), (status = 507)))]
async fn set_health(
    State(s): State<AppState>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<HealthUpdate>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    model::validate_id("id", &id)?;
    let output = body.output.unwrap_or_default();
    model::validate_output(&output)?;
    let w = s
        .cluster
        .write_as(
            Op::SetHealth {
                service,
                id,
                status: body.status.into(),
                output,
            },
            caller.accessor(),
        )
        .await?;
    Ok(written(w))
}

/// `?check=<id>` picks one TTL check; without it, every TTL check of the instance.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/heartbeat", tag = "services",
    summary = "Pass an instance's TTL checks",
    params(InstancePath, ("check" = Option<String>, Query, pattern = "^[A-Za-z0-9_.:-]{1,128}$",
        description = "Only this TTL check (by id); without it, every TTL check of the instance.")),
    security(("token" = [])),
    responses((status = 200, description = "The TTL checks passed.", body = HeartbeatResult),
        (status = 400), (status = 403), (status = 404), (status = 503)))]
async fn heartbeat(
    State(s): State<AppState>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::native(raw.as_deref(), &["check"])?;
    let want = q.param("check");
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    model::validate_id("id", &id)?;
    let registry = s.cluster.registry();
    let inst = s
        .lookup_fresh(|| registry.service(&service)?.instances.get(&id).cloned())
        .await?
        .ok_or_else(|| Failure::not_found(format!("service {service:?} has no instance {id:?}")))?;
    let ttl_checks: Vec<String> = inst
        .spec
        .checks
        .iter()
        .filter(|c| matches!(c.kind, CheckKindSpec::Ttl { .. }))
        .filter(|c| want.is_none_or(|want| want == c.id))
        .map(|c| c.id.clone())
        .collect();
    if ttl_checks.is_empty() {
        return Err(Failure::not_found(match want {
            Some(c) => format!("instance {id:?} has no TTL check {c:?}"),
            None => format!("instance {id:?} has no TTL check"),
        }));
    }
    for check in &ttl_checks {
        let key = CheckKey {
            service: service.clone(),
            instance: id.clone(),
            check: check.clone(),
        };
        s.relay_heartbeat(key, &caller).await?;
    }
    Ok(Json(HeartbeatResult { checks: ttl_checks }).into_response())
}

#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/maintenance", tag = "services",
    summary = "Put an instance in or out of maintenance",
    params(InstancePath), request_body = MaintenanceUpdate, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 413), (status = 503), (status = 507)))]
async fn maintenance(
    State(s): State<AppState>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
    Body(body): Body<MaintenanceUpdate>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    model::validate_id("id", &id)?;
    // Checked even when it is not used (`enable: false`): bad input is refused, not ignored.
    if let Some(r) = &body.reason {
        model::validate_output(r)?;
    }
    let reason = body
        .enable
        .then(|| body.reason.unwrap_or_else(|| "maintenance".into()));
    let w = s
        .cluster
        .write_as(
            Op::SetMaintenance {
                service,
                id,
                reason,
            },
            caller.accessor(),
        )
        .await?;
    Ok(written(w))
}

#[utoipa::path(put, path = "/v1/services/{service}/settings", tag = "services",
    summary = "Set a service's settings",
    params(ServicePath), request_body = ServiceSettingsBody, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 413), (status = 503), (status = 507)))]
async fn put_settings(
    State(s): State<AppState>,
    caller: Caller,
    Path(service): Path<String>,
    Body(body): Body<ServiceSettingsBody>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    let mut settings = model::validate_settings(&body)?;
    // The Cloud Map API's record of the service is not a setting of this body: it stays.
    settings.cloudmap = s
        .cluster
        .registry()
        .settings(&service)
        .and_then(|old| old.settings.cloudmap.clone());
    let w = s
        .cluster
        .write_as(Op::SetSettings { service, settings }, caller.accessor())
        .await?;
    Ok(written(w))
}

/// Removes a service's settings, so settings left by services long gone do not pile up: 404
/// when it has none.
#[utoipa::path(delete, path = "/v1/services/{service}/settings", tag = "services",
    summary = "Remove a service's settings (back to the defaults)",
    params(ServicePath), security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 503)))]
async fn delete_settings(
    State(s): State<AppState>,
    caller: Caller,
    Path(service): Path<String>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Write)?;
    let w = s
        .cluster
        .write_as(Op::DeleteSettings { service }, caller.accessor())
        .await?;
    Ok(written(w))
}

#[utoipa::path(get, path = "/v1/services/{service}/settings", tag = "services",
    summary = "A service's settings (defaults when never set)",
    params(ServicePath), security(("token" = [])),
    responses((status = 200, description = "The settings.", body = ServiceSettingsView),
        (status = 400), (status = 403)))]
async fn get_settings(
    State(s): State<AppState>,
    caller: Caller,
    Path(service): Path<String>,
) -> Result<Response, Failure> {
    let service = model::validate_service_name(&service)?;
    caller.service(&service, Access::Read)?;
    let stored = s.cluster.registry().settings(&service);
    let (spec, index) = stored
        .map(|st| (st.settings.clone(), st.modify_index))
        .unwrap_or_default();
    let body = ServiceSettingsView {
        fail_open: spec.fail_open,
        dns_ttl: spec.dns_ttl_s.map(|t| format!("{t}s")),
        index,
    };
    Ok(respond(&s, index, body))
}

#[utoipa::path(get, path = "/v1/services", tag = "services",
    summary = "Every service, with its tags and instance counts by health",
    description = "With ACLs, only the services the token may read (`X-Cairn-Filtered: true` when some were left out).",
    params(ReadParams), security((), ("token" = [])),
    responses((status = 200, description = "The services.", body = ServiceList),
        (status = 400), (status = 403), (status = 429), (status = 503)))]
async fn list_services(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::native(raw.as_deref(), &[])?;
    let registry = s.cluster.registry();
    s.prepare_read(peer, &q, registry.watches().subscribe_list())
        .await?;
    let (index, services) = registry.services();
    let total = services.len();
    let services: Vec<_> = services
        .iter()
        .filter(|e| caller.may_read(&e.name))
        .map(|e| e.summary())
        .collect();
    let filtered = services.len() < total;
    let body = ServiceList {
        index: index.max(1),
        services,
    };
    let mut res = respond(&s, index, body);
    if filtered {
        res.headers_mut().insert(
            FILTERED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(res)
}

#[utoipa::path(get, path = "/v1/services/{service}", tag = "services",
    summary = "A service's instances, with their health",
    params(ServicePath,
        ("health" = Option<String>, Query, pattern = "^(passing|any)$",
            description = "`passing`: only passing instances; `any` (the default): all."),
        ("tag" = Option<String>, Query, description = "Only instances with this tag (any case)."),
        ReadParams),
    security(("token" = [])),
    responses((status = 200, description = "The service.", body = ServiceInstances),
        (status = 400), (status = 403),
        (status = 404, description = "`not_found`: the service has no instances (`X-Cairn-Index` is still set, to block on)."),
        (status = 429), (status = 503)))]
async fn get_service(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::native(raw.as_deref(), &["health", "tag"])?;
    let name = model::validate_service_name(&service)?;
    caller.service(&name, Access::Read)?;
    let passing_only = match q.param("health") {
        None | Some("any") => false,
        Some("passing") => true,
        Some(other) => {
            return Err(Failure::invalid(format!(
                "health: {other:?} is not \"passing\" or \"any\""
            )))
        }
    };
    let tag = q.param("tag").map(str::to_ascii_lowercase);
    let registry = s.cluster.registry();
    let rx = registry
        .watches()
        .subscribe_service(&name, registry.service_index(&name));
    s.prepare_read(peer, &q, rx).await?;
    let index = registry.service_index(&name);
    let Some(entry) = registry.service(&name) else {
        // Still carries the index, so a watcher can wait for the service to appear.
        let mut res =
            Failure::not_found(format!("service {name:?} has no instances")).into_response();
        set_index(res.headers_mut(), index);
        return Ok(res);
    };
    let body = ServiceInstances {
        name,
        index,
        instances: instance_infos(&entry, passing_only, tag.as_deref()),
    };
    Ok(respond(&s, index, body))
}

fn instance_infos(
    entry: &ServiceEntry,
    passing_only: bool,
    tag: Option<&str>,
) -> Vec<InstanceInfo> {
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
#[utoipa::path(get, path = "/v1/services/{service}/watch", tag = "services",
    summary = "Server-Sent Events of a service's changes",
    description = "A `state` event with the whole service (a `ServiceInstances`), then a `change` event per change, its id the change's index. Reconnecting with `Last-Event-ID` (or `?index=`) replays what followed; a revoked token ends the stream with an `error` event (an `ApiError`). The stream lasts until the client or the node ends it.",
    params(ServicePath,
        ("index" = Option<u64>, Query, description = "Resume after this index (as `Last-Event-ID`)."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this index.")),
    security(("token" = [])),
    responses((status = 200, description = "The event stream.", content_type = "text/event-stream", body = String),
        (status = 400), (status = 403), (status = 429)))]
async fn watch_service(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::native(raw.as_deref(), &[])?;
    let name = model::validate_service_name(&service)?;
    caller.service(&name, Access::Read)?;
    let secret = super::acl::secret_of(&headers, raw.as_deref())?;
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| Failure::invalid(format!("Last-Event-ID: {v:?} is not an index")))?,
        ),
        None => q.index,
    };
    let slot = s.limiter.acquire(peer.ip(), Waiting::Watch)?;
    let registry = s.cluster.registry().clone();
    let rx = registry
        .watches()
        .subscribe_service(&name, registry.service_index(&name));
    let stream = watch::service_events(s.clone(), registry, name, resume, rx, secret, slot);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(WATCH_KEEP_ALIVE))
        .into_response())
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    summary = "This node's view of the cluster",
    params(ReadParams), security(("token" = [])),
    responses((status = 200, description = "Members, role, leader, term and indexes.", body = ClusterStatus),
        (status = 400), (status = 403), (status = 429), (status = 503)))]
async fn cluster_status(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let q = ReadQuery::native(raw.as_deref(), &[])?;
    s.prepare_read(peer, &q, s.cluster.registry().subscribe())
        .await?;
    let mut status = cluster_status_body(s.cluster.status());
    status.replication = s
        .cluster
        .matched()
        .into_iter()
        .map(|(id, matched_index)| cairn_api::MemberProgress { id, matched_index })
        .collect();
    let index = status.applied_index;
    Ok(respond(&s, index, status))
}

/// The cluster's view of itself, in the API's shape.
fn cluster_status_body(st: cairn_raft::Status) -> ClusterStatus {
    ClusterStatus {
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
        replication: Vec::new(),
    }
}

/// This replica's state digest at its applied index: replicas at the same index must agree.
#[utoipa::path(get, path = "/v1/cluster/digest", tag = "cluster",
    summary = "A hash of this replica's registry at its applied index",
    security(("token" = [])),
    responses((status = 200, description = "Replicas at the same applied index report the same digest.", body = ClusterDigest),
        (status = 403), (status = 500)))]
async fn cluster_digest(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let registry = s.cluster.registry().clone();
    let (index, digest) = tokio::task::spawn_blocking(move || registry.digest())
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
    let body = ClusterDigest {
        node_id: s.cluster.id(),
        applied_index: index,
        digest: format!("{digest:016x}"),
    };
    Ok(respond(&s, index, body))
}

#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster",
    summary = "Add a node: a learner until it caught up, then a voter",
    request_body = JoinRequest, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 409), (status = 413), (status = 503)))]
async fn join(
    State(s): State<AppState>,
    caller: Caller,
    Body(body): Body<JoinRequest>,
) -> Result<Response, Failure> {
    caller.operator(Access::Write)?;
    if body.id == 0 {
        return Err(Failure::invalid("id: must be a positive integer"));
    }
    let addr_ok = body.rpc_addr.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && h.len() <= 255 && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !addr_ok {
        return Err(Failure::invalid(format!(
            "rpc_addr: {:?} is not HOST:PORT",
            body.rpc_addr.chars().take(80).collect::<String>()
        )));
    }
    let w = s.cluster.join(body.id, body.rpc_addr).await?;
    Ok(written(w))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    summary = "Remove a node (the last voter cannot be removed)",
    params(("id" = u64, Path, description = "The node's id.")), security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 409), (status = 503)))]
async fn remove_member(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    caller.operator(Access::Write)?;
    let id: u64 = id
        .parse()
        .map_err(|_| Failure::invalid(format!("id: {id:?} is not a node id")))?;
    let w = s.cluster.remove(id).await?;
    Ok(written(w))
}

#[utoipa::path(get, path = "/v1/live", tag = "health",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Live.", body = LiveStatus)))]
async fn live() -> Response {
    Json(LiveStatus {
        status: "live".into(),
    })
    .into_response()
}

/// Ready when this node knows a leader: it can then serve reads and accept writes.
#[utoipa::path(get, path = "/v1/ready", tag = "health",
    summary = "Readiness: this node knows a leader",
    responses((status = 200, description = "Ready.", body = ReadyStatus), (status = 503)))]
async fn ready(State(s): State<AppState>) -> Result<Response, Failure> {
    match s.cluster.leader() {
        Some(leader) => Ok(Json(ReadyStatus {
            status: "ready".into(),
            leader,
        })
        .into_response()),
        None => Err(Failure::new(
            ErrorCode::NoLeader,
            "this node knows no leader yet",
        )),
    }
}
