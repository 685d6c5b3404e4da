//! Leaf: the part of Consul's HTTP API that service discovery uses, mapped onto the native
//! registry: no second copy of the data, nothing the native API cannot do. Reads take the core's
//! read path and headers in Consul's dialect (lenient query strings, `X-Consul-*` headers).
//!
//! Cairn has no per-machine agents: `/v1/agent/*` acts on the cluster's catalog, a Consul
//! "node" is the registering instance's address, a service ID is the instance id, and a check
//! registered without a `CheckID` is named `service:<id>` (`service:<id>:<n>` when there are
//! several), as Consul names them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use cairn_registry::acl::Access;
use cairn_registry::model::{self, CheckKindSpec, Instance, MAX_OUTPUT_LEN};
use cairn_registry::HealthStatus;
use cairn_registry::{Op, ServiceEntry, StatedHealth};
use serde_json::{json, Map, Value};

mod fields;
mod filter;

use self::filter::{Field, Filter};
use super::acl::{Caller, CONSUL_FILTERED_HEADER};
use super::body::Body;
use super::error::{DeniedMessage, Failure};
use super::headers::read_response;
use super::query::{Dialect, ReadQuery};
use super::state::AppState;
use crate::checks::CheckKey;

/// The datacenter Cairn reports: one cluster is one datacenter.
const DATACENTER: &str = "dc1";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/catalog/datacenters", get(datacenters))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{service}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/health/service/{service}", get(health_service))
        .route("/v1/health/checks/{service}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/check/{action}/{check}", put(check_update))
        .route("/v1/agent/check/update/{check}", put(check_update_body))
        .route("/v1/agent/check/register", put(check_register))
        .route("/v1/agent/check/deregister/{check}", put(check_deregister))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog_node_services),
        )
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/connect/{service}", get(connect))
        .route("/v1/catalog/connect/{service}", get(connect))
        .route("/v1/catalog/register", put(catalog_register))
        .route("/v1/catalog/deregister", put(catalog_deregister))
        .route("/v1/agent/service/maintenance/{id}", put(maintenance))
        .layer(axum::middleware::map_response(permission_denied_as_consul))
}

/// Consul answers a missing right or an unusable token with 403 and the error's text as the
/// whole body (`Permission denied: token with AccessorID '…' lacks permission 'service:write' on
/// "db"`, `ACL not found`), which Consul clients report as they get it: so do these routes.
async fn permission_denied_as_consul(mut res: Response) -> Response {
    match res.extensions_mut().remove::<DeniedMessage>() {
        Some(DeniedMessage(message)) => (StatusCode::FORBIDDEN, message).into_response(),
        None => res,
    }
}

fn respond<T: serde::Serialize>(s: &AppState, index: u64, body: T) -> Response {
    read_response(&s.cluster, Dialect::Consul, index, body)
}

/// A list's response, saying so when ACLs hid part of it, as Consul does.
fn respond_filtered<T: serde::Serialize>(
    s: &AppState,
    index: u64,
    body: T,
    filtered: bool,
) -> Response {
    let mut res = respond(s, index, body);
    if filtered {
        res.headers_mut().insert(
            CONSUL_FILTERED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    res
}

/// The services `caller` may read, and whether any was left out.
fn readable(caller: &Caller, services: Vec<Arc<ServiceEntry>>) -> (Vec<Arc<ServiceEntry>>, bool) {
    let total = services.len();
    let kept: Vec<_> = services
        .into_iter()
        .filter(|svc| caller.may_read(&svc.name))
        .collect();
    let filtered = kept.len() < total;
    (kept, filtered)
}

fn tags(inst: &Instance) -> Vec<String> {
    inst.spec.tags.iter().map(str::to_owned).collect()
}

fn service_obj(svc: &ServiceEntry, inst: &Instance) -> Value {
    json!({
        "ID": inst.spec.id,
        "Service": svc.name,
        "Tags": tags(inst),
        "Meta": inst.spec.meta,
        "Port": inst.spec.port,
        "Address": inst.spec.address,
        "Weights": {"Passing": inst.spec.weight, "Warning": 1},
        "EnableTagOverride": false,
        "Datacenter": DATACENTER,
        "CreateIndex": inst.create_index,
        "ModifyIndex": inst.modify_index,
    })
}

/// A Consul node: an instance's address, with the instance's meta as the node's (Cairn keeps no
/// meta of its own for an address).
fn node_obj(address: &str, meta: &impl serde::Serialize) -> Value {
    json!({
        "ID": "",
        "Node": address,
        "Address": address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": address, "wan": address},
        "Meta": meta,
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

fn catalog_entry(svc: &ServiceEntry, inst: &Instance) -> Value {
    json!({
        "ID": "",
        "Node": inst.spec.address,
        "Address": inst.spec.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": inst.spec.address, "wan": inst.spec.address},
        "NodeMeta": inst.spec.meta,
        "ServiceKind": "",
        "ServiceID": inst.spec.id,
        "ServiceName": svc.name,
        "ServiceTags": tags(inst),
        "ServiceAddress": inst.spec.address,
        "ServiceTaggedAddresses": {},
        "ServiceWeights": {"Passing": inst.spec.weight, "Warning": 1},
        "ServiceMeta": inst.spec.meta,
        "ServicePort": inst.spec.port,
        "ServiceEnableTagOverride": false,
        "ServiceProxy": {},
        "ServiceConnect": {},
        "CreateIndex": inst.create_index,
        "ModifyIndex": inst.modify_index,
    })
}

/// The instance's checks in Consul's form, maintenance and custom health included.
fn check_objs(svc: &ServiceEntry, inst: &Instance) -> Vec<Value> {
    let one =
        |id: &str, name: &str, kind: &str, status: HealthStatus, output: &str, notes: &str| {
            json!({
                "Node": inst.spec.address,
                "CheckID": id,
                "Name": name,
                "Status": status.as_str(),
                "Notes": notes,
                "Output": output,
                "ServiceID": inst.spec.id,
                "ServiceName": svc.name,
                "ServiceTags": tags(inst),
                "Type": kind,
                "Definition": {},
                "CreateIndex": inst.create_index,
                "ModifyIndex": inst.modify_index,
            })
        };
    let mut out: Vec<Value> = inst
        .spec
        .checks
        .iter()
        .zip(&inst.checks)
        .map(|(spec, st)| {
            let kind = match spec.kind {
                CheckKindSpec::Http { .. } => "http",
                CheckKindSpec::Tcp { .. } => "tcp",
                CheckKindSpec::Ttl { .. } => "ttl",
            };
            let name = format!("Service '{}' check", svc.name);
            one(&spec.id, &name, kind, st.status, &st.output, "")
        })
        .collect();
    if let Some(c) = &inst.custom_health {
        let id = format!("service:{}:health", inst.spec.id);
        out.push(one(&id, "Custom health", "", c.status, &c.output, ""));
    }
    if let Some(m) = &inst.maintenance {
        let id = format!("_service_maintenance:{}", inst.spec.id);
        out.push(one(
            &id,
            "Service Maintenance Mode",
            "maintenance",
            m.status,
            "",
            &m.output,
        ));
    }
    out
}

/// Whether the instance's meta (its node's, for Consul) has every `?node-meta` pair.
fn node_meta_ok(inst: &Instance, q: &ReadQuery) -> bool {
    q.node_meta
        .iter()
        .all(|(k, v)| inst.spec.meta.get(k) == Some(v.as_str()))
}

/// The service's instances that carry every `?tag`, pass `?node-meta`, and are passing when
/// `passing` says so.
fn filtered<'a>(
    svc: &'a ServiceEntry,
    q: &'a ReadQuery,
    passing: bool,
) -> impl Iterator<Item = &'a Arc<Instance>> + 'a {
    svc.instances.values().filter(move |i| {
        q.tags.iter().all(|t| i.spec.tags.contains(t))
            && (!passing || i.health() == HealthStatus::Passing)
            && node_meta_ok(i, q)
    })
}

/// The request's `?filter`, parsed (400 naming the position when malformed); `None` when absent
/// or empty.
/// A selector naming no field of the endpoint's items (`fields`) is a 400 too, as in Consul.
fn filter_of(q: &ReadQuery, fields: &Field) -> Result<Option<Filter>, Failure> {
    let text = match q.param("filter") {
        None | Some("") => return Ok(None),
        Some(text) => text,
    };
    Filter::parse(text)
        .and_then(|f| f.check_selectors(fields).map(|()| f))
        .map(Some)
        .map_err(|e| {
            Failure::invalid(format!(
                "Failed to create boolean expression evaluator: {e}"
            ))
        })
}

/// Whether a response item passes the request's filter.
fn keep(filter: &Option<Filter>, item: &Value) -> bool {
    filter.as_ref().is_none_or(|f| f.matches(item))
}

async fn agent_self(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let status = s.cluster.status();
    let name = format!("cairn-{}", status.node_id);
    let body = json!({
        "Config": {
            "Datacenter": DATACENTER,
            "NodeName": name,
            "NodeID": format!("{:08x}-0000-0000-0000-000000000000", status.node_id),
            "Server": true,
            "Revision": "cairn",
            "Version": "1.16.0",
        },
        "DebugConfig": {},
        "Coord": {},
        "Member": {"Name": name, "Addr": "", "Port": 0, "Tags": {}, "Status": 1},
        "Stats": {},
        "Meta": {},
        "xDS": {},
    });
    Ok(respond(&s, status.applied_index, body))
}

async fn status_leader(State(s): State<AppState>) -> Response {
    let status = s.cluster.status();
    let leader = status
        .leader
        .and_then(|l| status.members.iter().find(|m| m.id == l))
        .map_or(String::new(), |m| m.rpc_addr.clone());
    Json(Value::String(leader)).into_response()
}

async fn status_peers(State(s): State<AppState>) -> Response {
    let peers: Vec<String> = s
        .cluster
        .status()
        .members
        .into_iter()
        .filter(|m| m.voter)
        .map(|m| m.rpc_addr)
        .collect();
    Json(peers).into_response()
}

async fn datacenters(State(s): State<AppState>) -> Response {
    respond(
        &s,
        s.cluster.registry().applied_index(),
        json!([DATACENTER]),
    )
}

async fn catalog_services(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::consul(raw.as_deref())?;
    let filter = filter_of(&q, &fields::CATALOG_ENTRY)?;
    let registry = s.cluster.registry();
    s.prepare_read(peer, &q, registry.watches().subscribe_list())
        .await?;
    let (index, services) = registry.services();
    let (services, hidden) = readable(&caller, services);
    // A service is listed with the tags of its instances that pass `node-meta` and the filter
    // (whose selectors are those of `/v1/catalog/service`'s entries); with neither, every
    // instance passes and the tags are the service's.
    let body: Map<String, Value> = services
        .iter()
        .filter_map(|svc| {
            let mut any = false;
            let mut tags = BTreeSet::new();
            for i in svc.instances.values() {
                if node_meta_ok(i, &q) && keep(&filter, &catalog_entry(svc, i)) {
                    any = true;
                    tags.extend(i.spec.tags.iter().map(str::to_owned));
                }
            }
            any.then(|| (svc.name.clone(), json!(tags)))
        })
        .collect();
    Ok(respond_filtered(&s, index, Value::Object(body), hidden))
}

/// The service named in a path, lower-cased; an invalid name is simply an empty service.
async fn service_read(
    s: &AppState,
    peer: SocketAddr,
    service: &str,
    q: &ReadQuery,
) -> Result<(u64, Option<Arc<ServiceEntry>>), Failure> {
    let name = service.to_ascii_lowercase();
    let registry = s.cluster.registry();
    let rx = registry
        .watches()
        .subscribe_service(&name, registry.service_index(&name));
    s.prepare_read(peer, q, rx).await?;
    Ok((registry.service_index(&name), registry.service(&name)))
}

/// A read of one service's rows: blocking on the service, then `rows` over its entry, those that
/// pass `?filter` kept.
/// A service the token may not read answers as Consul answers it: an empty list, marked as
/// filtered.
async fn per_service(
    s: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    service: &str,
    raw: Option<String>,
    fields: &Field,
    rows: impl Fn(&ServiceEntry, &ReadQuery) -> Vec<Value>,
) -> Result<Response, Failure> {
    let q = ReadQuery::consul(raw.as_deref())?;
    let filter = filter_of(&q, fields)?;
    let (index, svc) = service_read(s, peer, service, &q).await?;
    let hidden = !caller.may_read(&service.to_ascii_lowercase());
    let mut body = svc
        .as_deref()
        .filter(|_| !hidden)
        .map(|svc| rows(svc, &q))
        .unwrap_or_default();
    body.retain(|row| keep(&filter, row));
    Ok(respond_filtered(s, index, Value::Array(body), hidden))
}

async fn catalog_service(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    per_service(
        &s,
        &caller,
        peer,
        &service,
        raw,
        &fields::CATALOG_ENTRY,
        |svc, q| {
            // The catalog lists every instance; `passing` only filters health endpoints.
            filtered(svc, q, false)
                .map(|i| catalog_entry(svc, i))
                .collect()
        },
    )
    .await
}

async fn health_service(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    per_service(
        &s,
        &caller,
        peer,
        &service,
        raw,
        &fields::HEALTH_ENTRY,
        |svc, q| {
            filtered(svc, q, q.passing)
                .map(|i| {
                    json!({
                        "Node": node_obj(&i.spec.address, &i.spec.meta),
                        "Service": service_obj(svc, i),
                        "Checks": check_objs(svc, i),
                    })
                })
                .collect()
        },
    )
    .await
}

async fn health_checks(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    per_service(
        &s,
        &caller,
        peer,
        &service,
        raw,
        &fields::CHECK,
        |svc, _| {
            svc.instances
                .values()
                .flat_map(|i| check_objs(svc, i))
                .collect()
        },
    )
    .await
}

/// A read over the whole catalog: blocks on any applied change, then `body` over every service
/// with the request's query and `?filter` (which `body` applies to its items).
async fn whole_catalog(
    s: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    raw: Option<String>,
    fields: &Field,
    body: impl FnOnce(&[Arc<ServiceEntry>], &ReadQuery, &Option<Filter>) -> Value,
) -> Result<Response, Failure> {
    let q = ReadQuery::consul(raw.as_deref())?;
    let filter = filter_of(&q, fields)?;
    s.prepare_read(peer, &q, s.cluster.registry().subscribe())
        .await?;
    let index = s.cluster.registry().applied_index();
    let (_, services) = s.cluster.registry().services();
    let (services, hidden) = readable(caller, services);
    Ok(respond_filtered(
        s,
        index,
        body(&services, &q, &filter),
        hidden,
    ))
}

/// Every instance of every service, with its service.
fn instances(
    services: &[Arc<ServiceEntry>],
) -> impl Iterator<Item = (&ServiceEntry, &Arc<Instance>)> {
    services
        .iter()
        .flat_map(|svc| svc.instances.values().map(move |i| (&**svc, i)))
}

async fn health_state(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let want = match state.as_str() {
        "any" => None,
        "passing" | "warning" | "critical" => Some(state.clone()),
        other => return Err(Failure::invalid(format!("unknown health state {other:?}"))),
    };
    whole_catalog(&s, &caller, peer, raw, &fields::CHECK, |services, _, f| {
        instances(services)
            .flat_map(|(svc, i)| check_objs(svc, i))
            .filter(|c| want.as_deref().is_none_or(|w| c["Status"] == w) && keep(f, c))
            .collect()
    })
    .await
}

async fn catalog_nodes(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(&s, &caller, peer, raw, &fields::NODE, |services, q, f| {
        let mut nodes: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for (_, i) in instances(services).filter(|(_, i)| node_meta_ok(i, q)) {
            let meta = nodes.entry(i.spec.address.as_str()).or_default();
            meta.extend(
                i.spec
                    .meta
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
        }
        nodes
            .iter()
            .map(|(addr, meta)| node_obj(addr, meta))
            .filter(|n| keep(f, n))
            .collect()
    })
    .await
}

async fn agent_services(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(
        &s,
        &caller,
        peer,
        raw,
        &fields::SERVICE,
        |services, _, f| {
            instances(services)
                .map(|(svc, i)| (i.spec.id.clone(), service_obj(svc, i)))
                .filter(|(_, v)| keep(f, v))
                .collect::<Map<String, Value>>()
                .into()
        },
    )
    .await
}

async fn agent_checks(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(&s, &caller, peer, raw, &fields::CHECK, |services, _, f| {
        instances(services)
            .flat_map(|(svc, i)| check_objs(svc, i))
            .filter(|c| keep(f, c))
            .map(|c| (c["CheckID"].as_str().unwrap_or_default().to_owned(), c))
            .collect::<Map<String, Value>>()
            .into()
    })
    .await
}

/// The instance with Consul service ID `id`, wherever it is registered.
/// The instance with Consul service id `id` (the registry's id index: no scan).
fn find_instance(s: &AppState, id: &str) -> Option<(Arc<ServiceEntry>, Arc<Instance>)> {
    s.cluster.registry().find_instance(id)
}

fn unknown_service(id: &str) -> Failure {
    Failure::not_found(format!("Unknown service ID {id:?}"))
}

async fn agent_service(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let (svc, inst) = s
        .lookup_fresh(|| find_instance(&s, &id))
        .await?
        .ok_or_else(|| unknown_service(&id))?;
    caller.service(&svc.name, Access::Read)?;
    Ok(respond(&s, inst.modify_index, service_obj(&svc, &inst)))
}

/// Consul accepts `CamelCase`, `lowercase` and `snake_case` keys: compare them folded.
fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| fold(k) == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn field_str(obj: &Map<String, Value>, name: &str) -> Option<String> {
    field(obj, name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

/// Consul durations are strings like `10s`; some clients send nanoseconds as numbers.
fn field_duration(obj: &Map<String, Value>, name: &str) -> Option<String> {
    match field(obj, name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|ns| format!("{}ms", ns / 1_000_000)),
        _ => None,
    }
}

/// A Consul check definition as a native one.
fn check_from_consul(c: &Map<String, Value>, default_id: String) -> Result<Value, Failure> {
    let id = field_str(c, "checkid")
        .or_else(|| field_str(c, "id"))
        .unwrap_or(default_id);
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    if let Some(url) = field_str(c, "http") {
        o.insert("kind".into(), json!("http"));
        o.insert("url".into(), json!(url));
        if let Some(m) = field_str(c, "method") {
            o.insert("method".into(), json!(m));
        }
        if let Some(Value::Object(h)) = field(c, "header") {
            let headers: Map<String, Value> = h
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            o.insert("headers".into(), Value::Object(headers));
        }
        if field(c, "tlsskipverify").and_then(Value::as_bool) == Some(true) {
            o.insert("tls_skip_verify".into(), json!(true));
        }
    } else if let Some(target) = field_str(c, "tcp") {
        o.insert("kind".into(), json!("tcp"));
        o.insert("target".into(), json!(target));
    } else if let Some(ttl) = field_duration(c, "ttl") {
        o.insert("kind".into(), json!("ttl"));
        o.insert("ttl".into(), json!(ttl));
    } else {
        return Err(Failure::invalid(
            "unsupported check: Cairn runs HTTP, TCP and TTL checks (no Args, GRPC, Docker, alias, H2PING or UDP checks)",
        ));
    }
    let active = o.get("kind") != Some(&json!("ttl"));
    if active {
        if let Some(i) = field_duration(c, "interval") {
            o.insert("interval".into(), json!(i));
        }
        if let Some(t) = field_duration(c, "timeout") {
            o.insert("timeout".into(), json!(t));
        }
    }
    if let Some(d) = field_duration(c, "deregistercriticalserviceafter") {
        o.insert("deregister_after".into(), json!(d));
    }
    if let Some(n) = field(c, "successbeforepassing").and_then(Value::as_u64) {
        o.insert("rise".into(), json!(n.max(1)));
    }
    if let Some(n) = field(c, "failuresbeforecritical").and_then(Value::as_u64) {
        o.insert("fall".into(), json!(n.max(1)));
    }
    if let Some(st) = field_str(c, "status") {
        o.insert("initial_status".into(), json!(st));
    }
    Ok(Value::Object(o))
}

/// A Consul service registration body read as the native one: what `PUT
/// /v1/agent/service/register` proposes, before the service name and the body are validated.
#[derive(Debug)]
pub struct ConsulRegistration {
    /// The service's name as sent (`Name`).
    pub name: String,
    /// The instance id: `ID`, or the name when there is none.
    pub id: String,
    pub body: cairn_api::InstanceRegistration,
}

/// Reads a Consul service registration body (`Name`, `ID`, `Address`, `Port`, `Tags`, `Meta`,
/// `Weights`, `Check`, `Checks`, keys in any of Consul's spellings). No I/O: the fuzz target
/// `consul_registration` runs exactly what the route runs.
pub fn registration_from_consul(v: &Value) -> Result<ConsulRegistration, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::invalid("the body must be a JSON object"))?;
    let name = field_str(obj, "name").ok_or_else(|| Failure::invalid("Name: required"))?;
    let id = field_str(obj, "id").unwrap_or_else(|| name.clone());
    let address = field_str(obj, "address").ok_or_else(|| {
        Failure::invalid("Address: required (Cairn has no per-machine agent to take it from)")
    })?;
    let port = field(obj, "port").and_then(Value::as_u64).unwrap_or(0);
    let tags = field(obj, "tags").cloned().unwrap_or(json!([]));
    let meta = field(obj, "meta").cloned().unwrap_or(json!({}));
    let weight = field(obj, "weights")
        .and_then(Value::as_object)
        .and_then(|w| field(w, "passing"))
        .and_then(Value::as_u64);
    let mut defs: Vec<&Map<String, Value>> = Vec::new();
    if let Some(Value::Object(c)) = field(obj, "check") {
        defs.push(c);
    }
    if let Some(Value::Array(cs)) = field(obj, "checks") {
        defs.extend(cs.iter().filter_map(Value::as_object));
    }
    let many = defs.len() > 1;
    let checks = defs
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let default = if many {
                format!("service:{id}:{}", n + 1)
            } else {
                format!("service:{id}")
            };
            check_from_consul(c, default)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut native =
        json!({"address": address, "port": port, "tags": tags, "meta": meta, "checks": checks});
    if let Some(w) = weight {
        native["weight"] = json!(w);
    }
    let body = serde_json::from_value(native)
        .map_err(|e| Failure::invalid(format!("invalid registration: {e}")))?;
    Ok(ConsulRegistration { name, id, body })
}

async fn register(
    State(s): State<AppState>,
    caller: Caller,
    Body(v): Body<Value>,
) -> Result<Response, Failure> {
    let ConsulRegistration { name, id, body } = registration_from_consul(&v)?;
    let service = model::validate_service_name(&name)?;
    caller.service(&service, Access::Write)?;
    let instance = model::validate_registration(&id, &body)?;
    s.check_targets(&instance).await?;
    s.cluster
        .write_as(
            Op::Register {
                service,
                instance,
                health: None,
            },
            caller.accessor(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn deregister(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let (svc, _) = s
        .lookup_fresh(|| find_instance(&s, &id))
        .await?
        .ok_or_else(|| unknown_service(&id))?;
    caller.service(&svc.name, Access::Write)?;
    s.cluster
        .write_as(
            Op::Deregister {
                service: svc.name.clone(),
                id,
            },
            caller.accessor(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// The instance that owns check `check`, with the check's kind.
fn find_check(
    s: &AppState,
    check: &str,
) -> Option<(Arc<ServiceEntry>, Arc<Instance>, CheckKindSpec)> {
    let (svc, inst) = s.cluster.registry().find_check(check)?;
    let kind = inst.check(check)?.0.kind.clone();
    Some((svc, inst, kind))
}

fn unknown_check(check: &str) -> Failure {
    Failure::not_found(format!(
        "Unknown check ID {check:?}. Ensure that the check ID is passed, not the check name."
    ))
}

/// Sets TTL check `check` to `status`: a pass is a heartbeat, a warning or a failure is written
/// with `output`.
async fn update_check(
    s: AppState,
    caller: Caller,
    check: String,
    status: HealthStatus,
    output: String,
) -> Result<Response, Failure> {
    let (svc, inst, kind) = s
        .lookup_fresh(|| find_check(&s, &check))
        .await?
        .ok_or_else(|| unknown_check(&check))?;
    caller.service(&svc.name, Access::Write)?;
    if !matches!(kind, CheckKindSpec::Ttl { .. }) {
        return Err(Failure::invalid(format!(
            "CheckID {check:?} does not have associated TTL"
        )));
    }
    if status == HealthStatus::Passing {
        // A pass is a heartbeat: the owner resets the TTL and records passing if it was not.
        let key = CheckKey {
            service: svc.name.clone(),
            instance: inst.spec.id.clone(),
            check: check.clone(),
        };
        s.relay_heartbeat(key, &caller).await?;
        return Ok(StatusCode::OK.into_response());
    }
    s.cluster
        .write_as(
            Op::SetCheckStatus {
                service: svc.name.clone(),
                id: inst.spec.id.clone(),
                check,
                status,
                output,
            },
            caller.accessor(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/{id}?note=`.
async fn check_update(
    State(s): State<AppState>,
    caller: Caller,
    Path((action, check)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let status = match action.as_str() {
        "pass" => HealthStatus::Passing,
        "warn" => HealthStatus::Warning,
        "fail" => HealthStatus::Critical,
        _ => return Err(Failure::no_such_endpoint()),
    };
    let q = ReadQuery::consul(raw.as_deref())?;
    let note = q.param("note").unwrap_or_default().to_owned();
    model::validate_output(&note)?;
    update_check(s, caller, check, status, note).await
}

/// The longest prefix of `text` that fits in a check's output, cut at a character boundary, as
/// Consul cuts an update's output to its buffer rather than refusing it.
fn truncate_output(mut text: String) -> String {
    if text.len() > MAX_OUTPUT_LEN {
        let mut end = MAX_OUTPUT_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status", "Output"}`: what the Go client's
/// `UpdateTTL` calls.
async fn check_update_body(
    State(s): State<AppState>,
    caller: Caller,
    Path(check): Path<String>,
    Body(v): Body<Value>,
) -> Result<Response, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::invalid("the body must be a JSON object"))?;
    let raw_status = field(obj, "status").and_then(Value::as_str).unwrap_or("");
    let status = match raw_status {
        "passing" => HealthStatus::Passing,
        "warning" => HealthStatus::Warning,
        "critical" => HealthStatus::Critical,
        other => return Err(Failure::invalid(format!("Invalid check status: '{other}'"))),
    };
    let output = match field(obj, "output") {
        None => String::new(),
        Some(Value::String(o)) => truncate_output(o.clone()),
        Some(_) => return Err(Failure::invalid("Output: must be a string")),
    };
    update_check(s, caller, check, status, output).await
}

/// The instance's registration as an API body: what registering it again would store (header
/// values as stored, never shown).
fn registration_of(spec: &model::InstanceSpec) -> cairn_api::InstanceRegistration {
    cairn_api::InstanceRegistration {
        address: spec.address.clone(),
        port: u32::from(spec.port),
        tags: spec.tags.iter().map(str::to_owned).collect(),
        meta: spec.meta.to_map(),
        weight: Some(u32::from(spec.weight)),
        checks: spec.checks.iter().map(|c| c.to_registration()).collect(),
    }
}

/// Registers `body` again for the instance, after the same checks a registration gets.
async fn reregister(
    s: &AppState,
    caller: &Caller,
    service: &str,
    id: &str,
    body: &cairn_api::InstanceRegistration,
) -> Result<(), Failure> {
    let instance = model::validate_registration(id, body)?;
    s.check_targets(&instance).await?;
    s.cluster
        .write_as(
            Op::Register {
                service: service.to_owned(),
                instance,
                health: None,
            },
            caller.accessor(),
        )
        .await?;
    Ok(())
}

/// `PUT /v1/agent/check/register`: a check added to (or replaced on) an existing service
/// instance, named by `ServiceID`. Cairn has no node-level checks, so `ServiceID` is required.
async fn check_register(
    State(s): State<AppState>,
    caller: Caller,
    Body(v): Body<Value>,
) -> Result<Response, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::invalid("the body must be a JSON object"))?;
    let name = field_str(obj, "name").ok_or_else(|| Failure::invalid("Missing check name"))?;
    if let Some(st) = field_str(obj, "status") {
        if !matches!(st.as_str(), "passing" | "warning" | "critical") {
            return Err(Failure::invalid("Bad check status"));
        }
    }
    let service_id = field_str(obj, "serviceid")
        .ok_or_else(|| Failure::invalid("ServiceID: required (Cairn has no node-level checks)"))?;
    let check = check_from_consul(obj, name)?;
    let check: cairn_api::CheckRegistration = serde_json::from_value(check)
        .map_err(|e| Failure::invalid(format!("invalid check: {e}")))?;
    let (svc, inst) = s
        .lookup_fresh(|| find_instance(&s, &service_id))
        .await?
        .ok_or_else(|| Failure::invalid(format!("ServiceID {service_id:?} does not exist")))?;
    caller.service(&svc.name, Access::Write)?;
    let mut body = registration_of(&inst.spec);
    body.checks.retain(|c| c.id != check.id);
    body.checks.push(check);
    reregister(&s, &caller, &svc.name, &inst.spec.id, &body).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/deregister/{id}`: removes a check from its instance.
async fn check_deregister(
    State(s): State<AppState>,
    caller: Caller,
    Path(check): Path<String>,
) -> Result<Response, Failure> {
    let (svc, inst, _) = s
        .lookup_fresh(|| find_check(&s, &check))
        .await?
        .ok_or_else(|| unknown_check(&check))?;
    caller.service(&svc.name, Access::Write)?;
    let mut body = registration_of(&inst.spec);
    body.checks
        .retain(|c| c.id.as_deref() != Some(check.as_str()));
    reregister(&s, &caller, &svc.name, &inst.spec.id, &body).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/members`: the cluster's members as Serf members (alive, or failed when the
/// leader marked them down).
async fn agent_members(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let status = s.cluster.status();
    let up = s.cluster.up_members();
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            let (addr, port) = m
                .rpc_addr
                .rsplit_once(':')
                .map(|(h, p)| (h.trim_matches(['[', ']']), p.parse::<u16>().unwrap_or(0)))
                .unwrap_or((m.rpc_addr.as_str(), 0));
            json!({
                "Name": format!("cairn-{}", m.id),
                "Addr": addr,
                "Port": port,
                "Tags": {
                    "role": "consul",
                    "dc": DATACENTER,
                    "id": m.id.to_string(),
                    "voter": m.voter.to_string(),
                },
                "Status": if up.contains(&m.id) { 1 } else { 4 },
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 4,
            })
        })
        .collect();
    Ok(respond(&s, status.applied_index, members))
}

/// The instances registered at address `node` (a Consul node), with their services.
fn node_instances<'a>(
    services: &'a [Arc<ServiceEntry>],
    node: &'a str,
) -> impl Iterator<Item = (&'a ServiceEntry, &'a Arc<Instance>)> + 'a {
    instances(services).filter(move |(_, i)| i.spec.address == node)
}

/// A node's meta: its instances' meta, merged.
fn node_meta(services: &[Arc<ServiceEntry>], node: &str) -> BTreeMap<String, String> {
    node_instances(services, node)
        .flat_map(|(_, i)| {
            i.spec
                .meta
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `GET /v1/catalog/node/{node}`: the node and its services by id; `null` for an unknown node.
async fn catalog_node(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(
        &s,
        &caller,
        peer,
        raw,
        &fields::SERVICE,
        |services, _, f| {
            let mut found = false;
            let by_id: Map<String, Value> = node_instances(services, &node)
                .map(|(svc, i)| {
                    found = true;
                    (i.spec.id.clone(), service_obj(svc, i))
                })
                .filter(|(_, v)| keep(f, v))
                .collect();
            if !found {
                return Value::Null;
            }
            json!({"Node": node_obj(&node, &node_meta(services, &node)), "Services": by_id})
        },
    )
    .await
}

/// `GET /v1/catalog/node-services/{node}`: the node and its services as a list; `null` for an
/// unknown node.
async fn catalog_node_services(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(
        &s,
        &caller,
        peer,
        raw,
        &fields::SERVICE,
        |services, _, f| {
            let list: Vec<Value> = node_instances(services, &node)
                .map(|(svc, i)| service_obj(svc, i))
                .collect();
            if list.is_empty() {
                return Value::Null;
            }
            let list: Vec<Value> = list.into_iter().filter(|v| keep(f, v)).collect();
            json!({"Node": node_obj(&node, &node_meta(services, &node)), "Services": list})
        },
    )
    .await
}

/// `GET /v1/health/node/{node}`: the checks of every instance at the node; `[]` for an unknown
/// node.
async fn health_node(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    whole_catalog(&s, &caller, peer, raw, &fields::CHECK, |services, _, f| {
        node_instances(services, &node)
            .flat_map(|(svc, i)| check_objs(svc, i))
            .filter(|c| keep(f, c))
            .collect()
    })
    .await
}

/// `GET /v1/health/connect/{s}` and `/v1/catalog/connect/{s}`: Cairn has no service mesh, so no
/// instance is Connect-capable; `[]` with the service's index, blocking like the other reads.
async fn connect(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    per_service(&s, &caller, peer, &service, raw, &Field::Open, |_, _| {
        Vec::new()
    })
    .await
}

async fn maintenance(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::consul(raw.as_deref())?;
    let enable = match q.param("enable") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(Failure::invalid("enable: required, true or false")),
    };
    let (svc, _) = s
        .lookup_fresh(|| find_instance(&s, &id))
        .await?
        .ok_or_else(|| unknown_service(&id))?;
    caller.service(&svc.name, Access::Write)?;
    let reason = enable.then(|| {
        q.param("reason")
            .unwrap_or("Maintenance mode is enabled for this service")
            .to_owned()
    });
    if let Some(r) = &reason {
        model::validate_output(r)?;
    }
    s.cluster
        .write_as(
            Op::SetMaintenance {
                service: svc.name.clone(),
                id,
                reason,
            },
            caller.accessor(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

fn parse_status(st: &str) -> Option<HealthStatus> {
    match st {
        "passing" => Some(HealthStatus::Passing),
        "warning" => Some(HealthStatus::Warning),
        "critical" => Some(HealthStatus::Critical),
        _ => None,
    }
}

/// A `PUT /v1/catalog/register` body read as a registration: the instance, the health its
/// checks without a definition state (the worst of them, with its output), if any.
struct CatalogRegistration {
    reg: ConsulRegistration,
    health: Option<(HealthStatus, String)>,
}

/// Reads a catalog registration: `Node`, `Address`, `NodeMeta`, `Service` (required: Cairn
/// keeps services, not bare nodes), `Check`/`Checks`. A check with a `Definition` (`HTTP`,
/// `TCP`, `TTL`) is run by the cluster like an agent check; one without is a stated status, the
/// instance's custom health, and nothing runs for it.
fn catalog_registration(v: &Value) -> Result<CatalogRegistration, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::invalid("the body must be a JSON object"))?;
    field_str(obj, "node").ok_or_else(|| Failure::invalid("Must provide node"))?;
    let node_address =
        field_str(obj, "address").ok_or_else(|| Failure::invalid("Must provide address"))?;
    let Some(Value::Object(svc)) = field(obj, "service") else {
        return Err(Failure::invalid(
            "Service: required (Cairn keeps services, not bare nodes)",
        ));
    };
    let name =
        field_str(svc, "service").ok_or_else(|| Failure::invalid("Must provide service name"))?;
    let id = field_str(svc, "id").unwrap_or_else(|| name.clone());
    let mut defs: Vec<&Map<String, Value>> = Vec::new();
    if let Some(Value::Object(c)) = field(obj, "check") {
        defs.push(c);
    }
    if let Some(Value::Array(cs)) = field(obj, "checks") {
        defs.extend(cs.iter().filter_map(Value::as_object));
    }
    let mut checks = Vec::new();
    let mut health: Option<(HealthStatus, String)> = None;
    for c in defs {
        if let Some(sid) = field_str(c, "serviceid") {
            if sid != id {
                return Err(Failure::invalid(format!(
                    "check's ServiceID {sid:?} is not the registered service's ID {id:?}"
                )));
            }
        }
        let status = match field_str(c, "status") {
            None => None,
            Some(st) => Some(
                parse_status(&st)
                    .ok_or_else(|| Failure::invalid(format!("Invalid check status: '{st}'")))?,
            ),
        };
        let check_id = field_str(c, "checkid").or_else(|| field_str(c, "name"));
        match field(c, "definition").and_then(Value::as_object) {
            Some(def) if !def.is_empty() => {
                let mut def = def.clone();
                if let Some(st) = status {
                    def.insert("Status".into(), json!(st.as_str()));
                }
                let default = check_id.unwrap_or_else(|| format!("service:{id}"));
                checks.push(check_from_consul(&def, default)?);
            }
            _ => {
                let st = status.unwrap_or(HealthStatus::Critical);
                let output = field_str(c, "output").unwrap_or_default();
                let output = truncate_output(output);
                if health.as_ref().is_none_or(|(worst, _)| st > *worst) {
                    health = Some((st, output));
                }
            }
        }
    }
    // The node's meta is the instance's (Cairn keeps none for an address); the service's wins.
    let mut meta = field(obj, "nodemeta").cloned().unwrap_or(json!({}));
    if let (Some(m), Some(Value::Object(sm))) = (meta.as_object_mut(), field(svc, "meta")) {
        m.extend(sm.clone());
    }
    let mut native = json!({
        "address": field_str(svc, "address").unwrap_or(node_address),
        "port": field(svc, "port").and_then(Value::as_u64).unwrap_or(0),
        "tags": field(svc, "tags").cloned().unwrap_or(json!([])),
        "meta": meta,
        "checks": checks,
    });
    if let Some(w) = field(svc, "weights")
        .and_then(Value::as_object)
        .and_then(|w| field(w, "passing"))
        .and_then(Value::as_u64)
    {
        native["weight"] = json!(w);
    }
    let body = serde_json::from_value(native)
        .map_err(|e| Failure::invalid(format!("invalid registration: {e}")))?;
    Ok(CatalogRegistration {
        reg: ConsulRegistration { name, id, body },
        health,
    })
}

/// `PUT /v1/catalog/register`: an external service (a database, a SaaS endpoint) registered
/// with the health its registration states. Answers `true`, as Consul does.
async fn catalog_register(
    State(s): State<AppState>,
    caller: Caller,
    Body(v): Body<Value>,
) -> Result<Response, Failure> {
    let CatalogRegistration { reg, health } = catalog_registration(&v)?;
    let ConsulRegistration { name, id, body } = reg;
    let service = model::validate_service_name(&name)?;
    caller.service(&service, Access::Write)?;
    let instance = model::validate_registration(&id, &body)?;
    s.check_targets(&instance).await?;
    // One entry: the instance and its stated health appear together, so no reader (DNS, a
    // blocking read, a watch) ever sees a critical external service as passing.
    s.cluster
        .write_as(
            Op::Register {
                service,
                instance,
                health: health.map(|(status, output)| StatedHealth { status, output }),
            },
            caller.accessor(),
        )
        .await?;
    Ok(Json(true).into_response())
}

/// `PUT /v1/catalog/deregister` with `Node` and `ServiceID` (that instance), `CheckID` (that
/// check, or the stated health), or neither (every instance at the node the token may write).
async fn catalog_deregister(
    State(s): State<AppState>,
    caller: Caller,
    Body(v): Body<Value>,
) -> Result<Response, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::invalid("the body must be a JSON object"))?;
    let node = field_str(obj, "node").ok_or_else(|| Failure::invalid("Must provide node"))?;
    if let Some(id) = field_str(obj, "serviceid") {
        let (svc, inst) = s
            .lookup_fresh(|| find_instance(&s, &id))
            .await?
            .filter(|(_, i)| i.spec.address == node)
            .ok_or_else(|| unknown_service(&id))?;
        caller.service(&svc.name, Access::Write)?;
        s.cluster
            .write_as(
                Op::Deregister {
                    service: svc.name.clone(),
                    id: inst.spec.id.clone(),
                },
                caller.accessor(),
            )
            .await?;
    } else if let Some(check) = field_str(obj, "checkid") {
        let (svc, inst, _) = s
            .lookup_fresh(|| find_check(&s, &check))
            .await?
            .filter(|(_, i, _)| i.spec.address == node)
            .ok_or_else(|| unknown_check(&check))?;
        caller.service(&svc.name, Access::Write)?;
        let mut body = registration_of(&inst.spec);
        body.checks
            .retain(|c| c.id.as_deref() != Some(check.as_str()));
        reregister(&s, &caller, &svc.name, &inst.spec.id, &body).await?;
    } else {
        let (_, services) = s.cluster.registry().services();
        let at_node: Vec<(String, String)> = node_instances(&services, &node)
            .map(|(svc, i)| (svc.name.clone(), i.spec.id.clone()))
            .collect();
        for (service, _) in &at_node {
            caller.service(service, Access::Write)?;
        }
        for (service, id) in at_node {
            s.cluster
                .write_as(Op::Deregister { service, id }, caller.accessor())
                .await?;
        }
    }
    Ok(Json(true).into_response())
}
