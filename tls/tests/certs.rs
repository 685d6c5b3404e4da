//! The certificates `cairn tls` makes, judged by what will judge them in a cluster: rustls's
//! webpki verifiers, webpki's subject-name check, and real TLS handshakes, never by reading
//! back what rcgen was asked for.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use cairn_tls::certs::{self, CertError, Issued};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig,
    ServerConnection,
};

const CLUSTER: &str = "prod";
const DAY: Duration = Duration::from_secs(86_400);

fn new_ca() -> Issued {
    certs::create_ca(CLUSTER, certs::DEFAULT_CA_DAYS).unwrap()
}

fn node(ca: &Issued, id: u64) -> Issued {
    certs::create_node_cert(
        &ca.cert_pem,
        &ca.key_pem,
        CLUSTER,
        id,
        &[],
        &[],
        certs::DEFAULT_CERT_DAYS,
    )
    .unwrap()
}

fn client(ca: &Issued, name: &str) -> Issued {
    certs::create_client_cert(
        &ca.cert_pem,
        &ca.key_pem,
        CLUSTER,
        name,
        certs::DEFAULT_CERT_DAYS,
    )
    .unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Issued) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(&ca.cert_pem)).unwrap();
    Arc::new(roots)
}

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_owned()).unwrap()
}

fn at(offset_from_now: Duration, later: bool) -> UnixTime {
    let now = UnixTime::now().as_secs();
    let secs = if later {
        now + offset_from_now.as_secs()
    } else {
        now - offset_from_now.as_secs()
    };
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Verifies `cert` (with `intermediates`) as a server certificate for `server_name` against `ca`.
fn as_server(
    ca: &Issued,
    cert: &str,
    intermediates: &[CertificateDer<'static>],
    server_name: &str,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap()
        .verify_server_cert(&der(cert), intermediates, &name(server_name), &[], now)
        .map(drop)
}

/// Verifies `cert` as a client certificate against `ca`.
fn as_client(ca: &Issued, cert: &str, now: UnixTime) -> Result<(), rustls::Error> {
    WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap()
        .verify_client_cert(&der(cert), &[], now)
        .map(drop)
}

/// webpki's check of a claimed name, as the server side's node identity check makes it.
fn valid_for(cert: &str, claimed: &str) -> Result<(), webpki::Error> {
    let der = der(cert);
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    ee.verify_is_valid_for_subject_name(&name(claimed))
}

fn invalid_cert(r: Result<(), rustls::Error>) -> CertificateError {
    match r {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected an invalid certificate, got {other:?}"),
    }
}

#[test]
fn a_node_certificate_serves_its_identity_localhost_and_loopback_and_is_a_client() {
    let ca = new_ca();
    let n3 = node(&ca, 3);
    assert_eq!(n3.name, "node-3.prod.cairn");
    let now = UnixTime::now();
    for server_name in ["node-3.prod.cairn", "NODE-3.Prod.cairn", "localhost"] {
        as_server(&ca, &n3.cert_pem, &[], server_name, now)
            .unwrap_or_else(|e| panic!("{server_name}: {e}"));
    }
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap()
            .verify_server_cert(&der(&n3.cert_pem), &[], &ServerName::from(ip), &[], now)
            .unwrap_or_else(|e| panic!("{ip}: {e}"));
    }
    as_client(&ca, &n3.cert_pem, now).unwrap();
}

#[test]
fn a_node_certificate_is_not_valid_for_another_nodes_name() {
    let ca = new_ca();
    let n3 = node(&ca, 3);
    let now = UnixTime::now();
    for other in [
        "node-4.prod.cairn",
        "node-33.prod.cairn",
        "node-3.staging.cairn",
        "client-3.prod.cairn",
        "example.net",
    ] {
        let e = invalid_cert(as_server(&ca, &n3.cert_pem, &[], other, now));
        assert!(
            matches!(
                e,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "{other}: {e:?}"
        );
        assert!(valid_for(&n3.cert_pem, other).is_err(), "{other}");
    }
    // The server side's identity check: the name a node claims against its certificate.
    valid_for(&n3.cert_pem, &certs::node_name(CLUSTER, 3)).unwrap();
    valid_for(&n3.cert_pem, &certs::node_name(CLUSTER, 4)).unwrap_err();
    let n4 = node(&ca, 4);
    valid_for(&n4.cert_pem, &certs::node_name(CLUSTER, 4)).unwrap();
    valid_for(&n4.cert_pem, &certs::node_name(CLUSTER, 3)).unwrap_err();
}

#[test]
fn extra_names_and_addresses_are_in_the_node_certificate() {
    let ca = new_ca();
    let ip4: IpAddr = "10.1.2.3".parse().unwrap();
    let ip6: IpAddr = "fd00::7".parse().unwrap();
    let n1 = certs::create_node_cert(
        &ca.cert_pem,
        &ca.key_pem,
        CLUSTER,
        1,
        &[
            "cairn-1.example.net".into(),
            "cairn-1".into(),
            "localhost".into(),
        ],
        &[ip4, ip6, IpAddr::V4(Ipv4Addr::LOCALHOST)],
        30,
    )
    .unwrap();
    let now = UnixTime::now();
    for n in ["cairn-1.example.net", "cairn-1", "node-1.prod.cairn"] {
        as_server(&ca, &n1.cert_pem, &[], n, now).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    for ip in [ip4, ip6] {
        WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap()
            .verify_server_cert(&der(&n1.cert_pem), &[], &ServerName::from(ip), &[], now)
            .unwrap_or_else(|e| panic!("{ip}: {e}"));
    }
    as_server(&ca, &n1.cert_pem, &[], "cairn-2.example.net", now).unwrap_err();
}

#[test]
fn a_client_certificate_is_a_client_and_never_a_server() {
    let ca = new_ca();
    let ops = client(&ca, "ops");
    assert_eq!(ops.name, "client-ops.prod.cairn");
    let now = UnixTime::now();
    as_client(&ca, &ops.cert_pem, now).unwrap();
    valid_for(&ops.cert_pem, "client-ops.prod.cairn").unwrap();
    valid_for(&ops.cert_pem, "client-dev.prod.cairn").unwrap_err();
    // Even for its own name and localhost: no serverAuth.
    for server_name in ["client-ops.prod.cairn", "localhost"] {
        let e = invalid_cert(as_server(&ca, &ops.cert_pem, &[], server_name, now));
        assert!(
            matches!(
                e,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ),
            "{server_name}: {e:?}"
        );
    }
}

#[test]
fn certificates_of_another_ca_are_refused() {
    let ca = new_ca();
    let other_ca = new_ca();
    let stranger = node(&other_ca, 3);
    let stranger_client = client(&other_ca, "ops");
    let now = UnixTime::now();
    // Two CAs of one cluster have the same subject: webpki tries the wrong one's key and
    // finds the signature bad.
    for r in [
        as_server(&ca, &stranger.cert_pem, &[], "node-3.prod.cairn", now),
        as_client(&ca, &stranger.cert_pem, now),
        as_client(&ca, &stranger_client.cert_pem, now),
    ] {
        assert_eq!(invalid_cert(r), CertificateError::BadSignature);
    }
    // Another cluster's CA: another subject, so no issuer at all.
    let staging = certs::create_ca("staging", 1).unwrap();
    let foreign = certs::create_node_cert(
        &staging.cert_pem,
        &staging.key_pem,
        "staging",
        3,
        &[],
        &[],
        1,
    )
    .unwrap();
    for r in [
        as_server(&ca, &foreign.cert_pem, &[], "node-3.staging.cairn", now),
        as_client(&ca, &foreign.cert_pem, now),
    ] {
        assert_eq!(invalid_cert(r), CertificateError::UnknownIssuer);
    }
}

#[test]
fn certificates_are_valid_from_a_minute_ago_for_their_days() {
    let ca = new_ca();
    let n1 = certs::create_node_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, 1, &[], &[], 10).unwrap();
    assert!(!n1.clamped_to_ca);
    let c = certs::create_client_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, "ops", 10).unwrap();
    let (early, late) = (Duration::from_secs(3600), Duration::from_secs(3600));
    // A peer whose clock is half a minute behind accepts it; one an hour behind does not.
    as_server(
        &ca,
        &n1.cert_pem,
        &[],
        "localhost",
        at(Duration::from_secs(30), false),
    )
    .unwrap();
    let e = invalid_cert(as_server(
        &ca,
        &n1.cert_pem,
        &[],
        "localhost",
        at(early, false),
    ));
    assert!(
        matches!(
            e,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ),
        "{e:?}"
    );
    as_server(
        &ca,
        &n1.cert_pem,
        &[],
        "localhost",
        at(10 * DAY - late, true),
    )
    .unwrap();
    as_client(&ca, &c.cert_pem, at(10 * DAY - late, true)).unwrap();
    for r in [
        as_server(
            &ca,
            &n1.cert_pem,
            &[],
            "localhost",
            at(10 * DAY + late, true),
        ),
        as_client(&ca, &n1.cert_pem, at(10 * DAY + late, true)),
        as_client(&ca, &c.cert_pem, at(10 * DAY + late, true)),
    ] {
        let e = invalid_cert(r);
        assert!(
            matches!(
                e,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ),
            "{e:?}"
        );
    }
    let reported = n1.not_after.unix_timestamp();
    let expected = (UnixTime::now().as_secs() + 10 * DAY.as_secs()) as i64;
    assert!((reported - expected).abs() < 60, "{reported} vs {expected}");
}

#[test]
fn a_certificate_ends_no_later_than_its_ca() {
    let ca = certs::create_ca(CLUSTER, 10).unwrap();
    let n1 = node(&ca, 1);
    assert!(n1.clamped_to_ca);
    assert_eq!(n1.not_after.unix_timestamp(), ca.not_after.unix_timestamp());
    let late = Duration::from_secs(3600);
    as_server(
        &ca,
        &n1.cert_pem,
        &[],
        "localhost",
        at(10 * DAY - late, true),
    )
    .unwrap();
    let e = invalid_cert(as_server(
        &ca,
        &n1.cert_pem,
        &[],
        "localhost",
        at(10 * DAY + late, true),
    ));
    assert!(
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{e:?}"
    );
    let short = certs::create_client_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, "ops", 2).unwrap();
    assert!(!short.clamped_to_ca);
}

/// Runs a handshake in memory; the server's connection comes back for its peer's certificate.
fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    server_name: &str,
) -> Result<ServerConnection, rustls::Error> {
    let mut c = Connection::from(ClientConnection::new(Arc::new(client), name(server_name))?);
    let mut s = Connection::from(ServerConnection::new(Arc::new(server))?);
    for _ in 0..20 {
        pump(&mut c, &mut s)?;
        pump(&mut s, &mut c)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // TLS 1.3: the server judges the client's certificate after the client is done.
            pump(&mut c, &mut s)?;
            return match s {
                Connection::Server(s) => Ok(s),
                Connection::Client(_) => unreachable!(),
            };
        }
    }
    panic!("handshake did not finish");
}

fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

fn server_config(ca: &Issued, cert: &Issued) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![der(&cert.cert_pem)], key(&cert.key_pem))
        .unwrap()
}

fn client_config(ca: &Issued, cert: &Issued) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(vec![der(&cert.cert_pem)], key(&cert.key_pem))
        .unwrap()
}

#[test]
fn nodes_and_clients_complete_mutual_tls_with_their_keys() {
    let ca = new_ca();
    let (n1, n2, ops) = (node(&ca, 1), node(&ca, 2), client(&ca, "ops"));
    // Node 2 calls node 1: the handshake proves each key matches its certificate, and node 1
    // sees node 2's identity in the certificate it was shown.
    let s = handshake(server_config(&ca, &n1), client_config(&ca, &n2), &n1.name).unwrap();
    let peer = s.peer_certificates().unwrap()[0].clone();
    let ee = webpki::EndEntityCert::try_from(&peer).unwrap();
    ee.verify_is_valid_for_subject_name(&name(&certs::node_name(CLUSTER, 2)))
        .unwrap();
    ee.verify_is_valid_for_subject_name(&name(&certs::node_name(CLUSTER, 1)))
        .unwrap_err();

    handshake(
        server_config(&ca, &n1),
        client_config(&ca, &ops),
        "localhost",
    )
    .unwrap();
    // Node 2 expected but node 1 answers.
    handshake(server_config(&ca, &n1), client_config(&ca, &n2), &n2.name).unwrap_err();
    // A client certificate of another CA.
    let other_ca = new_ca();
    let stranger = client(&other_ca, "ops");
    handshake(
        server_config(&ca, &n1),
        client_config(&ca, &stranger),
        &n1.name,
    )
    .unwrap_err();
    // A node with a key that is not its certificate's.
    let mut mixed = n2.clone();
    mixed.key_pem = n1.key_pem.clone();
    let mismatched = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_client_auth_cert(vec![der(&mixed.cert_pem)], key(&mixed.key_pem));
    assert!(
        mismatched.is_err(),
        "rustls should refuse a key of another certificate"
    );
}

/// rcgen's handle on a CA made by `cairn tls`, to sign what `cairn tls` would not.
fn rcgen_issuer(cert_pem: &str, key_pem: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::from_pem(key_pem).unwrap();
    let cert = CertificateParams::from_ca_cert_pem(cert_pem)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert, key)
}

fn leaf_params(dns: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![dns.to_owned()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

/// Verifies a leaf signed by an intermediate CA, itself signed by `root`.
fn chain_through_intermediate(root: &Issued) -> Result<(), rustls::Error> {
    let (root_cert, root_key) = rcgen_issuer(&root.cert_pem, &root.key_pem);
    let inter_key = KeyPair::generate().unwrap();
    let mut inter = CertificateParams::default();
    inter
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let inter = inter.signed_by(&inter_key, &root_cert, &root_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params("x.example.net")
        .signed_by(&leaf_key, &inter, &inter_key)
        .unwrap();
    as_server(
        root,
        &leaf.pem(),
        &[inter.der().clone()],
        "x.example.net",
        UnixTime::now(),
    )
}

#[test]
fn a_node_certificate_signs_nothing() {
    let ca = new_ca();
    let n1 = node(&ca, 1);
    let (n1_cert, n1_key) = rcgen_issuer(&n1.cert_pem, &n1.key_pem);
    let leaf_key = KeyPair::generate().unwrap();
    let forged = leaf_params("node-2.prod.cairn")
        .signed_by(&leaf_key, &n1_cert, &n1_key)
        .unwrap();
    let e = as_server(
        &ca,
        &forged.pem(),
        &[der(&n1.cert_pem)],
        "node-2.prod.cairn",
        UnixTime::now(),
    )
    .unwrap_err();
    assert!(format!("{e:?}").contains("EndEntityUsedAsCa"), "{e:?}");
    // The same chain through a CA certificate verifies, so what refuses the one above is that
    // node 1's certificate is no CA. (webpki does not apply a trust anchor's path length, so
    // our CA's path length 0 binds other verifiers only: OpenSSL, Go.)
    chain_through_intermediate(&ca).unwrap();
    // Nor will `cairn tls` sign with it.
    let e =
        certs::create_node_cert(&n1.cert_pem, &n1.key_pem, CLUSTER, 2, &[], &[], 1).unwrap_err();
    assert!(matches!(e, CertError::NotCa { .. }), "{e}");
    assert!(e.to_string().contains("node-1.prod.cairn"), "{e}");
}

#[test]
fn a_ca_is_checked_before_it_signs() {
    let ca = new_ca();
    let other = new_ca();
    let node_with = |cert: &str, key: &str, cluster: &str| {
        certs::create_node_cert(cert, key, cluster, 1, &[], &[], 1).unwrap_err()
    };
    let e = node_with(&ca.cert_pem, &other.key_pem, CLUSTER);
    assert!(matches!(e, CertError::CaKeyMismatch), "{e}");
    let e = node_with(&ca.key_pem, &ca.cert_pem, CLUSTER);
    assert!(matches!(e, CertError::CaCert(_)), "swapped files: {e}");
    let e = node_with("not a PEM", &ca.key_pem, CLUSTER);
    assert!(matches!(e, CertError::CaCert(_)), "{e}");
    let e = node_with(&ca.cert_pem, "not a PEM", CLUSTER);
    assert!(matches!(e, CertError::CaKey(_)), "{e}");
    let e = node_with(&ca.cert_pem, &ca.key_pem, "staging");
    assert!(matches!(e, CertError::ClusterMismatch { .. }), "{e}");
    assert!(e.to_string().contains("\"prod\""), "{e}");
    assert!(e.is_bad_input());
    // Case does not make another cluster: the names in certificates are in lower case.
    certs::create_node_cert(&ca.cert_pem, &ca.key_pem, "PROD", 1, &[], &[], 1).unwrap();

    // A CA of this cluster whose time is over.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "Cairn CA prod");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = p.self_signed(&key).unwrap();
    let e = node_with(&expired.pem(), &key.serialize_pem(), CLUSTER);
    assert!(matches!(e, CertError::CaExpired(_)), "{e}");
    assert!(e.to_string().contains("2021-01-01"), "{e}");
}

#[test]
fn a_ca_made_elsewhere_signs_certificates_that_verify() {
    // Another tool's CA: no "Cairn CA" subject, several name parts, no path length limit.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Example Ltd");
    p.distinguished_name
        .push(DnType::CommonName, "Example Root");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    let ca = Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ..new_ca()
    };
    let n1 = node(&ca, 1);
    as_server(&ca, &n1.cert_pem, &[], "node-1.prod.cairn", UnixTime::now()).unwrap();
    as_client(&ca, &client(&ca, "ops").cert_pem, UnixTime::now()).unwrap();
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let ca = new_ca();
    let node_err = |cluster: &str, id: u64, dns: &[String], days: u32| {
        certs::create_node_cert(&ca.cert_pem, &ca.key_pem, cluster, id, dns, &[], days).unwrap_err()
    };
    assert!(matches!(
        node_err(CLUSTER, 0, &[], 1),
        CertError::InvalidNodeId
    ));
    assert!(matches!(
        node_err(CLUSTER, 1, &[], 0),
        CertError::InvalidDays(0)
    ));
    assert!(matches!(
        node_err(CLUSTER, 1, &[], 36_501),
        CertError::InvalidDays(36_501)
    ));
    assert!(matches!(
        node_err("prod_eu", 1, &[], 1),
        CertError::ClusterNotDnsLabel { .. }
    ));
    assert!(matches!(
        node_err("a b", 1, &[], 1),
        CertError::InvalidCluster(_)
    ));
    let e = node_err(CLUSTER, 1, &["node-2.prod.cairn".into()], 1);
    assert!(matches!(e, CertError::InvalidDnsName { .. }), "{e}");
    let e = node_err(CLUSTER, 1, &["*.example.net".into()], 1);
    assert!(matches!(e, CertError::InvalidDnsName { .. }), "{e}");
    for e in [
        certs::create_ca("prod.eu", 1).unwrap_err(),
        certs::create_ca(CLUSTER, 0).unwrap_err(),
        certs::create_ca(CLUSTER, certs::MAX_DAYS + 1).unwrap_err(),
        certs::create_client_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, "Ops", 1).unwrap_err(),
        certs::create_client_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, "", 1).unwrap_err(),
    ] {
        assert!(e.is_bad_input(), "{e}");
    }
    certs::create_ca(CLUSTER, certs::MAX_DAYS).unwrap();
}

#[test]
fn the_ca_is_a_p256_ca_for_its_cluster() {
    let ca = new_ca();
    assert_eq!(ca.name, "Cairn CA prod");
    let params = CertificateParams::from_ca_cert_pem(&ca.cert_pem).unwrap();
    assert_eq!(params.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
    for usage in [
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ] {
        assert!(params.key_usages.contains(&usage), "{usage:?}");
    }
    let key = KeyPair::from_pem(&ca.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let days = (ca.not_after - params.not_before).whole_days();
    assert_eq!(days, i64::from(certs::DEFAULT_CA_DAYS), "{params:?}");
}

#[test]
fn files_are_written_with_their_modes_and_not_overwritten_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs/new");
    let ca = new_ca();
    let written = certs::write_issued(&dir, certs::CA_FILE_STEM, &ca, false).unwrap();
    assert_eq!(written.cert, dir.join(certs::CA_CERT_FILE));
    assert_eq!(written.key, dir.join(certs::CA_KEY_FILE));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&written.cert), 0o644);
    assert_eq!(mode(&written.key), 0o600);
    assert_eq!(std::fs::read_to_string(&written.cert).unwrap(), ca.cert_pem);
    assert_eq!(std::fs::read_to_string(&written.key).unwrap(), ca.key_pem);

    let again = new_ca();
    let e = certs::write_issued(&dir, certs::CA_FILE_STEM, &again, false).unwrap_err();
    match &e {
        CertError::Exists { path } => assert_eq!(path, &written.cert),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("cairn-ca.pem"), "{e}");
    assert_eq!(std::fs::read_to_string(&written.key).unwrap(), ca.key_pem);

    // Only the key left over from an earlier run: still refused, and the key is kept.
    std::fs::remove_file(&written.cert).unwrap();
    let e = certs::write_issued(&dir, certs::CA_FILE_STEM, &again, false).unwrap_err();
    assert!(
        matches!(&e, CertError::Exists { path } if path == &written.key),
        "{e}"
    );
    assert!(!written.cert.exists());
    assert_eq!(std::fs::read_to_string(&written.key).unwrap(), ca.key_pem);

    std::fs::set_permissions(&written.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    certs::write_issued(&dir, certs::CA_FILE_STEM, &again, true).unwrap();
    assert_eq!(
        std::fs::read_to_string(&written.cert).unwrap(),
        again.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(&written.key).unwrap(),
        again.key_pem
    );
    assert_eq!(mode(&written.key), 0o600, "a replaced key is 0600 again");

    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[test]
fn a_folder_that_cannot_be_made_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let e = certs::write_issued(&file.join("sub"), "node-1", &new_ca(), false).unwrap_err();
    assert!(matches!(e, CertError::Io { .. }), "{e}");
    assert!(e.to_string().contains("a-file"), "{e}");
}

#[test]
fn a_validity_window_makes_certificates_that_expire_in_a_moment_or_start_later() {
    use certs::Validity;
    use std::time::SystemTime;

    let ca = new_ca();
    let now = SystemTime::now();
    let window = |not_before: SystemTime, not_after: SystemTime| Validity::Window {
        not_before,
        not_after,
    };
    let client_in =
        |v: Validity| certs::create_client_cert(&ca.cert_pem, &ca.key_pem, CLUSTER, "ops", v);
    let expiring = client_in(window(now - DAY, now + Duration::from_secs(60))).unwrap();
    as_client(&ca, &expiring.cert_pem, UnixTime::now()).unwrap();
    let e = invalid_cert(as_client(
        &ca,
        &expiring.cert_pem,
        at(Duration::from_secs(120), true),
    ));
    assert!(
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{e:?}"
    );
    let later = certs::create_node_cert(
        &ca.cert_pem,
        &ca.key_pem,
        CLUSTER,
        1,
        &[],
        &[],
        window(now + DAY, now + 2 * DAY),
    )
    .unwrap();
    let e = invalid_cert(as_server(
        &ca,
        &later.cert_pem,
        &[],
        "localhost",
        UnixTime::now(),
    ));
    assert!(
        matches!(
            e,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ),
        "{e:?}"
    );
    as_server(
        &ca,
        &later.cert_pem,
        &[],
        "localhost",
        at(DAY + DAY / 2, true),
    )
    .unwrap();

    // Empty, over already, too long, or after the CA's end: refused as bad input.
    let five_years = Duration::from_secs(u64::from(certs::DEFAULT_CA_DAYS) * DAY.as_secs());
    for (from, to) in [
        (now + DAY, now),
        (now - 2 * DAY, now - DAY),
        (now, now + (certs::MAX_DAYS + 1) * DAY),
        (now + five_years + DAY, now + five_years + 2 * DAY),
    ] {
        let e = client_in(window(from, to)).unwrap_err();
        assert!(matches!(e, CertError::InvalidWindow { .. }), "{e}");
        assert!(e.is_bad_input());
    }
}
