//! DNS over TLS and over HTTPS: the same answers, byte for byte, as plain DNS; certificates of
//! the cluster's CA only; garbage never ends a listener; and the resolvers users run (kdig,
//! unbound) resolve through them.
//!
//! kdig (Debian's knot-dnsutils) and unbound are installed by `scripts/deps --test`; a test part
//! that needs one that is missing says so and is skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::harness::dns::{query, udp, udp_raw};
use crate::harness::register_with as register;
use crate::harness::tls::Pki;
use crate::harness::{eventually, Cluster};

/// The name node 1's certificate carries (`cairn tls cert create --node 1`).
const NODE_NAME: &str = "node-1.cairn.cairn";

/// One node serving DNS over TLS and HTTPS (plus `extra`), with `web` registered: `web-1`
/// (10.0.0.1:8080) passing and `web-2` (10.0.0.2:8081) critical.
async fn start(pki: &Pki, dir: tempfile::TempDir, extra: &[&str]) -> Cluster {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let c = Cluster::start_each(1, dir, |id| {
        let mut args = pki.agent_args(id);
        args.extend(
            [
                "--dns-tls-addr",
                "127.0.0.1:0",
                "--dns-https-addr",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().cloned());
        args
    })
    .await;
    for (id, last, port) in [("web-1", 1, 8080), ("web-2", 2, 8081)] {
        let address = format!("10.0.0.{last}");
        register(&c, 1, "web", id, json!({"address": address, "port": port})).await;
    }
    let (s, _) = c
        .put(
            1,
            "/v1/services/web/instances/web-2/health",
            &json!({"status": "critical", "output": "down"}),
        )
        .await;
    assert_eq!(s, 200);
    let dns = c.node(1).dns;
    eventually(Duration::from_secs(5), "web-2 left DNS", || async {
        udp(dns, "web.service.cairn.", RecordType::A)
            .await
            .answers
            .len()
            == 1
    })
    .await;
    c
}

/// The questions compared across transports: A and SRV (one instance each, so no shuffle
/// changes the order), SRV by RFC 2782 name, and a negative answer.
const QUESTIONS: &[(&str, RecordType)] = &[
    ("web.service.cairn.", RecordType::A),
    ("web.service.cairn.", RecordType::SRV),
    ("_web._tcp.service.cairn.", RecordType::SRV),
    ("nothing.service.cairn.", RecordType::A),
];

/// A message without its ID, the one part that may differ between two answers.
fn without_id(m: &[u8]) -> &[u8] {
    &m[2..]
}

/// A TLS client trusting `ca`, presenting `identity` when given, offering `dot`.
fn tls_connector(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let mut config = cairn_tls::config::client_config(ca, identity).unwrap();
    config.alpn_protocols = vec![b"dot".to_vec()];
    TlsConnector::from(Arc::new(config))
}

type DotStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn dot_connect(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<DotStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(NODE_NAME).unwrap();
    connector.connect(name, tcp).await
}

/// Sends one framed query on `s` and reads the framed answer.
async fn dot_exchange(s: &mut DotStream, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).await?;
    let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn doh_url(addr: SocketAddr) -> String {
    format!("https://{NODE_NAME}:{}/dns-query", addr.port())
}

#[tokio::test]
async fn t10_doh_get_and_post_answer_the_bytes_udp_does() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = start(&pki, dir, &[]).await;
    let node = c.node(1);
    let doh = node.doh.expect("the node announces doh=");
    let http = pki.client(None, NODE_NAME, doh);
    let url = doh_url(doh);

    for (name, rtype) in QUESTIONS {
        let q = query(name, *rtype, None);
        let plain = udp_raw(node.dns, &q).await.expect("a UDP answer");
        // RFC 8484 4.1: GET with ID 0, so that HTTP caches can share answers.
        let mut q0 = q.clone();
        q0[..2].copy_from_slice(&[0, 0]);
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&q0);
        let get = http
            .get(format!("{url}?dns={encoded}"))
            .header("accept", "application/dns-message")
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200, "GET {name} {rtype}");
        assert_eq!(get.headers()["content-type"], "application/dns-message");
        let max_age = get.headers()["cache-control"].to_str().unwrap().to_owned();
        let get = get.bytes().await.unwrap();
        assert_eq!(&get[..2], &[0, 0], "the GET's ID comes back");
        assert_eq!(without_id(&get), without_id(&plain), "GET {name} {rtype}");
        // Positive answers live the service TTL, negative ones the SOA minimum: both 5 s.
        assert_eq!(max_age, "max-age=5", "{name} {rtype}");

        let post = http
            .post(&url)
            .header("content-type", "application/dns-message")
            .body(q.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 200, "POST {name} {rtype}");
        let post = post.bytes().await.unwrap();
        assert_eq!(post.as_ref(), plain.as_slice(), "POST {name} {rtype}");
    }
    // Health filtering applies: the critical instance is not in the answer.
    let q = query("web.service.cairn.", RecordType::A, None);
    let post = http
        .post(&url)
        .header("content-type", "application/dns-message")
        .body(q.clone())
        .send()
        .await
        .unwrap();
    let m = Message::from_vec(&post.bytes().await.unwrap()).unwrap();
    let addresses: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(addresses, ["10.0.0.1"]);

    // What is not a DNS query over HTTP gets a 4xx, and the next query is answered.
    let status = |r: reqwest::Response| r.status().as_u16();
    let bad = [
        (status(http.get(&url).send().await.unwrap()), 400),
        (
            status(http.get(format!("{url}?dns=%%%")).send().await.unwrap()),
            400,
        ),
        (
            status(
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(q.clone())
                    .send()
                    .await
                    .unwrap(),
            ),
            415,
        ),
        (
            status(
                http.post(&url)
                    .header("content-type", "application/dns-message")
                    .body(vec![0xff; 5])
                    .send()
                    .await
                    .unwrap(),
            ),
            400,
        ),
        (
            status(
                http.post(&url)
                    .header("content-type", "application/dns-message")
                    .body(vec![0u8; 70_000])
                    .send()
                    .await
                    .unwrap(),
            ),
            413,
        ),
        (
            status(http.get(format!("{url}x")).send().await.unwrap()),
            404,
        ),
    ];
    for (i, (got, want)) in bad.iter().enumerate() {
        assert_eq!(got, want, "bad request {i}");
    }
    let after = http
        .post(&url)
        .header("content-type", "application/dns-message")
        .body(q)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);

    // HTTP/2, from another implementation (kdig's DoH client is nghttp2's).
    let Some(kdig) = tool("kdig") else { return };
    for get in [false, true] {
        let out = kdig_query(
            &kdig,
            doh,
            &pki.ca(),
            "+https",
            get,
            "web.service.cairn",
            "A",
        );
        assert_eq!(out, "10.0.0.1", "kdig +https (GET: {get})");
    }
}

#[tokio::test]
async fn t20_dot_answers_as_udp_trusts_only_its_ca_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let other = Pki::new(&dir.path().join("other"), "cairn");
    let c = start(&pki, dir, &[]).await;
    let node = c.node(1);
    let dot = node.dot.expect("the node announces dot=");

    // Several queries on one connection, each the bytes UDP gets.
    let connector = tls_connector(&pki.ca(), None);
    let mut s = dot_connect(&connector, dot).await.unwrap();
    for (name, rtype) in QUESTIONS {
        let q = query(name, *rtype, None);
        let plain = udp_raw(node.dns, &q).await.expect("a UDP answer");
        let tls = dot_exchange(&mut s, &q).await.unwrap();
        assert_eq!(tls, plain, "{name} {rtype}");
    }

    // A client that trusts another CA refuses the node's certificate.
    let stranger = tls_connector(&other.ca(), None);
    assert!(dot_connect(&stranger, dot).await.is_err());

    // Garbage: plaintext on the TLS port, then a frame that is no query inside TLS. Each ends
    // its own connection only.
    let mut plain = TcpStream::connect(dot).await.unwrap();
    plain.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read(&mut buf)).await;
    let mut s = dot_connect(&connector, dot).await.unwrap();
    let garbage = s.write_all(&[0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    assert!(garbage.is_ok());
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a frame that is no query closes its connection: {closed:?}"
    );
    let mut s = dot_connect(&connector, dot).await.unwrap();
    let q = query("web.service.cairn.", RecordType::A, None);
    let m = Message::from_vec(&dot_exchange(&mut s, &q).await.unwrap()).unwrap();
    assert_eq!(m.answers.len(), 1, "the listener still answers");

    // kdig, another TLS stack (GnuTLS): resolves with the cluster's CA, fails with another.
    let Some(kdig) = tool("kdig") else { return };
    let a = kdig_query(
        &kdig,
        dot,
        &pki.ca(),
        "+tls",
        false,
        "web.service.cairn",
        "A",
    );
    assert_eq!(a, "10.0.0.1");
    let srv = kdig_query(
        &kdig,
        dot,
        &pki.ca(),
        "+tls",
        false,
        "web.service.cairn",
        "SRV",
    );
    assert_eq!(srv, "1 1 8080 0a000001.addr.cairn.");
    let refused = kdig_output(
        &kdig,
        dot,
        &other.ca(),
        "+tls",
        false,
        "web.service.cairn",
        "A",
    );
    assert!(
        !refused.contains("10.0.0.1"),
        "kdig trusting another CA gets no answer: {refused}"
    );
}

#[tokio::test]
async fn t30_dns_tls_client_ca_admits_only_clients_with_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let ca = pki.ca().display().to_string();
    let c = start(&pki, dir, &["--dns-tls-client-ca", &ca]).await;
    let node = c.node(1);
    let (dot, doh) = (node.dot.unwrap(), node.doh.unwrap());
    let q = query("web.service.cairn.", RecordType::A, None);

    // Without a client certificate: the handshake (TLS 1.3: the first read) fails.
    let anonymous = tls_connector(&pki.ca(), None);
    let refused = match dot_connect(&anonymous, dot).await {
        Err(_) => true,
        Ok(mut s) => dot_exchange(&mut s, &q).await.is_err(),
    };
    assert!(refused, "DoT without a client certificate");
    let http = pki.client(None, NODE_NAME, doh);
    let post = http
        .post(doh_url(doh))
        .header("content-type", "application/dns-message")
        .body(q.clone())
        .send()
        .await;
    assert!(post.is_err(), "DoH without a client certificate");

    // With one the CA signed: answered.
    let (cert, key) = pki.client_cert("resolver");
    let admitted = tls_connector(&pki.ca(), Some((&cert, &key)));
    let mut s = dot_connect(&admitted, dot).await.unwrap();
    let m = Message::from_vec(&dot_exchange(&mut s, &q).await.unwrap()).unwrap();
    assert_eq!(m.answers.len(), 1);
    let http = pki.client(Some((&cert, &key)), NODE_NAME, doh);
    let post = http
        .post(doh_url(doh))
        .header("content-type", "application/dns-message")
        .body(q)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
}

#[tokio::test]
async fn t35_acl_rights_apply_to_encrypted_dns_alike() {
    // Default deny and no --dns-token-file: DNS answers for no service, over every transport.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "cairn");
    let mut extra = pki.agent_args(1);
    extra.extend(
        [
            "--dns-tls-addr",
            "127.0.0.1:0",
            "--dns-https-addr",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (c, _) = Cluster::start_acl(1, &extra).await;
    register(
        &c,
        1,
        "web",
        "web-1",
        json!({"address": "10.0.0.1", "port": 8080}),
    )
    .await;
    let node = c.node(1);
    let q = query("web.service.cairn.", RecordType::A, None);
    let plain = udp_raw(node.dns, &q).await.expect("a UDP answer");
    assert!(Message::from_vec(&plain).unwrap().answers.is_empty());

    let doh = node.doh.unwrap();
    let post = pki
        .client(None, NODE_NAME, doh)
        .post(doh_url(doh))
        .header("content-type", "application/dns-message")
        .body(q.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.bytes().await.unwrap().as_ref(),
        plain.as_slice(),
        "DoH"
    );
    let mut s = dot_connect(&tls_connector(&pki.ca(), None), node.dot.unwrap())
        .await
        .unwrap();
    assert_eq!(dot_exchange(&mut s, &q).await.unwrap(), plain, "DoT");
}

#[tokio::test]
async fn t40_unbound_forwards_the_zone_over_tls_with_the_cluster_ca_only() {
    let Some(unbound) = tool("unbound") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let other = Pki::new(&dir.path().join("other"), "cairn");
    let work = dir.path().join("unbound");
    std::fs::create_dir_all(&work).unwrap();
    let c = start(&pki, tempfile::tempdir().unwrap(), &[]).await;
    let dot = c.node(1).dot.unwrap();

    let trusting = Unbound::start(&unbound, &work.join("trusting"), &pki.ca(), dot);
    let answer = udp(trusting.addr, "web.service.cairn.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let a: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(a, ["10.0.0.1"], "unbound resolves A through DoT");
    let srv = udp(trusting.addr, "_web._tcp.service.cairn.", RecordType::SRV).await;
    let ports: Vec<u16> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    assert_eq!(ports, [8080], "unbound resolves SRV through DoT");

    let stranger = Unbound::start(&unbound, &work.join("stranger"), &other.ca(), dot);
    let failed = udp(stranger.addr, "web.service.cairn.", RecordType::A).await;
    assert_eq!(
        failed.metadata.response_code,
        ResponseCode::ServFail,
        "unbound trusting another CA cannot reach the zone"
    );
    assert!(failed.answers.is_empty());
}

/// POSTs `q` to the node's DoH endpoint; the answer's bytes (any HTTP status but 200 fails).
async fn doh_post(http: &reqwest::Client, doh: SocketAddr, q: &[u8]) -> Vec<u8> {
    let r = http
        .post(doh_url(doh))
        .header("content-type", "application/dns-message")
        .body(q.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "DoH POST");
    r.bytes().await.unwrap().to_vec()
}

/// GETs `q` (with ID 0, as RFC 8484 asks) from the node's DoH endpoint.
async fn doh_get(http: &reqwest::Client, doh: SocketAddr, q: &[u8]) -> Vec<u8> {
    let mut q0 = q.to_vec();
    q0[..2].copy_from_slice(&[0, 0]);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&q0);
    let r = http
        .get(format!("{}?dns={encoded}", doh_url(doh)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "DoH GET");
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn t50_names_outside_the_zone_are_forwarded_or_refused_as_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let outside = query("example.com.", RecordType::A, None);

    // Without --recursors: REFUSED, the same bytes over every transport.
    {
        let c = start(&pki, tempfile::tempdir().unwrap(), &[]).await;
        let node = c.node(1);
        let plain = udp_raw(node.dns, &outside).await.expect("a UDP answer");
        assert_eq!(
            Message::from_vec(&plain).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        let mut s = dot_connect(&tls_connector(&pki.ca(), None), node.dot.unwrap())
            .await
            .unwrap();
        assert_eq!(dot_exchange(&mut s, &outside).await.unwrap(), plain, "DoT");
        let doh = node.doh.unwrap();
        let http = pki.client(None, NODE_NAME, doh);
        assert_eq!(doh_post(&http, doh, &outside).await, plain, "DoH POST");
        let get = doh_get(&http, doh, &outside).await;
        assert_eq!(without_id(&get), without_id(&plain), "DoH GET");
    }

    // With --recursors: relayed to the upstream, and its answer comes back as over UDP.
    let (upstream, task) = crate::dns::fake_upstream().await;
    let recursors = upstream.to_string();
    let c = start(&pki, dir, &["--recursors", &recursors]).await;
    let node = c.node(1);
    let (dot, doh) = (node.dot.unwrap(), node.doh.unwrap());
    let mut s = dot_connect(&tls_connector(&pki.ca(), None), dot)
        .await
        .unwrap();
    let http = pki.client(None, NODE_NAME, doh);
    for name in ["example.com.", "example.org."] {
        let q = query(name, RecordType::A, None);
        let plain = udp_raw(node.dns, &q).await.expect("a UDP answer");
        let m = Message::from_vec(&plain).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.recursion_available, "{name}");
        let a: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(a, ["192.0.2.53"], "the upstream's answer for {name}");
        assert_eq!(dot_exchange(&mut s, &q).await.unwrap(), plain, "DoT {name}");
        assert_eq!(doh_post(&http, doh, &q).await, plain, "DoH POST {name}");
        let get = doh_get(&http, doh, &q).await;
        assert_eq!(&get[..2], &[0, 0], "DoH GET {name}: the query's ID 0");
        assert_eq!(without_id(&get), without_id(&plain), "DoH GET {name}");
    }
    // The zone's own names are still answered by the node, not the upstream.
    let q = query("web.service.cairn.", RecordType::A, None);
    let own = Message::from_vec(&dot_exchange(&mut s, &q).await.unwrap()).unwrap();
    assert!(own.metadata.authoritative);

    // The upstream gone: SERVFAIL (after the forwarding time-out) over each, as over UDP.
    task.abort();
    let _ = task.await;
    let q = query("example.net.", RecordType::A, None);
    let rcode = |bytes: &[u8]| Message::from_vec(bytes).unwrap().metadata.response_code;
    let plain = udp_raw(node.dns, &q).await.expect("a UDP answer");
    assert_eq!(rcode(&plain), ResponseCode::ServFail, "UDP");
    assert_eq!(
        rcode(&dot_exchange(&mut s, &q).await.unwrap()),
        ResponseCode::ServFail,
        "DoT"
    );
    assert_eq!(
        rcode(&doh_post(&http, doh, &q).await),
        ResponseCode::ServFail,
        "DoH POST"
    );
}

/// DNS over TCP's idle time-out (`cairn_dns::ServerConfig::tcp_idle_timeout`), which DoT and DoH
/// share.
fn idle_timeout() -> Duration {
    cairn_dns::ServerConfig::default().tcp_idle_timeout
}

/// Reads from `s` until the server closes it (end of stream or an error).
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// How long `closed` took to resolve, failing when it took more than the idle time-out and a
/// margin.
async fn time_until<F: std::future::Future<Output = ()>>(what: &str, closed: F) -> Duration {
    let t0 = std::time::Instant::now();
    let limit = idle_timeout() + Duration::from_secs(5);
    tokio::time::timeout(limit, closed)
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {limit:?}"));
    t0.elapsed()
}

/// A TLS client trusting `ca` that offers the ALPN protocol `alpn`.
fn alpn_connector(ca: &Path, alpn: &[u8]) -> TlsConnector {
    let mut config = cairn_tls::config::client_config(ca, None).unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Reads one HTTP/1.1 response with a Content-Length from `s`; its status line.
async fn read_http1_response(s: &mut DotStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return head.lines().next().unwrap_or("").to_owned();
        }
    }
}

#[tokio::test]
async fn t60_dot_and_doh_connections_close_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = start(&pki, dir, &[]).await;
    let node = c.node(1);
    let (dot, doh) = (node.dot.unwrap(), node.doh.unwrap());
    let q = query("web.service.cairn.", RecordType::A, None);
    let idle = idle_timeout();

    // DNS over TLS: a query, then nothing; the server closes (close_notify, then FIN).
    let dot_idle = async {
        let mut s = dot_connect(&tls_connector(&pki.ca(), None), dot)
            .await
            .unwrap();
        dot_exchange(&mut s, &q).await.unwrap();
        time_until("DoT", until_closed(&mut s)).await
    };

    // DoH over HTTP/1.1: one request on a keep-alive connection, then nothing.
    let h1_idle = async {
        let tcp = TcpStream::connect(doh).await.unwrap();
        let name = ServerName::try_from(NODE_NAME).unwrap();
        let mut s = alpn_connector(&pki.ca(), b"http/1.1")
            .connect(name, tcp)
            .await
            .unwrap();
        let mut request = format!(
            "POST /dns-query HTTP/1.1\r\nHost: {NODE_NAME}\r\nContent-Type: application/dns-message\r\nContent-Length: {}\r\n\r\n",
            q.len()
        )
        .into_bytes();
        request.extend_from_slice(&q);
        s.write_all(&request).await.unwrap();
        let status = read_http1_response(&mut s).await;
        assert!(status.contains(" 200"), "HTTP/1.1 DoH: {status}");
        time_until("DoH over HTTP/1.1", until_closed(&mut s)).await
    };

    // DoH over HTTP/2: one request, then nothing. The client acknowledges the server's
    // keep-alive pings (h2 does that as long as the connection is polled), so only an idle
    // time-out of the server closes it.
    let h2_idle = async {
        let tcp = TcpStream::connect(doh).await.unwrap();
        let name = ServerName::try_from(NODE_NAME).unwrap();
        let tls = alpn_connector(&pki.ca(), b"h2")
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(doh_url(doh))
            .header("content-type", "application/dns-message")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from(q.clone()), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200, "HTTP/2 DoH");
        let mut data = response.into_body();
        while let Some(chunk) = data.data().await {
            let chunk = chunk.unwrap();
            let _ = data.flow_control().release_capacity(chunk.len());
        }
        // `client` lives on: an h2 client with no handle left would close the connection itself.
        let took = time_until("DoH over HTTP/2", async {
            let _ = connection.await;
        })
        .await;
        drop(client);
        took
    };

    let (dot_took, h1_took, h2_took) = tokio::join!(dot_idle, h1_idle, h2_idle);
    for (what, took) in [
        ("DoT", dot_took),
        ("HTTP/1.1", h1_took),
        ("HTTP/2", h2_took),
    ] {
        assert!(
            took + Duration::from_secs(1) >= idle,
            "{what}: closed after {took:?}, before the idle time-out of {idle:?}"
        );
    }

    // The listeners still serve new connections.
    let mut s = dot_connect(&tls_connector(&pki.ca(), None), dot)
        .await
        .unwrap();
    assert!(!dot_exchange(&mut s, &q).await.unwrap().is_empty());
}

#[tokio::test]
async fn t70_dot_and_doh_connections_are_capped_per_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = start(&pki, dir, &[]).await;
    let node = c.node(1);
    let (dot, doh) = (node.dot.unwrap(), node.doh.unwrap());
    let q = query("web.service.cairn.", RecordType::A, None);
    let cap = cairn_dns::ServerConfig::default().max_tcp_connections;
    let connector = tls_connector(&pki.ca(), None);

    // `cap` connections that never say hello hold every place of the DoT listener (until the
    // handshake time-out); the next client is closed at once.
    let mut held = Vec::with_capacity(cap);
    for _ in 0..cap {
        held.push(TcpStream::connect(dot).await.unwrap());
    }
    let refused = dot_refused(&connector, dot).await;
    assert!(refused, "DoT with {cap} connections open accepts another");
    // The cap is per listener: DoH still serves.
    let http = pki.client(None, NODE_NAME, doh);
    assert!(!doh_post(&http, doh, &q).await.is_empty());

    // Once they close, their places are free again.
    drop(held);
    eventually(Duration::from_secs(5), "DoT serves again", || async {
        match dot_connect(&connector, dot).await {
            Ok(mut s) => dot_exchange(&mut s, &q).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;

    // The same on the DoH listener.
    let mut held = Vec::with_capacity(cap);
    for _ in 0..cap {
        held.push(TcpStream::connect(doh).await.unwrap());
    }
    let fresh = pki.client(None, NODE_NAME, doh);
    let over = fresh
        .post(doh_url(doh))
        .header("content-type", "application/dns-message")
        .body(q.clone())
        .send()
        .await;
    assert!(
        over.is_err(),
        "DoH with {cap} connections open accepts another"
    );
    drop(held);
    eventually(Duration::from_secs(5), "DoH serves again", || async {
        pki.client(None, NODE_NAME, doh)
            .post(doh_url(doh))
            .header("content-type", "application/dns-message")
            .body(q.clone())
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn t80_new_certificates_reach_dot_and_doh_and_end_older_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = start(&pki, dir, &[]).await;
    let node = c.node(1);
    let (dot, doh) = (node.dot.unwrap(), node.doh.unwrap());
    let q = query("web.service.cairn.", RecordType::A, None);
    let leaf = |s: &DotStream| {
        s.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let connect_to = |addr: SocketAddr, alpn: &'static [u8]| {
        let connector = alpn_connector(&pki.ca(), alpn);
        async move {
            let tcp = TcpStream::connect(addr).await?;
            connector
                .connect(ServerName::try_from(NODE_NAME).unwrap(), tcp)
                .await
        }
    };
    let mut old = dot_connect(&tls_connector(&pki.ca(), None), dot)
        .await
        .unwrap();
    dot_exchange(&mut old, &q).await.unwrap();
    let first = leaf(&old);

    // A new key and certificate in the same files, then SIGHUP (the files are also checked
    // every few seconds without it).
    let (cert, _) = pki.node(1);
    let renewed = cairn_tls::config::load_certs(&cert).unwrap()[0]
        .as_ref()
        .to_vec();
    assert_ne!(renewed, first);
    node.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "DoT presents the new certificate",
        || async {
            match connect_to(dot, b"dot").await {
                Ok(s) => leaf(&s) == renewed,
                Err(_) => false,
            }
        },
    )
    .await;
    let s = connect_to(doh, b"h2").await.unwrap();
    assert_eq!(leaf(&s), renewed, "DoH presents the new certificate");

    // The connection made under the old certificate is closed; a new one answers.
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut old)).await;
    assert!(
        closed.is_ok(),
        "a DoT connection from before the reload stays open"
    );
    let mut s = connect_to(dot, b"dot").await.unwrap();
    let m = Message::from_vec(&dot_exchange(&mut s, &q).await.unwrap()).unwrap();
    assert_eq!(m.answers.len(), 1);
}

/// True when a DoT client at `addr` cannot get a query answered (closed at accept).
async fn dot_refused(connector: &TlsConnector, addr: SocketAddr) -> bool {
    let q = query("web.service.cairn.", RecordType::A, None);
    match dot_connect(connector, addr).await {
        Err(_) => true,
        Ok(mut s) => dot_exchange(&mut s, &q).await.is_err(),
    }
}

/// The path of `program` when it is installed; else a note that the part needing it is skipped.
fn tool(program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("SKIPPED: {program} is not installed (scripts/deps --test installs it)");
    }
    found
}

/// kdig's whole output for one question over `transport` (`+tls` or `+https`) to `addr`,
/// checking the certificate against `ca` and the node's name.
fn kdig_output(
    kdig: &Path,
    addr: SocketAddr,
    ca: &Path,
    transport: &str,
    get: bool,
    name: &str,
    rtype: &str,
) -> String {
    let mut cmd = Command::new(kdig);
    cmd.arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .arg(transport)
        .arg(format!("+tls-ca={}", ca.display()))
        .arg(format!("+tls-hostname={NODE_NAME}"))
        .args(["+short", "+timeout=3", "+retry=0", name, rtype]);
    if get {
        cmd.arg("+https-get");
    }
    let out = cmd.output().expect("run kdig");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// kdig's answer (`+short`), failing the test when it reports an error.
fn kdig_query(
    kdig: &Path,
    addr: SocketAddr,
    ca: &Path,
    transport: &str,
    get: bool,
    name: &str,
    rtype: &str,
) -> String {
    let out = kdig_output(kdig, addr, ca, transport, get, name, rtype);
    assert!(
        !out.contains(";; WARNING") && !out.contains(";; ERROR"),
        "kdig: {out}"
    );
    out.trim().to_owned()
}

/// An unbound resolver forwarding `cairn.` over TLS to `dot`, trusting the CAs in `bundle`;
/// killed when dropped.
struct Unbound {
    addr: SocketAddr,
    child: Child,
}

impl Unbound {
    fn start(unbound: &Path, dir: &Path, bundle: &Path, dot: SocketAddr) -> Unbound {
        std::fs::create_dir_all(dir).unwrap();
        // unbound takes a port, not port 0: borrow a free one from the kernel, and try another
        // when someone took it (UDP or TCP) before unbound bound it.
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(u) = Unbound::try_start(unbound, dir, bundle, dot, port) {
                return u;
            }
        }
        panic!("unbound found no free port in 5 tries");
    }

    /// `None` when unbound could not bind `port`; panics on any other failure.
    fn try_start(
        unbound: &Path,
        dir: &Path,
        bundle: &Path,
        dot: SocketAddr,
        port: u16,
    ) -> Option<Unbound> {
        let conf = dir.join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 1
    username: ""
    chroot: ""
    pidfile: ""
    directory: "{dir}"
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: no
    tls-cert-bundle: "{bundle}"
forward-zone:
    name: "cairn."
    forward-addr: {ip}@{dot_port}#{NODE_NAME}
    forward-tls-upstream: yes
remote-control:
    control-enable: no
"#,
                dir = dir.display(),
                bundle = bundle.display(),
                ip = dot.ip(),
                dot_port = dot.port(),
            ),
        )
        .unwrap();
        let log_path = dir.join("unbound.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(unbound)
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start unbound");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut u = Unbound { addr, child };
        // Ready once it answers on its port (`localhost.` is one of its own local zones).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = u.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("could not open ports") {
                    return None;
                }
                panic!("unbound exited: {log}");
            }
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let q = query("localhost.", RecordType::A, None);
            let _ = probe.send_to(&q, addr);
            if probe.recv(&mut [0u8; 512]).is_ok() {
                return Some(u);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unbound did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
