//! Who a peer is, read from its certificate.
//!
//! A node's identity is the DNS name `node-<id>.<cluster>.cairn` in its certificate's subject
//! alternative names, signed by the cluster's CA. A caller *claims* an id (the `x-cairn-from`
//! header of the cluster RPC); the claim counts only when the certificate that the TLS handshake
//! verified carries that id's name. So a header alone decides nothing, node 2's certificate
//! cannot speak for node 1, and a certificate of another cluster (other name) speaks for no one.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};

/// The names in node and client certificates: `node-3.cairn.cairn` for node 3 of cluster
/// `cairn`, `client-ops.cairn.cairn`. One definition, in [`crate::certs`].
pub use crate::certs::{client_name, node_name};

/// The certificate chain a peer presented on its connection, leaf first, as verified by the
/// TLS handshake. Every request of a TLS connection carries it as an extension.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificates {
    /// Whether the leaf certificate carries the DNS name `name`. The chain itself was verified
    /// against the CA when the connection was made.
    pub fn certifies(&self, name: &str) -> bool {
        self.0.first().is_some_and(|leaf| certifies(leaf, name))
    }
}

/// Whether `cert` carries the DNS name `name` in its subject alternative names.
pub fn certifies(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(leaf) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    leaf.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Checks this node's own certificate as its peers will: it chains to the CA in `ca`, is valid
/// now, serves as both server and client certificate, and names `name`. rustls never checks the
/// certificate it presents, so without this a wrong file (another node's, an expired one, one
/// of another CA) would pass at start or at a reload and then fail every handshake.
pub fn check_own_certificate(
    ca: &std::path::Path,
    cert: &std::path::Path,
    name: &str,
) -> Result<(), crate::TlsError> {
    check_certificate(ca, cert, name, Role::ServerAndClient)
}

/// Checks a client certificate as a node will: it chains to the CA in `ca`, is valid now, serves
/// as a client certificate, and names `name` (`client-ops.cairn.cairn`).
pub fn check_client_certificate(
    ca: &std::path::Path,
    cert: &std::path::Path,
    name: &str,
) -> Result<(), crate::TlsError> {
    check_certificate(ca, cert, name, Role::Client)
}

/// What a checked certificate must serve as.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Client,
    ServerAndClient,
}

fn check_certificate(
    ca: &std::path::Path,
    cert: &std::path::Path,
    name: &str,
    role: Role,
) -> Result<(), crate::TlsError> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::UnixTime;

    let roots = Arc::new(crate::config::load_roots(ca)?);
    let chain = crate::config::load_certs(cert)?;
    let refused = |message: String| crate::TlsError::Refused {
        what: format!("{} (for {name}, against {})", cert.display(), ca.display()),
        message,
    };
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| refused("holds no certificate".into()))?;
    if role == Role::ServerAndClient {
        // The server verifier also checks that the certificate names `name`.
        let server_name =
            ServerName::try_from(name.to_owned()).map_err(|e| refused(e.to_string()))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            crate::config::provider(),
        )
        .build()
        .map_err(|e| refused(e.to_string()))?
        .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
        .map_err(|e| refused(e.to_string()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::config::provider())
        .build()
        .map_err(|e| refused(e.to_string()))?
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| refused(e.to_string()))?;
    if !certifies(leaf, name) {
        return Err(refused(format!("it does not name {name}")));
    }
    Ok(())
}
