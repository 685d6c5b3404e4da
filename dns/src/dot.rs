//! DNS over TLS (RFC 7858): the framing of DNS over TCP inside TLS, answered by the same
//! [`Answerer`] as TCP, on cairn-tls's accept loop (the HTTPS API's: a handshake time-out,
//! certificates that reload from their files, connections made under old certificates closed at
//! a reload, a bounded drain at shutdown).
//!
//! Connections are capped (in all and per client), closed when idle and dropped when they stop
//! taking answers as on DNS over TCP ([`Answerer::serve_streams`]).

use std::sync::Arc;

use cairn_tls::rustls::ServerConfig;
use cairn_tls::{ConnStats, Reloadable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Answerer;

/// The ALPN protocol of DNS over TLS (RFC 8310 names it; a client that offers none is served).
pub const ALPN: &[u8] = b"dot";

/// Serves DNS over TLS on `listener` until `stop`; open connections then get the forwarding
/// time-out to finish the query in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
    answerer: Answerer,
    stats: Arc<ConnStats>,
    stop: CancellationToken,
) {
    answerer
        .serve_streams(listener, Some(tls), stats, stop)
        .await
}
