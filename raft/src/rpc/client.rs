//! The calling side of the cluster RPC: one pooled HTTP client per node ([`Transport`]), and
//! openraft's network over it ([`Peer`]). Nothing here knows the [`Cluster`](crate::Cluster):
//! the cluster owns a transport, never the reverse.

use std::collections::HashMap;
use std::future::Future;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use cairn_tls::{node_name, Reloadable};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, Snapshot, StorageError, Vote};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncSeekExt;

use super::{
    Refusal, CLUSTER_HEADER, FROM_HEADER, MAX_RPC_BODY, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE,
    SNAPSHOT_SIZE_HEADER,
};
use crate::{Member, NodeId, TypeConfig};

/// Over TLS, the cluster RPC client's rustls configuration (the cluster CA as the only root, this
/// node's certificate as its identity), reloadable.
pub type ClientTls = Arc<Reloadable<cairn_tls::rustls::ClientConfig>>;

/// How one node talks to the others: one pooled HTTP client, the cluster name and our id.
///
/// Over TLS a member is called by its identity, `https://node-<id>.<cluster>.cairn:<port>`, and
/// the name is resolved to the member's address from an address book: the server certificate
/// must then carry that node's name, whatever address answered, so a peer is authenticated as
/// the member we meant to call, not as whoever holds the address.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: String,
    from: NodeId,
    tls: Option<ClientTls>,
    /// The local address connections leave from, when one is set.
    source: Option<IpAddr>,
    book: Arc<AddressBook>,
    /// Moves when a member's address changes: its pooled connections (keyed by its name, not
    /// its address) must not go to the old one.
    book_version: std::sync::atomic::AtomicU64,
    /// The HTTP client and the (TLS generation, book version) it was built at.
    http: RwLock<((u64, u64), reqwest::Client)>,
    /// When each peer last answered an append-entries request (heartbeats included): the
    /// leader's "last contact" with its followers.
    answered: parking_lot::Mutex<HashMap<NodeId, std::time::Instant>>,
}

/// Where each member's name points: `node-2.cairn.cairn` -> `10.0.0.2:8300`.
#[derive(Default)]
struct AddressBook(RwLock<HashMap<String, String>>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0 .0.read().get(name.as_str()).cloned();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addr = addr.ok_or_else(|| format!("no address is known for {name}"))?;
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

struct Resolver(Arc<AddressBook>);

/// What went wrong sending an RPC, before openraft's or our own error types are chosen.
#[derive(Debug)]
pub enum SendError {
    /// No connection: the request was never sent.
    Unreachable(String),
    /// The connection failed after the request may have been sent: it may have been executed.
    Lost(reqwest::Error),
    Timeout,
    /// The peer refused the request with this status before running it (admission, limits).
    Refused {
        status: u16,
        message: String,
    },
    /// The peer answered, but not with the expected body (a different program).
    Protocol(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable(e) => write!(f, "unreachable: {e}"),
            SendError::Lost(e) => write!(f, "connection lost: {}", error_chain(e)),
            SendError::Timeout => f.write_str("timed out"),
            SendError::Refused { status, message } => write!(f, "refused ({status}): {message}"),
            SendError::Protocol(m) => f.write_str(m),
        }
    }
}

fn build_http(
    tls: Option<&cairn_tls::rustls::ClientConfig>,
    book: &Arc<AddressBook>,
    source: Option<IpAddr>,
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .local_address(source)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(2));
    match tls {
        None => builder.build(),
        Some(config) => builder
            .use_preconfigured_tls(config.clone())
            .dns_resolver(Arc::new(Resolver(book.clone())))
            .https_only(true)
            .build(),
    }
}

/// The port of `host:port` or `[v6]:port`.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

impl Transport {
    /// A transport for node `from` of `cluster`; over mutual TLS when `tls` is given, and from
    /// the local address `source` when given (else the system picks one per connection).
    pub fn new(
        cluster: &str,
        from: NodeId,
        tls: Option<ClientTls>,
        source: Option<IpAddr>,
    ) -> Result<Self, reqwest::Error> {
        let book = Arc::new(AddressBook::default());
        let current = tls.as_ref().map(|t| (t.generation(), t.current()));
        let http = build_http(current.as_ref().map(|(_, c)| &**c), &book, source)?;
        Ok(Transport {
            inner: Arc::new(Inner {
                cluster: cluster.to_owned(),
                from,
                tls,
                source,
                book,
                book_version: std::sync::atomic::AtomicU64::new(0),
                http: RwLock::new(((current.map_or(0, |(g, _)| g), 0), http)),
                answered: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// When `node` last answered an append-entries request from this node (any answer, a
    /// refusal included: it is reachable).
    pub fn last_answer(&self, node: NodeId) -> Option<std::time::Instant> {
        self.inner.answered.lock().get(&node).copied()
    }

    /// The HTTP client, rebuilt first if the certificates were reloaded since it was built.
    fn http(&self) -> Result<reqwest::Client, SendError> {
        let inner = &self.inner;
        let Some(tls) = &inner.tls else {
            return Ok(inner.http.read().1.clone());
        };
        let generation = (
            tls.generation(),
            inner
                .book_version
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if inner.http.read().0 == generation {
            return Ok(inner.http.read().1.clone());
        }
        let http = build_http(Some(&tls.current()), &inner.book, inner.source)
            .map_err(|e| SendError::Unreachable(format!("cannot build the TLS client: {e}")))?;
        *inner.http.write() = (generation, http.clone());
        Ok(http)
    }

    /// The URL of `path` on member `target` at `addr`.
    fn url(&self, target: NodeId, addr: &str, path: &str) -> Result<String, SendError> {
        if self.inner.tls.is_none() {
            return Ok(format!("http://{addr}{path}"));
        }
        let port = port_of(addr)
            .ok_or_else(|| SendError::Unreachable(format!("{addr:?} is not HOST:PORT")))?;
        let host = node_name(&self.inner.cluster, target);
        let previous = self
            .inner
            .book
            .0
            .write()
            .insert(host.clone(), addr.to_owned());
        if previous.is_some_and(|p| p != addr) {
            self.inner
                .book_version
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(format!("https://{host}:{port}{path}"))
    }

    /// POSTs `body` as JSON to `path` on member `target` at `addr`, and reads a JSON answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        self.post_with(target, addr, path, None, body, timeout)
            .await
    }

    /// [`Transport::post`] with one more header.
    async fn post_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        header: Option<(&'static str, String)>,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        let url = self.url(target, addr, path)?;
        let mut req = self
            .http()?
            .post(url)
            .header(CLUSTER_HEADER, &self.inner.cluster)
            .header(FROM_HEADER, self.inner.from.to_string());
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let res = req.json(body).timeout(timeout).send().await.map_err(|e| {
            let chain = error_chain(&e);
            // A connect that timed out is both: it was never sent. So is a request whose
            // connection the server's TLS refused (under TLS 1.3 a client certificate is
            // judged after the client has started sending, and answered with an alert).
            if e.is_connect() || chain.contains("received fatal alert") {
                SendError::Unreachable(chain)
            } else if e.is_timeout() {
                SendError::Timeout
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
            return Err(SendError::Refused {
                status: status.as_u16(),
                message: format!("{addr} answered {status}: {msg}"),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| SendError::Protocol(format!("bad answer from {addr}: {e}")))
    }
}

/// An error with its causes: a TLS refusal hides under "error trying to connect".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            transport: self.clone(),
            target,
            addr: node.rpc_addr.clone(),
            snapshot_size: None,
        }
    }
}

/// The connection to one peer (connections themselves are pooled by the shared client).
pub struct Peer {
    transport: Transport,
    target: NodeId,
    addr: String,
    /// The size of the snapshot being sent, announced with each of its chunks.
    snapshot_size: Option<u64>,
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
        let header = match action {
            RPCTypes::InstallSnapshot => self
                .snapshot_size
                .map(|size| (SNAPSHOT_SIZE_HEADER, size.to_string())),
            _ => None,
        };
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .transport
            .post_with(self.target, &self.addr, path, header, req, timeout)
            .await
            .map_err(|e| match e {
                SendError::Unreachable(e) => {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
                }
                SendError::Lost(e) => RPCError::Network(NetworkError::new(&e)),
                SendError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.transport.inner.from,
                    target: self.target,
                    timeout,
                }),
                e @ (SendError::Protocol(_) | SendError::Refused { .. }) => {
                    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
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
        let answer = self
            .call(
                RPCTypes::AppendEntries,
                PATH_APPEND,
                &body,
                option.hard_ttl(),
            )
            .await;
        if matches!(answer, Ok(_) | Err(RPCError::RemoteError(_))) {
            let now = std::time::Instant::now();
            self.transport
                .inner
                .answered
                .lock()
                .insert(self.target, now);
        }
        answer
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

    /// openraft's chunked sending, with the snapshot's size measured first so that every chunk
    /// can announce it.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        mut snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let size = snapshot
            .snapshot
            .seek(SeekFrom::End(0))
            .await
            .map_err(|e| {
                StorageError::from_io_error(
                    ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
                    ErrorVerb::Seek,
                    e,
                )
            })?;
        self.snapshot_size = Some(size);
        let sent = Chunked::send_snapshot(self, vote, snapshot, cancel, option).await;
        self.snapshot_size = None;
        sent
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
