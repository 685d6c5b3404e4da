//! The HTTP layer: one core, and leaves that serve routes through it.
//!
//! The core is what every route shares, each piece in one place:
//! - `state`: [`AppState`], what every handler sees, and the read path every read takes
//!   (`?index=`/`wait` blocking, then `?consistent` and `?max_stale`);
//! - `error`: [`Failure`], the one error type, the one place that maps error codes (and
//!   [`cairn_raft::WriteError`]s) to statuses, and the one helper for 400s;
//! - `body`: the JSON body extractor, whose size and syntax errors are API errors;
//! - `query`: the one query-string parser, with a strict native dialect and Consul's lenient one;
//! - `deadline`: the request time-out, with a blocking read's wait on top;
//! - `blocking`: [`DEFAULT_WAIT`], [`MAX_WAIT`], the wait itself, and [`WaitLimiter`], the
//!   per-client limit on waiting requests;
//! - `headers`: the index and freshness headers of a read (`X-Cairn-Index`, known leader, last
//!   contact), in both dialects;
//! - `relay`: TTL heartbeats handed to the node that runs the check;
//! - `acl`: [`Caller`], the extractor every route takes: the request's token resolved to its
//!   rights, and the one place a missing right becomes a 403.
//!
//! The leaves each serve one API and import only the core, never each other: `native` (the
//! `/v1/services`, `/v1/cluster`, live and ready routes), `consul` (Consul's discovery API),
//! `metrics` (`/metrics`), `tokens` (`/v1/acl/*` and `/v1/audit`) and `rpc` (the routes added to the cluster RPC listener). This module
//! composes them ([`router`], [`rpc_routes`]) and is the only one that names the leaves: the
//! core never imports a leaf, so there is no cycle.

mod acl;
mod blocking;
mod body;
mod deadline;
mod error;
mod headers;
mod query;
mod relay;
mod state;

mod consul;
mod metrics;
mod native;
mod rpc;
mod tokens;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub use acl::Caller;
pub use blocking::{WaitLimiter, WaitSlot, DEFAULT_MAX_WAITING_PER_CLIENT, DEFAULT_WAIT, MAX_WAIT};
pub use consul::{registration_from_consul, ConsulRegistration};
pub use error::Failure;
pub use state::AppState;

/// The HTTP API's router: the native API, the Consul-compatible API and `/metrics` on one
/// listener. `max_body` bounds every request body (413 beyond it); `request_timeout` bounds the
/// time to a response's head besides a blocking read's wait (503 beyond it); a path no route
/// serves is a 404 `not_found` in the API's error shape.
pub fn router(state: AppState, max_body: usize, request_timeout: Duration) -> Router {
    Router::new()
        .merge(native::routes())
        .merge(consul::routes())
        .merge(metrics::routes())
        .merge(tokens::routes())
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            deadline::limit,
        ))
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
