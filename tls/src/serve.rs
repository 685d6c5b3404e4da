//! An axum router served over TLS, with a bounded graceful shutdown.
//!
//! Each connection is handshaken (within [`HANDSHAKE_TIMEOUT`], before any request is read)
//! with the configuration in use at accept time; a reload closes the connections made before
//! it. Connections are capped at [`MAX_CONNECTIONS`], and request headers must arrive within
//! [`HEADER_READ_TIMEOUT`]. Every request then carries, as extensions, the connection's
//! [`PeerCertificates`] (when the client presented one) and its `ConnectInfo<SocketAddr>`, as
//! `axum::serve` gives plain connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
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
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            tracing::debug!(%remote, "{MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let reloaded = tls.subscribe();
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(tcp, remote, acceptor, reloaded, app, stop).await;
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

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    mut reloaded: tokio::sync::watch::Receiver<u64>,
    app: Router,
    stop: CancellationToken,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HEADER_READ_TIMEOUT));
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = reloaded.changed(), if !closing => {
                tracing::debug!(%remote, "certificates reloaded: closing a connection made under the old ones");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
