//! Leaf: the operator's views under `/v1/operator`: replication as the leader sees it (what
//! `cairn operator raft` and the health column of `cairn members` show). Served by the leader;
//! any other node asks the leader over the cluster RPC. Needs the operator read right.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_api::{RaftReplication, ReplicaInfo};
use cairn_registry::acl::Access;

use super::acl::Caller;
use super::error::Failure;
use super::state::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/operator/raft", get(raft_replication))
}

/// The routes above, as the OpenAPI document describes them (composed in `http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(raft_replication))]
pub(super) struct Doc;

#[utoipa::path(get, path = "/v1/operator/raft", tag = "cluster",
    summary = "Replication as the leader sees it: each member's role, match index, lag, last contact and health",
    security(("token" = [])),
    responses((status = 200, description = "The leader's view, asked of the leader when another node answers.", body = RaftReplication),
        (status = 403), (status = 503)))]
async fn raft_replication(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let r = s.cluster.replication().await?;
    let body = RaftReplication {
        leader: r.leader,
        term: r.term,
        last_log_index: r.last_log_index,
        commit_index: r.commit_index,
        members: r
            .members
            .into_iter()
            .map(|m| ReplicaInfo {
                id: m.id,
                rpc_addr: m.rpc_addr,
                role: m.role,
                voter: m.voter,
                match_index: m.match_index,
                lag: m.lag,
                last_contact_ms: m.last_contact_ms,
                health: match m.health {
                    cairn_raft::ReplicaHealth::Healthy => "healthy",
                    cairn_raft::ReplicaHealth::Lagging => "lagging",
                    cairn_raft::ReplicaHealth::Unreachable => "unreachable",
                }
                .into(),
            })
            .collect(),
    };
    Ok(Json(body).into_response())
}
