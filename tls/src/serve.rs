//! An axum router served over TLS, with a bounded graceful shutdown.
//!
//! Each connection is handshaken (within [`HANDSHAKE_TIMEOUT`], before any request is read)
//! with the configuration in use at accept time; a reload closes the connections made before
//! it. Connections are capped at [`MAX_CONNECTIONS`], and request headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (other bounds: [`serve_tls_with`]). Every request then carries, as
//! extensions, the connection's [`PeerCertificates`] (when the client presented one) and its
//! `ConnectInfo<SocketAddr>`, as `axum::serve` gives plain connections.
//!
//! The accept loop under it, [`serve_tls_connections`], serves other protocols over TLS with
//! the same handshake, cap, reload and drain rules (DNS over TLS).

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Reloadable;
use crate::identity::PeerCertificates;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent a request's headers by then (after the handshake) is dropped, so
/// a slow or idle client holds a socket for a bounded time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once (handshaking or serving); past it, new ones are closed at accept.
/// Bounds memory and file descriptors whatever the clients do.
pub const MAX_CONNECTIONS: usize = 4096;

/// A connection after its handshake.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Bounds on the connections of one TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (handshaking or serving); past it, new ones are closed at
    /// accept.
    pub max_connections: usize,
    /// How long a connection may go without a request (HTTP/1.1: its headers; HTTP/2: a new
    /// stream, while none is open) before it is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            idle_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` over TLS until `stop`, then gives open connections `grace` to
/// finish their requests and closes the rest.
///
/// When the certificates reload, every open connection is closed gracefully (its request in
/// flight finishes) and its client reconnects under the new ones: a peer admitted under the old
/// CA or certificate keeps nothing from it.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
    app: Router,
    stop: CancellationToken,
    grace: Duration,
) {
    serve_tls_with(listener, tls, app, Limits::default(), stop, grace).await
}

/// [`serve_tls`] with other bounds than the defaults.
pub async fn serve_tls_with(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    grace: Duration,
) {
    let serve = move |stream, remote, closing| {
        serve_connection(stream, remote, app.clone(), limits.idle_timeout, closing)
    };
    serve_tls_connections(listener, tls, limits.max_connections, stop, grace, serve).await
}

/// The accept loop under [`serve_tls`], for any protocol over TLS (DNS over TLS uses it too).
///
/// Each connection accepted on `listener` is handshaken (within [`HANDSHAKE_TIMEOUT`]) with the
/// configuration in use at accept time, then handed to `serve` with a token that is cancelled
/// when the connection should close: at `stop`, or when the certificates reload (a peer
/// admitted under the old ones keeps nothing from them). `serve` then finishes the request in
/// flight and returns. At most `max_connections` are open at once; past it, new ones are
/// closed at accept. After `stop`, open connections get `grace`, then are dropped.
pub async fn serve_tls_connections<F, Fut>(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
    max_connections: usize,
    stop: CancellationToken,
    grace: Duration,
    serve: F,
) where
    F: Fn(TlsStream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
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
            tracing::debug!(%remote, "{max_connections} connections open; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let mut reloaded = tls.subscribe();
        let closing = stop.child_token();
        let serve = serve.clone();
        connections.spawn(async move {
            let _permit = permit;
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
            let connection = serve(stream, remote, closing.clone());
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

/// The requests of one connection: how many are being answered, and when the last one began or
/// was answered. HTTP/2 has no idle time-out of its own (hyper's keep-alive pings keep an idle
/// connection open as long as the client acknowledges them), so the connection loop closes an
/// HTTP/2 connection that has had no request for the idle time-out from this.
struct Activity {
    in_flight: AtomicUsize,
    last: parking_lot::Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// A request begins; it ends when the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        *self.last.lock() = Instant::now();
        InFlight(self.clone())
    }

    /// When the connection will have been idle for `idle`, or, with requests being answered,
    /// when to look again.
    fn next_check(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            Instant::now() + idle
        } else {
            *self.last.lock() + idle
        }
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.last.lock().elapsed() >= idle
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most bytes gathered before they are written: one TLS record's worth.
const GATHER_LIMIT: usize = 16 * 1024;

/// A connection's TLS stream as hyper sees it. Over HTTP/2 it gathers what is written and waits
/// one turn of the scheduler at a flush before sending it. hyper answers each HTTP/2 stream in a
/// task of its own, and each answered stream wakes the connection, which then flushes; on one
/// core tokio runs the woken connection right away, so without this every small response (a DNS
/// answer) costs a TLS record and a system call of its own. With it, the responses of the
/// streams answered in the same turn leave together. HTTP/1.1 writes straight through.
struct Gather {
    inner: TlsStream,
    h2: bool,
    buf: Vec<u8>,
    /// A flush already waited its turn.
    waited: bool,
}

impl Gather {
    fn new(inner: TlsStream, h2: bool) -> Gather {
        Gather {
            inner,
            h2,
            buf: Vec::new(),
            waited: false,
        }
    }

    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buf.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
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
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gather {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
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
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

async fn serve_connection(
    stream: TlsStream,
    remote: SocketAddr,
    app: Router,
    idle_timeout: Duration,
    closing: CancellationToken,
) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let activity = Activity::new();
    let peer = stream.get_ref().1.peer_certificates().map(|chain| {
        PeerCertificates(Arc::new(
            chain.iter().map(|c| c.clone().into_owned()).collect(),
        ))
    });
    let service = app.map_request(move |mut req: Request<Incoming>| {
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(remote));
        req
    });
    let tracked = activity.clone();
    let service = service.map_future(move |answer| {
        let in_flight = tracked.begin();
        async move {
            let response = answer.await;
            drop(in_flight);
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle_timeout));
    let io = Gather::new(stream, h2);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut closed = false;
    loop {
        // HTTP/1.1's idle time-out is hyper's header read time-out; HTTP/2's is ours.
        let check = activity.next_check(idle_timeout);
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
            () = tokio::time::sleep_until(check), if h2 && !closed => {
                if activity.idle_for(idle_timeout) {
                    tracing::debug!(%remote, "HTTP/2 connection idle for {idle_timeout:?}; closing it");
                    conn.as_mut().graceful_shutdown();
                    closed = true;
                }
            }
        }
    }
}
