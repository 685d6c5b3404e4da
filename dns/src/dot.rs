//! DNS over TLS (RFC 7858): the framing of DNS over TCP inside TLS, answered by the same
//! [`Answerer`] as TCP, on cairn-tls's accept loop (the HTTPS API's: a handshake time-out,
//! certificates that reload from their files, connections made under old certificates closed at
//! a reload, a bounded drain at shutdown).
//!
//! Connections are capped and closed when idle as on DNS over TCP
//! ([`ServerConfig::max_tcp_connections`](crate::ServerConfig::max_tcp_connections),
//! [`ServerConfig::tcp_idle_timeout`](crate::ServerConfig::tcp_idle_timeout)).

use std::sync::Arc;
use std::time::Duration;

use cairn_tls::rustls::ServerConfig;
use cairn_tls::Reloadable;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Answerer;

/// The ALPN protocol of DNS over TLS (RFC 8310 names it; a client that offers none is served).
pub const ALPN: &[u8] = b"dot";

/// Serves DNS over TLS on `listener` until `stop`; open connections then get `grace` to finish
/// the query in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
    answerer: Answerer,
    stop: CancellationToken,
    grace: Duration,
) {
    let max_connections = answerer.config().max_tcp_connections;
    let serve = move |stream, remote: std::net::SocketAddr, closing: CancellationToken| {
        let answerer = answerer.clone();
        async move {
            if let Err(e) = answerer.serve_stream(stream, remote.ip(), &closing).await {
                tracing::debug!(%remote, "DNS over TLS connection: {e}");
            }
        }
    };
    cairn_tls::serve_tls_connections(listener, tls, max_connections, stop, grace, serve).await
}
