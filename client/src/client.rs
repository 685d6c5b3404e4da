//! [`Client`]: typed calls for every native endpoint, with failover across nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    ApiError, ClusterStatus, ErrorCode, HealthStatus, HealthUpdate, InstanceRegistration,
    JoinRequest, MaintenanceUpdate, ServiceInstances, ServiceList, ServiceSettingsBody,
    ServiceSettingsView, WriteResult, INDEX_HEADER,
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
    /// No node could be reached (or none answered in time) within the retry budget.
    #[error("no Cairn node reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// The client was given no node addresses, or an unusable one.
    #[error("bad client configuration: {0}")]
    Config(String),
    /// A node answered with something that is not the API's JSON.
    #[error("unexpected answer from {node}: {message}")]
    Protocol { node: String, message: String },
}

impl ClientError {
    /// Whether the same call may succeed later or on another node. The retry loop uses only
    /// this.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { error, .. } => error.code.is_retryable(),
            ClientError::Unreachable { .. } => true,
            ClientError::Config(_) | ClientError::Protocol { .. } => false,
        }
    }

    /// The API error code, when a node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// A successful read: the body and the index it reflects.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
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
    http: reqwest::Client,
    /// The node that answered last; calls start there.
    preferred: AtomicUsize,
    retry: RetryPolicy,
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
        let nodes = addrs
            .into_iter()
            .map(|a| base_url(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ClientError::Config("no node addresses given".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                http,
                preferred: AtomicUsize::new(0),
                retry,
            }),
        })
    }

    /// The node addresses this client uses.
    pub fn nodes(&self) -> &[String] {
        &self.inner.nodes
    }

    /// Sends a request to the preferred node, moving on to the next one when the error is
    /// retryable, with exponential backoff, within the retry policy.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra_timeout: Duration,
    ) -> Result<Indexed<T>, ClientError> {
        let inner = &self.inner;
        let mut backoff = inner.retry.backoff;
        let mut last: Option<ClientError> = None;
        let n = inner.nodes.len();
        for attempt in 0..inner.retry.attempts.max(1) {
            let i = (inner.preferred.load(Ordering::Relaxed) + attempt as usize) % n;
            let node = &inner.nodes[i];
            let mut req = inner
                .http
                .request(method.clone(), format!("{node}{path}"))
                .timeout(inner.retry.request_timeout + extra_timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            let result = match req.send().await {
                Err(e) => Err(ClientError::Unreachable {
                    tried: node.clone(),
                    last: e.to_string(),
                }),
                Ok(res) => decode(node, res).await,
            };
            match result {
                Ok(v) => {
                    inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_retryable() => {
                    last = Some(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(inner.retry.max_backoff);
                }
                Err(e) => return Err(e),
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

    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        Ok(self.get("/v1/cluster", None).await?.value)
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
}

async fn decode<T: DeserializeOwned>(
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
    let bytes = res.bytes().await.map_err(|e| ClientError::Unreachable {
        tried: node.to_owned(),
        last: e.to_string(),
    })?;
    if status.is_success() {
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            node: node.to_owned(),
            message: e.to_string(),
        })?;
        return Ok(Indexed { index, value });
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(error) => Err(ClientError::Api {
            status: status.as_u16(),
            error,
            index,
        }),
        Err(_)
            if status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE =>
        {
            Err(ClientError::Unreachable {
                tried: node.to_owned(),
                last: format!("{status}"),
            })
        }
        Err(_) => Err(ClientError::Protocol {
            node: node.to_owned(),
            message: format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
        }),
    }
}
