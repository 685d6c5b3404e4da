//! The listeners: UDP and TCP on one address, and forwarding of names outside the zone.
//!
//! UDP is served by threads of its own, a batch of datagrams per system call ([`udp`]); TCP,
//! TLS and HTTPS by the async runtime.
//!
//! An [`Answerer`] holds what every transport shares (the zone, the upstreams and the bound on
//! forwards in flight); DNS over TLS and over HTTPS ([`crate::dot`], [`crate::doh`]) answer
//! through the same one as TCP, so a question gets the same bytes over each.
//!
//! Names outside the zone are forwarded only for clients in
//! [`ServerConfig::recursors_allow`]; others are REFUSED, so a node reachable from the internet
//! is no open resolver. A relayed answer larger than a UDP client takes goes out truncated
//! (TC=1), as our own do. Answers over UDP pass the response rate limiter ([`crate::rrl`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tls::{ConnStats, Limits, Reloadable};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::answer::{Outcome, Zone};
use crate::rrl::{Limiter, RrlConfig, Verdict};
use crate::wire::{self, ParseError, Query};

mod udp;

/// Largest datagram read. Queries are small; a larger one is cut and then refused as malformed.
const UDP_READ_BUFFER: usize = 4096;
/// Answers over a stream (TCP, TLS, HTTPS) may use the whole 16-bit length of TCP's framing.
pub const STREAM_LIMIT: usize = 65_535;
/// Clients names outside the zone are forwarded for, unless configured otherwise: loopback,
/// the private ranges (RFC 1918, RFC 4193) and shared address space (RFC 6598, where
/// Kubernetes and overlay networks often put pods). Anyone else would make the node an open
/// resolver, a tool for amplifying forged queries at a victim.
pub const DEFAULT_RECURSORS_ALLOW: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// [`DEFAULT_RECURSORS_ALLOW`], parsed.
pub fn default_recursors_allow() -> Vec<IpNet> {
    DEFAULT_RECURSORS_ALLOW
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Default [`ServerConfig::max_tcp_connections`].
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 512;
/// Default [`ServerConfig::max_tcp_per_client`]: a resolver keeps a few connections to a
/// server, not dozens.
pub const DEFAULT_MAX_TCP_PER_CLIENT: usize = 32;
/// Default [`ServerConfig::tcp_write_timeout`].
pub const DEFAULT_TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Upstream resolvers for names outside the zone, tried in order.
    pub recursors: Vec<SocketAddr>,
    /// Clients whose names outside the zone are forwarded; the others get REFUSED for them.
    pub recursors_allow: Vec<IpNet>,
    /// Response rate limiting over UDP.
    pub rrl: RrlConfig,
    /// How long one upstream may take.
    pub forward_timeout: Duration,
    /// Forwarded queries in flight at once; beyond this the answer is SERVFAIL at once.
    pub max_forwards: usize,
    /// Open connections on each stream listener (TCP, and DNS over TLS and HTTPS when served);
    /// a connection beyond this is closed at once.
    pub max_tcp_connections: usize,
    /// Open connections from one client IP address on each stream listener; past it, its new
    /// ones are closed at once, so one client cannot take the whole `max_tcp_connections`.
    pub max_tcp_per_client: usize,
    /// A connection with no query for this long is closed (TCP, TLS and HTTPS alike).
    pub tcp_idle_timeout: Duration,
    /// A client that does not take an answer (over TCP or TLS) within this long is dropped, so
    /// a reader that stops reading holds no connection.
    pub tcp_write_timeout: Duration,
    /// Threads reading the UDP socket.
    pub udp_workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            recursors: Vec::new(),
            recursors_allow: default_recursors_allow(),
            rrl: RrlConfig::default(),
            forward_timeout: Duration::from_secs(2),
            max_forwards: 1024,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
            max_tcp_per_client: DEFAULT_MAX_TCP_PER_CLIENT,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_write_timeout: DEFAULT_TCP_WRITE_TIMEOUT,
            udp_workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        }
    }
}

/// The bound sockets, before serving (so the agent learns the ports before anything runs).
pub struct Listeners {
    /// Served by threads of its own ([`udp`]), not by the runtime.
    udp: std::net::UdpSocket,
    tcp: TcpListener,
}

impl Listeners {
    /// Binds UDP and TCP on `addr`. With port 0 both get the same, free port.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Listeners> {
        let mut last_err = None;
        // With port 0 the UDP port may be taken for TCP; try a few.
        for _ in 0..16 {
            let udp = std::net::UdpSocket::bind(addr)?;
            let port = udp.local_addr()?.port();
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => return Ok(Listeners { udp, tcp }),
                Err(e) if addr.port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `stop` is cancelled; `tcp_stats` counts the TCP listener's connections.
    /// UDP is served by [`ServerConfig::udp_workers`] threads of its own; when they cannot be
    /// started the error is logged and TCP is still served.
    pub async fn serve(
        self,
        answerer: Answerer,
        tcp_stats: Arc<ConnStats>,
        stop: CancellationToken,
    ) {
        let workers = answerer.0.config.udp_workers.max(1);
        let udp_done = match udp::spawn(Arc::new(self.udp), &answerer.0, workers, &stop) {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("cannot start the DNS UDP workers: {e}");
                Vec::new()
            }
        };
        answerer
            .serve_streams(self.tcp, None, tcp_stats, stop.clone())
            .await;
        for done in udp_done {
            // Completes when the worker's thread returns (its sender is dropped).
            let _ = done.await;
        }
    }
}

struct Shared {
    zone: Arc<Zone>,
    config: ServerConfig,
    forwards: Arc<Semaphore>,
    /// `None` with RRL off.
    rrl: Option<Limiter>,
    stats: Arc<DnsStats>,
}

impl Shared {
    /// Whether names outside the zone are forwarded for `client`.
    fn may_recurse(&self, client: IpAddr) -> bool {
        let ip = client.to_canonical();
        self.config.recursors_allow.iter().any(|n| n.contains(&ip))
    }

    /// Over UDP: `None` when RRL lets a response to `client` go, else what to do instead
    /// (`slip` writes the truncated answer).
    fn rate_limit(&self, client: IpAddr, slip: impl FnOnce()) -> Option<Action> {
        match self.rrl.as_ref()?.check(client) {
            Verdict::Send => None,
            Verdict::Slip => {
                self.stats.rrl_slipped.fetch_add(1, Ordering::Relaxed);
                slip();
                Some(Action::Reply)
            }
            Verdict::Drop => {
                self.stats.rrl_dropped.fetch_add(1, Ordering::Relaxed);
                Some(Action::Nothing)
            }
        }
    }
}

/// What the DNS listeners answered and held back, for `/metrics`. Counted with relaxed atomics
/// on the query path: no lock, no allocation.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// UDP responses the rate limiter dropped.
    pub rrl_dropped: AtomicU64,
    /// UDP responses the rate limiter sent truncated instead.
    pub rrl_slipped: AtomicU64,
    /// Queries for names outside the zone refused to a client outside `recursors_allow`.
    pub recursion_refused: AtomicU64,
    /// Relayed answers too large for the UDP client, sent truncated.
    pub relay_truncated: AtomicU64,
    /// Queries answered, by question type ([`QTYPE_LABELS`]) and the answer's RCODE
    /// ([`RCODE_LABELS`]; relayed ones under `forwarded`).
    pub queries: [[AtomicU64; RCODE_LABELS.len()]; QTYPE_LABELS.len()],
    /// How long answers took to build, from the received message to the bytes to send; a
    /// sample of one query in [`LATENCY_SAMPLE`].
    pub answer_latency: LatencyHistogram,
}

/// The question types `cairn_dns_queries_total` tells apart; any other is `other`, and a message
/// that could not be read as a query `invalid`.
pub const QTYPE_LABELS: [&str; 9] = [
    "A", "AAAA", "SRV", "SOA", "NS", "ANY", "PTR", "other", "invalid",
];
/// The answers' RCODEs `cairn_dns_queries_total` tells apart; a query relayed to the upstreams
/// is `forwarded`.
pub const RCODE_LABELS: [&str; 8] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "other",
    "forwarded",
];
const RCODE_FORWARDED: usize = 7;
const QTYPE_INVALID: usize = 8;

fn qtype_slot(qtype: u16) -> usize {
    match qtype {
        wire::TYPE_A => 0,
        wire::TYPE_AAAA => 1,
        wire::TYPE_SRV => 2,
        wire::TYPE_SOA => 3,
        wire::TYPE_NS => 4,
        wire::TYPE_ANY => 5,
        12 => 6, // PTR
        _ => 7,
    }
}

/// The RCODE slot of a reply (the low 4 bits of its fourth byte).
fn rcode_slot(reply: &[u8]) -> usize {
    match reply.get(3).map(|b| b & 0x0f) {
        Some(r) if r <= wire::RCODE_REFUSED => usize::from(r),
        _ => 6,
    }
}

/// A latency histogram of atomics with fixed bounds in microseconds ([`LATENCY_BOUNDS_US`]):
/// an observation is a few relaxed additions.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations at or below each bound (not cumulative; the exporter sums them).
    pub buckets: [AtomicU64; LATENCY_BOUNDS_US.len()],
    /// Observations above the last bound.
    pub over: AtomicU64,
    /// The sum of all observations, in nanoseconds.
    pub sum_ns: AtomicU64,
}

/// One query in this many is timed for [`DnsStats::answer_latency`]: those whose message id's
/// low byte is a multiple of it.
pub const LATENCY_SAMPLE: u8 = 16;

/// [`LatencyHistogram`]'s bucket bounds: an answer from the cache takes a few microseconds, one
/// built for a large service tens to hundreds.
pub const LATENCY_BOUNDS_US: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 5000, 25000];

impl LatencyHistogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let slot = LATENCY_BOUNDS_US.iter().position(|&b| us <= b);
        match slot {
            Some(i) => &self.buckets[i],
            None => &self.over,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl DnsStats {
    fn count(&self, qtype: usize, rcode: usize) {
        self.queries[qtype][rcode].fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers DNS messages for every listener of a node: the zone's answers, and the upstreams'
/// for names outside it, under one bound on forwards in flight. Clones share all of it.
#[derive(Clone)]
pub struct Answerer(Arc<Shared>);

impl Answerer {
    pub fn new(zone: Arc<Zone>, config: ServerConfig) -> Answerer {
        Answerer::with_stats(zone, config, Arc::default())
    }

    /// [`Answerer::new`], counting into `stats` (made before, for the metrics endpoint).
    pub fn with_stats(zone: Arc<Zone>, config: ServerConfig, stats: Arc<DnsStats>) -> Answerer {
        Answerer(Arc::new(Shared {
            zone,
            forwards: Arc::new(Semaphore::new(config.max_forwards)),
            rrl: Limiter::new(config.rrl),
            config,
            stats,
        }))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// The reply to `request` from `client` over a stream transport (TCP, TLS, HTTPS), where
    /// an answer may take [`STREAM_LIMIT`] bytes. `None`: the message earns no reply (it is not
    /// a query).
    pub async fn answer_stream(&self, request: &[u8], client: IpAddr) -> Option<Vec<u8>> {
        let shared = &self.0;
        let mut reply = Vec::new();
        match handle(shared, request, client, false, &mut reply) {
            Action::Reply => Some(reply),
            Action::Forward { .. } => Some(match shared.forwards.clone().try_acquire_owned() {
                Ok(_permit) => forward(&shared.config, request, true).await,
                Err(_) => servfail(request),
            }),
            Action::Nothing => None,
        }
    }

    /// Serves DNS over TCP on `listener` (over TLS with `tls`: DNS over TLS) until `stop`, on
    /// cairn-tls's accept loop: at most [`ServerConfig::max_tcp_connections`] connections, and
    /// [`ServerConfig::max_tcp_per_client`] from one address; a connection past either is
    /// closed at once. Open connections then get the forwarding time-out to finish the query
    /// in flight.
    pub async fn serve_streams(
        self,
        listener: TcpListener,
        tls: Option<Arc<Reloadable<cairn_tls::rustls::ServerConfig>>>,
        stats: Arc<ConnStats>,
        stop: CancellationToken,
    ) {
        let config = &self.0.config;
        let limits = Limits {
            max_connections: config.max_tcp_connections,
            max_per_client: config.max_tcp_per_client,
            header_timeout: config.tcp_idle_timeout,
            idle_timeout: config.tcp_idle_timeout,
        };
        let grace = config.forward_timeout;
        let what = stats.listener;
        let serve = move |stream, remote: SocketAddr, closing: CancellationToken| {
            let answerer = self.clone();
            async move {
                if let Err(e) = answerer.serve_stream(stream, remote.ip(), &closing).await {
                    tracing::debug!(%remote, "DNS {what} connection: {e}");
                }
            }
        };
        cairn_tls::serve_connections(listener, tls, limits, stats, stop, grace, serve).await
    }

    /// Answers the queries that arrive on `stream`, each framed by its two-byte length (RFC
    /// 1035 4.2.2; RFC 7858 for TLS), until the client closes it, sends no query for the idle
    /// timeout, sends what is not a query, or `closing` is cancelled (checked between queries).
    pub async fn serve_stream<S>(
        &self,
        mut stream: S,
        client: IpAddr,
        closing: &CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let idle = self.0.config.tcp_idle_timeout;
        let mut buf = Vec::with_capacity(512);
        loop {
            let len = tokio::select! {
                _ = closing.cancelled() => break,
                r = tokio::time::timeout(idle, stream.read_u16()) => match r {
                    Ok(Ok(len)) => usize::from(len),
                    // Idle, closed by the client, or broken: all end the connection quietly.
                    _ => break,
                },
            };
            buf.resize(len, 0);
            tokio::time::timeout(idle, stream.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("timed out reading a query"))??;
            let Some(reply) = self.answer_stream(&buf, client).await else {
                break;
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            out.extend_from_slice(&reply);
            tokio::time::timeout(self.0.config.tcp_write_timeout, stream.write_all(&out))
                .await
                .map_err(|_| std::io::Error::other("timed out writing an answer"))??;
        }
        // A clean end: TLS's close_notify, TCP's FIN.
        let _ = stream.shutdown().await;
        Ok(())
    }
}

/// What to do with a request.
enum Action {
    /// Send the reply written into the buffer [`handle`] was given.
    Reply,
    /// Relay to the upstreams; the client takes `limit` bytes.
    Forward { limit: usize },
    /// Send nothing.
    Nothing,
}

/// The answer to `request` from `client`, written into `out` (cleared first; its capacity is
/// reused); over UDP, after the rate limiter. Counts the query by type and RCODE, and the time
/// its answer took.
fn handle(shared: &Shared, request: &[u8], client: IpAddr, udp: bool, out: &mut Vec<u8>) -> Action {
    // Two clock reads cost as much as the rest of the counting (callgrind: ~5% of a query), so
    // one query in LATENCY_SAMPLE is timed, chosen by its message id (random per query).
    let started = request
        .get(1)
        .is_some_and(|b| b % LATENCY_SAMPLE == 0)
        .then(Instant::now);
    out.clear();
    let (qtype, action) = answer(shared, request, client, udp, out);
    match &action {
        Action::Reply => {
            shared.stats.count(qtype, rcode_slot(out));
            if let Some(started) = started {
                shared.stats.answer_latency.observe(started.elapsed());
            }
        }
        Action::Forward { .. } => shared.stats.count(qtype, RCODE_FORWARDED),
        Action::Nothing => {}
    }
    action
}

/// [`handle`]'s answer, with the query's type slot in [`QTYPE_LABELS`].
fn answer(
    shared: &Shared,
    request: &[u8],
    client: IpAddr,
    udp: bool,
    out: &mut Vec<u8>,
) -> (usize, Action) {
    match wire::parse_query(request) {
        Ok(q) => {
            let qtype = qtype_slot(q.qtype);
            if udp {
                let slip = || *out = header_only(&q, wire::RCODE_NOERROR, true, false);
                if let Some(instead) = shared.rate_limit(client, slip) {
                    return (qtype, instead);
                }
            }
            let limit = if udp { q.udp_limit() } else { STREAM_LIMIT };
            let action = match shared.zone.answer(&q, limit, out) {
                Outcome::Reply => Action::Reply,
                Outcome::Forward if shared.may_recurse(client) => Action::Forward { limit },
                Outcome::Forward => {
                    shared
                        .stats
                        .recursion_refused
                        .fetch_add(1, Ordering::Relaxed);
                    *out = header_only(&q, wire::RCODE_REFUSED, false, false);
                    Action::Reply
                }
            };
            (qtype, action)
        }
        Err(ParseError::Drop) => (QTYPE_INVALID, Action::Nothing),
        Err(e) => {
            // An error answer is no larger than the question: a slip sends it as it is.
            *out = error_reply(e);
            if udp {
                if let Some(instead) = shared.rate_limit(client, || {}) {
                    return (QTYPE_INVALID, instead);
                }
            }
            (QTYPE_INVALID, Action::Reply)
        }
    }
}

/// The answer to a query that could not be read.
fn error_reply(e: ParseError) -> Vec<u8> {
    match e {
        ParseError::Drop => Vec::new(),
        ParseError::Reply { id, rcode, opcode } => wire::error_response(id, opcode, rcode),
        ParseError::BadVersion { id } => {
            // RFC 6891: BADVERS is extended RCODE 16: 1 in the OPT's upper bits, 0 below.
            let mut r = wire::Response::new(id, &[], 64);
            r.additional(&wire::opt_rr(false, 1), 64, 0);
            r.finish(wire::Flags {
                opcode: 0,
                authoritative: false,
                truncated: false,
                recursion_desired: false,
                recursion_available: false,
                rcode: 0,
            })
        }
    }
}

/// An answer of no records to `q`: the header and the question, and an OPT when the query
/// had one. Truncated (TC=1), it tells a client to ask again over TCP (RFC 1035 4.2.1, RFC 2181
/// 9): what a slip sends, and a relayed answer too large for the client.
fn header_only(q: &Query<'_>, rcode: u8, truncated: bool, recursion_available: bool) -> Vec<u8> {
    let mut r = wire::Response::new(q.id, q.question, wire::HEADER_LEN + q.question.len() + 11);
    if let Some(e) = q.edns {
        r.additional(&wire::opt_rr(e.dnssec_ok, 0), usize::MAX, 0);
    }
    r.finish(wire::Flags {
        opcode: q.opcode,
        authoritative: false,
        truncated,
        recursion_desired: q.recursion_desired,
        recursion_available,
        rcode,
    })
}

/// A relayed answer for a UDP client that takes `limit` bytes: as it came when it fits, else
/// truncated to the header and question with the upstream's RCODE.
fn clamp_relayed(stats: &DnsStats, query: &[u8], reply: Vec<u8>, limit: usize) -> Vec<u8> {
    if reply.len() <= limit {
        return reply;
    }
    let Ok(q) = wire::parse_query(query) else {
        return servfail(query);
    };
    stats.relay_truncated.fetch_add(1, Ordering::Relaxed);
    let rcode = reply.get(3).map_or(wire::RCODE_SERVFAIL, |b| b & 0x0F);
    header_only(&q, rcode, true, true)
}

fn servfail(query: &[u8]) -> Vec<u8> {
    match wire::parse_query(query) {
        Ok(q) => wire::Response::new(q.id, q.question, 512).finish(wire::Flags {
            opcode: q.opcode,
            authoritative: false,
            truncated: false,
            recursion_desired: q.recursion_desired,
            recursion_available: true,
            rcode: wire::RCODE_SERVFAIL,
        }),
        // Forwarded queries parsed once already; this is only a fallback.
        Err(_) => {
            let id = match query {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 0,
            };
            wire::error_response(id, 0, wire::RCODE_SERVFAIL)
        }
    }
}

/// Relays `query` to the upstreams in turn; SERVFAIL when none answers in time.
async fn forward(config: &ServerConfig, query: &[u8], tcp_client: bool) -> Vec<u8> {
    for upstream in &config.recursors {
        match exchange_udp(*upstream, query, config.forward_timeout).await {
            Ok(reply) => {
                let truncated = reply.get(2).is_some_and(|b| b & 0x02 != 0);
                if truncated && tcp_client {
                    if let Ok(full) = exchange_tcp(*upstream, query, config.forward_timeout).await {
                        return full;
                    }
                }
                return reply;
            }
            Err(e) => tracing::debug!(%upstream, "forwarding failed: {e}"),
        }
    }
    servfail(query)
}

fn same_id(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= wire::HEADER_LEN && reply[..2] == query[..2] && reply[2] & 0x80 != 0
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("upstream timed out"))??;
        // A connected socket only hears from the upstream; still, insist on the query's ID.
        if same_id(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(upstream).await?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&(query.len() as u16).to_be_bytes());
        out.extend_from_slice(query);
        s.write_all(&out).await?;
        let len = usize::from(s.read_u16().await?);
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        if same_id(query, &buf) {
            Ok(buf)
        } else {
            Err(std::io::Error::other("upstream answered another query"))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| std::io::Error::other("upstream timed out"))?
}
