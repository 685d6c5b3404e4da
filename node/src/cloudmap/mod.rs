//! The AWS Cloud Map-compatible API (`--cloudmap-addr`): programs written for Cloud Map
//! (`servicediscovery` in the AWS SDKs and CLI) run unchanged against Cairn.
//!
//! One listener speaks both protocols the SDKs use: AWS JSON 1.1 (`POST /` with
//! `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`) and Smithy RPC v2 CBOR
//! (`POST /service/<service>/operation/<Operation>`), which current botocore picks. Every
//! request is signed with SigV4 against `--cloudmap-credentials`; a key may carry a Cairn ACL
//! token, whose rights the request then has.
//!
//! - [`sigv4`]: the access keys and the signature check;
//! - [`wire`]: the two encodings, both to and from one document type;
//! - [`error`]: errors in AWS's shape;
//! - [`ops`]: the operations, over the one registry (a Cloud Map service is a Cairn service, an
//!   instance a Cairn instance; see `cairn_registry::cloudmap` for what is kept beside them).

mod error;
mod ops;
mod sigv4;
mod wire;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use cairn_registry::acl::AclMode;

pub use error::CloudMapError;
pub use ops::Operations;
pub use sigv4::Credentials;
use wire::Protocol;

use crate::http::{AppState, Caller};

/// The JSON 1.1 target prefix of every operation (the model's `targetPrefix`).
const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
/// The service names the CBOR path may carry: the model's `targetPrefix` (what botocore sends)
/// and its service id.
const CBOR_SERVICES: &[&str] = &["Route53AutoNaming_v20170314", "ServiceDiscovery"];

/// What the API's handlers see.
#[derive(Clone)]
pub struct CloudMapState {
    pub app: AppState,
    pub credentials: Credentials,
    pub operations: std::sync::Arc<Operations>,
    /// The largest request body read (`--max-body-bytes`).
    pub max_body: usize,
}

/// The API's router; `request_timeout` bounds each request as on the HTTP API.
pub fn router(state: CloudMapState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/", post(json_request))
        .route(
            "/service/{service}/operation/{operation}",
            post(cbor_request),
        )
        .fallback(unknown_route)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .with_state(state)
}

async fn unknown_route() -> Response {
    respond(
        Protocol::Json,
        Err(CloudMapError::new(
            "UnknownOperationException",
            "not a Cloud Map API path: POST / (AWS JSON 1.1) or POST /service/<service>/operation/<operation> (RPC v2 CBOR)",
        )
        .with_status(404)),
    )
}

async fn json_request(
    State(s): State<CloudMapState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(str::to_owned);
    let Some(operation) = target else {
        let e = CloudMapError::new(
            "UnknownOperationException",
            format!("X-Amz-Target must be {TARGET_PREFIX}<Operation>"),
        );
        return respond(Protocol::Json, Err(e));
    };
    handle(s, Protocol::Json, &operation, method, uri, headers, body).await
}

async fn cbor_request(
    State(s): State<CloudMapState>,
    Path((service, operation)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !CBOR_SERVICES.contains(&service.as_str()) {
        let e = CloudMapError::new(
            "UnknownOperationException",
            format!("unknown service {service:?}: this endpoint serves ServiceDiscovery"),
        )
        .with_status(404);
        return respond(Protocol::Cbor, Err(e));
    }
    let protocol = headers.get("smithy-protocol").and_then(|v| v.to_str().ok());
    if protocol != Some("rpc-v2-cbor") {
        let e = CloudMapError::new(
            "SerializationException",
            "the smithy-protocol header must be rpc-v2-cbor",
        );
        return respond(Protocol::Cbor, Err(e));
    }
    handle(s, Protocol::Cbor, &operation, method, uri, headers, body).await
}

async fn handle(
    s: CloudMapState,
    protocol: Protocol,
    operation: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let bytes = to_bytes(body, s.max_body).await.map_err(|_| {
            CloudMapError::new(
                "RequestEntityTooLargeException",
                format!(
                    "the request body is larger than {} bytes (--max-body-bytes)",
                    s.max_body
                ),
            )
            .with_status(413)
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let key = sigv4::verify(&s.credentials, &method, &uri, &headers, &bytes, now)?;
        let caller = match s.app.acl {
            AclMode::Off => Caller::open(),
            AclMode::On { .. } => Caller::resolve(&s.app, key.token.as_ref().map(|t| t.expose()))?,
        };
        let input = protocol.decode(&bytes)?;
        ops::call(&s, &caller, operation, input).await
    }
    .await;
    respond(protocol, result)
}

fn respond(protocol: Protocol, result: Result<serde_json::Value, CloudMapError>) -> Response {
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(kind = e.kind, "cloud map request failed: {}", e.message);
            }
            (
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                e.body(),
            )
        }
    };
    let mut res = (status, protocol.encode(&body)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.content_type()),
    );
    if protocol == Protocol::Cbor {
        h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    }
    if let Ok(id) = HeaderValue::from_str(&ops::request_id()) {
        h.insert("x-amzn-requestid", id);
    }
    res
}
