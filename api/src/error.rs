//! The error body of every failed API call, with its stable code.

use serde::{Deserialize, Serialize};

/// Why a call failed. The string forms are stable: programs match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed or a value broke a rule of the data model (HTTP 400).
    InvalidArgument,
    /// The request body is larger than the node accepts (HTTP 413).
    BodyTooLarge,
    /// The request's token is missing a right, unknown or expired (HTTP 403).
    PermissionDenied,
    /// The named service, instance or member does not exist (HTTP 404).
    NotFound,
    /// No leader is known right now, or the quorum is lost (HTTP 503, retry later).
    NoLeader,
    /// The leader could not be reached or did not answer in time (HTTP 503, retry later).
    Unavailable,
    /// The request conflicts with the cluster's state, e.g. removing the last voter (HTTP 409).
    Conflict,
    /// This client has too many requests waiting (blocking queries, streams) (HTTP 429).
    TooManyRequests,
    /// The write would take the registry past a quota (bytes, services, instances per service,
    /// checks); writes that do not grow it still work (HTTP 507).
    QuotaExceeded,
    /// An unexpected fault on the server (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::QuotaExceeded => 507,
            ErrorCode::NoLeader | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the condition is passing: the same request may succeed later or on another node.
    /// Whether it is *safe* to send again depends on the request: `unavailable` answers a write
    /// whose outcome is unknown, and a write sent twice may apply twice. `cairn-client` decides
    /// with `ClientError::is_retryable_for`, which reads this and the kind of call.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorCode::NoLeader | ErrorCode::Unavailable | ErrorCode::TooManyRequests => true,
            ErrorCode::InvalidArgument
            | ErrorCode::BodyTooLarge
            | ErrorCode::PermissionDenied
            | ErrorCode::NotFound
            | ErrorCode::Conflict
            | ErrorCode::QuotaExceeded
            | ErrorCode::Internal => false,
        }
    }

    /// The stable string form, as in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The JSON body of every error response: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_to_their_stable_strings() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::BodyTooLarge,
            ErrorCode::PermissionDenied,
            ErrorCode::NotFound,
            ErrorCode::NoLeader,
            ErrorCode::Unavailable,
            ErrorCode::Conflict,
            ErrorCode::TooManyRequests,
            ErrorCode::QuotaExceeded,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
