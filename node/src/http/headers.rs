//! The headers a read answers with: the index it reflects (for caching and the next blocking
//! read) and how fresh this replica is (whether it knows a leader, how long since it heard from
//! it), in the native and in Consul's spelling.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::INDEX_HEADER;
use cairn_raft::Cluster;
use serde::Serialize;

use super::query::Dialect;

/// Sets a header whose value we made; a value that is not a valid header is left out.
fn set_header(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Sets `X-Cairn-Index` as it is (writes, and a missing service's 404).
pub(super) fn set_index(headers: &mut HeaderMap, index: u64) {
    set_header(headers, INDEX_HEADER, index.to_string());
}

/// A read's response: `body` as JSON with the index (at least 1, so a client can always block on
/// it) and this replica's freshness. Native: `X-Cairn-Index`, `X-Cairn-Known-Leader` and, once
/// this node has heard from a leader, `X-Cairn-Last-Contact`. Consul: `X-Consul-Index` (and
/// `X-Cairn-Index`), `X-Consul-KnownLeader` and `X-Consul-LastContact` (0 when never).
pub(super) fn read_response<T: Serialize>(
    cluster: &Cluster,
    dialect: Dialect,
    index: u64,
    body: T,
) -> Response {
    let mut res = Json(body).into_response();
    let h = res.headers_mut();
    let index = index.max(1).to_string();
    match dialect {
        Dialect::Native => {
            set_header(h, INDEX_HEADER, index);
            set_header(
                h,
                "x-cairn-known-leader",
                cluster.leader().is_some().to_string(),
            );
            if let Some(ms) = cluster.last_contact_ms() {
                set_header(h, "x-cairn-last-contact", ms.to_string());
            }
        }
        Dialect::Consul => {
            set_header(h, "x-consul-index", index.clone());
            set_header(h, INDEX_HEADER, index);
            set_header(
                h,
                "x-consul-knownleader",
                cluster.leader().is_some().to_string(),
            );
            set_header(
                h,
                "x-consul-lastcontact",
                cluster.last_contact_ms().unwrap_or(0).to_string(),
            );
        }
    }
    res
}
