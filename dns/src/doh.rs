//! DNS over HTTPS (RFC 8484): `GET /dns-query?dns=<base64url message>` and `POST /dns-query`
//! with an `application/dns-message` body, answered by the same [`Answerer`] as DNS over TCP.
//!
//! This module is the HTTP router; the agent serves it over TLS with cairn-tls (HTTP/1.1 and
//! HTTP/2, the HTTPS API's certificate reloading), capped and closed when idle as DNS over TCP.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;

use crate::server::{Answerer, STREAM_LIMIT};
use crate::wire;

/// The path RFC 8484's examples use, and every client's default.
pub const PATH: &str = "/dns-query";
/// The media type of a DNS message, in both directions.
pub const MEDIA_TYPE: &str = "application/dns-message";
/// The ALPN protocols offered.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A DNS message is at most 65535 bytes (the 16-bit length of DNS over TCP); a larger body is
/// refused before it is read whole.
const MAX_MESSAGE: usize = STREAM_LIMIT;
/// The base64url form of the largest message: 4 characters per 3 bytes.
const MAX_ENCODED: usize = MAX_MESSAGE.div_ceil(3) * 4;

/// The DoH routes, answering with `answerer`.
pub fn router(answerer: Answerer) -> Router {
    Router::new()
        .route(PATH, get(by_get).post(by_post))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE))
        .with_state(answerer)
}

/// A refusal, with a one-line reason for whoever debugs the client.
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

async fn by_get(
    State(answerer): State<Answerer>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let encoded = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("dns="));
    let Some(encoded) = encoded else {
        return refuse(StatusCode::BAD_REQUEST, "missing the dns parameter");
    };
    if encoded.len() > MAX_ENCODED {
        return refuse(StatusCode::URI_TOO_LONG, "the dns parameter is too long");
    }
    // RFC 8484 4.1: base64url without padding; padding is tolerated, as most servers do.
    let message = match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
    {
        Ok(m) => m,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the dns parameter is not base64url",
            )
        }
    };
    answer(&answerer, &message, client).await
}

async fn by_post(
    State(answerer): State<Answerer>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case(MEDIA_TYPE)) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be an application/dns-message",
        );
    }
    answer(&answerer, &body, client).await
}

/// The client is the connection's peer: whether names outside the zone are forwarded for it
/// is decided by its address, as over UDP and TCP.
async fn answer(answerer: &Answerer, message: &[u8], client: SocketAddr) -> Response {
    let Some(reply) = answerer.answer_stream(message, client.ip()).await else {
        return refuse(StatusCode::BAD_REQUEST, "not a DNS query");
    };
    // RFC 8484 5.1: an HTTP cache keeps the answer no longer than its records live.
    let max_age = wire::min_ttl(&reply).unwrap_or(0);
    let cache = HeaderValue::from_str(&format!("max-age={max_age}"))
        .unwrap_or(HeaderValue::from_static("no-store"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE)),
            (header::CACHE_CONTROL, cache),
        ],
        reply,
    )
        .into_response()
}
