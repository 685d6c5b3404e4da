//! Leaf: `GET /v1/prometheus/sd`, Prometheus' HTTP service discovery (`http_sd_configs`) over
//! the registry: every instance as a scrape target with `__meta_cairn_*` labels, which
//! `relabel_configs` can keep, drop or copy.
//!
//! The http_sd format puts labels on a group, not on a target, so each instance is its own group
//! (its labels differ from its siblings'); groups come sorted by service, then instance id, so
//! a service's instances are next to each other and the answer is stable between refreshes.
//! The read takes the read path of every other read (`?index=`/`wait`, `?consistent`,
//! `?max_stale`) and is filtered by the token's read rights as the service list is.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cairn_api::PrometheusTargetGroup;
use cairn_registry::acl::Access;
use cairn_registry::model::{self, Instance};
use cairn_registry::{HealthStatus, ServiceEntry};

use super::acl::{Caller, FILTERED_HEADER};
use super::doc::ReadParams;
use super::error::Failure;
use super::headers::read_response;
use super::query::{Dialect, ReadQuery};
use super::state::AppState;

/// The prefix of every label the discovery sets; Prometheus drops `__meta_*` labels after
/// relabelling, so none of them reaches stored series unless a rule copies it.
const META: &str = "__meta_cairn_";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/prometheus/sd", get(service_discovery))
}

/// The route above, as the OpenAPI document describes it (composed in `http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(service_discovery))]
pub(super) struct Doc;

/// What the request asks for.
struct Select {
    service: Option<String>,
    tag: Option<String>,
    passing_only: bool,
}

impl Select {
    fn parse(q: &ReadQuery) -> Result<Select, Failure> {
        let service = q
            .param("service")
            .map(model::validate_service_name)
            .transpose()?;
        let passing_only = match q.param("health") {
            None | Some("any") => false,
            Some("passing") => true,
            Some(other) => {
                return Err(Failure::invalid(format!(
                    "health: {other:?} is not \"passing\" or \"any\""
                )))
            }
        };
        Ok(Select {
            service,
            tag: q.param("tag").map(str::to_ascii_lowercase),
            passing_only,
        })
    }

    fn keeps(&self, inst: &Instance) -> bool {
        (!self.passing_only || inst.health() == HealthStatus::Passing)
            && self.tag.as_ref().is_none_or(|t| inst.spec.tags.contains(t))
    }
}

/// `GET /v1/prometheus/sd`: with `?service=`, that service (403 without read on it, an empty
/// list when it has no instances); without, every service the token may read, with
/// `X-Cairn-Filtered: true` when some were left out.
#[utoipa::path(get, path = "/v1/prometheus/sd", tag = "services",
    summary = "Scrape targets for Prometheus' http_sd_configs",
    description = "Every instance as one target group (`address:port`) with the labels `__meta_cairn_service`, `__meta_cairn_instance`, `__meta_cairn_node` (the instance's address, which Cairn's Consul API calls its node), `__meta_cairn_health` (`passing`, `warning`, `critical`), `__meta_cairn_tags` (`,a,b,`: every tag between commas, as Prometheus' Consul discovery writes them) and `__meta_cairn_meta_<key>` for each meta key, where each character of the key that a label name may not hold (`-`, `.`) becomes `_`; when two keys become the same label, the one that sorts first wins. Groups are sorted by service and instance id. Without `service`, lists only the services the token may read, with `X-Cairn-Filtered: true` when some were left out.",
    params(
        ("service" = Option<String>, Query, pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "Only this service (a DNS label; upper case is folded). Needs read on it."),
        ("tag" = Option<String>, Query, description = "Only instances with this tag (any case)."),
        ("health" = Option<String>, Query, pattern = "^(passing|any)$",
            description = "`passing`: only passing instances; `any` (the default): all."),
        ReadParams),
    security((), ("token" = [])),
    responses((status = 200, description = "The target groups (an empty list when nothing matches).", body = [PrometheusTargetGroup]),
        (status = 400), (status = 403), (status = 429), (status = 503)))]
async fn service_discovery(
    State(s): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let q = ReadQuery::native(raw.as_deref(), &["service", "tag", "health"])?;
    let select = Select::parse(&q)?;
    let registry = s.cluster.registry();
    if let Some(name) = &select.service {
        caller.service(name, Access::Read)?;
        let rx = registry
            .watches()
            .subscribe_service(name, registry.service_index(name));
        s.prepare_read(peer, &q, rx).await?;
        let index = registry.service_index(name);
        let groups = registry
            .service(name)
            .map(|entry| target_groups(&entry, &select))
            .unwrap_or_default();
        return Ok(read_response(&s.cluster, Dialect::Native, index, groups));
    }
    s.prepare_read(peer, &q, registry.subscribe()).await?;
    let index = registry.applied_index();
    let (_, services) = registry.services();
    let mut hidden = false;
    let mut groups = Vec::new();
    for entry in &services {
        if caller.may_read(&entry.name) {
            groups.extend(target_groups(entry, &select));
        } else {
            hidden = true;
        }
    }
    let mut res = read_response(&s.cluster, Dialect::Native, index, groups);
    if hidden {
        res.headers_mut().insert(
            FILTERED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(res)
}

/// One group per instance of `entry` that `select` keeps, in instance id order.
fn target_groups(entry: &ServiceEntry, select: &Select) -> Vec<PrometheusTargetGroup> {
    entry
        .instances
        .values()
        .filter(|i| select.keeps(i))
        .map(|i| PrometheusTargetGroup {
            targets: vec![target(&i.spec.address, i.spec.port)],
            labels: labels(&entry.name, i),
        })
        .collect()
}

/// `host:port`, with an IPv6 address in brackets as Prometheus' `__address__` wants it.
fn target(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn labels(service: &str, inst: &Instance) -> BTreeMap<String, String> {
    let health = match inst.health() {
        HealthStatus::Passing => "passing",
        HealthStatus::Warning => "warning",
        HealthStatus::Critical => "critical",
    };
    let tags: String = inst.spec.tags.iter().fold(",".into(), |mut s, t| {
        s.push_str(t);
        s.push(',');
        s
    });
    let mut labels = BTreeMap::from([
        (format!("{META}service"), service.to_owned()),
        (format!("{META}instance"), inst.spec.id.clone()),
        (format!("{META}node"), inst.spec.address.clone()),
        (format!("{META}health"), health.to_owned()),
        (format!("{META}tags"), tags),
    ]);
    // In key order, so of two keys that sanitize alike the first one's value is kept.
    for (key, value) in inst.spec.meta.iter() {
        labels
            .entry(format!("{META}meta_{}", label_name(key)))
            .or_insert_with(|| value.to_owned());
    }
    labels
}

/// A meta key as a label name: Prometheus' label names are `[a-zA-Z_][a-zA-Z0-9_]*`, and a meta
/// key is letters, digits, `_`, `-` and `.`, so `-` and `.` (or anything else) become `_`. The
/// name follows a prefix, so a leading digit is fine.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_registry::{Command, Dirty, Op, Registry};

    fn register(r: &Registry, index: u64, service: &str, id: &str, body: serde_json::Value) {
        let instance = model::validate_registration(id, &serde_json::from_value(body).unwrap())
            .expect("a valid registration");
        let cmd = Command {
            by: Vec::new(),
            time_ms: 1000,
            ops: vec![Op::Register {
                service: service.into(),
                instance,
                health: None,
            }],
        };
        r.apply(index, &cmd, &mut Dirty::default());
    }

    fn select(tag: Option<&str>, passing_only: bool) -> Select {
        Select {
            service: None,
            tag: tag.map(Into::into),
            passing_only,
        }
    }

    #[test]
    fn an_instance_is_a_group_with_every_label() {
        let r = Registry::default();
        register(
            &r,
            1,
            "web",
            "w1",
            serde_json::json!({"address": "10.0.0.7", "port": 9100,
                "tags": ["v2", "Blue"], "meta": {"zone": "a", "team-name": "x", "k.1": "y"}}),
        );
        let entry = r.service("web").expect("registered");
        let groups = target_groups(&entry, &select(None, false));
        let json = serde_json::to_value(&groups).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!([{
                "targets": ["10.0.0.7:9100"],
                "labels": {
                    "__meta_cairn_service": "web",
                    "__meta_cairn_instance": "w1",
                    "__meta_cairn_node": "10.0.0.7",
                    "__meta_cairn_health": "passing",
                    "__meta_cairn_tags": ",blue,v2,",
                    "__meta_cairn_meta_zone": "a",
                    "__meta_cairn_meta_team_name": "x",
                    "__meta_cairn_meta_k_1": "y",
                }
            }])
        );
    }

    #[test]
    fn filters_by_tag_and_health() {
        let r = Registry::default();
        register(
            &r,
            1,
            "web",
            "a",
            serde_json::json!({"address": "10.0.0.1", "port": 1, "tags": ["x"]}),
        );
        register(
            &r,
            2,
            "web",
            "b",
            serde_json::json!({"address": "::1", "port": 2, "checks": [
                {"kind": "ttl", "ttl": "30s"}]}),
        );
        let entry = r.service("web").expect("registered");
        let targets = |s: Select| -> Vec<String> {
            target_groups(&entry, &s)
                .into_iter()
                .flat_map(|g| g.targets)
                .collect()
        };
        assert_eq!(targets(select(None, false)), ["10.0.0.1:1", "[::1]:2"]);
        assert_eq!(targets(select(Some("x"), false)), ["10.0.0.1:1"]);
        assert_eq!(targets(select(None, true)), ["10.0.0.1:1"]);
        assert!(targets(select(Some("nope"), false)).is_empty());
    }

    #[test]
    fn meta_keys_that_sanitize_alike_keep_the_first_in_key_order() {
        assert_eq!(label_name("a-b.c_D9"), "a_b_c_D9");
        let r = Registry::default();
        register(
            &r,
            1,
            "web",
            "a",
            serde_json::json!({"address": "h", "port": 1,
                "meta": {"a_b": "underscore", "a.b": "dot", "a-b": "dash"}}),
        );
        let entry = r.service("web").expect("registered");
        let groups = target_groups(&entry, &select(None, false));
        assert_eq!(groups[0].labels["__meta_cairn_meta_a_b"], "dash");
        assert_eq!(groups[0].labels["__meta_cairn_tags"], ",");
    }
}
