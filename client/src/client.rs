//! [`Client`]: typed calls for every native endpoint, with failover across nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    ApiError, AuditList, ClusterStatus, ErrorCode, HealthStatus, HealthUpdate,
    InstanceRegistration, JoinRequest, MaintenanceUpdate, PolicyInfo, PolicyList, PolicyRequest,
    RaftReplication, RestoreResult, ServiceInstances, ServiceList, ServiceSettingsBody,
    ServiceSettingsView, TokenInfo, TokenList, TokenRequest, WhoAmI, WriteResult, INDEX_HEADER,
    TOKEN_HEADER,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A node answered with an error (`index` is its `X-Cairn-Index`, 0 when absent).
    #[error("{status}: {error}")]
    Api {
        status: u16,
        error: ApiError,
        index: u64,
    },
    /// No node could be reached within the retry budget. For a read this also covers a node
    /// that took the request and gave no usable answer (a time-out, a broken connection). A
    /// write ends with this only when its last attempt made no connection at all, so it was
    /// not applied.
    #[error("no Cairn node reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// A write reached `node` (or may have) and no definite answer came back: it may or may not
    /// have been applied. The request timed out or its connection broke after it was sent,
    /// something in between answered 502/503 without the API's error body, or the node answered
    /// `unavailable` (e.g. it forwarded the write to the leader and lost the reply). Not retried:
    /// sending it again could apply it twice, or turn a deregistration that took effect into
    /// `not_found`. Read the state back to learn what happened.
    #[error("the write may or may not have been applied ({node}): {reason}")]
    OutcomeUnknown { node: String, reason: String },
    /// The client was given no node addresses, or an unusable one.
    #[error("bad client configuration: {0}")]
    Config(String),
    /// A node answered with something that is not the API's JSON.
    #[error("unexpected answer from {node}: {message}")]
    Protocol { node: String, message: String },
}

/// What a call does, which decides the failures it may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// A GET. Sending it again changes nothing, so it moves on to the next node after any
    /// failure to get an answer, and after `no_leader`, `unavailable` and `too_many_requests`.
    Read,
    /// A PUT, POST or DELETE (registrations, deregistrations, heartbeats, health, maintenance,
    /// settings, membership). Sent again only when the first copy surely did not reach a
    /// leader: no connection was made, or the node refused it with `no_leader` or
    /// `too_many_requests`. Anything else after sending is [`ClientError::OutcomeUnknown`].
    Write,
}

impl CallKind {
    /// The kind of a request with this method: GET and HEAD read, everything else writes.
    fn of(method: &Method) -> CallKind {
        if method == Method::GET || method == Method::HEAD {
            CallKind::Read
        } else {
            CallKind::Write
        }
    }
}

impl ClientError {
    /// Whether a call of `kind` that failed with this error may be sent again, to the same
    /// node or the next. The retry loop decides with this alone.
    ///
    /// Reads: `Unreachable` (any transport failure), `no_leader`, `unavailable`,
    /// `too_many_requests`. Writes: `Unreachable` (which a write gets only when no connection
    /// was made), `no_leader`, `too_many_requests`. Never `OutcomeUnknown`, a definite refusal
    /// (`not_found`, `invalid_argument`, `conflict`, ...), `Protocol` or `Config`.
    pub fn is_retryable_for(&self, kind: CallKind) -> bool {
        match self {
            ClientError::Api { error, .. } => match error.code {
                ErrorCode::NoLeader | ErrorCode::TooManyRequests => true,
                // The leader may have committed the write before the reply was lost.
                ErrorCode::Unavailable => kind == CallKind::Read,
                _ => false,
            },
            ClientError::Unreachable { .. } => true,
            ClientError::OutcomeUnknown { .. }
            | ClientError::Config(_)
            | ClientError::Protocol { .. } => false,
        }
    }

    /// Whether the call may be sent again whatever it was: the cautious answer,
    /// [`is_retryable_for`](Self::is_retryable_for)`(CallKind::Write)`.
    pub fn is_retryable(&self) -> bool {
        self.is_retryable_for(CallKind::Write)
    }

    /// The API error code, when a node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// How one attempt failed, before the call's [`CallKind`] says what that means.
#[derive(Debug)]
enum Failure {
    /// No connection was made: the request never left this process.
    NotSent(String),
    /// The request was sent, or may have been, and no usable answer came back: a time-out, or a
    /// connection broken before the whole answer arrived.
    NoAnswer(String),
    /// An answer with an error status.
    Status {
        status: StatusCode,
        body: Vec<u8>,
        index: u64,
    },
}

impl Failure {
    /// A failed `send`. Only a failed connect proves that nothing was sent: reqwest reports a
    /// time-out or a connection closed after the request was written the same way whether or
    /// not the node read it.
    fn of_send(e: &reqwest::Error) -> Failure {
        let chain = error_chain(e);
        // Under TLS 1.3 the server judges a client certificate after the client has started
        // sending, and refuses with an alert: the request was never run.
        if e.is_connect() || chain.contains("received fatal alert") {
            Failure::NotSent(chain)
        } else {
            Failure::NoAnswer(chain)
        }
    }

    /// The error a `kind` call that failed this way on `node` comes to.
    fn into_error(self, kind: CallKind, node: &str) -> ClientError {
        let no_answer = |reason: String| match kind {
            CallKind::Read => ClientError::Unreachable {
                tried: node.to_owned(),
                last: reason,
            },
            CallKind::Write => ClientError::OutcomeUnknown {
                node: node.to_owned(),
                reason,
            },
        };
        match self {
            Failure::NotSent(reason) => ClientError::Unreachable {
                tried: node.to_owned(),
                last: reason,
            },
            Failure::NoAnswer(reason) => no_answer(reason),
            Failure::Status {
                status,
                body,
                index,
            } => match serde_json::from_slice::<ApiError>(&body) {
                Ok(error) if kind == CallKind::Write && error.code == ErrorCode::Unavailable => {
                    no_answer(format!("{status}: {error}"))
                }
                Ok(error) => ClientError::Api {
                    status: status.as_u16(),
                    error,
                    index,
                },
                // A proxy in front of the node, or a node going away: not the API's answer.
                Err(_)
                    if status == StatusCode::BAD_GATEWAY
                        || status == StatusCode::SERVICE_UNAVAILABLE =>
                {
                    no_answer(format!("{status} without an API error body"))
                }
                Err(_) => ClientError::Protocol {
                    node: node.to_owned(),
                    message: format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    ),
                },
            },
        }
    }
}

/// An error and its causes, `outer: inner: ...` (reqwest's own message leaves the cause out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A successful read: the body and the index it reflects.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// TLS towards the nodes: a CA to trust besides the system's roots, and a client certificate
/// for nodes that require one (`--tls-client-ca`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

/// How hard a call tries before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, across nodes.
    pub attempts: u32,
    /// Pause after the first failure; doubled after each next one, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Time-out of one request (blocking reads add their wait to it).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A client of a Cairn cluster. Cheap to clone; clones share connections and the node they
/// prefer.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<String>,
    /// Reads, over pooled connections.
    http: reqwest::Client,
    /// Writes, each over a new connection. On a pooled connection that the node has closed (it
    /// was restarted or killed since), a request fails only once it is written, and then
    /// nothing tells it from one the node read before it died: the write's outcome would be
    /// unknown. On a new connection that failure is a failed connect, which proves the request
    /// was not sent, so the write moves on to the next node.
    writes: reqwest::Client,
    /// The node that answered last; calls start there.
    preferred: AtomicUsize,
    retry: RetryPolicy,
    /// The ACL token's secret, sent with every call as `X-Cairn-Token`.
    token: Option<reqwest::header::HeaderValue>,
}

/// `10.0.0.1:8500`, `http://host:8500` or `https://host` → a base URL without trailing slash.
fn base_url(addr: &str) -> Result<String, ClientError> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return Err(ClientError::Config("empty node address".into()));
    }
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    reqwest::Url::parse(&url)
        .map_err(|e| ClientError::Config(format!("{addr:?} is not a node address: {e}")))?;
    Ok(url)
}

/// Options of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Block until the resource's index differs from this one.
    pub index: Option<u64>,
    pub wait: Option<Duration>,
    pub consistent: bool,
    /// Only passing instances (service reads).
    pub passing_only: bool,
    /// Only instances with this tag (service reads).
    pub tag: Option<String>,
}

impl ReadOptions {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(i) = self.index {
            q.push(format!("index={i}"));
        }
        if let Some(w) = self.wait {
            q.push(format!("wait={}ms", w.as_millis()));
        }
        if self.consistent {
            q.push("consistent".into());
        }
        if self.passing_only {
            q.push("health=passing".into());
        }
        if let Some(t) = &self.tag {
            q.push(format!("tag={t}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

impl Client {
    /// A client of the nodes at `addrs` (`host:port` or URLs), tried in order on failure.
    pub fn new<I, S>(addrs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_policy(addrs, RetryPolicy::default())
    }

    pub fn with_policy<I, S>(addrs: I, retry: RetryPolicy) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_tls(addrs, retry, &TlsOptions::default())
    }

    /// A client of `https://` nodes signed by a private CA, or with a client certificate: the
    /// CLI's `--ca-file`, `--client-cert` and `--client-key`.
    pub fn with_tls<I, S>(
        addrs: I,
        retry: RetryPolicy,
        tls: &TlsOptions,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ca = match &tls.ca_file {
            None => None,
            Some(path) => {
                let pem = read_file("CA file", path)?;
                Some(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ClientError::Config(format!(
                        "{}: not a PEM CA certificate: {e}",
                        path.display()
                    ))
                })?)
            }
        };
        let identity = match (&tls.client_cert, &tls.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let mut pem = read_file("client certificate", cert)?;
                pem.push(b'\n');
                pem.extend(read_file("client key", key)?);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ClientError::Config(format!(
                        "{} with {}: not a usable certificate and key: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?)
            }
            _ => {
                return Err(ClientError::Config(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        let nodes = addrs
            .into_iter()
            .map(|a| base_url(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ClientError::Config("no node addresses given".into()));
        }
        let build = |pooled: bool| {
            let builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            let mut builder = if pooled {
                builder
            } else {
                builder.pool_max_idle_per_host(0)
            };
            if let Some(certs) = &ca {
                for c in certs {
                    builder = builder.add_root_certificate(c.clone());
                }
            }
            if let Some(id) = &identity {
                builder = builder.identity(id.clone());
            }
            builder
                .build()
                .map_err(|e| ClientError::Config(e.to_string()))
        };
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                http: build(true)?,
                writes: build(false)?,
                preferred: AtomicUsize::new(0),
                retry,
                token: None,
            }),
        })
    }

    /// This client, sending `secret` as its ACL token with every call (the CLI's `--token`).
    pub fn with_token(self, secret: &str) -> Result<Client, ClientError> {
        let mut value = reqwest::header::HeaderValue::from_str(secret.trim())
            .map_err(|_| ClientError::Config("the token is not a valid header value".into()))?;
        value.set_sensitive(true);
        let i = &self.inner;
        Ok(Client {
            inner: Arc::new(Inner {
                nodes: i.nodes.clone(),
                http: i.http.clone(),
                writes: i.writes.clone(),
                preferred: AtomicUsize::new(i.preferred.load(Ordering::Relaxed)),
                retry: i.retry.clone(),
                token: Some(value),
            }),
        })
    }

    /// The node addresses this client uses.
    pub fn nodes(&self) -> &[String] {
        &self.inner.nodes
    }

    /// Sends a request to the preferred node, moving on to the next one when
    /// [`ClientError::is_retryable_for`] allows it for the method's [`CallKind`], with
    /// exponential backoff, within the retry policy.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra_timeout: Duration,
    ) -> Result<Indexed<T>, ClientError> {
        let inner = &self.inner;
        let kind = CallKind::of(&method);
        let mut backoff = inner.retry.backoff;
        let mut last: Option<ClientError> = None;
        let n = inner.nodes.len();
        for attempt in 0..inner.retry.attempts.max(1) {
            let i = (inner.preferred.load(Ordering::Relaxed) + attempt as usize) % n;
            let node = &inner.nodes[i];
            let http = match kind {
                CallKind::Read => &inner.http,
                CallKind::Write => &inner.writes,
            };
            let mut req = http
                .request(method.clone(), format!("{node}{path}"))
                .timeout(inner.retry.request_timeout + extra_timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(t) = &inner.token {
                req = req.header(TOKEN_HEADER, t.clone());
            }
            let result = match req.send().await {
                Err(e) if e.is_builder() => Err(ClientError::Config(error_chain(&e))),
                Err(e) => Err(Failure::of_send(&e).into_error(kind, node)),
                Ok(res) => decode(kind, node, res).await,
            };
            match result {
                Ok(v) => {
                    inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_retryable_for(kind) => {
                    last = Some(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(inner.retry.max_backoff);
                }
                Err(e) => {
                    if let ClientError::OutcomeUnknown { .. } = e {
                        // This node may be hung or cut off: the next call starts on the next
                        // one (a heartbeat loop would otherwise time out on it every tick).
                        inner.preferred.store((i + 1) % n, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        Err(match last {
            Some(ClientError::Unreachable { last, .. }) => ClientError::Unreachable {
                tried: inner.nodes.join(", "),
                last,
            },
            Some(e) => e,
            None => ClientError::Config("no attempt was made".into()),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        wait: Option<Duration>,
    ) -> Result<Indexed<T>, ClientError> {
        self.call::<(), T>(Method::GET, path, None, wait.unwrap_or_default())
            .await
    }

    async fn write<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<WriteResult, ClientError> {
        Ok(self
            .call::<B, WriteResult>(method, path, body, Duration::ZERO)
            .await?
            .value)
    }

    /// Registers (or replaces) an instance.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &InstanceRegistration,
    ) -> Result<WriteResult, ClientError> {
        self.write(
            Method::PUT,
            &format!("/v1/services/{service}/instances/{id}"),
            Some(registration),
        )
        .await
    }

    pub async fn deregister(&self, service: &str, id: &str) -> Result<WriteResult, ClientError> {
        self.write::<()>(
            Method::DELETE,
            &format!("/v1/services/{service}/instances/{id}"),
            None,
        )
        .await
    }

    pub async fn set_health(
        &self,
        service: &str,
        id: &str,
        status: HealthStatus,
        output: Option<String>,
    ) -> Result<WriteResult, ClientError> {
        self.write(
            Method::PUT,
            &format!("/v1/services/{service}/instances/{id}/health"),
            Some(&HealthUpdate { status, output }),
        )
        .await
    }

    pub async fn set_maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<WriteResult, ClientError> {
        let body = MaintenanceUpdate {
            enable: reason.is_some(),
            reason,
        };
        self.write(
            Method::PUT,
            &format!("/v1/services/{service}/instances/{id}/maintenance"),
            Some(&body),
        )
        .await
    }

    /// Passes the instance's TTL checks.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::PUT,
            &format!("/v1/services/{service}/instances/{id}/heartbeat"),
            None,
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    pub async fn services(&self, opts: &ReadOptions) -> Result<Indexed<ServiceList>, ClientError> {
        self.get(&format!("/v1/services{}", opts.query()), opts.wait)
            .await
    }

    /// A service's instances. A service without instances is `Ok` with an empty list (its
    /// index still usable for blocking), not an error.
    pub async fn service(
        &self,
        name: &str,
        opts: &ReadOptions,
    ) -> Result<Indexed<ServiceInstances>, ClientError> {
        match self
            .get(&format!("/v1/services/{name}{}", opts.query()), opts.wait)
            .await
        {
            Err(ClientError::Api {
                status: 404, index, ..
            }) => Ok(Indexed {
                index,
                value: ServiceInstances {
                    name: name.to_owned(),
                    index,
                    instances: Vec::new(),
                },
            }),
            other => other,
        }
    }

    pub async fn settings(&self, service: &str) -> Result<ServiceSettingsView, ClientError> {
        Ok(self
            .get(&format!("/v1/services/{service}/settings"), None)
            .await?
            .value)
    }

    pub async fn set_settings(
        &self,
        service: &str,
        settings: &ServiceSettingsBody,
    ) -> Result<WriteResult, ClientError> {
        self.write(
            Method::PUT,
            &format!("/v1/services/{service}/settings"),
            Some(settings),
        )
        .await
    }

    /// Removes a service's settings; its DNS answers go back to the agent's defaults.
    pub async fn delete_settings(&self, service: &str) -> Result<WriteResult, ClientError> {
        self.write::<()>(
            Method::DELETE,
            &format!("/v1/services/{service}/settings"),
            None,
        )
        .await
    }

    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        Ok(self.get("/v1/cluster", None).await?.value)
    }

    /// Replication as the leader sees it: each member's match index, lag, last contact and
    /// health (any node asks the leader).
    pub async fn operator_raft(&self) -> Result<RaftReplication, ClientError> {
        Ok(self.get("/v1/operator/raft", None).await?.value)
    }

    pub async fn join(&self, id: u64, rpc_addr: &str) -> Result<WriteResult, ClientError> {
        self.write(
            Method::POST,
            "/v1/cluster/members",
            Some(&JoinRequest {
                id,
                rpc_addr: rpc_addr.to_owned(),
            }),
        )
        .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<WriteResult, ClientError> {
        self.write::<()>(Method::DELETE, &format!("/v1/cluster/members/{id}"), None)
            .await
    }

    /// Makes the first management token (once per cluster); its secret is in the answer.
    pub async fn acl_bootstrap(&self) -> Result<TokenInfo, ClientError> {
        Ok(self
            .call::<(), TokenInfo>(Method::PUT, "/v1/acl/bootstrap", None, Duration::ZERO)
            .await?
            .value)
    }

    /// The token this client sends, as the cluster sees it.
    pub async fn acl_whoami(&self) -> Result<WhoAmI, ClientError> {
        Ok(self.get("/v1/acl/whoami", None).await?.value)
    }

    /// Creates a token; its secret is in the answer, and only there.
    pub async fn acl_token_create(&self, req: &TokenRequest) -> Result<TokenInfo, ClientError> {
        Ok(self
            .call::<TokenRequest, TokenInfo>(
                Method::POST,
                "/v1/acl/tokens",
                Some(req),
                Duration::ZERO,
            )
            .await?
            .value)
    }

    pub async fn acl_token_update(
        &self,
        accessor: &str,
        req: &TokenRequest,
    ) -> Result<WriteResult, ClientError> {
        self.write(
            Method::PUT,
            &format!("/v1/acl/tokens/{accessor}"),
            Some(req),
        )
        .await
    }

    pub async fn acl_tokens(&self) -> Result<TokenList, ClientError> {
        Ok(self.get("/v1/acl/tokens", None).await?.value)
    }

    pub async fn acl_token_delete(&self, accessor: &str) -> Result<WriteResult, ClientError> {
        self.write::<()>(Method::DELETE, &format!("/v1/acl/tokens/{accessor}"), None)
            .await
    }

    /// Creates or replaces policy `name`.
    pub async fn acl_policy_set(
        &self,
        name: &str,
        req: &PolicyRequest,
    ) -> Result<WriteResult, ClientError> {
        self.write(Method::PUT, &format!("/v1/acl/policies/{name}"), Some(req))
            .await
    }

    pub async fn acl_policy(&self, name: &str) -> Result<PolicyInfo, ClientError> {
        Ok(self
            .get(&format!("/v1/acl/policies/{name}"), None)
            .await?
            .value)
    }

    pub async fn acl_policies(&self) -> Result<PolicyList, ClientError> {
        Ok(self.get("/v1/acl/policies", None).await?.value)
    }

    pub async fn acl_policy_delete(&self, name: &str) -> Result<WriteResult, ClientError> {
        self.write::<()>(Method::DELETE, &format!("/v1/acl/policies/{name}"), None)
            .await
    }

    /// The most recent changes made through the API (needs `operator:read`).
    pub async fn audit(&self, limit: Option<usize>) -> Result<AuditList, ClientError> {
        let path = match limit {
            Some(n) => format!("/v1/audit?limit={n}"),
            None => "/v1/audit".to_owned(),
        };
        Ok(self.get(&path, None).await?.value)
    }
}

/// A backup being downloaded (`GET /v1/snapshot`), read chunk by chunk so it is never whole
/// in memory.
pub struct SnapshotDownload {
    node: String,
    index: u64,
    res: reqwest::Response,
}

impl SnapshotDownload {
    /// The Raft index the backup was taken at (`X-Cairn-Index`).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The node it comes from.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The next bytes; `None` at the end. A connection broken half-way is an error, and what
    /// was received lacks its trailer (a truncated backup).
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.res.chunk().await {
            Ok(c) => Ok(c.map(|b| b.to_vec())),
            Err(e) => Err(ClientError::Unreachable {
                tried: self.node.clone(),
                last: format!("the backup broke off: {}", error_chain(&e)),
            }),
        }
    }
}

impl Client {
    /// Starts downloading a backup (`GET /v1/snapshot`, operator:write) from the first node that
    /// answers. Each node is tried in turn (a read: safe to send again).
    pub async fn snapshot(&self) -> Result<SnapshotDownload, ClientError> {
        let inner = &self.inner;
        let mut last = None;
        for node in &inner.nodes {
            let mut req = inner
                .http
                .get(format!("{node}/v1/snapshot"))
                .timeout(SNAPSHOT_TIMEOUT);
            if let Some(t) = &inner.token {
                req = req.header(TOKEN_HEADER, t.clone());
            }
            let res = match req.send().await {
                Ok(res) => res,
                Err(e) => {
                    last = Some(Failure::of_send(&e).into_error(CallKind::Read, node));
                    continue;
                }
            };
            let status = res.status();
            let index = header_index(&res);
            if status.is_success() {
                return Ok(SnapshotDownload {
                    node: node.clone(),
                    index,
                    res,
                });
            }
            let body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let e = Failure::Status {
                status,
                body,
                index,
            }
            .into_error(CallKind::Read, node);
            if !e.is_retryable_for(CallKind::Read) {
                return Err(e);
            }
            last = Some(e);
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no node addresses given".into())))
    }

    /// Restores a backup (`PUT /v1/snapshot`, operator:write): the bytes of a file `snapshot`
    /// saved. Sent to the next node only when it surely did not reach one (a write).
    pub async fn snapshot_restore(
        &self,
        backup: Vec<u8>,
        allow_lockout: bool,
    ) -> Result<RestoreResult, ClientError> {
        let inner = &self.inner;
        let query = if allow_lockout { "?allow_lockout" } else { "" };
        let mut last = None;
        for node in &inner.nodes {
            let mut req = inner
                .writes
                .put(format!("{node}/v1/snapshot{query}"))
                .timeout(SNAPSHOT_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(backup.clone());
            if let Some(t) = &inner.token {
                req = req.header(TOKEN_HEADER, t.clone());
            }
            let result = match req.send().await {
                Err(e) => Err(Failure::of_send(&e).into_error(CallKind::Write, node)),
                Ok(res) => decode(CallKind::Write, node, res).await,
            };
            match result {
                Ok(r) => return Ok(r.value),
                Err(e @ ClientError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no node addresses given".into())))
    }
}

/// How long a backup's download or a restore may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

fn header_index(res: &reqwest::Response) -> u64 {
    res.headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn decode<T: DeserializeOwned>(
    kind: CallKind,
    node: &str,
    res: reqwest::Response,
) -> Result<Indexed<T>, ClientError> {
    let status = res.status();
    let index = res
        .headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bytes = match res.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("{status}, then the answer broke off: {}", error_chain(&e));
            return Err(Failure::NoAnswer(reason).into_error(kind, node));
        }
    };
    if status.is_success() {
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            node: node.to_owned(),
            message: e.to_string(),
        })?;
        return Ok(Indexed { index, value });
    }
    Err(Failure::Status {
        status,
        body: bytes.to_vec(),
        index,
    }
    .into_error(kind, node))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const READ: CallKind = CallKind::Read;
    const WRITE: CallKind = CallKind::Write;

    /// The error's variant, and whether a call of `kind` would send it again.
    fn verdict(e: &ClientError, kind: CallKind) -> Verdict {
        let name = match e {
            ClientError::Api { .. } => "api",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::OutcomeUnknown { .. } => "unknown",
            ClientError::Config(_) => "config",
            ClientError::Protocol { .. } => "protocol",
        };
        (name, e.is_retryable_for(kind))
    }

    fn api_body(code: &str) -> String {
        format!(r#"{{"code": "{code}", "message": "m"}}"#)
    }

    /// A variant's name, and whether the call is sent again.
    type Verdict = (&'static str, bool);

    #[test]
    fn what_an_answer_means_for_a_read_and_for_a_write() {
        // (status, body, read verdict, write verdict)
        let cases: Vec<(u16, String, Verdict, Verdict)> = vec![
            // Refused before the log: safe to send again, whatever the call.
            (503, api_body("no_leader"), ("api", true), ("api", true)),
            (
                429,
                api_body("too_many_requests"),
                ("api", true),
                ("api", true),
            ),
            // The node lost the leader's reply: the write may have committed.
            (
                503,
                api_body("unavailable"),
                ("api", true),
                ("unknown", false),
            ),
            // Something in between, or a node going away, answered instead of the API.
            (
                502,
                "Bad Gateway".into(),
                ("unreachable", true),
                ("unknown", false),
            ),
            (
                503,
                String::new(),
                ("unreachable", true),
                ("unknown", false),
            ),
            // Definite answers.
            (404, api_body("not_found"), ("api", false), ("api", false)),
            (
                400,
                api_body("invalid_argument"),
                ("api", false),
                ("api", false),
            ),
            (409, api_body("conflict"), ("api", false), ("api", false)),
            (
                413,
                api_body("body_too_large"),
                ("api", false),
                ("api", false),
            ),
            (500, api_body("internal"), ("api", false), ("api", false)),
            (
                500,
                "<html>".into(),
                ("protocol", false),
                ("protocol", false),
            ),
            (
                504,
                "Gateway Timeout".into(),
                ("protocol", false),
                ("protocol", false),
            ),
        ];
        for (status, body, read, write) in cases {
            for (kind, want) in [(READ, read), (WRITE, write)] {
                let failure = Failure::Status {
                    status: StatusCode::from_u16(status).unwrap(),
                    body: body.clone().into_bytes(),
                    index: 7,
                };
                let e = failure.into_error(kind, "http://n1");
                assert_eq!(
                    verdict(&e, kind),
                    want,
                    "{kind:?} answered {status} {body}: {e}"
                );
                if let ClientError::Api { index, .. } = e {
                    assert_eq!(index, 7);
                }
            }
        }
    }

    #[test]
    fn what_a_transport_failure_means_for_a_read_and_for_a_write() {
        let not_sent = || Failure::NotSent("connection refused".into());
        let no_answer = || Failure::NoAnswer("operation timed out".into());
        let e = not_sent().into_error(READ, "http://n1");
        assert_eq!(verdict(&e, READ), ("unreachable", true));
        let e = not_sent().into_error(WRITE, "http://n1");
        assert_eq!(verdict(&e, WRITE), ("unreachable", true));
        let e = no_answer().into_error(READ, "http://n1");
        assert_eq!(verdict(&e, READ), ("unreachable", true));
        let e = no_answer().into_error(WRITE, "http://n1");
        assert_eq!(verdict(&e, WRITE), ("unknown", false));
        assert!(e.to_string().contains("may or may not"), "{e}");
    }

    #[test]
    fn the_cautious_answer_is_the_one_for_writes_and_methods_decide_the_kind() {
        let unavailable = Failure::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: api_body("unavailable").into_bytes(),
            index: 0,
        }
        .into_error(READ, "http://n1");
        assert!(unavailable.is_retryable_for(READ));
        assert!(!unavailable.is_retryable_for(WRITE));
        assert!(!unavailable.is_retryable());
        assert_eq!(CallKind::of(&Method::GET), READ);
        assert_eq!(CallKind::of(&Method::HEAD), READ);
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(CallKind::of(&m), WRITE, "{m}");
        }
    }

    /// What a fake node does with each request, once it has read all of it.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        /// Closes the connection without answering (FIN).
        Close,
        /// Resets the connection without answering (RST).
        Reset,
        /// Keeps the connection open and never answers.
        Hang,
        /// Answers with this status and JSON body.
        Answer(u16, &'static str),
    }

    /// A one-trick HTTP server that counts the connections it accepted and the requests it read
    /// in full.
    struct FakeNode {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    /// Reads one request (its head, then a Content-Length body); false at the end of the
    /// connection.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    impl FakeNode {
        async fn start(behaviour: Behaviour) -> FakeNode {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let (accepted, read) = (connections.clone(), requests.clone());
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let read = read.clone();
                    tokio::spawn(async move {
                        while read_request(&mut conn).await {
                            read.fetch_add(1, Ordering::SeqCst);
                            match behaviour {
                                Behaviour::Close => return,
                                Behaviour::Reset => return conn.set_zero_linger().unwrap(),
                                Behaviour::Hang => {
                                    return tokio::time::sleep(Duration::from_secs(60)).await
                                }
                                // Keep-alive: the connection stays open for the next request.
                                Behaviour::Answer(status, body) => {
                                    let answer = format!(
                                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                         content-length: {}\r\n\r\n{body}",
                                        body.len()
                                    );
                                    if conn.write_all(answer.as_bytes()).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            });
            FakeNode {
                addr,
                connections,
                requests,
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    /// A port nothing listens on.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn only_a_failed_connect_proves_that_nothing_was_sent() {
        let send = |addr: SocketAddr| async move {
            reqwest::Client::new()
                .put(format!("http://{addr}/v1/services/web/instances/w1"))
                .json(&serde_json::json!({"address": "10.0.0.1", "port": 80}))
                .timeout(Duration::from_millis(300))
                .send()
                .await
                .unwrap_err()
        };
        let refused = Failure::of_send(&send(closed_port()).await);
        assert!(matches!(refused, Failure::NotSent(_)), "{refused:?}");
        assert_eq!(
            verdict(&refused.into_error(WRITE, "n"), WRITE),
            ("unreachable", true)
        );

        for behaviour in [Behaviour::Hang, Behaviour::Close, Behaviour::Reset] {
            let node = FakeNode::start(behaviour).await;
            let e = send(node.addr).await;
            assert_eq!(
                node.requests(),
                1,
                "{behaviour:?}: the node read the request"
            );
            assert_eq!(
                e.is_timeout(),
                matches!(behaviour, Behaviour::Hang),
                "{behaviour:?}: {e:?}"
            );
            let reason = match Failure::of_send(&e) {
                Failure::NoAnswer(reason) => reason,
                other => panic!("{behaviour:?}: {other:?}"),
            };
            let read = Failure::NoAnswer(reason.clone()).into_error(READ, "n");
            assert_eq!(verdict(&read, READ), ("unreachable", true));
            let write = Failure::NoAnswer(reason).into_error(WRITE, "n");
            assert_eq!(verdict(&write, WRITE), ("unknown", false), "{behaviour:?}");
        }
    }

    fn client_of(nodes: &[&FakeNode]) -> Client {
        let policy = RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            request_timeout: Duration::from_millis(500),
        };
        Client::with_policy(nodes.iter().map(|n| n.addr.to_string()), policy).unwrap()
    }

    const OK: Behaviour = Behaviour::Answer(200, r#"{"index": 9}"#);

    #[tokio::test]
    async fn a_write_whose_answer_is_lost_is_sent_once_and_a_read_moves_on() {
        for lost in [Behaviour::Close, Behaviour::Reset, Behaviour::Hang] {
            let (bad, good) = (FakeNode::start(lost).await, FakeNode::start(OK).await);
            let client = client_of(&[&bad, &good]);
            let e = client.deregister("web", "w1").await.unwrap_err();
            assert_eq!(verdict(&e, WRITE), ("unknown", false), "{lost:?}: {e}");
            assert_eq!((bad.requests(), good.requests()), (1, 0), "{lost:?}");
            // The next call starts on the next node.
            client.deregister("web", "w2").await.unwrap();
            assert_eq!((bad.requests(), good.requests()), (1, 1), "{lost:?}");

            let client = client_of(&[&bad, &good]);
            let read = client.get::<serde_json::Value>("/v1/services", None).await;
            assert_eq!(read.unwrap().value["index"], 9, "{lost:?}");
            assert_eq!((bad.requests(), good.requests()), (2, 2), "{lost:?}");
        }
    }

    #[tokio::test]
    async fn a_write_moves_on_only_when_it_surely_did_not_reach_a_leader() {
        // (first node's answer, whether the write then goes to the second node)
        let cases = [
            (
                Behaviour::Answer(503, r#"{"code": "no_leader", "message": "m"}"#),
                true,
            ),
            (
                Behaviour::Answer(429, r#"{"code": "too_many_requests", "message": "m"}"#),
                true,
            ),
            (
                Behaviour::Answer(503, r#"{"code": "unavailable", "message": "m"}"#),
                false,
            ),
            (Behaviour::Answer(502, "Bad Gateway"), false),
            (
                Behaviour::Answer(404, r#"{"code": "not_found", "message": "m"}"#),
                false,
            ),
        ];
        for (answer, moves_on) in cases {
            let (first, second) = (FakeNode::start(answer).await, FakeNode::start(OK).await);
            let client = client_of(&[&first, &second]);
            let write = client
                .register(
                    "web",
                    "w1",
                    &serde_json::from_value(serde_json::json!({"address": "10.0.0.1", "port": 80}))
                        .unwrap(),
                )
                .await;
            assert_eq!(write.is_ok(), moves_on, "{answer:?}: {write:?}");
            assert_eq!(
                (first.requests(), second.requests()),
                (1, usize::from(moves_on)),
                "{answer:?}"
            );
            // A read moves on after every one of these but the definite not_found.
            let client = client_of(&[&first, &second]);
            let read = client.get::<serde_json::Value>("/v1/services", None).await;
            let not_found = matches!(answer, Behaviour::Answer(404, _));
            assert_eq!(read.is_ok(), !not_found, "{answer:?}: {read:?}");
        }
    }

    #[tokio::test]
    async fn reads_share_a_connection_and_every_write_has_one_of_its_own() {
        let node = FakeNode::start(OK).await;
        let client = client_of(&[&node]);
        for _ in 0..3 {
            client
                .get::<serde_json::Value>("/v1/services", None)
                .await
                .unwrap();
        }
        assert_eq!((node.requests(), node.connections()), (3, 1));
        for i in 0..3 {
            client.deregister("web", &format!("w{i}")).await.unwrap();
        }
        assert_eq!((node.requests(), node.connections()), (6, 4));
    }

    #[tokio::test]
    async fn a_write_to_nodes_that_refuse_connections_is_retried_and_reports_them_all() {
        let client = Client::with_policy(
            [closed_port().to_string(), closed_port().to_string()],
            RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                request_timeout: Duration::from_millis(500),
            },
        )
        .unwrap();
        let e = client.deregister("web", "w1").await.unwrap_err();
        match &e {
            ClientError::Unreachable { tried, .. } => assert!(tried.contains(", "), "{e}"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
