//! Leaf: the routes this agent adds to the cluster RPC listener, behind its admission layer
//! (`cairn_raft::rpc::server::router`): a TTL heartbeat relayed by another node to this one,
//! which runs the check.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cairn_api::{ApiError, ErrorCode};
use cairn_registry::acl::Access;

use super::acl::Caller;
use super::relay::{HeartbeatRelay, RELAY_PATH};
use super::state::AppState;
use crate::checks::CheckKey;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(RELAY_PATH, post(relayed_heartbeat))
}

/// Answers `Ok` once the heartbeat is handed to this node's checker, or `Err` when this node
/// does not run the check (ownership moved while the heartbeat travelled): the sender's client
/// retries.
async fn relayed_heartbeat(
    State(s): State<AppState>,
    Json(body): Json<HeartbeatRelay>,
) -> Response {
    let caller = Caller::resolve_accessor(&s, body.by.as_deref());
    let key = CheckKey::from(body);
    let allowed = caller.and_then(|c| c.service(&key.service, Access::Write));
    let res: Result<(), ApiError> = if let Err(f) = allowed {
        Err(f.0)
    } else if s.cluster.owner_of(&key.hash_key()) == Some(s.cluster.id()) {
        s.checker.heartbeat(&key);
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "this node does not run that check (ownership is moving); retry",
        ))
    };
    Json(res).into_response()
}
