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
