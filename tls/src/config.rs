//! rustls configurations from PEM files, and [`Reloadable`]: a configuration rebuilt from its
//! files without a restart, on SIGHUP or when the files change ([`keep_fresh`]).
//!
//! A reload that fails (a half-written file, a key that does not match, a certificate that does
//! not chain to the CA or names another node, when the builder checks that) keeps the
//! configuration in use and says why in the log. Servers close the connections made before a
//! reload ([`crate::serve`]); clients rebuild theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    /// rustls refused the material: a key that does not match its certificate, a CA that
    /// cannot verify anything.
    #[error("{what}: {message}")]
    Refused { what: String, message: String },
}

/// The one crypto provider of every configuration (ring, as reqwest's rustls uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file, in order (a leaf then its chain, or CA certificates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: format!("holds no usable private key: {e}"),
    })
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A server presenting `cert`/`key`; with `client_ca`, every client must present a certificate
/// that CA signed (mutual TLS). `alpn` lists the protocols offered (`h2`, `http/1.1`).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let refused = |e: rustls::Error| TlsError::Refused {
        what: format!("{} with {}", cert.display(), key.display()),
        message: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Refused {
                        what: ca.display().to_string(),
                        message: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(refused)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client trusting the CA in `ca` only, presenting `identity` (certificate, key) when asked.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            what: "TLS client".into(),
            message: e.to_string(),
        })?
        .with_root_certificates(load_roots(ca)?);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Refused {
                what: format!("{} with {}", cert.display(), key.display()),
                message: e.to_string(),
            }),
        None => Ok(builder.with_no_client_auth()),
    }
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A configuration built from files, rebuilt when asked ([`Reloadable::reload`]) or when the
/// files changed ([`Reloadable::reload_if_changed`]).
pub struct Reloadable<T> {
    name: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    /// Modification time and size of each file at the last build that succeeded or failed.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
    /// The generation: moves by one at every successful reload. A channel, so those who act on
    /// a reload (servers close older connections) can wait for it.
    reloaded: tokio::sync::watch::Sender<u64>,
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("name", &self.name)
            .field("files", &self.files)
            .field("generation", &self.generation())
            .finish()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl<T> Reloadable<T> {
    /// Builds the configuration once; the error is the caller's to report (at start, a bad
    /// certificate is a configuration error).
    pub fn new(
        name: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let first = build()?;
        Ok(Reloadable {
            name,
            files,
            build: Box::new(build),
            current: RwLock::new(Arc::new(first)),
            stamps: Mutex::new(stamps),
            reloaded: tokio::sync::watch::Sender::new(0),
        })
    }

    /// What this configuration is for, for the log.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The configuration in use.
    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Moves by one at every successful reload, so users of a derived object (an HTTP client
    /// built from the configuration) know to rebuild it.
    pub fn generation(&self) -> u64 {
        *self.reloaded.borrow()
    }

    /// A receiver that sees the generation move at every successful reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Rebuilds from the files. On failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock() = self.files.iter().map(|f| stamp(f)).collect();
        let next = (self.build)()?;
        *self.current.write() = Arc::new(next);
        self.reloaded.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Rebuilds when a file's modification time or size changed since the last attempt;
    /// answers whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
        if *self.stamps.lock() == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

/// Something [`keep_fresh`] reloads.
pub trait Reload: Send + Sync {
    fn name(&self) -> &'static str;
    fn reload(&self) -> Result<(), TlsError>;
    fn reload_if_changed(&self) -> Result<bool, TlsError>;
}

impl<T: Send + Sync> Reload for Reloadable<T> {
    fn name(&self) -> &'static str {
        Reloadable::name(self)
    }
    fn reload(&self) -> Result<(), TlsError> {
        Reloadable::reload(self)
    }
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        Reloadable::reload_if_changed(self)
    }
}

/// How often [`keep_fresh`] looks at the files' modification times.
pub const CHECK_FILES_EVERY: Duration = Duration::from_secs(5);

/// Reloads `items` on SIGHUP (all of them) and when their files change (checked every
/// `every`), until `stop`. Each outcome is logged; a failed reload keeps what is in use.
pub async fn keep_fresh(items: Vec<Arc<dyn Reload>>, every: Duration, stop: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGHUP, certificates reload on file changes only: {e}"
            );
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        for item in &items {
            let outcome = if forced {
                item.reload().map(|()| true)
            } else {
                item.reload_if_changed()
            };
            match outcome {
                Ok(true) => tracing::info!(tls = item.name(), "reloaded certificates"),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    tls = item.name(),
                    "certificates not reloaded, the ones in use stay: {e}"
                ),
            }
        }
    }
}
