//! The cluster RPC: openraft's messages, and writes forwarded to the leader, as JSON over HTTP on
//! each node's `--rpc-addr` listener.
//!
//! Every request names its cluster and its sender in headers. A node refuses a request for
//! another cluster, and one from a node outside its membership (once it has one: a node that is
//! waiting to join accepts the leader that is adding it). So a removed node cannot disturb the
//! cluster with votes, and two clusters wired together by mistake stay apart.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cairn_client::{ApiError, ErrorCode};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::command::{Op, OpResult};
use crate::{Member, NodeId, TypeConfig};

/// Header naming the cluster a request is for.
pub const CLUSTER_HEADER: &str = "x-cairn-cluster";
/// Header naming the node that sent a request.
pub const FROM_HEADER: &str = "x-cairn-from";

/// Largest RPC body: an append-entries batch of big registrations, or a snapshot chunk.
pub const MAX_RPC_BODY: usize = 64 * 1024 * 1024;

/// A request a node hands to the leader because only the leader can propose it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    Write(Op),
    Join { id: NodeId, rpc_addr: String },
    Remove { id: NodeId },
}

/// The leader's answer to a [`Forward`]: the index that committed it and the apply result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardReply {
    pub index: u64,
    pub result: OpResult,
}

/// How one node talks to the others: one pooled HTTP client, the cluster name and our id.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    cluster: String,
    from: NodeId,
}

/// What went wrong sending an RPC, before openraft's or our own error types are chosen.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection: the request was never sent.
    Unreachable(reqwest::Error),
    /// The connection failed after the request may have been sent: it may have been executed.
    Lost(reqwest::Error),
    Timeout,
    /// The peer answered, but not with the expected body (refused, or a different program).
    Protocol(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable(e) => write!(f, "unreachable: {e}"),
            SendError::Lost(e) => write!(f, "connection lost: {e}"),
            SendError::Timeout => f.write_str("timed out"),
            SendError::Protocol(m) => f.write_str(m),
        }
    }
}

impl Transport {
    pub fn new(cluster: &str, from: NodeId) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Transport {
            http,
            cluster: cluster.to_owned(),
            from,
        })
    }

    /// POSTs `body` as JSON to `http://{addr}{path}` and reads a JSON answer.
    pub(crate) async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        let res = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(CLUSTER_HEADER, &self.cluster)
            .header(FROM_HEADER, self.from.to_string())
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    SendError::Timeout
                } else if e.is_connect() {
                    SendError::Unreachable(e)
                } else {
                    SendError::Lost(e)
                }
            })?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| {
            if e.is_timeout() {
                SendError::Timeout
            } else {
                SendError::Protocol(format!("reading the answer from {addr}: {e}"))
            }
        })?;
        if status != StatusCode::OK {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(SendError::Protocol(format!(
                "{addr} answered {status}: {msg}"
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| SendError::Protocol(format!("bad answer from {addr}: {e}")))
    }
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            transport: self.clone(),
            target,
            addr: node.rpc_addr.clone(),
        }
    }
}

/// The connection to one peer (connections themselves are pooled by the shared client).
pub struct Peer {
    transport: Transport,
    target: NodeId,
    addr: String,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .transport
            .post(&self.addr, path, req, timeout)
            .await
            .map_err(|e| match e {
                SendError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
                SendError::Lost(e) => RPCError::Network(NetworkError::new(&e)),
                SendError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.transport.from,
                    target: self.target,
                    timeout,
                }),
                SendError::Protocol(m) => {
                    RPCError::Network(NetworkError::new(&std::io::Error::other(m)))
                }
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let body = serde_json::value::to_raw_value(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if body.get().len() > MAX_RPC_BODY && entries > 1 {
            // openraft retries with at most this many entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        self.call(
            RPCTypes::AppendEntries,
            "/raft/append",
            &body,
            option.hard_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            "/raft/snapshot",
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, "/raft/vote", &rpc, option.hard_ttl())
            .await
    }
}

/// The RPC listener's routes.
pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/forward", post(forward))
        .route("/raft/alive", post(alive))
        .route("/raft/read_index", post(read_index))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(cluster)
}

fn refuse(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(ApiError::new(ErrorCode::InvalidArgument, message)),
    )
        .into_response()
}

/// Checks the cluster name and that the sender is a member (or that we have no members yet).
/// The refusal is the response to send. Routes added to the RPC listener outside this crate
/// call it too.
pub fn admit(cluster: &Cluster, headers: &HeaderMap) -> Result<NodeId, Box<Response>> {
    let name = headers
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if name != cluster.name() {
        return Err(refuse(format!(
            "this node belongs to cluster {:?}, not {name:?}",
            cluster.name()
        ))
        .into());
    }
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok())
        .ok_or_else(|| Box::new(refuse("missing or bad sender id".into())))?;
    if !cluster.admits(from) {
        return Err(refuse(format!("node {from} is not a member of this cluster")).into());
    }
    Ok(from)
}

async fn append(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = admit(&cluster, &headers) {
        return *r;
    }
    let leader = req.vote.leader_id().voted_for();
    let res = cluster.raft().append_entries(req).await;
    if res.as_ref().is_ok_and(|r| r.is_success()) {
        if let Some(leader) = leader {
            cluster.heard_from_leader(leader);
        }
    }
    Json(res).into_response()
}

async fn vote(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Err(r) = admit(&cluster, &headers) {
        return *r;
    }
    Json(cluster.raft().vote(req).await).into_response()
}

async fn snapshot(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = admit(&cluster, &headers) {
        return *r;
    }
    Json(cluster.raft().install_snapshot(req).await).into_response()
}

async fn alive(State(cluster): State<Arc<Cluster>>, headers: HeaderMap) -> Response {
    match admit(&cluster, &headers) {
        Ok(from) => {
            cluster.mark_alive(from);
            Json(()).into_response()
        }
        Err(r) => *r,
    }
}

async fn read_index(State(cluster): State<Arc<Cluster>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&cluster, &headers) {
        return *r;
    }
    let reply: Result<u64, ApiError> = cluster.local_read_index().await.map_err(ApiError::from);
    Json(reply).into_response()
}

async fn forward(
    State(cluster): State<Arc<Cluster>>,
    headers: HeaderMap,
    Json(req): Json<Forward>,
) -> Response {
    if let Err(r) = admit(&cluster, &headers) {
        return *r;
    }
    let reply: Result<ForwardReply, ApiError> =
        cluster.execute_forwarded(req).await.map_err(ApiError::from);
    Json(reply).into_response()
}
