//! The calling side of the cluster RPC: one pooled HTTP client per node ([`Transport`]), and
//! openraft's network over it ([`Peer`]). Nothing here knows the [`Cluster`](crate::Cluster):
//! the cluster owns a transport, never the reverse.

use std::time::Duration;

use axum::http::StatusCode;
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
use serde::Serialize;

use super::{
    Refusal, CLUSTER_HEADER, FROM_HEADER, MAX_RPC_BODY, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE,
};
use crate::{Member, NodeId, TypeConfig};

/// How one node talks to the others: one pooled HTTP client, the cluster name and our id.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    cluster: String,
    from: NodeId,
}

/// What went wrong sending an RPC, before openraft's or our own error types are chosen.
#[derive(Debug)]
pub enum SendError {
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
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
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
            let msg = serde_json::from_slice::<Refusal>(&bytes)
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
            PATH_APPEND,
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
            PATH_SNAPSHOT,
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
        self.call(RPCTypes::Vote, PATH_VOTE, &rpc, option.hard_ttl())
            .await
    }
}
