//! Cairn's TLS, in one place: every listener and every caller gets its rustls configuration
//! here, and one function decides who a peer is from its certificate.
//!
//! - [`certs`]: a CA, node and client certificates for a new cluster (`cairn tls ca create`,
//!   `cairn tls cert create`), as PEM files;
//! - [`config`]: PEM files loaded into rustls server and client configurations that reload
//!   without a restart (SIGHUP, or a change of the files);
//! - [`identity`]: node names (`node-<id>.<cluster>.cairn`) and the check that a peer's
//!   certificate carries the one it claims;
//! - [`serve`]: every TCP listener's accept loop, plain or TLS, with connection caps (in all and
//!   per client) and a drain at shutdown, and axum routers served on it with header and idle
//!   time-outs, each request carrying its connection's peer certificate;
//! - [`stream`]: a TCP connection with or without TLS, for servers and clients alike.

pub mod certs;
pub mod config;
pub mod identity;
pub mod serve;
pub mod stream;

pub use config::{keep_fresh, Reload, Reloadable, TlsError};
pub use identity::{node_name, PeerCertificates};
/// The rustls this crate builds configurations with, for callers that name its types.
pub use rustls;
pub use serve::{serve_connections, serve_http, ConnStats, Limits, Stream};
pub use stream::MaybeTls;
