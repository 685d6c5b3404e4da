//! The HTTP layer: one core, and leaves that serve routes through it.
//!
//! The core is what every route shares, each piece in one place:
//! - `state`: [`AppState`], what every handler sees, and the read path every read takes
//!   (`?index=`/`wait` blocking, then `?consistent` and `?max_stale`);
//! - `error`: [`Failure`], the one error type, the one place that maps error codes (and
//!   [`cairn_raft::WriteError`]s) to statuses, and the one helper for 400s;
//! - `body`: the JSON body extractor, whose size and syntax errors are API errors;
//! - `path`: the path extractor, whose errors are API errors too;
//! - `doc`: the OpenAPI document's shared parameters, error responses and security;
//! - `query`: the one query-string parser, with a strict native dialect and Consul's lenient one;
//! - `deadline`: the request time-out's budget (a blocking read's wait on top) and its answer;
//! - `blocking`: [`DEFAULT_WAIT`], [`MAX_WAIT`], the wait itself, and [`WaitLimiter`], the
//!   per-client limit on waiting requests;
//! - `headers`: the index and freshness headers of a read (`X-Cairn-Index`, known leader, last
//!   contact), in both dialects;
//! - `relay`: TTL heartbeats handed to the node that runs the check;
//! - `telemetry`: the layer in front of every route: the request's id and span, and the
//!   request metrics by route, method and status class;
//! - `acl`: [`Caller`], the extractor every route takes: the request's token resolved to its
//!   rights, and the one place a missing right becomes a 403.
//!
//! The leaves each serve one API and import only the core, never each other: `native` (the
//! `/v1/services`, `/v1/cluster`, live and ready routes), `consul` (Consul's discovery API),
//! `metrics` (`/metrics`), `prometheus` (`/v1/prometheus/sd`, Prometheus' HTTP service
//! discovery), `tokens` (`/v1/acl/*` and `/v1/audit`), `operator` (`/v1/operator/*`), `ui` (the
//! web UI at `/ui/`) and `rpc` (the routes added to the cluster RPC listener). This module
//! composes them ([`router`], [`rpc_routes`], and the OpenAPI document of the native and ACL
//! routes, [`openapi`], which each leaf describes next to its handlers) and is the only one that
//! names the leaves: the core never imports a leaf, so there is no cycle.

mod acl;
mod blocking;
mod body;
mod deadline;
mod doc;
mod error;
mod headers;
mod path;
mod query;
mod relay;
mod state;
mod telemetry;

mod consul;
mod metrics;
mod native;
mod operator;
mod prometheus;
mod rpc;
mod tokens;
mod ui;

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::{Modify, OpenApi};

pub use acl::Caller;
pub use blocking::{
    WaitLimiter, WaitSlot, Waiting, DEFAULT_MAX_WAITING_PER_CLIENT, DEFAULT_WAIT, MAX_WAIT,
};
pub use consul::{registration_from_consul, ConsulRegistration};
pub use error::Failure;
pub use state::AppState;
pub use telemetry::{HttpMetrics, X_REQUEST_ID};

/// The HTTP API's router: the native API, the Consul-compatible API and `/metrics` on one
/// listener. `max_body` bounds every request body (413 beyond it); `request_timeout` bounds the
/// time to a response's head besides a blocking read's wait (503 beyond it); a path no route
/// serves is a 404 `not_found` in the API's error shape. Every request gets an id and is
/// counted (see `telemetry`).
pub fn router(state: AppState, max_body: usize, request_timeout: Duration) -> Router {
    let telemetry = telemetry::Telemetry {
        metrics: state.http_metrics.clone(),
        request_timeout,
    };
    Router::new()
        .merge(native::routes())
        .merge(consul::routes())
        .merge(metrics::routes())
        .merge(prometheus::routes())
        .merge(tokens::routes())
        .merge(ui::routes())
        .merge(operator::routes())
        .route("/v1/openapi.json", get(openapi_json))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body))
        // Request ids, request metrics and the request time-out in one layer (see
        // `telemetry`). A layer added with `Router::layer` wraps each route, where the matched
        // route pattern is known.
        .layer(telemetry)
        .with_state(state)
}

/// Routes added to the cluster RPC listener (behind its admission layer): TTL heartbeats relayed
/// to a check's owner.
pub fn rpc_routes(state: AppState) -> Router {
    rpc::routes().with_state(state)
}

async fn unknown_route() -> Failure {
    Failure::no_such_endpoint()
}

/// The OpenAPI 3.1 document of the native API (`/v1/services...`, `/v1/cluster...`, `/v1/acl/...`,
/// `/v1/audit`, live and ready): each leaf's routes as its `#[utoipa::path]`s describe them, the
/// schemas of the wire types in `cairn-api`, and the error bodies and security of `doc`.
/// Consul's API and `/metrics` are Consul's and Prometheus' formats, not described here.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(OpenApi)]
    #[openapi(
        info(
            title = "Cairn",
            description = "Cairn's native HTTP API: services and their instances, the cluster, access control. Every error is an `ApiError` (`{\"code\", \"message\"}`) with a stable code. Writes go to the leader wherever they are sent and answer with the Raft index that committed them; reads are served from the node's replica, with `X-Cairn-Index`, `X-Cairn-Known-Leader` and `X-Cairn-Last-Contact`. Malformed input never changes stored data.",
        ),
        paths(openapi_json),
        tags(
            (name = "services", description = "Services, their instances, health and settings"),
            (name = "cluster", description = "Membership and the replicas' state"),
            (name = "health", description = "Liveness and readiness probes"),
            (name = "acl", description = "Tokens, policies and the audit list"),
            (name = "meta", description = "This document"),
        )
    )]
    struct ApiDoc;

    let mut api = ApiDoc::openapi();
    api.merge(native::Doc::openapi());
    api.merge(prometheus::Doc::openapi());
    api.merge(tokens::Doc::openapi());
    api.merge(operator::Doc::openapi());
    doc::Finish.modify(&mut api);
    api
}

/// [`openapi`] as pretty JSON with a final newline: what `/v1/openapi.json` serves and
/// `api/openapi.json` holds.
pub fn openapi_json_text() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    text.push('\n');
    text
}

/// `GET /v1/openapi.json`: needs no token, as the document holds no data (Consul and most
/// servers publish theirs openly).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    summary = "This document (OpenAPI 3.1); needs no token",
    responses((status = 200, description = "The OpenAPI document.", body = Object)))]
async fn openapi_json() -> Response {
    static TEXT: LazyLock<String> = LazyLock::new(openapi_json_text);
    ([(header::CONTENT_TYPE, "application/json")], TEXT.as_str()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Where the document is committed, for clients and reviewers.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json");

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let generated = openapi_json_text();
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        if committed != generated && std::env::var_os("CAIRN_UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).expect("write api/openapi.json");
            return;
        }
        assert!(
            committed == generated,
            "api/openapi.json differs from the document the code generates; regenerate it with \
             `cargo run -q --bin cairn -- openapi > api/openapi.json` (or \
             `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-node --lib openapi`) and commit it"
        );
    }

    /// The paths a leaf's `routes()` serves, read from its source: every `.route("...")`.
    fn routed_paths(source: &str) -> BTreeSet<String> {
        source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| {
                let start = rest.find('"')? + 1;
                let len = rest[start..].find('"')?;
                Some(rest[start..start + len].to_owned())
            })
            .collect()
    }

    #[test]
    fn every_native_acl_and_operator_route_is_in_the_document_and_nothing_else() {
        let mut routed = routed_paths(include_str!("native.rs"));
        routed.extend(routed_paths(include_str!("tokens.rs")));
        routed.extend(routed_paths(include_str!("operator.rs")));
        routed.extend(routed_paths(include_str!("prometheus.rs")));
        routed.insert("/v1/openapi.json".into());
        assert!(routed.len() > 20, "the route parser found {routed:?}");
        let documented: BTreeSet<String> = openapi().paths.paths.keys().cloned().collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn every_error_response_carries_the_error_body() {
        let doc = serde_json::to_value(openapi()).expect("serializes");
        let mut errors = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for (status, res) in op["responses"].as_object().expect("responses") {
                    if status.as_str() >= "400" {
                        errors += 1;
                        assert_eq!(
                            res["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ApiError",
                            "{method} {path} {status}"
                        );
                        assert!(
                            !res["description"].as_str().unwrap_or("").is_empty(),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert!(errors > 50, "{errors} error responses");
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(codes >= 9, "{codes} error codes");
    }
}
