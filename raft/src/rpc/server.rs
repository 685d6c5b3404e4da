//! The serving side of the cluster RPC: one router, one admission layer in front of every route.
//!
//! The layer runs before any handler and so before any body is read: it checks the cluster name
//! and that the sender is a member (or that this node has no membership yet: a node waiting to
//! be added accepts the leader that adds it), and hands the handler the sender as a [`Caller`].
//! Routes added by other crates (the agent's heartbeat relay) are merged in *before* the layer
//! is applied, so no route can forget admission. Bodies are capped at [`MAX_RPC_BODY`], snapshot
//! chunks at [`MAX_SNAPSHOT_BODY`]; a chunk goes to a file, checked against the snapshot's
//! announced size ([`SNAPSHOT_SIZE_HEADER`]) and the chunks before it (`crate::snapshot`).
//!
//! This is the one place that decides who a caller is. Over mutual TLS (when the node has
//! certificates) the sender's header is only a claim: it counts when the certificate the
//! handshake verified against the cluster's CA carries that node's name,
//! `node-<id>.<cluster>.cairn` (`cairn_tls::identity`). A request that did not come over TLS
//! with a certificate is refused then, whatever its headers say.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use cairn_tls::{node_name, PeerCertificates};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use super::{
    Forward, ForwardReply, Refusal, CLUSTER_HEADER, FROM_HEADER, MAX_RPC_BODY, MAX_SNAPSHOT_BODY,
    PATH_ALIVE, PATH_APPEND, PATH_ELECT, PATH_FORWARD, PATH_READ_INDEX, PATH_REPLICATION,
    PATH_SNAPSHOT, PATH_VOTE, SNAPSHOT_SIZE_HEADER,
};
use crate::cluster::{Cluster, WriteError};
use crate::{NodeId, TypeConfig};

/// The admitted sender of an RPC, put into the request's extensions by the admission layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub NodeId);

/// The RPC listener's routes: Raft's own, plus `extra` (routes of other crates, with their
/// state already applied), all behind the admission layer.
pub fn router(cluster: Arc<Cluster>, extra: Router) -> Router {
    let snapshots = Router::new()
        .route(PATH_SNAPSHOT, post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BODY))
        .with_state(cluster.clone());
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_FORWARD, post(forward))
        .route(PATH_ALIVE, post(alive))
        .route(PATH_READ_INDEX, post(read_index))
        .route(PATH_ELECT, post(elect))
        .route(PATH_REPLICATION, post(replication))
        .with_state(cluster.clone())
        .merge(extra)
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        // Merged after the general limit, so only snapshot chunks get the larger one.
        .merge(snapshots)
        .layer(middleware::from_fn_with_state(cluster, admit))
}

fn refuse(message: String) -> Response {
    (StatusCode::FORBIDDEN, Json(Refusal { message })).into_response()
}

/// Who is calling, if the cluster admits it; why not otherwise.
fn identify(
    cluster: &Cluster,
    headers: &HeaderMap,
    certificate: Option<&PeerCertificates>,
) -> Result<NodeId, String> {
    let name = headers
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if name != cluster.name() {
        return Err(format!(
            "this node belongs to cluster {:?}, not {:?}",
            cluster.name(),
            name.chars().take(64).collect::<String>()
        ));
    }
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok())
        .ok_or_else(|| "missing or bad sender id".to_owned())?;
    if cluster.requires_certificates() {
        let Some(certificate) = certificate else {
            return Err("this node takes cluster RPCs over mutual TLS only".into());
        };
        if !certificate.certifies(&node_name(cluster.name(), from)) {
            return Err(format!(
                "the certificate presented is not node {from}'s of cluster {:?}",
                cluster.name()
            ));
        }
    }
    if !cluster.admits(from) {
        return Err(format!("node {from} is not a member of this cluster"));
    }
    Ok(from)
}

/// The admission layer: runs before the handler, so before any body is read.
async fn admit(State(cluster): State<Arc<Cluster>>, mut req: Request, next: Next) -> Response {
    match identify(
        &cluster,
        req.headers(),
        req.extensions().get::<PeerCertificates>(),
    ) {
        Ok(from) => {
            req.extensions_mut().insert(Caller(from));
            next.run(req).await
        }
        Err(why) => refuse(why),
    }
}

async fn append(
    State(cluster): State<Arc<Cluster>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    let leader = req.vote.leader_id().voted_for();
    let res = cluster.raft().append_entries(req).await;
    if res.as_ref().is_ok_and(|r| r.is_success()) && leader.is_some() {
        cluster.heard_from_leader();
    }
    Json(res).into_response()
}

async fn vote(
    State(cluster): State<Arc<Cluster>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    cluster.saw_candidate(&req);
    Json(cluster.raft().vote(req).await).into_response()
}

async fn snapshot(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    let size = headers
        .get(SNAPSHOT_SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(size) = size else {
        let message = format!("a snapshot chunk needs the {SNAPSHOT_SIZE_HEADER} header");
        return (StatusCode::BAD_REQUEST, Json(Refusal { message })).into_response();
    };
    match cluster.receive_snapshot_chunk(req, size).await {
        Ok(reply) => Json(reply).into_response(),
        Err(why) => {
            let message = why.to_string();
            let status = if why.is_local() {
                tracing::error!("cannot receive a snapshot: {message}");
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                tracing::warn!("refused a snapshot chunk: {message}");
                StatusCode::BAD_REQUEST
            };
            (status, Json(Refusal { message })).into_response()
        }
    }
}

async fn alive(State(cluster): State<Arc<Cluster>>, Extension(Caller(from)): Extension<Caller>) {
    cluster.mark_alive(from);
}

async fn elect(
    State(cluster): State<Arc<Cluster>>,
    Extension(Caller(from)): Extension<Caller>,
) -> Response {
    let reply: Result<(), String> = cluster.stand_for_election(from).await;
    Json(reply).into_response()
}

async fn replication(State(cluster): State<Arc<Cluster>>) -> Response {
    let reply: Result<crate::Replication, String> =
        cluster.local_replication().map_err(str::to_owned);
    Json(reply).into_response()
}

async fn read_index(State(cluster): State<Arc<Cluster>>) -> Response {
    let reply: Result<u64, WriteError> = cluster.local_read_index().await;
    Json(reply).into_response()
}

async fn forward(State(cluster): State<Arc<Cluster>>, Json(req): Json<Forward>) -> Response {
    let reply: Result<ForwardReply, WriteError> = cluster.execute_forwarded(req).await;
    Json(reply).into_response()
}
