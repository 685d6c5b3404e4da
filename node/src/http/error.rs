//! [`Failure`]: the one error type of the HTTP layer. Every error of every route, native or
//! Consul, leaves through it, so the code → status mapping, `Retry-After` and the JSON shape
//! (`{"code", "message"}`) are decided here and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{ApiError, ErrorCode};
use cairn_raft::WriteError;
use cairn_registry::model::ValidationError;

/// An error response: `{"code", "message"}` with the code's status, and `Retry-After` when
/// trying again later may help.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure(ApiError::new(code, message))
    }

    /// 400 `invalid_argument`: the one way a route says its input is wrong.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::InvalidArgument, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::NotFound, message)
    }

    /// 404 for a path (or a path's verb, as Consul's `/v1/agent/check/{action}`) nothing serves.
    pub fn no_such_endpoint() -> Failure {
        Failure::not_found("no such endpoint")
    }
}

/// The message of a 403, kept on the response beside its JSON body, so that the Consul routes
/// can answer it as Consul does: the bare text.
#[derive(Debug, Clone)]
pub(super) struct DeniedMessage(pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let denied = (self.0.code == ErrorCode::PermissionDenied)
            .then(|| DeniedMessage(self.0.message.clone()));
        let mut res = (status, Json(self.0)).into_response();
        if let Some(denied) = denied {
            res.extensions_mut().insert(denied);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<ValidationError> for Failure {
    fn from(e: ValidationError) -> Self {
        Failure::invalid(e.to_string())
    }
}

/// How a write that did not commit is told: no leader and unreachable leaders are retryable
/// (503), the rest is the client's (400, 404, 409, 507 over a quota) or ours (500).
impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Self {
        let code = match &e {
            WriteError::NoLeader(_) => ErrorCode::NoLeader,
            WriteError::Unavailable(_) => ErrorCode::Unavailable,
            WriteError::NotFound(_) => ErrorCode::NotFound,
            WriteError::Conflict(_) => ErrorCode::Conflict,
            WriteError::Denied(_) => ErrorCode::PermissionDenied,
            WriteError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            WriteError::Invalid(_) => ErrorCode::InvalidArgument,
            WriteError::Internal(_) => ErrorCode::Internal,
        };
        Failure::new(code, e.to_string())
    }
}
