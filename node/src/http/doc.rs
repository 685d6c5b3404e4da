//! The OpenAPI document's shared pieces: the parameters many routes take (a service, an
//! instance, the read query), and [`Finish`], which gives every error response the API's error
//! body and every operation its security. The leaves describe their own routes with
//! `#[utoipa::path]` next to the handlers; `http::openapi` composes them.
//!
//! An error response is declared in a path by its status alone (`(status = 404)`); its body
//! (`ApiError`), its description (the error codes that status carries, read from [`ErrorCode`]
//! itself) and `Retry-After` are filled in here, so they are said once.

use cairn_api::{ApiError, ErrorCode};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, RefOr, Required, Response};
use utoipa::{IntoParams, Modify, PartialSchema, ToSchema};

/// The name of the security scheme every protected route names.
pub(super) const TOKEN: &str = "token";

/// `{service}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the derive only
pub(super) struct ServicePath {
    /// A service name: a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-');
    /// upper case is folded.
    #[param(schema_with = cairn_api::schema::dns_label)]
    service: String,
}

/// `{service}` and `{id}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the derive only
pub(super) struct InstancePath {
    /// A service name: a DNS label; upper case is folded.
    #[param(schema_with = cairn_api::schema::dns_label)]
    service: String,
    /// An instance id: 1-128 of A-Z, a-z, 0-9, '_', '.', '-'.
    #[param(schema_with = cairn_api::schema::instance_id)]
    id: String,
}

/// The query parameters every native read understands (`query::ReadQuery`). Any parameter a
/// route does not list is refused with 400.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by the derive only
pub(super) struct ReadParams {
    #[param(schema_with = cairn_api::schema::index)]
    index: Option<u64>,
    /// How long to block with `index` (default 5m, at most 10m).
    #[param(schema_with = cairn_api::schema::duration)]
    wait: Option<String>,
    /// A linearizable read: a read barrier through the leader first (503 without one).
    consistent: Option<bool>,
    /// Accepted for symmetry with Consul; reads are served from this node's replica anyway.
    stale: Option<bool>,
    /// Refuse (503 `unavailable`) when this node, not the leader, last heard from the leader
    /// longer ago than this.
    #[param(schema_with = cairn_api::schema::duration)]
    max_stale: Option<String>,
}

/// Fills in what every operation shares: error bodies, `Retry-After`, and the token scheme.
pub(super) struct Finish;

impl Modify for Finish {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(ApiError::name().into(), ApiError::schema());
        components
            .schemas
            .insert(ErrorCode::name().into(), ErrorCode::schema());
        components.add_security_scheme(
            TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Cairn-Token",
                "An ACL token's secret (with --acl). `Authorization: Bearer <secret>` works too.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                // A path parameter is always required; the derive cannot tell through
                // `schema_with`.
                for p in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p {
                        if p.parameter_in == ParameterIn::Path {
                            p.required = Required::True;
                        }
                    }
                }
                for (status, response) in op.responses.responses.iter_mut() {
                    if let (Ok(code), RefOr::T(r)) = (status.parse::<u16>(), response) {
                        if code >= 400 && r.content.is_empty() {
                            fill_error(code, r);
                        }
                    }
                }
            }
        }
    }
}

/// An error response: `ApiError` as JSON, described by the codes its status carries.
fn fill_error(status: u16, r: &mut Response) {
    let codes: Vec<&str> = error_codes()
        .into_iter()
        .filter(|c| c.http_status() == status)
        .map(ErrorCode::as_str)
        .collect();
    if r.description.is_empty() {
        r.description = if codes.is_empty() {
            axum::http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_owned()
        } else {
            format!("`{}`", codes.join("`, `"))
        };
    }
    r.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(RefOr::Ref(
            utoipa::openapi::Ref::from_schema_name(ApiError::name()),
        )))),
    );
    if status == 429 || status == 503 {
        r.headers.insert(
            "Retry-After".into(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                    .description(Some("seconds to wait before trying again"))
                    .build(),
            ),
        );
    }
}

/// Every error code, read from the type's own schema (so a new code is described without being
/// listed here).
fn error_codes() -> Vec<ErrorCode> {
    let schema = serde_json::to_value(ErrorCode::schema()).unwrap_or_default();
    schema["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect()
}
