//! The request time-out (`--http-request-timeout`): a request must send its body and get its
//! response's head within it, so a client that trickles a body, or a handler stuck on a lost
//! peer, holds its connection for a bounded time. A blocking read (`?index=`) gets its `wait`
//! (with the jitter [`super::blocking`] adds) on top; a stream's head goes out at once and its
//! body is not timed, so watches are never cut.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use cairn_api::{format_duration, ErrorCode};

use super::error::Failure;
use super::query::ReadQuery;

/// The 503 `unavailable` of a request that took longer than `timeout` (plus its wait). The
/// time-out itself is enforced by the request layer (`super::telemetry`), which every route
/// has anyway.
pub(super) fn timed_out(timeout: Duration) -> Response {
    Failure::new(
        ErrorCode::Unavailable,
        format!(
            "the request took longer than {} (--http-request-timeout)",
            format_duration(timeout)
        ),
    )
    .into_response()
}

/// How long a blocking read with this query string may wait; zero for any other request.
pub(super) fn blocking_wait(query: Option<&str>) -> Duration {
    match ReadQuery::consul(query) {
        // `block` adds up to 1/16 of the wait as jitter.
        Ok(q) if q.index.is_some() => q.wait + q.wait / 16 + Duration::from_millis(1),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_WAIT;

    #[test]
    fn only_a_blocking_read_gets_its_wait_on_top() {
        assert_eq!(blocking_wait(None), Duration::ZERO);
        assert_eq!(blocking_wait(Some("wait=10s")), Duration::ZERO);
        let w = blocking_wait(Some("index=7&wait=16s"));
        assert!(w >= Duration::from_secs(17), "{w:?}");
        let default = blocking_wait(Some("index=7"));
        assert!(default >= crate::http::DEFAULT_WAIT, "{default:?}");
        let capped = blocking_wait(Some("index=7&wait=1h"));
        assert!(capped <= MAX_WAIT + MAX_WAIT / 16 + Duration::from_secs(1));
    }
}
