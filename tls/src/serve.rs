//! Every TCP listener's accept loop, over TLS or not, with the same bounds, and an axum router
//! served on it with a bounded graceful shutdown.
//!
//! [`serve_connections`] accepts, caps connections (all of them, and each client address's),
//! handshakes TLS when the listener has a configuration (within [`HANDSHAKE_TIMEOUT`], with the
//! configuration in use at accept time; a reload closes the connections made before it), and
//! drains at shutdown. [`serve_http`] serves an axum router on it (the HTTP API, HTTPS, the
//! cluster RPC, DNS over HTTPS): a client must send a request's headers within
//! [`Limits::header_timeout`] of connecting or of its first byte after an idle spell, and a
//! connection with no request in flight for [`Limits::idle_timeout`] is closed. Every request
//! carries, as extensions, the connection's `ConnectInfo<SocketAddr>` and its
//! [`PeerCertificates`] (when the client presented one). DNS over TCP and over TLS use the
//! accept loop with their own framing.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Reloadable;
use crate::identity::PeerCertificates;
use crate::stream::MaybeTls;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::idle_timeout`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Limits::max_connections`]: bounds memory and file descriptors whatever the
/// clients do.
pub const MAX_CONNECTIONS: usize = 4096;
/// Default [`Limits::max_per_client`], as Consul's `http_max_conns_per_client`.
pub const MAX_PER_CLIENT: usize = 200;

/// A connection after its handshake.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Bounds on the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (handshaking or serving); past it, new ones are closed at
    /// accept.
    pub max_connections: usize,
    /// Connections one client IP address may hold open at once; past it, its new ones are
    /// closed at accept, so one client cannot take the whole `max_connections`.
    pub max_per_client: usize,
    /// HTTP/1: how long a client may take to send a request's headers, from its connection or
    /// from the first byte of a request on a kept-alive one. HTTP/2: the time to the first
    /// request.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in flight (the first request's
    /// wait counts under `header_timeout`). A blocking read or a stream in flight is not idle.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_client: MAX_PER_CLIENT,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// What one listener's accept loop counted, for `/metrics`.
#[derive(Debug)]
pub struct ConnStats {
    /// The listener's name in metrics: `http`, `https`, `rpc`, `dns_tcp`, ...
    pub listener: &'static str,
    open: AtomicU64,
    refused_full: AtomicU64,
    refused_per_client: AtomicU64,
    header_timeouts: AtomicU64,
}

impl ConnStats {
    pub fn new(listener: &'static str) -> Arc<ConnStats> {
        Arc::new(ConnStats {
            listener,
            open: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_per_client: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because `max_connections` were open.
    pub fn refused_full(&self) -> u64 {
        self.refused_full.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because their client held `max_per_client`.
    pub fn refused_per_client(&self) -> u64 {
        self.refused_per_client.load(Ordering::Relaxed)
    }

    /// Connections closed because a request's headers (or a DNS query) did not arrive in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    /// Counts one more connection closed for being too slow.
    pub fn count_header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection: plain TCP, or TLS after its handshake.
pub type Stream = MaybeTls<TlsStream>;

impl Stream {
    /// Whether the client chose HTTP/2 by ALPN (over TLS).
    fn is_h2(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        }
    }

    /// The certificate chain the client presented, over TLS.
    pub fn peer_certificates(&self) -> Option<PeerCertificates> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.peer_certificates().map(|chain| {
                PeerCertificates(Arc::new(
                    chain.iter().map(|c| c.clone().into_owned()).collect(),
                ))
            }),
        }
    }
}

/// Open connections per client address.
struct PerClient {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerClient`]; released on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.clients.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Keeps [`ConnStats::open`] while a connection lives.
struct OpenGuard(Arc<ConnStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop`, then gives open connections
/// `grace` to finish their requests and closes the rest.
///
/// When the certificates reload, every open connection is closed gracefully (its request in
/// flight finishes) and its client reconnects under the new ones: a peer admitted under the old
/// CA or certificate keeps nothing from it.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<Reloadable<ServerConfig>>>,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    stop: CancellationToken,
    grace: Duration,
) {
    let conn_stats = stats.clone();
    let serve = move |stream, remote, closing| {
        serve_connection(
            stream,
            remote,
            app.clone(),
            limits,
            conn_stats.clone(),
            closing,
        )
    };
    serve_connections(listener, tls, limits, stats, stop, grace, serve).await
}

/// The accept loop under [`serve_http`], for any protocol (DNS over TCP and TLS use it too).
///
/// Each connection accepted on `listener` is handshaken, when `tls` is given, within
/// [`HANDSHAKE_TIMEOUT`] with the configuration in use at accept time; then it is handed to
/// `serve` with a token that is cancelled when the connection should close: at `stop`, or when
/// the certificates reload (a peer admitted under the old ones keeps nothing from them).
/// `serve` then finishes the request in flight and returns. At most `limits.max_connections`
/// are open at once, and `limits.max_per_client` from one IP address; past either, a new
/// connection is closed at accept (and counted in `stats`). After `stop`, open connections get
/// `grace`, then are dropped.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<Reloadable<ServerConfig>>>,
    limits: Limits,
    stats: Arc<ConnStats>,
    stop: CancellationToken,
    grace: Duration,
    serve: F,
) where
    F: Fn(Stream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(PerClient {
        max: limits.max_per_client.max(1),
        counts: Mutex::new(HashMap::new()),
    });
    let mut connections = JoinSet::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, listener = stats.listener, "{} connections open; closing a new one", limits.max_connections);
            continue;
        };
        let Some(slot) = clients.acquire(remote.ip().to_canonical()) else {
            stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, listener = stats.listener, "{} connections open from this client; closing a new one", clients.max);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(stats.clone());
        // Small responses go out at once: with Nagle's algorithm a reply split in two segments
        // waits for the peer's delayed ACK (tens of ms), which stalls Raft replication rounds
        // and every client.
        let _ = tcp.set_nodelay(true);
        let closing = stop.child_token();
        let serve = serve.clone();
        let tls = tls
            .as_ref()
            .map(|t| (TlsAcceptor::from(t.current()), t.subscribe()));
        connections.spawn(async move {
            let _held = (permit, slot, open);
            let Some((acceptor, mut reloaded)) = tls else {
                return serve(Stream::Plain(tcp), remote, closing).await;
            };
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let connection = serve(Stream::Tls(Box::new(stream)), remote, closing.clone());
            tokio::pin!(connection);
            tokio::select! {
                () = &mut connection => return,
                changed = reloaded.changed() => {
                    // Err: the configuration is gone, which only happens at shutdown.
                    if changed.is_ok() {
                        tracing::debug!(%remote, "certificates reloaded: closing a connection made under the old ones");
                        closing.cancel();
                    }
                }
            }
            connection.await
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open after {grace:?}; closing them",
            connections.len()
        );
        connections.abort_all();
    }
}

/// When an HTTP connection must next hear from its client, as its reads and requests move it.
struct Activity {
    header_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<ActivityState>,
    /// Woken when a deadline moves earlier (a first byte after an idle spell).
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response is not finished (its body dropped).
    in_flight: usize,
    /// The headers of a request must be in by then (from the connection, or a first byte).
    header_deadline: Option<Instant>,
    /// With nothing in flight, the connection closes then.
    idle_deadline: Option<Instant>,
    /// HTTP/2: its pings and settings are bytes too, so bytes start no header deadline.
    h2: bool,
}

enum Expired {
    Header,
    Idle,
}

impl Activity {
    fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            header_timeout,
            idle_timeout,
            state: Mutex::new(ActivityState {
                in_flight: 0,
                header_deadline: Some(Instant::now() + header_timeout),
                idle_deadline: None,
                h2: false,
            }),
            changed: Notify::new(),
        })
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        let mut s = self.state.lock();
        if s.in_flight == 0 && s.header_deadline.is_none() && !s.h2 {
            // A request is starting: its headers are due, and the connection is no longer idle.
            s.header_deadline = Some(Instant::now() + self.header_timeout);
            s.idle_deadline = None;
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's headers are in; it is served until the returned guard drops.
    fn request(self: &Arc<Self>, h2: bool) -> Busy {
        let mut s = self.state.lock();
        s.in_flight += 1;
        s.h2 |= h2;
        s.header_deadline = None;
        s.idle_deadline = None;
        Busy(self.clone())
    }

    /// The earliest deadline, and what expires when it passes; the idle one only with `idle`.
    fn next(&self, idle: bool) -> Option<(Instant, Expired)> {
        let s = self.state.lock();
        let idle_deadline = s.idle_deadline.filter(|_| idle);
        match (s.header_deadline, idle_deadline) {
            (Some(h), Some(i)) if i < h => Some((i, Expired::Idle)),
            (Some(h), _) => Some((h, Expired::Header)),
            (None, Some(i)) => Some((i, Expired::Idle)),
            (None, None) => None,
        }
    }
}

/// A request in flight on its connection; the connection is not idle while one lives.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_deadline = Some(Instant::now() + self.0.idle_timeout);
        }
    }
}

/// A stream that tells its connection's [`Activity`] when the client sends bytes.
struct Watched {
    inner: Stream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Most bytes gathered before they are written: one TLS record's worth.
const GATHER_LIMIT: usize = 16 * 1024;

/// A connection's stream as hyper sees it. Over HTTP/2 it gathers what is written and waits
/// one turn of the scheduler at a flush before sending it. hyper answers each HTTP/2 stream in a
/// task of its own, and each answered stream wakes the connection, which then flushes; on one
/// core tokio runs the woken connection right away, so without this every small response (a DNS
/// answer) costs a TLS record and a system call of its own. With it, the responses of the
/// streams answered in the same turn leave together. HTTP/1.1 writes straight through.
struct Gather {
    inner: Watched,
    h2: bool,
    buf: Vec<u8>,
    /// A flush already waited its turn.
    waited: bool,
}

impl Gather {
    fn new(inner: Watched, h2: bool) -> Gather {
        Gather {
            inner,
            h2,
            buf: Vec::new(),
            waited: false,
        }
    }

    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Gather {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gather {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.h2 {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.len() + data.len() > GATHER_LIMIT {
            std::task::ready!(this.poll_drain(cx))?;
            if data.len() >= GATHER_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.h2 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // h2 then copies small DATA frames into its own buffer rather than chaining them.
        !self.h2 && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.h2 && !this.buf.is_empty() && !this.waited {
            // Polled again after the tasks already queued: the streams they answer join in.
            this.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_drain(cx))?;
        this.waited = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request [`Busy`] until it is sent or dropped, so a watch
/// stream or a long download is not an idle connection.
struct TrackedBody {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn serve_connection(
    stream: Stream,
    remote: SocketAddr,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    closing: CancellationToken,
) {
    let peer = stream.peer_certificates();
    let h2 = stream.is_h2();
    let activity = Activity::new(limits.header_timeout, limits.idle_timeout);
    let watched = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let requests = activity.clone();
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        let busy = requests.request(req.version() == hyper::Version::HTTP_2);
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(remote));
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await?;
            // The request stays in flight until its response body is sent or dropped.
            Ok::<_, std::convert::Infallible>(
                res.map(|body| axum::body::Body::new(TrackedBody { body, _busy: busy })),
            )
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header time-out (which also runs while a kept-alive connection waits) is only
    // a backstop behind `Activity`'s, which tells the two waits apart.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout + limits.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout));
    let io = Gather::new(watched, h2);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut closed = false;
    loop {
        // Once closing, only the header deadline still matters.
        let deadline = activity.next(!closed).map(|(at, _)| at);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
                return;
            }
            _ = closing.cancelled(), if !closed => {
                conn.as_mut().graceful_shutdown();
                closed = true;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                // The deadline slept on may have moved since (a request came): look again.
                match activity.next(!closed) {
                    Some((at, Expired::Header)) if at <= Instant::now() => {
                        stats.count_header_timeout();
                        tracing::debug!(%remote, "no request headers within {:?}; closing", limits.header_timeout);
                        return;
                    }
                    Some((at, Expired::Idle)) if at <= Instant::now() => {
                        conn.as_mut().graceful_shutdown();
                        closed = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
