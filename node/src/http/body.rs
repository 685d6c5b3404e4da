//! [`Body`]: the JSON body extractor. axum's own `Json` answers a wrong Content-Type, a body over
//! the limit or bad JSON in plain text; this one reads the body whatever its Content-Type (curl
//! users forget it) and turns each failure into an API error: 413 `body_too_large` beyond
//! `--max-body-bytes`, 400 `invalid_argument` for anything else, a body that is not a JSON
//! object included.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use cairn_api::ErrorCode;
use serde::de::DeserializeOwned;

use super::error::Failure;

/// A JSON body read whatever its Content-Type, with size and syntax errors as API errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Failure::new(
                    ErrorCode::BodyTooLarge,
                    "request body is larger than this node accepts (--max-body-bytes)",
                )
            }
            other => Failure::invalid(format!("cannot read the request body: {other}")),
        })?;
        // serde reads a struct from a JSON array too (`[null, null]` as the fields in order);
        // every body of the API is an object, and anything else is refused.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Failure::invalid(
                "invalid JSON body: expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| Failure::invalid(format!("invalid JSON body: {e}")))
    }
}
