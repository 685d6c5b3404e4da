//! Certificates for a new cluster: a CA, node certificates and client certificates, as PEM, and
//! the files they go to (`cairn tls ca create`, `cairn tls cert create`).
//!
//! The names are the contract with whoever checks them. A node's identity is the DNS name
//! `node-<id>.<cluster>.cairn` among its certificate's subject alternative names ([`node_name`]);
//! a client's is `client-<name>.<cluster>.cairn` ([`client_name`]). A node is both sides of
//! mutual TLS, so its certificate is for server and client authentication; a client
//! certificate is for client authentication only.
//!
//! Every certificate made from a CA is verified against that CA with rustls's own verifiers
//! before it is returned: a CA that rcgen cannot sign for faithfully (an unusual subject name,
//! say) fails here, not at a node's first handshake.
//!
//! ```
//! use cairn_tls::certs;
//!
//! let ca = certs::create_ca("prod", certs::DEFAULT_CA_DAYS)?;
//! let node = certs::create_node_cert(
//!     &ca.cert_pem,
//!     &ca.key_pem,
//!     "prod",
//!     3,
//!     &["cairn-3.example.net".to_owned()],
//!     &[],
//!     certs::DEFAULT_CERT_DAYS,
//! )?;
//! assert_eq!(node.name, "node-3.prod.cairn");
//! assert_eq!(node.name, certs::node_name("prod", 3));
//! # Ok::<(), certs::CertError>(())
//! ```

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};

/// The last label of every name in a Cairn certificate, as in `node-3.prod.cairn`.
pub const NAME_SUFFIX: &str = "cairn";
/// A CA is valid for five years unless told otherwise: long enough not to be renewed by
/// surprise, short enough that a forgotten CA key does not stay trusted forever.
pub const DEFAULT_CA_DAYS: u32 = 1825;
/// Node and client certificates are valid for a year unless told otherwise.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// The longest validity accepted, 100 years: beyond it a number is a typo, not a plan.
pub const MAX_DAYS: u32 = 36_500;
/// The CA certificate's file name in a certificate folder.
pub const CA_CERT_FILE: &str = "cairn-ca.pem";
/// The CA key's file name in a certificate folder.
pub const CA_KEY_FILE: &str = "cairn-ca-key.pem";
/// The stem of the CA's files, as [`pem_file_names`] takes it.
pub const CA_FILE_STEM: &str = "cairn-ca";
/// `client-<name>` is one DNS label, and a label holds at most 63 bytes (RFC 1035).
pub const MAX_CLIENT_NAME_LEN: usize = MAX_LABEL_LEN - CLIENT_PREFIX.len();

/// A cluster name, as the agent's `--cluster` takes it, holds at most this many bytes.
const MAX_CLUSTER_LEN: usize = 64;
/// The most bytes in one DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;
/// The most bytes in a DNS name, as webpki and most resolvers count it (RFC 1035's 255 less
/// the length bytes and the root).
const MAX_DNS_NAME_LEN: usize = 253;
/// Certificates start this long before they are made, so that a peer whose clock is a little
/// behind ours accepts a certificate made a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(1);
/// The first label of a client's name is this prefix and the client's name.
const CLIENT_PREFIX: &str = "client-";
/// A CA made here has the common name `Cairn CA <cluster>`; certificates for another cluster
/// are refused from it.
const CA_NAME_PREFIX: &str = "Cairn CA ";

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The cluster name breaks the rules of the agent's `--cluster`.
    #[error("cluster name {0:?} must be 1-64 of A-Z, a-z, 0-9, '-', '_', '.'")]
    InvalidCluster(String),
    /// The cluster name suits the agent but cannot be one label of a DNS name, as certificate
    /// names need it to be.
    #[error(
        "cluster name {name:?} cannot be in a certificate: {why}; node names are \
         node-<id>.<cluster>.cairn, so a cluster with certificates needs a name of one DNS label \
         (1-63 of letters, digits and '-', not starting or ending with '-')"
    )]
    ClusterNotDnsLabel {
        /// The cluster name given.
        name: String,
        /// What makes it no DNS label.
        why: &'static str,
    },
    /// Node ids start at 1.
    #[error("node id 0 is not a node id: node ids are positive integers")]
    InvalidNodeId,
    /// A client name outside the rules of [`check_client_name`].
    #[error(
        "client name {0:?} must be 1-{MAX_CLIENT_NAME_LEN} of a-z, 0-9 and '-', not ending \
         with '-' (it becomes the DNS label client-<name>)"
    )]
    InvalidClientName(String),
    /// A validity outside `1..=MAX_DAYS` days.
    #[error("a validity of {0} days is out of range: give 1 to {MAX_DAYS} days")]
    InvalidDays(u32),
    /// A [`Validity::Window`] that is empty, over already, longer than [`MAX_DAYS`], or
    /// starting after the CA's end.
    #[error(
        "a validity from {not_before} to {not_after} is refused: it must end after it starts \
         and after now, last at most {MAX_DAYS} days, and start before the CA's end"
    )]
    InvalidWindow {
        /// The window's start.
        not_before: OffsetDateTime,
        /// The window's end.
        not_after: OffsetDateTime,
    },
    /// An extra DNS name for a node certificate that cannot be one.
    #[error("{name:?} cannot be a DNS name of a node certificate: {why}")]
    InvalidDnsName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The CA certificate PEM holds no certificate that can be read.
    #[error("cannot read the CA certificate: {0}")]
    CaCert(String),
    /// The CA certificate is a certificate, but not one of a CA.
    #[error("the CA certificate (subject {subject:?}) is not a CA: {why}")]
    NotCa {
        /// The certificate's common name, or a note that it has none.
        subject: String,
        /// What it lacks.
        why: &'static str,
    },
    /// The CA key PEM holds no key that can sign.
    #[error("cannot read the CA key: {0} (a PKCS#8 PEM, \"BEGIN PRIVATE KEY\", is expected)")]
    CaKey(String),
    /// The CA key is not the key of the CA certificate.
    #[error(
        "the CA key does not match the CA certificate: certificates signed with it would not \
         verify against the CA"
    )]
    CaKeyMismatch,
    /// The CA certificate is past its end.
    #[error("the CA certificate expired on {0}: make a new CA")]
    CaExpired(time::Date),
    /// The CA was made here for another cluster.
    #[error(
        "the CA is cluster {ca_cluster:?}'s (subject \"{CA_NAME_PREFIX}{ca_cluster}\"), not \
         cluster {cluster:?}'s"
    )]
    ClusterMismatch {
        /// The cluster named in the CA's subject.
        ca_cluster: String,
        /// The cluster asked for.
        cluster: String,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate just made does not verify against its CA with rustls.
    #[error("the new certificate does not verify against the CA: {0}")]
    SelfCheck(String),
    /// A file to write is already there.
    #[error("{} already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file or folder could not be written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, as a verb phrase ("write", "create the folder").
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
}

impl CertError {
    /// Whether the caller's arguments are at fault (a name, an id, a number of days), rather
    /// than a file or the system: a command line exits 64 for these, 1 for the rest.
    pub fn is_bad_input(&self) -> bool {
        match self {
            CertError::InvalidCluster(_)
            | CertError::ClusterNotDnsLabel { .. }
            | CertError::InvalidNodeId
            | CertError::InvalidClientName(_)
            | CertError::InvalidDays(_)
            | CertError::InvalidWindow { .. }
            | CertError::InvalidDnsName { .. }
            | CertError::ClusterMismatch { .. } => true,
            CertError::CaCert(_)
            | CertError::NotCa { .. }
            | CertError::CaKey(_)
            | CertError::CaKeyMismatch
            | CertError::CaExpired(_)
            | CertError::Generate(_)
            | CertError::SelfCheck(_)
            | CertError::Exists { .. }
            | CertError::Io { .. } => false,
        }
    }
}

/// A certificate and its new private key, as PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (`BEGIN CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PKCS#8 (`BEGIN PRIVATE KEY`). A secret: never logged, written 0600.
    pub key_pem: String,
    /// Who the certificate is for: the identity name of a node or client certificate
    /// (`node-3.prod.cairn`), the common name of a CA (`Cairn CA prod`).
    pub name: String,
    /// The end of its validity.
    pub not_after: OffsetDateTime,
    /// Whether the end was brought forward to the CA's own, which comes before the days asked.
    pub clamped_to_ca: bool,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .field("clamped_to_ca", &self.clamped_to_ca)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Where a certificate and its key were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The certificate file (mode 0644).
    pub cert: PathBuf,
    /// The key file (mode 0600).
    pub key: PathBuf,
}

/// How long a node or client certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Validity {
    /// From a minute before it is made (for peers whose clock is a little behind) for this
    /// many days, 1 to [`MAX_DAYS`]: what `cairn tls cert create --days` makes. A number of
    /// days converts into this.
    Days(u32),
    /// From `not_before` to `not_after`: for tests of how peers treat a certificate that has
    /// just expired (make one that ends in a moment, and wait) or is not valid yet. It must
    /// end after now: the new certificate is checked against its CA at a moment inside the
    /// window (now, or its start if that is later), when the CA must be valid too.
    Window {
        /// Its start.
        not_before: SystemTime,
        /// Its end.
        not_after: SystemTime,
    },
}

impl From<u32> for Validity {
    fn from(days: u32) -> Self {
        Validity::Days(days)
    }
}

impl Validity {
    /// The (start, end) of a certificate made at `now`, checked.
    fn window(self, now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
        match self {
            Validity::Days(days) => {
                check_days(days)?;
                Ok((now - CLOCK_SKEW, now + Duration::days(i64::from(days))))
            }
            Validity::Window {
                not_before,
                not_after,
            } => {
                let (not_before, not_after) = (
                    OffsetDateTime::from(not_before),
                    OffsetDateTime::from(not_after),
                );
                if not_after <= not_before
                    || not_after <= now
                    || not_after - not_before > Duration::days(i64::from(MAX_DAYS))
                {
                    return Err(CertError::InvalidWindow {
                        not_before,
                        not_after,
                    });
                }
                Ok((not_before, not_after))
            }
        }
    }
}

/// A node's identity name: `node-<id>.<cluster>.cairn`, in lower case (DNS names ignore case;
/// one spelling lets a byte comparison agree with webpki's).
pub fn node_name(cluster: &str, id: u64) -> String {
    format!("node-{id}.{}.{NAME_SUFFIX}", cluster.to_ascii_lowercase())
}

/// A client's identity name: `client-<name>.<cluster>.cairn`, in lower case.
pub fn client_name(cluster: &str, name: &str) -> String {
    format!(
        "{CLIENT_PREFIX}{name}.{}.{NAME_SUFFIX}",
        cluster.to_ascii_lowercase()
    )
}

/// `<stem>.pem` and `<stem>-key.pem`: the certificate's and the key's file names.
pub fn pem_file_names(stem: &str) -> (String, String) {
    (format!("{stem}.pem"), format!("{stem}-key.pem"))
}

/// Checks that certificates can be made for this cluster: a valid `--cluster` of the agent
/// that is also one DNS label (no '.', no '_', at most 63 bytes, no '-' at either end).
pub fn check_cluster(cluster: &str) -> Result<(), CertError> {
    if cluster.is_empty()
        || cluster.len() > MAX_CLUSTER_LEN
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(CertError::InvalidCluster(cluster.to_owned()));
    }
    let why = if cluster.contains('.') {
        Some("it has a '.'")
    } else if cluster.contains('_') {
        Some("it has a '_'")
    } else if cluster.len() > MAX_LABEL_LEN {
        Some("it is longer than 63 bytes")
    } else if cluster.starts_with('-') || cluster.ends_with('-') {
        Some("it starts or ends with '-'")
    } else {
        None
    };
    match why {
        Some(why) => Err(CertError::ClusterNotDnsLabel {
            name: cluster.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks a client's name: 1 to [`MAX_CLIENT_NAME_LEN`] of a-z, 0-9 and '-', not ending with
/// '-', so that `client-<name>` is a DNS label.
pub fn check_client_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_LEN
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidClientName(name.to_owned()))
    }
}

/// Checks the arguments of [`create_node_cert`] other than the CA, so that a caller can
/// refuse bad input before it reads the CA's files.
pub fn check_node_cert_args(
    cluster: &str,
    id: u64,
    extra_dns: &[String],
    days: u32,
) -> Result<(), CertError> {
    check_node_names(cluster, id, extra_dns)?;
    check_days(days)
}

fn check_node_names(cluster: &str, id: u64, extra_dns: &[String]) -> Result<(), CertError> {
    check_cluster(cluster)?;
    if id == 0 {
        return Err(CertError::InvalidNodeId);
    }
    for name in extra_dns {
        check_extra_dns_name(cluster, name)?;
    }
    Ok(())
}

/// Checks the arguments of [`create_client_cert`] other than the CA.
pub fn check_client_cert_args(cluster: &str, name: &str, days: u32) -> Result<(), CertError> {
    check_cluster(cluster)?;
    check_client_name(name)?;
    check_days(days)
}

fn check_days(days: u32) -> Result<(), CertError> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(CertError::InvalidDays(days))
    }
}

/// Checks an extra DNS name for a node certificate: a host name (RFC 1123 labels), not an IP
/// address, no wildcard, and nothing in the cluster's own `<cluster>.cairn` zone, where every
/// name is some node's or client's identity.
fn check_extra_dns_name(cluster: &str, name: &str) -> Result<(), CertError> {
    let bad = |why: String| CertError::InvalidDnsName {
        name: name.to_owned(),
        why,
    };
    if name.parse::<IpAddr>().is_ok() {
        return Err(bad("it is an IP address: give it with --ip".into()));
    }
    if name.contains('*') {
        return Err(bad(
            "wildcards are refused: a wildcard could match other nodes' names".into(),
        ));
    }
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err(bad(format!("a DNS name has 1 to {MAX_DNS_NAME_LEN} bytes")));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad(format!(
                "label {label:?} is not 1-63 of letters, digits and '-' (not first or last)"
            )));
        }
    }
    // webpki refuses a name whose last label is all digits; say so here rather than at the check.
    if ServerName::try_from(name).is_err() {
        return Err(bad("it is not a name TLS clients accept".into()));
    }
    let zone = format!(".{}.{NAME_SUFFIX}", cluster.to_ascii_lowercase());
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(&zone) || lower == zone[1..] {
        return Err(bad(format!(
            "names in {} are the cluster's identities; a node's own is added for it",
            &zone[1..]
        )));
    }
    Ok(())
}

/// Makes a self-signed CA for `cluster`, valid for `days` ([`DEFAULT_CA_DAYS`] by default):
/// ECDSA P-256, common name `Cairn CA <cluster>`, a CA that may sign end-entity certificates
/// only (path length 0), with key usages keyCertSign, cRLSign and digitalSignature.
pub fn create_ca(cluster: &str, days: u32) -> Result<Issued, CertError> {
    check_cluster(cluster)?;
    let (not_before, not_after) = Validity::Days(days).window(OffsetDateTime::now_utc())?;
    let name = format!("{CA_NAME_PREFIX}{cluster}");
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&name);
    params.not_before = not_before;
    params.not_after = not_after;
    // Path length 0: the CA signs nodes and clients, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        name,
        not_after,
        clamped_to_ca: false,
    })
}

/// Checks a CA's certificate and key as [`create_node_cert`] would use them: a CA certificate
/// of `cluster`, valid now, and the key that goes with it.
pub fn check_ca(ca_cert_pem: &str, ca_key_pem: &str, cluster: &str) -> Result<(), CertError> {
    check_cluster(cluster)?;
    Ca::load(ca_cert_pem, ca_key_pem, cluster).map(drop)
}

/// Makes node `id`'s certificate, signed by the CA: SANs `node-<id>.<cluster>.cairn`,
/// `localhost`, `127.0.0.1`, `::1`, and `extra_dns` and `extra_ips` (the names and addresses
/// the node's HTTPS API and RPC are reached at); for server and client authentication; valid
/// for `validity`, a number of days ([`DEFAULT_CERT_DAYS`] by default) or a [`Validity`], or
/// until the CA's end if that comes first.
pub fn create_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cluster: &str,
    id: u64,
    extra_dns: &[String],
    extra_ips: &[IpAddr],
    validity: impl Into<Validity>,
) -> Result<Issued, CertError> {
    let validity = validity.into();
    check_node_names(cluster, id, extra_dns)?;
    validity.window(OffsetDateTime::now_utc())?;
    let ca = Ca::load(ca_cert_pem, ca_key_pem, cluster)?;
    let name = node_name(cluster, id);
    let mut dns = vec![name.clone(), "localhost".to_owned()];
    for extra in extra_dns {
        if !dns.iter().any(|d| d.eq_ignore_ascii_case(extra)) {
            dns.push(extra.clone());
        }
    }
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    for ip in extra_ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    ca.issue(
        name,
        dns,
        ips,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        validity,
    )
}

/// Makes a client's certificate, signed by the CA: SAN `client-<name>.<cluster>.cairn`, for
/// client authentication only; valid for `validity` (days, or a [`Validity`]) or until the
/// CA's end if that comes first.
pub fn create_client_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cluster: &str,
    name: &str,
    validity: impl Into<Validity>,
) -> Result<Issued, CertError> {
    let validity = validity.into();
    check_cluster(cluster)?;
    check_client_name(name)?;
    validity.window(OffsetDateTime::now_utc())?;
    let ca = Ca::load(ca_cert_pem, ca_key_pem, cluster)?;
    let name = client_name(cluster, name);
    ca.issue(
        name.clone(),
        vec![name],
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        validity,
    )
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn common_name_of(dn: &DistinguishedName) -> Option<&str> {
    match dn.get(&DnType::CommonName)? {
        DnValue::Utf8String(s) => Some(s),
        DnValue::PrintableString(s) => Some(s.as_str()),
        DnValue::Ia5String(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A CA read back from its PEM files, ready to sign.
struct Ca {
    /// The CA certificate as parsed, re-signed by rcgen: only its subject and key identifier
    /// are used, as the issuer of what is signed. The original is `der`.
    issuer: rcgen::Certificate,
    key: KeyPair,
    der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

impl Ca {
    /// Reads the CA and checks it can sign for `cluster`: a CA certificate (basicConstraints
    /// cA=TRUE, keyCertSign if it has key usages), the key that matches it, not expired, and
    /// if made here, made for this cluster.
    fn load(cert_pem: &str, key_pem: &str, cluster: &str) -> Result<Ca, CertError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::CaCert(e.to_string()))?;
        let params = CertificateParams::from_ca_cert_der(&der)
            .map_err(|e| CertError::CaCert(e.to_string()))?;
        let subject = common_name_of(&params.distinguished_name)
            .unwrap_or("(no common name)")
            .to_owned();
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CertError::NotCa {
                subject,
                why: "it has no basic constraints saying cA=TRUE",
            });
        }
        if !params.key_usages.is_empty()
            && !params.key_usages.contains(&KeyUsagePurpose::KeyCertSign)
        {
            return Err(CertError::NotCa {
                subject,
                why: "its key usages do not include keyCertSign",
            });
        }
        if let Some(ca_cluster) = subject.strip_prefix(CA_NAME_PREFIX) {
            if !ca_cluster.eq_ignore_ascii_case(cluster) {
                return Err(CertError::ClusterMismatch {
                    ca_cluster: ca_cluster.to_owned(),
                    cluster: cluster.to_owned(),
                });
            }
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::CaKey(e.to_string()))?;
        let parsed =
            ParsedCertificate::try_from(&der).map_err(|e| CertError::CaCert(e.to_string()))?;
        if parsed.subject_public_key_info().as_ref() != key.public_key_der().as_slice() {
            return Err(CertError::CaKeyMismatch);
        }
        if params.not_after <= OffsetDateTime::now_utc() {
            return Err(CertError::CaExpired(params.not_after.date()));
        }
        let not_after = params.not_after;
        let issuer = params.self_signed(&key)?;
        Ok(Ca {
            issuer,
            key,
            der: der.into_owned(),
            not_after,
        })
    }

    /// Signs a new end-entity certificate with a new P-256 key, then verifies it against the
    /// CA with rustls as a client certificate, and as a server certificate for `name` when it
    /// is for server authentication.
    fn issue(
        &self,
        name: String,
        dns: Vec<String>,
        ips: Vec<IpAddr>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let now = OffsetDateTime::now_utc();
        let (not_before, wanted_end) = validity.window(now)?;
        if not_before >= self.not_after {
            return Err(CertError::InvalidWindow {
                not_before,
                not_after: wanted_end,
            });
        }
        let clamped_to_ca = wanted_end > self.not_after;
        let not_after = if clamped_to_ca {
            self.not_after
        } else {
            wanted_end
        };
        let server = ekus.contains(&ExtendedKeyUsagePurpose::ServerAuth);
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        // digitalSignature only: it is all TLS asks of an ECDSA key, and RFC 5480 does not
        // allow keyEncipherment with one.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for d in dns {
            sans.push(SanType::DnsName(Ia5String::try_from(d)?));
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        // As a peer will check it, at a moment it is valid: now, or its start if later.
        self.verify(
            cert.der(),
            server.then_some(name.as_str()),
            not_before.max(now),
        )?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            name,
            not_after,
            clamped_to_ca,
        })
    }

    /// What a peer will do with the certificate at `at`: verify it against the CA, as a client
    /// certificate and, given a name, as a server certificate for that name.
    fn verify(
        &self,
        cert: &CertificateDer<'_>,
        server_name: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<(), CertError> {
        let failed = |e: &dyn fmt::Display| CertError::SelfCheck(e.to_string());
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).map_err(|e| failed(&e))?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seconds = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| failed(&e))?
            .verify_client_cert(cert, &[], now)
            .map_err(|e| failed(&e))?;
        if let Some(name) = server_name {
            let name = ServerName::try_from(name).map_err(|e| failed(&e))?;
            WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| failed(&e))?
                .verify_server_cert(cert, &[], &name, &[], now)
                .map_err(|e| failed(&e))?;
        }
        Ok(())
    }
}

/// Writes `<stem>.pem` (mode 0644) and `<stem>-key.pem` (mode 0600) into `dir`, creating the
/// folder if need be. Unless `force`, refuses if either file exists, and writes neither.
///
/// Each file is written to a temporary file in `dir` (the key's made 0600 from the start),
/// synced, then renamed into place, so a reader never sees half a file; without `force` the
/// rename refuses to replace a file that appeared meanwhile.
pub fn write_issued(
    dir: &Path,
    stem: &str,
    issued: &Issued,
    force: bool,
) -> Result<Written, CertError> {
    let (cert_name, key_name) = pem_file_names(stem);
    let written = Written {
        cert: dir.join(cert_name),
        key: dir.join(key_name),
    };
    if !force {
        for path in [&written.cert, &written.key] {
            if path.symlink_metadata().is_ok() {
                return Err(CertError::Exists { path: path.clone() });
            }
        }
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        action: "create the folder",
        source,
    })?;
    write_file(dir, &written.key, issued.key_pem.as_bytes(), 0o600, force)?;
    if let Err(e) = write_file(dir, &written.cert, issued.cert_pem.as_bytes(), 0o644, force) {
        if !force {
            // A key without its certificate is of no use, and would block the next try.
            let _ = fs::remove_file(&written.key);
        }
        return Err(e);
    }
    // Make the renames durable; a failure here leaves the files readable, so it is not one.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(written)
}

fn write_file(
    dir: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> Result<(), CertError> {
    let io = |action: &'static str| {
        move |source: io::Error| CertError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-tls-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io("create a temporary file for"))?;
    // The mode given at creation is narrowed by the umask; the key is 0600 either way, and the
    // certificate is meant to be readable by the service's other users.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of"))?;
    tmp.write_all(contents).map_err(io("write"))?;
    tmp.as_file().sync_all().map_err(io("write"))?;
    let persisted = if replace {
        tmp.persist(path).map(drop)
    } else {
        tmp.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_owned(),
            }
        } else {
            io("write")(e.error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract_in_lower_case() {
        assert_eq!(node_name("cairn", 3), "node-3.cairn.cairn");
        assert_eq!(node_name("Prod-EU", 12), "node-12.prod-eu.cairn");
        assert_eq!(client_name("prod", "ci-bot"), "client-ci-bot.prod.cairn");
        assert_eq!(
            pem_file_names("node-3"),
            ("node-3.pem".to_owned(), "node-3-key.pem".to_owned())
        );
        assert_eq!(pem_file_names(CA_FILE_STEM).0, CA_CERT_FILE);
        assert_eq!(pem_file_names(CA_FILE_STEM).1, CA_KEY_FILE);
    }

    #[test]
    fn cluster_names_must_be_agent_names_and_one_dns_label() {
        for ok in ["cairn", "prod-eu", "Prod", "a", "0", &"a".repeat(63)] {
            check_cluster(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(
                matches!(check_cluster(bad), Err(CertError::InvalidCluster(_))),
                "{bad:?}"
            );
        }
        for (bad, why) in [
            ("prod.eu", "'.'"),
            ("prod_eu", "'_'"),
            ("-prod", "'-'"),
            ("prod-", "'-'"),
            (&"a".repeat(64), "63"),
        ] {
            match check_cluster(bad) {
                Err(e @ CertError::ClusterNotDnsLabel { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(why), "{bad:?}: {msg}");
                    assert!(msg.contains("node-<id>.<cluster>.cairn"), "{msg}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn client_names_fit_one_dns_label() {
        for ok in ["ci", "ci-bot-2", "0", &"a".repeat(MAX_CLIENT_NAME_LEN)] {
            check_client_name(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            let name = client_name("c", ok);
            ServerName::try_from(name.as_str()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for bad in [
            "",
            "Bob",
            "a_b",
            "a.b",
            "bot-",
            &"a".repeat(MAX_CLIENT_NAME_LEN + 1),
        ] {
            assert!(check_client_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extra_dns_names_are_host_names_outside_the_cluster_zone() {
        for ok in [
            "cairn-1.example.net",
            "db",
            "HOST-1.Example.NET",
            "x.service.cairn",
        ] {
            check_extra_dns_name("prod", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, why) in [
            ("10.0.0.1", "--ip"),
            ("::1", "--ip"),
            ("*.example.net", "wildcard"),
            ("*.prod.cairn", "wildcard"),
            ("node-4.prod.cairn", "identities"),
            ("client-admin.PROD.cairn", "identities"),
            ("prod.cairn", "identities"),
            ("a..b", "label"),
            ("-a.b", "label"),
            ("a_b.c", "label"),
            ("a.b.", "label"),
            ("host.123", "TLS"),
            ("", "bytes"),
        ] {
            match check_extra_dns_name("prod", bad) {
                Err(e @ CertError::InvalidDnsName { .. }) => {
                    assert!(e.to_string().contains(why), "{bad:?}: {e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_input_is_told_from_failures() {
        assert!(CertError::InvalidNodeId.is_bad_input());
        assert!(CertError::InvalidDays(0).is_bad_input());
        assert!(!CertError::CaKeyMismatch.is_bad_input());
        assert!(!CertError::Exists { path: "x".into() }.is_bad_input());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let ca = create_ca("cairn", 1).unwrap();
        let shown = format!("{ca:?}");
        assert!(shown.contains("Cairn CA cairn"), "{shown}");
        assert!(!shown.contains(&ca.key_pem), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
