//! The agent: binds the listeners, starts the Raft node, serves HTTP and cluster RPC, enters the
//! cluster, and shuts down in order when told to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientError, RetryPolicy};
use cairn_raft::{Cluster, ClusterOptions, Member, StartError};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, DnsTlsConfig, Membership, NodeTls};
use crate::http;

/// How long in-flight requests get to finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause between join attempts while no member answers.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How long one join request may take: a join returns once this node has caught up, which can
/// take a while.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create a temporary data folder: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("cannot create the health checker's TLS client: {0}")]
    Checker(cairn_tls::rustls::Error),
    #[error("cannot serve the DNS zone: {0}")]
    Dns(String),
    #[error("cannot load the TLS certificates: {0}")]
    Tls(String),
    /// Raft stopped on its own (a storage error: a full disk, an I/O error). The node exits
    /// rather than serve a view that no longer changes; its supervisor restarts it.
    #[error("raft stopped on a fatal error, exiting: {0}")]
    RaftStopped(String),
}

/// The addresses the agent ended up listening on (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// `None` with `--http-addr off`.
    pub http: Option<SocketAddr>,
    pub dns: SocketAddr,
    pub rpc: SocketAddr,
    pub https: Option<SocketAddr>,
    /// DNS over TLS, when served.
    pub dot: Option<SocketAddr>,
    /// DNS over HTTPS, when served.
    pub doh: Option<SocketAddr>,
    /// The Cloud Map-compatible API, when served.
    pub cloudmap: Option<SocketAddr>,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.http {
            Some(http) => write!(f, "http={http}")?,
            None => write!(f, "http={}", crate::config::HTTP_OFF)?,
        }
        write!(f, " dns={} rpc={}", self.dns, self.rpc)?;
        if let Some(https) = self.https {
            write!(f, " https={https}")?;
        }
        if let Some(dot) = self.dot {
            write!(f, " dot={dot}")?;
        }
        if let Some(doh) = self.doh {
            write!(f, " doh={doh}")?;
        }
        if let Some(cloudmap) = self.cloudmap {
            write!(f, " cloudmap={cloudmap}")?;
        }
        Ok(())
    }
}

/// Open cluster RPC connections get this long to finish at shutdown.
const RPC_DRAIN: Duration = Duration::from_secs(5);
/// Open DNS over TLS and HTTPS connections get this long to finish at shutdown: a query in
/// flight takes at most a forwarding time-out.
const DNS_DRAIN: Duration = Duration::from_secs(3);

/// The cluster RPC's mutual TLS: this node's listener and its calls to the others, both from
/// the same files and both reloaded when they change or on SIGHUP.
struct RpcTls {
    server: Arc<cairn_tls::Reloadable<cairn_tls::rustls::ServerConfig>>,
    client: Arc<cairn_tls::Reloadable<cairn_tls::rustls::ClientConfig>>,
}

impl RpcTls {
    /// Both sides from `files`; every (re)load first checks that the certificate chains to the
    /// CA, is valid and names `name`, so a wrong file is refused and the one in use stays.
    fn load(files: &NodeTls, name: String) -> Result<RpcTls, AgentError> {
        let paths = vec![files.ca.clone(), files.cert.clone(), files.key.clone()];
        let (f, n) = (files.clone(), name.clone());
        let server = cairn_tls::Reloadable::new("cluster RPC listener", paths.clone(), move || {
            cairn_tls::identity::check_own_certificate(&f.ca, &f.cert, &n)?;
            let mut config =
                cairn_tls::config::server_config(&f.cert, &f.key, Some(&f.ca), &[b"http/1.1"])?;
            // No session resumption: a resumed session carries the identity of a certificate
            // checked at an earlier handshake, which may have expired since. Every connection
            // is judged by a full handshake instead; peers keep theirs pooled, so that costs
            // one handshake per connection, not per request.
            config.send_tls13_tickets = 0;
            Ok(config)
        })
        .map_err(|e| AgentError::Tls(e.to_string()))?;
        let f = files.clone();
        let client = cairn_tls::Reloadable::new("cluster RPC client", paths, move || {
            cairn_tls::identity::check_own_certificate(&f.ca, &f.cert, &name)?;
            cairn_tls::config::client_config(&f.ca, Some((&f.cert, &f.key)))
        })
        .map_err(|e| AgentError::Tls(e.to_string()))?;
        Ok(RpcTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
}

/// Runs the agent until `shutdown` is cancelled. Prints one line to stdout once listening:
/// `cairn listening node_id=<id> http=<addr> rpc=<addr>`; tests and scripts read the bound ports
/// from it.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let http_listener = match config.http_addr {
        Some(addr) => Some(bind("HTTP", addr).await?),
        None => None,
    };
    let rpc_listener = bind("cluster RPC", config.rpc_addr).await?;
    let https_listener = match &config.https {
        Some(h) => Some(bind("HTTPS", h.addr).await?),
        None => None,
    };
    let (dot_listener, doh_listener) = match &config.dns_tls {
        Some(d) => (
            match d.tls_addr {
                Some(addr) => Some(bind("DNS over TLS", addr).await?),
                None => None,
            },
            match d.https_addr {
                Some(addr) => Some(bind("DNS over HTTPS", addr).await?),
                None => None,
            },
        ),
        None => (None, None),
    };
    let cloudmap_listener = match &config.cloudmap {
        Some(c) => Some(bind("the Cloud Map API", c.addr).await?),
        None => None,
    };
    let dns_listeners = cairn_dns::Listeners::bind(config.dns.addr)
        .await
        .map_err(|source| AgentError::Bind {
            what: "DNS",
            addr: config.dns.addr,
            source,
        })?;
    let bound = Bound {
        dns: dns_listeners
            .local_addr()
            .map_err(|source| AgentError::Bind {
                what: "DNS",
                addr: config.dns.addr,
                source,
            })?,
        http: match (&http_listener, config.http_addr) {
            (Some(l), Some(addr)) => Some(l.local_addr().map_err(|source| AgentError::Bind {
                what: "HTTP",
                addr,
                source,
            })?),
            _ => None,
        },
        rpc: rpc_listener
            .local_addr()
            .map_err(|source| AgentError::Bind {
                what: "cluster RPC",
                addr: config.rpc_addr,
                source,
            })?,
        https: https_listener.as_ref().and_then(|l| l.local_addr().ok()),
        dot: dot_listener.as_ref().and_then(|l| l.local_addr().ok()),
        doh: doh_listener.as_ref().and_then(|l| l.local_addr().ok()),
        cloudmap: cloudmap_listener.as_ref().and_then(|l| l.local_addr().ok()),
    };

    // Dev mode without --data-dir: a temporary folder that disappears with the agent.
    let mut _temp_dir = None;
    let data_dir: PathBuf = match &config.data_dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("cairn-dev-")
                .tempdir()
                .map_err(AgentError::TempDir)?;
            let p = t.path().to_owned();
            _temp_dir = Some(t);
            p
        }
    };

    let self_rpc = match (&config.membership, &config.advertise) {
        (Membership::Bootstrap(peers), _) => peers
            .get(&config.node_id)
            .cloned()
            .unwrap_or_else(|| bound.rpc.to_string()),
        (_, Some(advertise)) => advertise.rpc_addr(bound.rpc.port()),
        (_, None) => bound.rpc.to_string(),
    };
    let bootstrap = match &config.membership {
        Membership::Bootstrap(peers) => Some(
            peers
                .iter()
                .map(|(id, addr)| {
                    (
                        *id,
                        Member {
                            rpc_addr: addr.clone(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        Membership::BootstrapSelf => Some(BTreeMap::from([(
            config.node_id,
            Member {
                rpc_addr: self_rpc.clone(),
            },
        )])),
        Membership::Join(_) | Membership::Wait => None,
    };
    let rpc_tls = match &config.tls {
        Some(files) => Some(RpcTls::load(
            files,
            cairn_tls::node_name(&config.cluster, config.node_id),
        )?),
        None => {
            if config.insecure_rpc {
                tracing::warn!(
                    rpc = %bound.rpc,
                    "--insecure-rpc: the cluster RPC is plaintext; anyone who reaches it can act as a member"
                );
            }
            None
        }
    };
    let options = ClusterOptions {
        node_id: config.node_id,
        cluster_name: config.cluster.clone(),
        data_dir: data_dir.clone(),
        bootstrap,
        snapshot_threshold: config.snapshot_threshold,
        keep_logs: config.snapshot_keep_logs,
        write_timeout: config.write_timeout,
        clock_offset_ms: config.clock_offset_ms,
        rpc_source_addr: config.rpc_source_addr,
        tls: rpc_tls.as_ref().map(|t| t.client.clone()),
        min_free_disk: config.min_free_disk_bytes,
        quotas: config.quotas,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;

    let rpc_stop = CancellationToken::new();
    let http_stop = shutdown.child_token();
    let checks_stop = CancellationToken::new();
    let check_roots = match &config.check_ca_file {
        None => Vec::new(),
        Some(path) => {
            use cairn_tls::rustls::pki_types::{pem::PemObject, CertificateDer};
            std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| AgentError::Tls(format!("{}: {e}", path.display())))?
        }
    };
    let targets = Arc::new(
        crate::check_targets::TargetPolicy::new(
            &config.check_allow,
            &config.check_deny,
            config.dev,
        )
        .with_own_listeners(
            [
                Some(bound.rpc),
                Some(bound.dns),
                bound.http,
                bound.https,
                bound.cloudmap,
            ]
            .into_iter()
            .flatten(),
        ),
    );
    let checker = crate::checks::Checker::new(cluster.clone(), targets.clone(), &check_roots)
        .map_err(AgentError::Checker)?;
    let dns_stats = Arc::new(cairn_dns::DnsStats::default());
    let stats = ListenerStats::new();
    let http_metrics = Arc::new(http::HttpMetrics::default());
    let mut metrics = prometheus_client::registry::Registry::default();
    http_metrics.register(&mut metrics);
    cluster.stats().register(&mut metrics);
    checker.stats().register(&mut metrics);
    let state = http::AppState {
        cluster: cluster.clone(),
        checker: checker.clone(),
        targets,
        limiter: http::WaitLimiter::new(config.max_waiting_per_client),
        shutdown: http_stop.clone(),
        acl: config.acl,
        rights: Arc::new(cairn_registry::acl::RightsCache::new(
            config.acl,
            config.acl_cache_size,
        )),
        data_dir: data_dir.clone(),
        max_restore_bytes: config.max_restore_bytes,
        dns_stats: dns_stats.clone(),
        connections: stats.all(),
        http_metrics,
        metrics: Arc::new(metrics),
    };
    let mut servers: JoinSet<()> = JoinSet::new();
    {
        let app = cairn_raft::rpc::server::router(cluster.clone(), http::rpc_routes(state.clone()));
        let stop = rpc_stop.clone();
        let tls = rpc_tls.as_ref().map(|t| t.server.clone());
        let (limits, rpc_stats) = (config.conns.rpc, stats.rpc.clone());
        servers.spawn(async move {
            cairn_tls::serve_http(rpc_listener, tls, app, limits, rpc_stats, stop, RPC_DRAIN).await;
        });
        if let Some(tls) = &rpc_tls {
            let reload: Vec<Arc<dyn cairn_tls::Reload>> =
                vec![tls.server.clone(), tls.client.clone()];
            tokio::spawn(cairn_tls::keep_fresh(
                reload,
                cairn_tls::config::CHECK_FILES_EVERY,
                rpc_stop.clone(),
            ));
        }
    }
    let https_server = match (https_listener, &config.https) {
        (Some(listener), Some(h)) => {
            let h = h.clone();
            let files = vec![h.cert.clone(), h.key.clone()]
                .into_iter()
                .chain(h.client_ca.clone())
                .collect();
            let tls = cairn_tls::Reloadable::new("HTTPS API", files, move || {
                cairn_tls::config::server_config(
                    &h.cert,
                    &h.key,
                    h.client_ca.as_deref(),
                    &[b"h2", b"http/1.1"],
                )
            })
            .map_err(|e| AgentError::Tls(e.to_string()))?;
            let tls = Arc::new(tls);
            tokio::spawn(cairn_tls::keep_fresh(
                vec![tls.clone() as Arc<dyn cairn_tls::Reload>],
                cairn_tls::config::CHECK_FILES_EVERY,
                http_stop.clone(),
            ));
            let app = http::router(
                state.clone(),
                config.max_body_bytes,
                config.conns.request_timeout,
            );
            Some(tokio::spawn(cairn_tls::serve_http(
                listener,
                Some(tls),
                app,
                config.conns.http,
                stats.https.clone(),
                http_stop.clone(),
                SHUTDOWN_GRACE,
            )))
        }
        _ => None,
    };
    let cloudmap_server = match (cloudmap_listener, &config.cloudmap) {
        (Some(listener), Some(c)) => {
            let app = crate::cloudmap::router(
                crate::cloudmap::CloudMapState {
                    app: state.clone(),
                    credentials: c.credentials.clone(),
                    operations: Arc::default(),
                    max_body: config.max_body_bytes,
                },
                config.conns.request_timeout,
            );
            Some(tokio::spawn(cairn_tls::serve_http(
                listener,
                None,
                app,
                config.conns.http,
                stats.cloudmap.clone(),
                http_stop.clone(),
                SHUTDOWN_GRACE,
            )))
        }
        _ => None,
    };
    let http_server = http_listener.map(|listener| {
        let app = http::router(state, config.max_body_bytes, config.conns.request_timeout);
        tokio::spawn(cairn_tls::serve_http(
            listener,
            None,
            app,
            config.conns.http,
            stats.http.clone(),
            http_stop.clone(),
            SHUTDOWN_GRACE,
        ))
    });

    let dns_stop = CancellationToken::new();
    {
        let zone = Arc::new(
            cairn_dns::Zone::new(
                cairn_dns::ZoneConfig {
                    domain: config.dns.domain.clone(),
                    ttl: config.dns.ttl,
                    negative_ttl: config.dns.negative_ttl,
                    max_answers: config.dns.max_answers,
                    allow_warning: config.dns.allow_warning,
                    recursion: !config.dns.recursors.is_empty(),
                    acl: config.acl,
                    token: config.dns_token.clone(),
                },
                cluster.registry().clone(),
                nameservers(cluster.clone()),
            )
            .map_err(|e| AgentError::Dns(e.to_string()))?,
        );
        let server_config = cairn_dns::ServerConfig {
            recursors: config.dns.recursors.clone(),
            recursors_allow: config.dns.recursors_allow.clone(),
            rrl: config.dns.rrl,
            max_tcp_connections: config.conns.dns_tcp_max_conns,
            max_tcp_per_client: config.conns.dns_tcp_max_conns_per_client,
            tcp_write_timeout: config.conns.dns_tcp_write_timeout,
            ..cairn_dns::ServerConfig::default()
        };
        // One answerer for every transport: the same answers, and one bound on forwards.
        let answerer = cairn_dns::Answerer::with_stats(zone, server_config, dns_stats);
        if let Some(d) = &config.dns_tls {
            let mut reload: Vec<Arc<dyn cairn_tls::Reload>> = Vec::new();
            if let Some(listener) = dot_listener {
                let tls = Arc::new(dns_tls(d, "DNS over TLS", &[cairn_dns::dot::ALPN])?);
                reload.push(tls.clone());
                let (answerer, stop) = (answerer.clone(), dns_stop.clone());
                let dot_stats = stats.dot.clone();
                servers.spawn(async move {
                    cairn_dns::dot::serve(listener, tls, answerer, dot_stats, stop).await;
                });
            }
            if let Some(listener) = doh_listener {
                let tls = Arc::new(dns_tls(d, "DNS over HTTPS", cairn_dns::doh::ALPN)?);
                reload.push(tls.clone());
                let limits = cairn_tls::Limits {
                    max_connections: answerer.config().max_tcp_connections,
                    max_per_client: answerer.config().max_tcp_per_client,
                    header_timeout: answerer.config().tcp_idle_timeout,
                    idle_timeout: answerer.config().tcp_idle_timeout,
                };
                let app = cairn_dns::doh::router(answerer.clone());
                let (stop, doh_stats) = (dns_stop.clone(), stats.doh.clone());
                servers.spawn(async move {
                    let tls = Some(tls);
                    cairn_tls::serve_http(listener, tls, app, limits, doh_stats, stop, DNS_DRAIN)
                        .await;
                });
            }
            tokio::spawn(cairn_tls::keep_fresh(
                reload,
                cairn_tls::config::CHECK_FILES_EVERY,
                dns_stop.clone(),
            ));
        }
        let (stop, tcp_stats) = (dns_stop.clone(), stats.dns_tcp.clone());
        servers.spawn(async move {
            dns_listeners.serve(answerer, tcp_stats, stop).await;
        });
    }

    let checker_task = tokio::spawn(checker.clone().run(checks_stop.clone()));

    println!("cairn listening node_id={} {bound}", config.node_id);
    tracing::info!(
        node_id = config.node_id,
        http = ?bound.http,
        https = ?bound.https,
        rpc = %bound.rpc,
        advertise = %self_rpc,
        data_dir = %data_dir.display(),
        "agent started"
    );

    let result = tokio::select! {
        r = async {
            enter_cluster(&config, &cluster, &self_rpc, &shutdown).await?;
            shutdown.cancelled().await;
            Ok(())
        } => r,
        e = cluster.stopped_by_error() => {
            tracing::error!("raft stopped on a fatal error: {e}");
            Err(AgentError::RaftStopped(e))
        }
    };

    if result.is_ok() {
        // Before anything stops: writes keep flowing, through the next leader.
        match cluster.hand_over_leadership().await {
            cairn_raft::Handover::NotLeader => {}
            cairn_raft::Handover::Done { to, took } => tracing::info!(
                to,
                took_ms = took.as_millis() as u64,
                "shutting down: handed leadership over"
            ),
            cairn_raft::Handover::Failed(why) => {
                tracing::warn!("shutting down: could not hand leadership over: {why}")
            }
        }
    }
    tracing::info!("shutting down: draining HTTP requests");
    http_stop.cancel();
    if let Some(http) = http_server {
        if tokio::time::timeout(SHUTDOWN_GRACE, http).await.is_err() {
            tracing::warn!("HTTP requests still running after {SHUTDOWN_GRACE:?}; dropping them")
        }
    }
    // serve_http bounds its own drain by SHUTDOWN_GRACE.
    for server in [https_server, cloudmap_server].into_iter().flatten() {
        let _ = server.await;
    }
    checks_stop.cancel();
    let _ = checker_task.await;
    tracing::info!("shutting down: stopping raft");
    cluster.shutdown().await;
    rpc_stop.cancel();
    dns_stop.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, servers.join_all()).await;
    drop(cluster);
    tracing::info!("stopped");
    result
}

/// The connection counts of each TCP listener, for `/metrics`.
struct ListenerStats {
    http: Arc<cairn_tls::ConnStats>,
    https: Arc<cairn_tls::ConnStats>,
    rpc: Arc<cairn_tls::ConnStats>,
    dns_tcp: Arc<cairn_tls::ConnStats>,
    dot: Arc<cairn_tls::ConnStats>,
    doh: Arc<cairn_tls::ConnStats>,
    cloudmap: Arc<cairn_tls::ConnStats>,
}

impl ListenerStats {
    fn new() -> ListenerStats {
        ListenerStats {
            http: cairn_tls::ConnStats::new("http"),
            https: cairn_tls::ConnStats::new("https"),
            rpc: cairn_tls::ConnStats::new("rpc"),
            dns_tcp: cairn_tls::ConnStats::new("dns_tcp"),
            dot: cairn_tls::ConnStats::new("dot"),
            doh: cairn_tls::ConnStats::new("doh"),
            cloudmap: cairn_tls::ConnStats::new("cloudmap"),
        }
    }

    fn all(&self) -> Vec<Arc<cairn_tls::ConnStats>> {
        [
            &self.http,
            &self.https,
            &self.rpc,
            &self.dns_tcp,
            &self.dot,
            &self.doh,
            &self.cloudmap,
        ]
        .map(Arc::clone)
        .to_vec()
    }
}

/// The TLS of DNS over TLS or HTTPS: the node's certificate (the HTTPS API's files, reloaded
/// alike), and client certificates verified with --dns-tls-client-ca.
fn dns_tls(
    d: &DnsTlsConfig,
    name: &'static str,
    alpn: &'static [&'static [u8]],
) -> Result<cairn_tls::Reloadable<cairn_tls::rustls::ServerConfig>, AgentError> {
    let files = [d.cert.clone(), d.key.clone()]
        .into_iter()
        .chain(d.client_ca.clone())
        .collect();
    let d = d.clone();
    cairn_tls::Reloadable::new(name, files, move || {
        cairn_tls::config::server_config(&d.cert, &d.key, d.client_ca.as_deref(), alpn)
    })
    .map_err(|e| AgentError::Tls(e.to_string()))
}

/// The cluster's members as DNS name servers: the IP of each one's RPC address, when it is one.
fn nameservers(cluster: Arc<Cluster>) -> cairn_dns::Nameservers {
    Arc::new(move || {
        cluster
            .status()
            .members
            .into_iter()
            .map(|m| {
                let ip = m.rpc_addr.parse::<SocketAddr>().map(|a| a.ip()).ok();
                (m.id, ip)
            })
            .collect()
    })
}

/// Bootstraps, joins, or waits, as configured.
async fn enter_cluster(
    config: &AgentConfig,
    cluster: &Arc<Cluster>,
    self_rpc: &str,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    match &config.membership {
        Membership::Bootstrap(_) | Membership::BootstrapSelf => {
            if cluster.bootstrap().await? {
                tracing::info!("initialised a new cluster");
            } else {
                tracing::info!("cluster already initialised (from the data folder or by a peer)");
            }
            Ok(())
        }
        Membership::Join(urls) => {
            if cluster.is_voter() {
                tracing::info!("already a voter; not joining again");
                return Ok(());
            }
            join(
                urls,
                config.node_id,
                self_rpc,
                config.join_token.as_ref(),
                shutdown,
            )
            .await
        }
        Membership::Wait => {
            if !cluster.has_membership() {
                tracing::warn!(
                    "no cluster state, --peers, --bootstrap or --join: waiting to be added by a member"
                );
            }
            Ok(())
        }
    }
}

/// Asks a member to add this node, each `--join` URL in turn, retrying while none answers; stops
/// on a definite refusal, naming the URL that refused.
async fn join(
    urls: &[String],
    id: u64,
    rpc_addr: &str,
    token: Option<&cairn_registry::acl::Secret>,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    // One client per URL, one attempt per call: this loop does the retrying, so that it can
    // tell which member refused and stop at shutdown.
    let policy = RetryPolicy {
        attempts: 1,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        request_timeout: JOIN_TIMEOUT,
    };
    let members = urls
        .iter()
        .map(|url| {
            Client::with_policy([url], policy.clone())
                .and_then(|c| match token {
                    Some(t) => c.with_token(t.expose()),
                    None => Ok(c),
                })
                .map(|client| (url, client))
                .map_err(|e| AgentError::Join(format!("{url}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    loop {
        for (url, client) in &members {
            tracing::info!(%url, "asking to join the cluster");
            let res = tokio::select! {
                r = client.join(id, rpc_addr) => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match res {
                Ok(_) => {
                    tracing::info!(%url, "joined the cluster as a voter");
                    return Ok(());
                }
                Err(ClientError::Api { error, .. }) if !error.code.is_retryable() => {
                    return Err(AgentError::Join(format!(
                        "{url} refused: {}",
                        error.message
                    )))
                }
                Err(ClientError::Api { error, .. }) => {
                    tracing::warn!(%url, "join not possible yet: {}", error.message)
                }
                Err(ClientError::Unreachable { last, .. }) => {
                    tracing::warn!(%url, "cannot reach member: {last}")
                }
                // Safe to ask again: a join of a node that is already a voter at the same
                // address succeeds without a change.
                Err(ClientError::OutcomeUnknown { reason, .. }) => {
                    tracing::warn!(%url, "join outcome unknown, asking again: {reason}")
                }
                Err(e) => tracing::warn!(%url, "unexpected answer to join: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(JOIN_RETRY) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
