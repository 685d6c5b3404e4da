//! The Cloud Map operations, over the one registry.
//!
//! A Cloud Map service is the Cairn service of the same name (its id is `srv-<name>`), its
//! configuration kept in the service's settings; an instance is a Cairn instance, its attributes
//! the instance's meta; a namespace is a settings record under a reserved key
//! (`cairn_registry::cloudmap`). Writes go through Raft like any other and answer once
//! committed, so an operation is `SUCCESS` as soon as its id is returned; the id itself says
//! what it did and at which index, so any node can answer `GetOperation` for it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::InstanceRegistration;
use cairn_registry::acl::Access;
use cairn_registry::cloudmap::{
    namespace_key, service_id, CloudMapRecord, DnsConfigRecord, DnsRecordSpec, HealthCheckRecord,
    NamespaceRecord, ServiceRecord, NAMESPACE_KEY_PREFIX,
};
use cairn_registry::model::{self, address_kind, AddressKind, Instance, SettingsSpec};
use cairn_registry::{HealthStatus, Op, ServiceEntry, ServiceSettings};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::CloudMapError;
use super::CloudMapState;
use crate::http::Caller;

/// Page size when the request names none, and the largest page, as Cloud Map's (100).
const PAGE: usize = 100;
/// `DiscoverInstances`: default and largest `MaxResults` (Cloud Map's 100 and 1000).
const DISCOVER_DEFAULT: usize = 100;
const DISCOVER_MAX: usize = 1000;
/// Longest instance id Cloud Map allows.
const MAX_INSTANCE_ID: usize = 64;
/// Operations this node remembers for `ListOperations`.
const OPERATIONS_KEPT: usize = 1000;
/// How often a `HealthCheckConfig` check probes, and how long a probe may take. Route 53
/// probes every 30 s (10 s "fast"); Cairn's checks are cheap, and 5 s makes a failed target
/// leave within `FailureThreshold` × 5 s.
const CHECK_INTERVAL: &str = "5s";
const CHECK_TIMEOUT: &str = "4s";
/// The id of the check a `HealthCheckConfig` puts on each instance.
const CHECK_ID: &str = "cloudmap";
/// The account ARNs name: Cairn has none.
const ACCOUNT: &str = "000000000000";

/// What the API names operations (`OperationType`), in the order of their code in an id.
const OPERATION_TYPES: &[&str] = &[
    "CREATE_NAMESPACE",
    "DELETE_NAMESPACE",
    "UPDATE_NAMESPACE",
    "UPDATE_SERVICE",
    "REGISTER_INSTANCE",
    "DEREGISTER_INSTANCE",
];

/// The operations started through this node, newest last, for `ListOperations`.
#[derive(Default)]
pub struct Operations(Mutex<VecDeque<String>>);

impl Operations {
    fn push(&self, id: &str) {
        let mut ops = self.0.lock();
        if ops.len() == OPERATIONS_KEPT {
            ops.pop_front();
        }
        ops.push_back(id.to_owned());
    }
}

/// A request id for `x-amzn-RequestId`: unique per node and request.
pub fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}-{n:08x}", now_ms())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn date(ms: u64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// Reads an operation's input; a missing or mistyped member is `InvalidInput` naming it.
fn input<T: DeserializeOwned>(v: Value) -> Result<T, CloudMapError> {
    serde_json::from_value(v).map_err(|e| CloudMapError::new("InvalidInput", e.to_string()))
}

/// Runs operation `name`.
pub async fn call(
    s: &CloudMapState,
    caller: &Caller,
    name: &str,
    v: Value,
) -> Result<Value, CloudMapError> {
    match name {
        "CreateHttpNamespace" => create_namespace(s, caller, "HTTP", input(v)?).await,
        "CreatePrivateDnsNamespace" => create_namespace(s, caller, "DNS_PRIVATE", input(v)?).await,
        "CreatePublicDnsNamespace" => create_namespace(s, caller, "DNS_PUBLIC", input(v)?).await,
        "GetNamespace" => get_namespace(s, caller, input(v)?).await,
        "ListNamespaces" => list_namespaces(s, caller, input(v)?),
        "DeleteNamespace" => delete_namespace(s, caller, input(v)?).await,
        "UpdateHttpNamespace" | "UpdatePrivateDnsNamespace" | "UpdatePublicDnsNamespace" => {
            update_namespace(s, caller, input(v)?).await
        }
        "CreateService" => create_service(s, caller, input(v)?).await,
        "GetService" => get_service(s, caller, input(v)?).await,
        "ListServices" => list_services(s, caller, input(v)?),
        "DeleteService" => delete_service(s, caller, input(v)?).await,
        "UpdateService" => update_service(s, caller, input(v)?).await,
        "GetServiceAttributes" => service_attributes(s, caller, input(v)?).await,
        "UpdateServiceAttributes" => update_service_attributes(s, caller, input(v)?).await,
        "DeleteServiceAttributes" => delete_service_attributes(s, caller, input(v)?).await,
        "RegisterInstance" => register_instance(s, caller, input(v)?).await,
        "DeregisterInstance" => deregister_instance(s, caller, input(v)?).await,
        "GetInstance" => get_instance(s, caller, input(v)?).await,
        "ListInstances" => list_instances(s, caller, input(v)?).await,
        "GetInstancesHealthStatus" => instances_health(s, caller, input(v)?).await,
        "UpdateInstanceCustomHealthStatus" => custom_health(s, caller, input(v)?).await,
        "DiscoverInstances" => discover(s, caller, input(v)?, false),
        "DiscoverInstancesRevision" => discover(s, caller, input(v)?, true),
        "GetOperation" => get_operation(s, input(v)?).await,
        "ListOperations" => list_operations(s, input(v)?).await,
        "TagResource" => tag_resource(s, caller, input(v)?).await,
        "UntagResource" => untag_resource(s, caller, input(v)?).await,
        "ListTagsForResource" => list_tags(s, caller, input(v)?).await,
        _ => Err(CloudMapError::new(
            "UnknownOperationException",
            format!("{name} is not a Cloud Map operation"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Lookups

/// Runs `find` on this replica; on a miss, once more after catching up with the leader, so a
/// resource created through another node a moment ago is found.
async fn fresh<T>(
    s: &CloudMapState,
    find: impl Fn() -> Option<T>,
) -> Result<Option<T>, CloudMapError> {
    if let Some(found) = find() {
        return Ok(Some(found));
    }
    s.app.cluster.read_barrier().await?;
    Ok(find())
}

fn namespace_of(settings: &ServiceSettings) -> Option<NamespaceRecord> {
    match settings.settings.cloudmap.as_deref() {
        Some(CloudMapRecord::Namespace(n)) => Some(n.clone()),
        _ => None,
    }
}

fn service_of(settings: &ServiceSettings) -> Option<ServiceRecord> {
    match settings.settings.cloudmap.as_deref() {
        Some(CloudMapRecord::Service(r)) => Some(r.clone()),
        _ => None,
    }
}

fn all_namespaces(s: &CloudMapState) -> Vec<(NamespaceRecord, u64)> {
    s.app
        .cluster
        .registry()
        .settings_list(NAMESPACE_KEY_PREFIX)
        .iter()
        .filter_map(|(_, st)| namespace_of(st).map(|n| (n, st.modify_index)))
        .collect()
}

/// Every Cloud Map service: its Cairn name, record and settings.
fn all_services(s: &CloudMapState) -> Vec<(String, ServiceRecord, Arc<ServiceSettings>)> {
    s.app
        .cluster
        .registry()
        .settings_list("")
        .into_iter()
        .filter_map(|(name, st)| service_of(&st).map(|r| (name, r, st)))
        .collect()
}

async fn namespace(s: &CloudMapState, id: &str) -> Result<(NamespaceRecord, u64), CloudMapError> {
    let registry = s.app.cluster.registry();
    let key = namespace_key(id);
    fresh(s, || {
        registry
            .settings(&key)
            .and_then(|st| namespace_of(&st).map(|n| (n, st.modify_index)))
    })
    .await?
    .ok_or_else(|| {
        CloudMapError::new(
            "NamespaceNotFound",
            format!("No namespace exists with ID: {id}"),
        )
    })
}

/// The Cairn name of service `id`, its record and settings.
async fn service(
    s: &CloudMapState,
    id: &str,
) -> Result<(String, ServiceRecord, Arc<ServiceSettings>), CloudMapError> {
    let not_found = || {
        CloudMapError::new(
            "ServiceNotFound",
            format!("No service exists with ID: {id}"),
        )
    };
    let name = id.strip_prefix("srv-").ok_or_else(not_found)?;
    if !model::is_dns_label(name) {
        return Err(not_found());
    }
    let name = name.to_ascii_lowercase();
    let registry = s.app.cluster.registry();
    fresh(s, || {
        registry
            .settings(&name)
            .and_then(|st| service_of(&st).map(|r| (name.clone(), r, st)))
    })
    .await?
    .ok_or_else(not_found)
}

async fn instance(
    s: &CloudMapState,
    service: &str,
    id: &str,
) -> Result<Arc<Instance>, CloudMapError> {
    let registry = s.app.cluster.registry();
    fresh(s, || {
        registry
            .service(service)
            .and_then(|e| e.instances.get(id).cloned())
    })
    .await?
    .ok_or_else(|| {
        CloudMapError::new(
            "InstanceNotFound",
            format!("No instance exists with ID: {id}"),
        )
    })
}

/// The namespace id of a name: `ns-` and 16 hex digits of the SHA-256 of the lower-cased name,
/// so the same name always gets the same id and creating it twice is seen without a scan.
fn namespace_id(name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.to_ascii_lowercase().as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ns-{hex}")
}

fn arn(kind: &str, id: &str) -> String {
    format!("arn:aws:servicediscovery:cairn:{ACCOUNT}:{kind}/{id}")
}

// ---------------------------------------------------------------------------------------------
// Operations' ids

/// Writes `op` for the caller and answers its index once this node has applied it too, so the
/// next request to this node sees it (read-your-writes, which the SDKs' scripts assume). The
/// write has committed when this answers; a failed wait for the local apply is only logged.
async fn commit(s: &CloudMapState, op: Op, by: Option<&str>) -> Result<u64, CloudMapError> {
    let w = s.app.cluster.write_as(op, by).await?;
    if s.app.cluster.registry().applied_index() < w.index {
        if let Err(e) = s.app.cluster.read_barrier().await {
            tracing::debug!(
                "cloud map write {} committed; local apply not awaited: {e}",
                w.index
            );
        }
    }
    Ok(w.index)
}

/// Makes the id of an operation committed at `index`: `<index>-<ms>-<type code>-<target>`,
/// where the target is a namespace id, a service id, or `<service id>/<instance id>`. At most
/// 231 characters, within Cloud Map's 255.
fn operation(s: &CloudMapState, kind: &str, index: u64, target: &str) -> Value {
    let code = OPERATION_TYPES.iter().position(|t| *t == kind).unwrap_or(0);
    let id = format!("{index}-{}-{code}-{target}", now_ms());
    s.operations.push(&id);
    json!({ "OperationId": id })
}

struct OperationId<'a> {
    index: u64,
    ms: u64,
    kind: &'static str,
    target: &'a str,
}

fn parse_operation(id: &str) -> Option<OperationId<'_>> {
    let mut parts = id.splitn(4, '-');
    let index = parts.next()?.parse().ok()?;
    let ms = parts.next()?.parse().ok()?;
    let kind = OPERATION_TYPES.get(parts.next()?.parse::<usize>().ok()?)?;
    let target = parts.next()?;
    Some(OperationId {
        index,
        ms,
        kind,
        target,
    })
}

fn targets(kind: &str, target: &str) -> Value {
    if kind.ends_with("NAMESPACE") {
        return json!({ "NAMESPACE": target });
    }
    match target.split_once('/') {
        Some((srv, inst)) => json!({ "SERVICE": srv, "INSTANCE": inst }),
        None => json!({ "SERVICE": target }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OperationInput {
    operation_id: String,
}

async fn get_operation(s: &CloudMapState, i: OperationInput) -> Result<Value, CloudMapError> {
    let not_found = || {
        CloudMapError::new(
            "OperationNotFound",
            format!("No operation exists with ID: {}", i.operation_id),
        )
    };
    let op = parse_operation(&i.operation_id).ok_or_else(not_found)?;
    let registry = s.app.cluster.registry();
    if op.index > registry.applied_index() {
        s.app.cluster.read_barrier().await?;
    }
    // An index the cluster has not reached is no operation of ours; one it has is committed:
    // writes answer only once committed, so every operation there is, succeeded.
    if op.index > registry.applied_index() || op.index == 0 {
        return Err(not_found());
    }
    Ok(json!({ "Operation": {
        "Id": i.operation_id,
        "Type": op.kind,
        "Status": "SUCCESS",
        "CreateDate": date(op.ms),
        "UpdateDate": date(op.ms),
        "Targets": targets(op.kind, op.target),
    }}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Filter {
    name: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    condition: Option<String>,
}

impl Filter {
    /// Whether `value` passes: `EQ` (the default), `IN`, `BEGINS_WITH`.
    fn matches(&self, value: &str, allowed: &[&str]) -> Result<bool, CloudMapError> {
        let condition = self.condition.as_deref().unwrap_or("EQ");
        if !allowed.contains(&condition) {
            return Err(CloudMapError::invalid(
                "Filters.Condition",
                format!("{condition} is not supported for {}", self.name),
            ));
        }
        Ok(match condition {
            "BEGINS_WITH" => self.values.iter().any(|v| value.starts_with(v.as_str())),
            _ => self.values.iter().any(|v| v == value),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ListInput {
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    filters: Vec<Filter>,
}

impl ListInput {
    fn page_size(&self) -> Result<usize, CloudMapError> {
        match self.max_results {
            None => Ok(PAGE),
            Some(n) if (1..=PAGE).contains(&n) => Ok(n),
            Some(_) => Err(CloudMapError::invalid("MaxResults", "must be 1-100")),
        }
    }
}

/// One page of `items` (sorted by their key): those after the token, and the next token when
/// more remain.
fn page<T>(items: Vec<(String, T)>, token: Option<&str>, size: usize) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(k, _)| token.is_none_or(|t| k.as_str() > t))
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = if more {
        rest.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    (rest.into_iter().map(|(_, v)| v).collect(), next)
}

/// One page of `items` (sorted by key) as Cloud Map lists answer: `{key: [...], NextToken}`.
fn listed(key: &str, items: Vec<(String, Value)>, token: Option<&str>, size: usize) -> Value {
    let (list, next) = page(items, token, size);
    let mut body = Map::new();
    body.insert(key.into(), list.into());
    with_token(body, next)
}

fn with_token(mut body: Map<String, Value>, next: Option<String>) -> Value {
    if let Some(t) = next {
        body.insert("NextToken".into(), t.into());
    }
    body.into()
}

async fn list_operations(s: &CloudMapState, i: ListInput) -> Result<Value, CloudMapError> {
    let size = i.page_size()?;
    let ids: Vec<String> = s.operations.0.lock().iter().cloned().collect();
    let mut items = Vec::new();
    'ops: for id in ids {
        let Some(op) = parse_operation(&id) else {
            continue;
        };
        for f in &i.filters {
            let ok = match f.name.as_str() {
                "TYPE" => f.matches(op.kind, &["EQ", "IN"])?,
                "STATUS" => f.matches("SUCCESS", &["EQ", "IN"])?,
                "SERVICE_ID" => f.matches(op.target.split('/').next().unwrap_or(""), &["EQ"])?,
                "NAMESPACE_ID" => f.matches(op.target, &["EQ"])?,
                other => {
                    return Err(CloudMapError::invalid(
                        "Filters.Name",
                        format!(
                            "{other} is not supported (TYPE, STATUS, SERVICE_ID, NAMESPACE_ID)"
                        ),
                    ))
                }
            };
            if !ok {
                continue 'ops;
            }
        }
        // Sorted by index (zero-padded), so pages follow the order operations were made in.
        items.push((
            format!("{:020}", op.index),
            json!({"Id": id, "Status": "SUCCESS"}),
        ));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(listed("Operations", items, i.next_token.as_deref(), size))
}

// ---------------------------------------------------------------------------------------------
// Namespaces

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    value: String,
}

fn tags_map(tags: Vec<Tag>) -> BTreeMap<String, String> {
    tags.into_iter().map(|t| (t.key, t.value)).collect()
}

fn tags_list(tags: &BTreeMap<String, String>) -> Value {
    tags.iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect::<Vec<_>>()
        .into()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNamespaceInput {
    name: String,
    #[serde(default)]
    creator_request_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

fn validate_namespace_name(kind: &str, name: &str) -> Result<(), CloudMapError> {
    if kind == "HTTP" {
        if name.is_empty() || name.len() > 1024 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CloudMapError::invalid(
                "Name",
                "must be 1-1024 printable ASCII characters",
            ));
        }
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(model::is_dns_label) {
            return Err(CloudMapError::invalid(
                "Name",
                "must be a DNS name (labels of a-z, 0-9, '-', separated by '.')",
            ));
        }
    }
    Ok(())
}

async fn create_namespace(
    s: &CloudMapState,
    caller: &Caller,
    kind: &str,
    i: CreateNamespaceInput,
) -> Result<Value, CloudMapError> {
    caller.operator(Access::Write)?;
    validate_namespace_name(kind, &i.name)?;
    let id = namespace_id(&i.name);
    let registry = s.app.cluster.registry();
    if let Some(existing) = registry.settings(&namespace_key(&id)) {
        if let Some(n) = namespace_of(&existing) {
            if n.creator_request_id.is_some() && n.creator_request_id == i.creator_request_id {
                let op = format!("{}-{}-0-{id}", existing.modify_index, n.create_ms);
                return Err(CloudMapError::new(
                    "DuplicateRequest",
                    "This request was already made with the same CreatorRequestId.",
                )
                .with("DuplicateOperationId", op));
            }
            let mut e = CloudMapError::new(
                "NamespaceAlreadyExists",
                format!("Namespace {} already exists with ID {id}.", n.name),
            )
            .with("NamespaceId", id.clone());
            if let Some(c) = n.creator_request_id {
                e = e.with("CreatorRequestId", c);
            }
            return Err(e);
        }
    }
    let record = NamespaceRecord {
        id: id.clone(),
        name: i.name,
        kind: kind.to_owned(),
        description: i.description.unwrap_or_default(),
        creator_request_id: i.creator_request_id,
        create_ms: now_ms(),
        tags: tags_map(i.tags),
    };
    let index = write_namespace(s, caller, record).await?;
    Ok(operation(s, "CREATE_NAMESPACE", index, &id))
}

async fn write_namespace(
    s: &CloudMapState,
    caller: &Caller,
    record: NamespaceRecord,
) -> Result<u64, CloudMapError> {
    let key = namespace_key(&record.id);
    let record = CloudMapRecord::Namespace(record);
    cairn_registry::cloudmap::validate_record(&key, &record)?;
    let settings = SettingsSpec {
        fail_open: false,
        dns_ttl_s: None,
        cloudmap: Some(Box::new(record)),
    };
    let w = commit(
        s,
        Op::SetSettings {
            service: key,
            settings,
        },
        caller.accessor(),
    )
    .await?;
    Ok(w)
}

fn namespace_body(s: &CloudMapState, n: &NamespaceRecord, summary: bool) -> Value {
    let services = all_services(s)
        .iter()
        .filter(|(_, r, _)| r.namespace_id == n.id)
        .count();
    let mut properties = json!({ "HttpProperties": { "HttpName": n.name } });
    if n.kind != "HTTP" {
        properties["DnsProperties"] =
            json!({ "HostedZoneId": format!("Z{}", n.id), "SOA": { "TTL": 15 } });
    }
    let mut body = json!({
        "Id": n.id,
        "Arn": arn("namespace", &n.id),
        "Name": n.name,
        "Type": n.kind,
        "Description": n.description,
        "ServiceCount": services,
        "Properties": properties,
        "CreateDate": date(n.create_ms),
    });
    if !summary {
        if let Some(c) = &n.creator_request_id {
            body["CreatorRequestId"] = c.clone().into();
        }
    }
    body
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IdInput {
    id: String,
}

async fn get_namespace(
    s: &CloudMapState,
    caller: &Caller,
    i: IdInput,
) -> Result<Value, CloudMapError> {
    caller.operator(Access::Read)?;
    let (n, _) = namespace(s, &i.id).await?;
    Ok(json!({ "Namespace": namespace_body(s, &n, false) }))
}

fn list_namespaces(
    s: &CloudMapState,
    caller: &Caller,
    i: ListInput,
) -> Result<Value, CloudMapError> {
    caller.operator(Access::Read)?;
    let size = i.page_size()?;
    let mut items = Vec::new();
    'ns: for (n, _) in all_namespaces(s) {
        for f in &i.filters {
            let ok = match f.name.as_str() {
                "TYPE" => f.matches(&n.kind, &["EQ", "IN"])?,
                "NAME" | "HTTP_NAME" => f.matches(&n.name, &["EQ", "BEGINS_WITH"])?,
                other => {
                    return Err(CloudMapError::invalid(
                        "Filters.Name",
                        format!("{other} is not a namespace filter (TYPE, NAME, HTTP_NAME)"),
                    ))
                }
            };
            if !ok {
                continue 'ns;
            }
        }
        items.push((n.id.clone(), namespace_body(s, &n, true)));
    }
    Ok(listed("Namespaces", items, i.next_token.as_deref(), size))
}

async fn delete_namespace(
    s: &CloudMapState,
    caller: &Caller,
    i: IdInput,
) -> Result<Value, CloudMapError> {
    caller.operator(Access::Write)?;
    let (n, _) = namespace(s, &i.id).await?;
    if all_services(s)
        .iter()
        .any(|(_, r, _)| r.namespace_id == n.id)
    {
        return Err(CloudMapError::new(
            "ResourceInUse",
            format!("Namespace {} still has services; delete them first.", n.id),
        ));
    }
    let w = commit(
        s,
        Op::DeleteSettings {
            service: namespace_key(&n.id),
        },
        caller.accessor(),
    )
    .await?;
    Ok(operation(s, "DELETE_NAMESPACE", w, &n.id))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateNamespaceInput {
    id: String,
    namespace: NamespaceChange,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NamespaceChange {
    #[serde(default)]
    description: Option<String>,
}

async fn update_namespace(
    s: &CloudMapState,
    caller: &Caller,
    i: UpdateNamespaceInput,
) -> Result<Value, CloudMapError> {
    caller.operator(Access::Write)?;
    let (mut n, _) = namespace(s, &i.id).await?;
    if let Some(d) = i.namespace.description {
        n.description = d;
    }
    let id = n.id.clone();
    let index = write_namespace(s, caller, n).await?;
    Ok(operation(s, "UPDATE_NAMESPACE", index, &id))
}

// ---------------------------------------------------------------------------------------------
// Services

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DnsConfigInput {
    #[serde(default)]
    namespace_id: Option<String>,
    #[serde(default)]
    routing_policy: Option<String>,
    dns_records: Vec<DnsRecordInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DnsRecordInput {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "TTL")]
    ttl: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheckInput {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    resource_path: Option<String>,
    #[serde(default)]
    failure_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateServiceInput {
    name: String,
    #[serde(default)]
    namespace_id: Option<String>,
    #[serde(default)]
    creator_request_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dns_config: Option<DnsConfigInput>,
    #[serde(default)]
    health_check_config: Option<HealthCheckInput>,
    #[serde(default)]
    health_check_custom_config: Option<Value>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default, rename = "Type")]
    kind: Option<String>,
}

fn dns_config(d: DnsConfigInput) -> Result<DnsConfigRecord, CloudMapError> {
    let routing_policy = d.routing_policy.unwrap_or_else(|| "MULTIVALUE".into());
    let mut records = Vec::new();
    for r in d.dns_records {
        let ttl_s = u32::try_from(r.ttl)
            .ok()
            .filter(|t| *t <= model::MAX_DNS_TTL_S)
            .ok_or_else(|| CloudMapError::invalid("DnsConfig.DnsRecords.TTL", "must be 0-86400"))?;
        records.push(DnsRecordSpec {
            kind: r.kind,
            ttl_s,
        });
    }
    if records.is_empty() {
        return Err(CloudMapError::invalid(
            "DnsConfig.DnsRecords",
            "must name at least one record",
        ));
    }
    Ok(DnsConfigRecord {
        routing_policy,
        records,
    })
}

fn health_check(h: HealthCheckInput) -> Result<HealthCheckRecord, CloudMapError> {
    if h.kind == "TCP" && h.resource_path.is_some() {
        return Err(CloudMapError::invalid(
            "HealthCheckConfig.ResourcePath",
            "applies to HTTP and HTTPS checks only",
        ));
    }
    if let Some(p) = &h.resource_path {
        if !p.starts_with('/') {
            return Err(CloudMapError::invalid(
                "HealthCheckConfig.ResourcePath",
                "must start with /",
            ));
        }
    }
    Ok(HealthCheckRecord {
        kind: h.kind,
        resource_path: h.resource_path,
        failure_threshold: h.failure_threshold.unwrap_or(1),
    })
}

/// The settings that keep `record`: the service's other settings as they are, its DNS TTL from
/// the DNS records (the shortest, as one TTL serves every record type in Cairn's answers).
fn service_settings(old: Option<&ServiceSettings>, record: ServiceRecord) -> SettingsSpec {
    let dns_ttl_s = match &record.dns {
        Some(d) => d.records.iter().map(|r| r.ttl_s).min(),
        None => old.and_then(|o| o.settings.dns_ttl_s),
    };
    SettingsSpec {
        fail_open: old.is_some_and(|o| o.settings.fail_open),
        dns_ttl_s,
        cloudmap: Some(Box::new(CloudMapRecord::Service(record))),
    }
}

async fn write_service(
    s: &CloudMapState,
    caller: &Caller,
    name: &str,
    settings: SettingsSpec,
) -> Result<u64, CloudMapError> {
    if let Some(record) = &settings.cloudmap {
        cairn_registry::cloudmap::validate_record(name, record)?;
    }
    let w = commit(
        s,
        Op::SetSettings {
            service: name.to_owned(),
            settings,
        },
        caller.accessor(),
    )
    .await?;
    Ok(w)
}

fn service_body(s: &CloudMapState, name: &str, r: &ServiceRecord, summary: bool) -> Value {
    let count = s
        .app
        .cluster
        .registry()
        .service(name)
        .map_or(0, |e| e.instances.len());
    let mut body = json!({
        "Id": r.id,
        "Arn": arn("service", &r.id),
        "Name": name,
        "Type": r.kind,
        "Description": r.description,
        "InstanceCount": count,
        "CreateDate": date(r.create_ms),
    });
    if !summary {
        body["NamespaceId"] = r.namespace_id.clone().into();
        if let Some(c) = &r.creator_request_id {
            body["CreatorRequestId"] = c.clone().into();
        }
    }
    if let Some(d) = &r.dns {
        body["DnsConfig"] = json!({
            "NamespaceId": r.namespace_id,
            "RoutingPolicy": d.routing_policy,
            "DnsRecords": d.records.iter().map(|x| json!({"Type": x.kind, "TTL": x.ttl_s})).collect::<Vec<_>>(),
        });
    }
    if let Some(h) = &r.health_check {
        let mut c = json!({"Type": h.kind, "FailureThreshold": h.failure_threshold});
        if let Some(p) = &h.resource_path {
            c["ResourcePath"] = p.clone().into();
        }
        body["HealthCheckConfig"] = c;
    }
    if r.custom_health {
        body["HealthCheckCustomConfig"] = json!({"FailureThreshold": 1});
    }
    body
}

async fn create_service(
    s: &CloudMapState,
    caller: &Caller,
    i: CreateServiceInput,
) -> Result<Value, CloudMapError> {
    let name = model::validate_service_name(&i.name).map_err(|e| {
        CloudMapError::invalid("Name", format!("{} (a Cairn service name)", e.message))
    })?;
    caller.service(&name, Access::Write)?;
    let ns_id = i
        .namespace_id
        .clone()
        .or_else(|| i.dns_config.as_ref().and_then(|d| d.namespace_id.clone()))
        .ok_or_else(|| CloudMapError::invalid("NamespaceId", "is required"))?;
    let (ns, _) = namespace(s, &ns_id).await?;
    if i.health_check_config.is_some() && i.health_check_custom_config.is_some() {
        return Err(CloudMapError::invalid(
            "HealthCheckConfig",
            "cannot be given with HealthCheckCustomConfig",
        ));
    }
    if ns.kind == "HTTP" && i.dns_config.is_some() {
        return Err(CloudMapError::invalid(
            "DnsConfig",
            "an HTTP namespace has no DNS records",
        ));
    }
    let registry = s.app.cluster.registry();
    let old = registry.settings(&name);
    if let Some(existing) = old.as_deref().and_then(service_of) {
        if existing.creator_request_id.is_some()
            && existing.creator_request_id == i.creator_request_id
            && existing.namespace_id == ns.id
        {
            return Ok(json!({ "Service": service_body(s, &name, &existing, false) }));
        }
        let mut e = CloudMapError::new(
            "ServiceAlreadyExists",
            format!("A service named {name} already exists (Cairn service names are unique across namespaces)."),
        )
        .with("ServiceId", existing.id.clone());
        if let Some(c) = existing.creator_request_id {
            e = e.with("CreatorRequestId", c);
        }
        return Err(e);
    }
    let dns = i.dns_config.map(dns_config).transpose()?;
    let kind = match (i.kind.as_deref(), &dns) {
        (Some("HTTP"), _) | (None, None) => "HTTP",
        (None, Some(_)) => "DNS_HTTP",
        (Some(other), _) => {
            return Err(CloudMapError::invalid(
                "Type",
                format!("{other} is not supported (HTTP, or leave it out)"),
            ))
        }
    };
    let record = ServiceRecord {
        id: service_id(&name),
        namespace_id: ns.id,
        description: i.description.unwrap_or_default(),
        creator_request_id: i.creator_request_id,
        create_ms: now_ms(),
        kind: kind.into(),
        dns,
        health_check: i.health_check_config.map(health_check).transpose()?,
        custom_health: i.health_check_custom_config.is_some(),
        attributes: BTreeMap::new(),
        tags: tags_map(i.tags),
    };
    let settings = service_settings(old.as_deref(), record.clone());
    write_service(s, caller, &name, settings).await?;
    Ok(json!({ "Service": service_body(s, &name, &record, false) }))
}

async fn get_service(
    s: &CloudMapState,
    caller: &Caller,
    i: IdInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.id).await?;
    caller.service(&name, Access::Read)?;
    Ok(json!({ "Service": service_body(s, &name, &r, false) }))
}

fn list_services(s: &CloudMapState, caller: &Caller, i: ListInput) -> Result<Value, CloudMapError> {
    let size = i.page_size()?;
    let mut items = Vec::new();
    'srv: for (name, r, _) in all_services(s) {
        if !caller.may_read(&name) {
            continue;
        }
        for f in &i.filters {
            let ok = match f.name.as_str() {
                "NAMESPACE_ID" => f.matches(&r.namespace_id, &["EQ", "IN"])?,
                other => {
                    return Err(CloudMapError::invalid(
                        "Filters.Name",
                        format!("{other} is not a service filter (NAMESPACE_ID)"),
                    ))
                }
            };
            if !ok {
                continue 'srv;
            }
        }
        items.push((r.id.clone(), service_body(s, &name, &r, true)));
    }
    Ok(listed("Services", items, i.next_token.as_deref(), size))
}

async fn delete_service(
    s: &CloudMapState,
    caller: &Caller,
    i: IdInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.id).await?;
    caller.service(&name, Access::Write)?;
    if s.app
        .cluster
        .registry()
        .service(&name)
        .is_some_and(|e| !e.instances.is_empty())
    {
        return Err(CloudMapError::new(
            "ResourceInUse",
            format!(
                "Service {} still has instances; deregister them first.",
                r.id
            ),
        ));
    }
    commit(s, Op::DeleteSettings { service: name }, caller.accessor()).await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateServiceInput {
    id: String,
    service: ServiceChange,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceChange {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dns_config: Option<DnsConfigInput>,
    #[serde(default)]
    health_check_config: Option<HealthCheckInput>,
}

async fn update_service(
    s: &CloudMapState,
    caller: &Caller,
    i: UpdateServiceInput,
) -> Result<Value, CloudMapError> {
    let (name, mut r, settings) = service(s, &i.id).await?;
    caller.service(&name, Access::Write)?;
    if let Some(d) = i.service.description {
        r.description = d;
    }
    if let Some(d) = i.service.dns_config {
        let Some(old) = &r.dns else {
            return Err(CloudMapError::invalid(
                "Service.DnsConfig",
                "the service has no DNS configuration to update",
            ));
        };
        let mut new = dns_config(d)?;
        new.routing_policy = old.routing_policy.clone();
        r.dns = Some(new);
    }
    if let Some(h) = i.service.health_check_config {
        if r.custom_health {
            return Err(CloudMapError::invalid(
                "Service.HealthCheckConfig",
                "the service has a custom health configuration",
            ));
        }
        r.health_check = Some(health_check(h)?);
    }
    let id = r.id.clone();
    let index = write_service(s, caller, &name, service_settings(Some(&settings), r)).await?;
    Ok(operation(s, "UPDATE_SERVICE", index, &id))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceIdInput {
    service_id: String,
}

async fn service_attributes(
    s: &CloudMapState,
    caller: &Caller,
    i: ServiceIdInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Read)?;
    Ok(
        json!({ "ServiceAttributes": { "ServiceArn": arn("service", &r.id), "Attributes": r.attributes } }),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateAttributesInput {
    service_id: String,
    attributes: BTreeMap<String, String>,
}

async fn update_service_attributes(
    s: &CloudMapState,
    caller: &Caller,
    i: UpdateAttributesInput,
) -> Result<Value, CloudMapError> {
    let (name, mut r, settings) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Write)?;
    r.attributes.extend(i.attributes);
    write_service(s, caller, &name, service_settings(Some(&settings), r)).await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteAttributesInput {
    service_id: String,
    attributes: Vec<String>,
}

async fn delete_service_attributes(
    s: &CloudMapState,
    caller: &Caller,
    i: DeleteAttributesInput,
) -> Result<Value, CloudMapError> {
    let (name, mut r, settings) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Write)?;
    for k in &i.attributes {
        r.attributes.remove(k);
    }
    write_service(s, caller, &name, service_settings(Some(&settings), r)).await?;
    Ok(json!({}))
}

// ---------------------------------------------------------------------------------------------
// Instances

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInput {
    service_id: String,
    instance_id: String,
    #[serde(default)]
    creator_request_id: Option<String>,
    attributes: BTreeMap<String, String>,
}

fn validate_instance_id(id: &str) -> Result<(), CloudMapError> {
    if id.len() > MAX_INSTANCE_ID {
        return Err(CloudMapError::invalid(
            "InstanceId",
            format!("longer than {MAX_INSTANCE_ID} characters"),
        ));
    }
    model::validate_id("InstanceId", id).map_err(|e| {
        CloudMapError::invalid(
            "InstanceId",
            format!(
                "{} (Cairn instance ids: A-Z, a-z, 0-9, '_', '.', '-')",
                e.message
            ),
        )
    })
}

/// The Cairn registration of a Cloud Map instance: its address and port from the
/// `AWS_INSTANCE_*` attributes, every attribute as meta, and the service's health check.
fn registration(
    r: &ServiceRecord,
    attributes: &BTreeMap<String, String>,
) -> Result<InstanceRegistration, CloudMapError> {
    let address = ["AWS_INSTANCE_IPV4", "AWS_INSTANCE_IPV6", "AWS_INSTANCE_CNAME"]
        .iter()
        .find_map(|k| attributes.get(*k))
        .ok_or_else(|| {
            CloudMapError::invalid(
                "Attributes",
                "Cairn needs an address: give AWS_INSTANCE_IPV4, AWS_INSTANCE_IPV6 or AWS_INSTANCE_CNAME",
            )
        })?;
    let port = attributes
        .get("AWS_INSTANCE_PORT")
        .ok_or_else(|| {
            CloudMapError::invalid("Attributes.AWS_INSTANCE_PORT", "Cairn needs a port")
        })?
        .parse::<u32>()
        .map_err(|_| {
            CloudMapError::invalid("Attributes.AWS_INSTANCE_PORT", "is not a port number")
        })?;
    let mut checks = Vec::new();
    if let Some(h) = &r.health_check {
        let host = match address_kind(address) {
            AddressKind::Ip(std::net::IpAddr::V6(_)) => format!("[{address}]"),
            _ => address.clone(),
        };
        let threshold = h.failure_threshold;
        let check = match h.kind.as_str() {
            "TCP" => json!({"kind": "tcp", "target": format!("{host}:{port}")}),
            scheme => json!({
                "kind": "http",
                "url": format!("{}://{host}:{port}{}", scheme.to_ascii_lowercase(),
                    h.resource_path.as_deref().unwrap_or("/")),
            }),
        };
        let mut check = check;
        check["id"] = CHECK_ID.into();
        check["interval"] = CHECK_INTERVAL.into();
        check["timeout"] = CHECK_TIMEOUT.into();
        check["rise"] = threshold.into();
        check["fall"] = threshold.into();
        // Route 53 counts a new target healthy until it has failed `FailureThreshold` times.
        check["initial_status"] = "passing".into();
        checks.push(
            serde_json::from_value(check)
                .map_err(|e| CloudMapError::invalid("HealthCheckConfig", e))?,
        );
    }
    Ok(InstanceRegistration {
        address: address.clone(),
        port,
        tags: Vec::new(),
        meta: attributes.clone(),
        weight: None,
        checks,
    })
}

async fn register_instance(
    s: &CloudMapState,
    caller: &Caller,
    i: RegisterInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Write)?;
    validate_instance_id(&i.instance_id)?;
    if let Some(c) = &i.creator_request_id {
        if c.len() > cairn_registry::cloudmap::MAX_TEXT_LEN {
            return Err(CloudMapError::invalid("CreatorRequestId", "too long"));
        }
    }
    let body = registration(&r, &i.attributes)?;
    let spec = model::validate_registration(&i.instance_id, &body).map_err(|e| {
        let field = match e.field.strip_prefix("meta") {
            Some(rest) => format!("Attributes{rest}"),
            None if e.field == "address" => "Attributes.AWS_INSTANCE_IPV4".into(),
            None if e.field == "port" => "Attributes.AWS_INSTANCE_PORT".into(),
            None => e.field,
        };
        CloudMapError::invalid(&field, e.message)
    })?;
    s.app.check_targets(&spec).await?;
    let w = commit(
        s,
        Op::Register {
            service: name,
            instance: spec,
            health: None,
        },
        caller.accessor(),
    )
    .await?;
    let target = format!("{}/{}", r.id, i.instance_id);
    Ok(operation(s, "REGISTER_INSTANCE", w, &target))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceInput {
    service_id: String,
    instance_id: String,
}

async fn deregister_instance(
    s: &CloudMapState,
    caller: &Caller,
    i: InstanceInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Write)?;
    validate_instance_id(&i.instance_id)?;
    instance(s, &name, &i.instance_id).await?;
    let w = commit(
        s,
        Op::Deregister {
            service: name,
            id: i.instance_id.clone(),
        },
        caller.accessor(),
    )
    .await?;
    let target = format!("{}/{}", r.id, i.instance_id);
    Ok(operation(s, "DEREGISTER_INSTANCE", w, &target))
}

/// An instance's attributes: its meta, and the `AWS_INSTANCE_*` attributes its address and
/// port stand for when it was registered through another API.
fn attributes(inst: &Instance) -> BTreeMap<String, String> {
    let mut a = inst.spec.meta.to_map();
    let has_address = [
        "AWS_INSTANCE_IPV4",
        "AWS_INSTANCE_IPV6",
        "AWS_INSTANCE_CNAME",
    ]
    .iter()
    .any(|k| a.contains_key(*k));
    if !has_address {
        let key = match address_kind(&inst.spec.address) {
            AddressKind::Ip(std::net::IpAddr::V4(_)) => "AWS_INSTANCE_IPV4",
            AddressKind::Ip(std::net::IpAddr::V6(_)) => "AWS_INSTANCE_IPV6",
            AddressKind::Host => "AWS_INSTANCE_CNAME",
        };
        a.insert(key.into(), inst.spec.address.clone());
    }
    a.entry("AWS_INSTANCE_PORT".into())
        .or_insert_with(|| inst.spec.port.to_string());
    a
}

fn health_name(inst: &Instance) -> &'static str {
    if inst.health() == HealthStatus::Passing {
        "HEALTHY"
    } else {
        "UNHEALTHY"
    }
}

async fn get_instance(
    s: &CloudMapState,
    caller: &Caller,
    i: InstanceInput,
) -> Result<Value, CloudMapError> {
    let (name, _, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Read)?;
    let inst = instance(s, &name, &i.instance_id).await?;
    Ok(json!({ "Instance": { "Id": inst.spec.id, "Attributes": attributes(&inst) } }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInstancesInput {
    service_id: String,
    #[serde(default)]
    next_token: Option<String>,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    instances: Option<Vec<String>>,
}

fn entry(s: &CloudMapState, name: &str) -> Option<Arc<ServiceEntry>> {
    s.app.cluster.registry().service(name)
}

async fn list_instances(
    s: &CloudMapState,
    caller: &Caller,
    i: ListInstancesInput,
) -> Result<Value, CloudMapError> {
    let (name, _, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Read)?;
    let size = ListInput {
        max_results: i.max_results,
        ..ListInput::default()
    }
    .page_size()?;
    let items = entry(s, &name)
        .map(|e| {
            e.instances
                .values()
                .map(|x| {
                    let body = json!({"Id": x.spec.id, "Attributes": attributes(x)});
                    (x.spec.id.clone(), body)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(listed("Instances", items, i.next_token.as_deref(), size))
}

async fn instances_health(
    s: &CloudMapState,
    caller: &Caller,
    i: ListInstancesInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Read)?;
    if r.health_check.is_none() && !r.custom_health {
        return Err(CloudMapError::invalid(
            "ServiceId",
            "the service has no health check configuration",
        ));
    }
    let size = ListInput {
        max_results: i.max_results,
        ..ListInput::default()
    }
    .page_size()?;
    let wanted = i.instances.as_ref();
    let items = entry(s, &name)
        .map(|e| {
            e.instances
                .values()
                .filter(|x| wanted.is_none_or(|w| w.contains(&x.spec.id)))
                .map(|x| (x.spec.id.clone(), (x.spec.id.clone(), health_name(x))))
                .collect()
        })
        .unwrap_or_default();
    let (list, next) = page(items, i.next_token.as_deref(), size);
    let status: Map<String, Value> = list.into_iter().map(|(k, v)| (k, v.into())).collect();
    let mut body = Map::new();
    body.insert("Status".into(), status.into());
    Ok(with_token(body, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CustomHealthInput {
    service_id: String,
    instance_id: String,
    status: String,
}

async fn custom_health(
    s: &CloudMapState,
    caller: &Caller,
    i: CustomHealthInput,
) -> Result<Value, CloudMapError> {
    let (name, r, _) = service(s, &i.service_id).await?;
    caller.service(&name, Access::Write)?;
    if !r.custom_health {
        return Err(CloudMapError::new(
            "CustomHealthNotFound",
            format!("Service {} has no HealthCheckCustomConfig.", r.id),
        ));
    }
    let status = match i.status.as_str() {
        "HEALTHY" => HealthStatus::Passing,
        "UNHEALTHY" => HealthStatus::Critical,
        _ => {
            return Err(CloudMapError::invalid(
                "Status",
                "must be HEALTHY or UNHEALTHY",
            ))
        }
    };
    validate_instance_id(&i.instance_id)?;
    instance(s, &name, &i.instance_id).await?;
    commit(
        s,
        Op::SetHealth {
            service: name,
            id: i.instance_id,
            status,
            output: format!("{} through UpdateInstanceCustomHealthStatus", i.status),
        },
        caller.accessor(),
    )
    .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DiscoverInput {
    namespace_name: String,
    service_name: String,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    query_parameters: BTreeMap<String, String>,
    #[serde(default)]
    optional_parameters: BTreeMap<String, String>,
    #[serde(default)]
    health_status: Option<String>,
}

/// `DiscoverInstances` and (with `revision_only`) `DiscoverInstancesRevision`: from this
/// node's replica, as every read without `?consistent`.
fn discover(
    s: &CloudMapState,
    caller: &Caller,
    i: DiscoverInput,
    revision_only: bool,
) -> Result<Value, CloudMapError> {
    let ns = all_namespaces(s)
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.name.eq_ignore_ascii_case(&i.namespace_name))
        .ok_or_else(|| {
            CloudMapError::new(
                "NamespaceNotFound",
                format!("No namespace exists with name: {}", i.namespace_name),
            )
        })?;
    let not_found = || {
        CloudMapError::new(
            "ServiceNotFound",
            format!("No service {} in namespace {}", i.service_name, ns.name),
        )
    };
    let name = i.service_name.to_ascii_lowercase();
    if !model::is_dns_label(&name) {
        return Err(not_found());
    }
    caller.service(&name, Access::Read)?;
    let registry = s.app.cluster.registry();
    let settings = registry.settings(&name).ok_or_else(not_found)?;
    match service_of(&settings) {
        Some(r) if r.namespace_id == ns.id => {}
        _ => return Err(not_found()),
    }
    let entry = registry.service(&name);
    let revision = entry.as_ref().map_or(0, |e| e.modify_index);
    if revision_only {
        return Ok(json!({ "InstancesRevision": revision }));
    }
    let max = match i.max_results {
        None => DISCOVER_DEFAULT,
        Some(n) if (1..=DISCOVER_MAX).contains(&n) => n,
        Some(_) => return Err(CloudMapError::invalid("MaxResults", "must be 1-1000")),
    };
    let health = i.health_status.as_deref().unwrap_or("HEALTHY");
    let all: Vec<(Arc<Instance>, BTreeMap<String, String>)> = entry
        .map(|e| {
            e.instances
                .values()
                .map(|x| (x.clone(), attributes(x)))
                .filter(|(_, a)| i.query_parameters.iter().all(|(k, v)| a.get(k) == Some(v)))
                .collect()
        })
        .unwrap_or_default();
    let healthy = |x: &Instance| x.health() == HealthStatus::Passing;
    let mut chosen: Vec<_> = match health {
        "HEALTHY" => all.into_iter().filter(|(x, _)| healthy(x)).collect(),
        "UNHEALTHY" => all.into_iter().filter(|(x, _)| !healthy(x)).collect(),
        "ALL" => all,
        "HEALTHY_OR_ELSE_ALL" => {
            if all.iter().any(|(x, _)| healthy(x)) {
                all.into_iter().filter(|(x, _)| healthy(x)).collect()
            } else {
                all
            }
        }
        other => {
            return Err(CloudMapError::invalid(
                "HealthStatus",
                format!("{other} is not HEALTHY, UNHEALTHY, ALL or HEALTHY_OR_ELSE_ALL"),
            ))
        }
    };
    if !i.optional_parameters.is_empty() {
        let preferred: Vec<_> = chosen
            .iter()
            .filter(|(_, a)| {
                i.optional_parameters
                    .iter()
                    .all(|(k, v)| a.get(k) == Some(v))
            })
            .cloned()
            .collect();
        if !preferred.is_empty() {
            chosen = preferred;
        }
    }
    // Cloud Map answers a random subset when more match than MaxResults.
    if chosen.len() > max {
        chosen.shuffle(&mut rand::thread_rng());
        chosen.truncate(max);
    }
    let instances: Vec<Value> = chosen
        .iter()
        .map(|(x, a)| {
            json!({
                "InstanceId": x.spec.id,
                "NamespaceName": ns.name,
                "ServiceName": name,
                "HealthStatus": health_name(x),
                "Attributes": a,
            })
        })
        .collect();
    Ok(json!({ "Instances": instances, "InstancesRevision": revision }))
}

// ---------------------------------------------------------------------------------------------
// Tags

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: String,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    tag_keys: Vec<String>,
}

enum Resource {
    Namespace(NamespaceRecord),
    Service(String, ServiceRecord, Arc<ServiceSettings>),
}

async fn resource(
    s: &CloudMapState,
    caller: &Caller,
    arn: &str,
    need: Access,
) -> Result<Resource, CloudMapError> {
    let not_found = || {
        CloudMapError::new(
            "ResourceNotFoundException",
            format!("No resource with ARN {arn}"),
        )
    };
    let id = arn.rsplit('/').next().ok_or_else(not_found)?;
    if arn.contains(":namespace/") {
        caller.operator(need)?;
        let (n, _) = namespace(s, id).await.map_err(|_| not_found())?;
        Ok(Resource::Namespace(n))
    } else if arn.contains(":service/") {
        let (name, r, st) = service(s, id).await.map_err(|_| not_found())?;
        caller.service(&name, need)?;
        Ok(Resource::Service(name, r, st))
    } else {
        Err(not_found())
    }
}

async fn retag(
    s: &CloudMapState,
    caller: &Caller,
    res: Resource,
    change: impl FnOnce(&mut BTreeMap<String, String>),
) -> Result<Value, CloudMapError> {
    match res {
        Resource::Namespace(mut n) => {
            change(&mut n.tags);
            write_namespace(s, caller, n).await?;
        }
        Resource::Service(name, mut r, st) => {
            change(&mut r.tags);
            write_service(s, caller, &name, service_settings(Some(&st), r)).await?;
        }
    }
    Ok(json!({}))
}

async fn tag_resource(
    s: &CloudMapState,
    caller: &Caller,
    i: TagInput,
) -> Result<Value, CloudMapError> {
    let res = resource(s, caller, &i.resource_arn, Access::Write).await?;
    let tags = tags_map(i.tags);
    retag(s, caller, res, |t| t.extend(tags)).await
}

async fn untag_resource(
    s: &CloudMapState,
    caller: &Caller,
    i: TagInput,
) -> Result<Value, CloudMapError> {
    let res = resource(s, caller, &i.resource_arn, Access::Write).await?;
    retag(s, caller, res, |t| {
        for k in &i.tag_keys {
            t.remove(k);
        }
    })
    .await
}

async fn list_tags(
    s: &CloudMapState,
    caller: &Caller,
    i: TagInput,
) -> Result<Value, CloudMapError> {
    let tags = match resource(s, caller, &i.resource_arn, Access::Read).await? {
        Resource::Namespace(n) => n.tags,
        Resource::Service(_, r, _) => r.tags,
    };
    Ok(json!({ "Tags": tags_list(&tags) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_name_what_they_did() {
        let op = parse_operation("42-1700000000000-4-srv-web/web-1").expect("parses");
        assert_eq!(
            (op.index, op.kind, op.target),
            (42, "REGISTER_INSTANCE", "srv-web/web-1")
        );
        assert_eq!(targets(op.kind, op.target)["INSTANCE"], "web-1");
        assert!(parse_operation("42-x-4-srv-web").is_none());
        assert!(parse_operation("42-1-99-srv-web").is_none());
        // The longest id stays within Cloud Map's 255 characters.
        let longest = format!(
            "{}-{}-5-srv-{}/{}",
            u64::MAX,
            9_999_999_999_999u64,
            "a".repeat(63),
            "b".repeat(MAX_INSTANCE_ID)
        );
        assert!(longest.len() <= 255, "{}", longest.len());
    }

    #[test]
    fn pages_follow_the_token() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let (first, next) = page(items.clone(), None, 2);
        assert_eq!((first, next.as_deref()), (vec![0, 1], Some("k1")));
        let (second, next) = page(items.clone(), Some("k1"), 2);
        assert_eq!((second, next.as_deref()), (vec![2, 3], Some("k3")));
        let (last, next) = page(items, Some("k3"), 2);
        assert_eq!((last, next), (vec![4], None));
    }

    #[test]
    fn namespace_ids_are_stable_and_case_blind() {
        assert_eq!(
            namespace_id("Example.Internal"),
            namespace_id("example.internal")
        );
        assert!(cairn_registry::cloudmap::is_namespace_id(&namespace_id(
            "x"
        )));
    }
}
