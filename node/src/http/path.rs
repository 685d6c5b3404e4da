//! [`Path`]: axum's path extractor, with its rejections (a segment that is not UTF-8 once
//! percent-decoded, or not a number where one is expected) as API errors (400
//! `invalid_argument` with the JSON error body) instead of axum's plain text.

use axum::extract::{FromRequestParts, Path as AxumPath};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::Failure;

/// The path's parameters, or a 400 in the API's error shape.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        AxumPath::<T>::from_request_parts(parts, state)
            .await
            .map(|AxumPath(v)| Path(v))
            .map_err(|e| Failure::invalid(format!("invalid path: {}", e.body_text())))
    }
}
