//! Connections and slow clients: the caps on connections (in all and per client address), the
//! header, idle and request time-outs of the HTTP API, and DNS over TCP's per-client cap and
//! write time-out. The node listens on 127.0.0.1; each client binds its own loopback address
//! (127.0.0.2, ...) so that the node tells them apart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::harness::dns::query;
use crate::harness::{register_with, Cluster, Node};

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    sock.connect(to).await.unwrap()
}

/// Whether the node closes `s` (EOF or reset) within `within`; what it sends is skipped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP client whose connections leave from `from`.
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends one HTTP/1.1 request on `s` and reads its response: status and body.
async fn exchange(s: &mut TcpStream, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        if body.len() >= length {
            let status = head[9..12].parse().unwrap();
            return (status, body.to_owned());
        }
    }
}

/// A metric's value on `node`, read from `from`.
async fn metric(node: &Node, from: IpAddr, line_start: &str) -> u64 {
    let text = client_from(from)
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} in\n{text}"))
}

/// A DNS query over UDP from `from`; the A records answered.
async fn resolve_udp(from: IpAddr, server: SocketAddr, name: &str) -> Vec<String> {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    sock.send_to(&query(name, RecordType::A, None), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).await.unwrap();
    addresses(&buf[..n])
}

/// A DNS query over TCP from `from`; the A records answered.
async fn resolve_tcp(from: IpAddr, server: SocketAddr, name: &str) -> Vec<String> {
    let mut s = connect_from(from, server).await;
    let q = query(name, RecordType::A, None);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    addresses(&buf)
}

fn addresses(reply: &[u8]) -> Vec<String> {
    Message::from_vec(reply)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// 1,000 half-open connections (a partial request line, or half a DNS length prefix) from one
/// address to the HTTP port and to DNS over TCP, on a node whose listeners hold fewer than that
/// in all: another client still registers, and resolves over UDP and TCP, at once (long before
/// the 10 s header time-out would free anything). Without the per-client caps the half-open
/// connections take every place and the other client is refused.
#[tokio::test]
async fn t10_a_thousand_half_open_connections_from_one_address_leave_others_served() {
    let _busy = crate::harness::busy().await;
    let c = Cluster::start(
        1,
        &["--http-max-conns", "500", "--dns-tcp-max-conns", "100"],
    )
    .await;
    let node = c.node(1);
    let attacker = lo(7);
    let mut held = Vec::with_capacity(2000);
    for _ in 0..1000 {
        let mut s = connect_from(attacker, node.http).await;
        // Refused ones may already be reset: the write's outcome does not matter.
        let _ = s.write_all(b"GET /v1/services HTTP/1.1\r\nHost: cai").await;
        held.push(s);
    }
    for _ in 0..1000 {
        let mut s = connect_from(attacker, node.dns).await;
        let _ = s.write_all(&[0]).await;
        held.push(s);
    }

    let started = Instant::now();
    let other = lo(2);
    let http = client_from(other);
    let res = tokio::time::timeout(
        Duration::from_secs(3),
        http.put(node.url("/v1/services/web/instances/web-1"))
            .json(&json!({"address": "10.0.0.1", "port": 8080}))
            .send(),
    )
    .await
    .expect("registered within 3 s")
    .expect("the HTTP API answers another client");
    assert_eq!(res.status(), 200);
    let udp = tokio::time::timeout(
        Duration::from_secs(3),
        resolve_udp(other, node.dns, "web.service.cairn."),
    )
    .await
    .expect("a UDP answer within 3 s");
    assert_eq!(udp, ["10.0.0.1"]);
    let tcp = tokio::time::timeout(
        Duration::from_secs(3),
        resolve_tcp(other, node.dns, "web.service.cairn."),
    )
    .await
    .expect("a TCP answer within 3 s");
    assert_eq!(tcp, ["10.0.0.1"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "served before the header time-out freed anything: {:?}",
        started.elapsed()
    );

    // The caps, not luck: 800 and 968 of the attacker's connections were closed at accept.
    let refused = |listener: &str| {
        format!("cairn_connections_refused_total{{listener=\"{listener}\",reason=\"per_client\"}}")
    };
    assert_eq!(metric(node, other, &refused("http")).await, 800);
    assert_eq!(metric(node, other, &refused("dns_tcp")).await, 968);
    let open = metric(node, other, "cairn_connections_open{listener=\"http\"}").await;
    assert!((200..=205).contains(&open), "{open} open");
    drop(held);
}

/// The 201st connection from one address is closed at once, while its first 200 stay open and
/// serve requests, another address still gets in, and a closed connection frees its place.
#[tokio::test]
async fn t20_the_per_client_cap_closes_the_201st_connection_from_one_address() {
    let c = Cluster::start(1, &["--http-header-timeout", "30s"]).await;
    let node = c.node(1);
    let from = lo(8);
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(connect_from(from, node.http).await);
    }
    let mut extra = connect_from(from, node.http).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the 201st connection is closed"
    );
    let last = held.last_mut().unwrap();
    assert!(
        !closed_within(last, Duration::from_millis(500)).await,
        "the 200th stays open"
    );
    let ready = "GET /v1/ready HTTP/1.1\r\nHost: cairn\r\n\r\n";
    assert_eq!(exchange(&mut held[0], ready).await.0, 200);
    let mut other = connect_from(lo(9), node.http).await;
    assert_eq!(exchange(&mut other, ready).await.0, 200, "another address");

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut again = loop {
        let mut s = connect_from(from, node.http).await;
        if !closed_within(&mut s, Duration::from_millis(300)).await {
            break s;
        }
        assert!(Instant::now() < deadline, "a freed place is taken");
    };
    assert_eq!(exchange(&mut again, ready).await.0, 200);
    assert!(
        metric(
            node,
            lo(9),
            "cairn_connections_refused_total{listener=\"http\",reason=\"per_client\"}"
        )
        .await
            >= 1
    );
}

/// A connection that sends nothing, or half a request, is closed after the header time-out;
/// a kept-alive one waits for the idle time-out instead, unless it starts a request it does
/// not finish; and a blocking read in flight outlasts both.
#[tokio::test]
async fn t30_header_and_idle_timeouts_close_slow_and_idle_connections_but_not_waiting_reads() {
    let c = Cluster::start(
        1,
        &["--http-header-timeout", "1s", "--http-idle-timeout", "4s"],
    )
    .await;
    let node = c.node(1);
    let index = c.register(1, "web", "web-1").await;
    let from = lo(10);
    let ready = "GET /v1/ready HTTP/1.1\r\nHost: cairn\r\n\r\n";

    let mut silent = connect_from(from, node.http).await;
    let mut partial = connect_from(from, node.http).await;
    partial
        .write_all(b"GET /v1/services HTTP/1.1\r\nHost: cai")
        .await
        .unwrap();
    let mut kept = connect_from(from, node.http).await;
    assert_eq!(exchange(&mut kept, ready).await.0, 200);
    let mut restarted = connect_from(from, node.http).await;
    assert_eq!(exchange(&mut restarted, ready).await.0, 200);
    let mut waiting = connect_from(from, node.http).await;
    let blocking =
        format!("GET /v1/services/web?index={index}&wait=5s HTTP/1.1\r\nHost: cairn\r\n\r\n");
    waiting.write_all(blocking.as_bytes()).await.unwrap();
    let t0 = Instant::now();

    // After 0.5 s the restarted connection begins a request it never finishes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    restarted.write_all(b"GET /v1/ready HT").await.unwrap();

    assert!(
        !closed_within(&mut silent, Duration::from_millis(300)).await,
        "not before the header time-out"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)).await,
        "silent closed"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(1)).await,
        "partial closed"
    );
    assert!(
        closed_within(&mut restarted, Duration::from_secs(1)).await,
        "a request begun on a kept-alive connection has the header time-out"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(3300),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        !closed_within(&mut kept, Duration::from_millis(3500) - t0.elapsed()).await,
        "an idle kept-alive connection outlasts the header time-out"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(2)).await,
        "closed after the idle time-out"
    );

    // The blocking read, in flight past the idle time-out, answers at the end of its wait.
    let (status, _) = exchange(&mut waiting, "").await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    let timeouts = metric(
        node,
        from,
        "cairn_connections_header_timeouts_total{listener=\"http\"}",
    )
    .await;
    assert!(timeouts >= 3, "{timeouts}");
}

/// A request that does not send its whole body is answered 503 after the request time-out,
/// while a blocking read longer than it answers 200 at the end of its wait and a watch stream
/// keeps delivering.
#[tokio::test]
async fn t40_the_request_timeout_cuts_a_trickled_body_but_not_blocking_reads_or_watches() {
    // The harness's --write-timeout is 3s; the request time-out must exceed it.
    let c = Cluster::start(1, &["--http-request-timeout", "4s"]).await;
    let node = c.node(1);
    let index = c.register(1, "web", "web-1").await;
    let from = lo(11);
    let http = client_from(from);

    let blocking = {
        let url = node.url(&format!("/v1/services/web?index={index}&wait=6s"));
        let http = http.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let res = http.get(url).send().await.unwrap();
            (res.status().as_u16(), t0.elapsed())
        })
    };
    let mut watch = http
        .get(node.url("/v1/services/web/watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);

    let mut slow = connect_from(from, node.http).await;
    let t0 = Instant::now();
    slow.write_all(
        b"PUT /v1/services/web/instances/web-2 HTTP/1.1\r\nHost: cairn\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"address\"",
    )
    .await
    .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(8), exchange(&mut slow, ""))
        .await
        .expect("an answer to the trickled request");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--http-request-timeout"), "{body}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(3900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(
        c.instance_ids(1, "web").await == ["web-1"],
        "nothing stored"
    );

    let (status, waited) = blocking.await.unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_secs(6), "{waited:?}");

    // The watch, open for more than the request time-out, still carries a change.
    c.register(1, "web", "web-3").await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        let mut text = String::new();
        while let Some(chunk) = watch.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("web-3") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch delivered web-3");
}

/// DNS over TCP: a client past its cap is closed at once while another address is answered,
/// and a client that sends queries but never reads the answers is dropped after the write
/// time-out instead of holding a connection (and a task) forever.
#[tokio::test]
async fn t50_dns_tcp_caps_each_client_and_drops_one_that_does_not_read() {
    let c = Cluster::start(
        1,
        &[
            "--dns-tcp-max-conns-per-client",
            "4",
            "--dns-tcp-write-timeout",
            "1s",
        ],
    )
    .await;
    let node = c.node(1);
    for i in 0..10 {
        let body = json!({"address": format!("10.0.0.{i}"), "port": 8080});
        register_with(&c, 1, "web", &format!("web-{i}"), body).await;
    }
    let from = lo(12);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(from, node.dns).await);
    }
    let mut fifth = connect_from(from, node.dns).await;
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)).await,
        "the 5th is closed"
    );
    assert!(
        !closed_within(&mut held[3], Duration::from_millis(300)).await,
        "the 4th is open"
    );
    assert_eq!(
        resolve_tcp(lo(13), node.dns, "web.service.cairn.")
            .await
            .len(),
        10
    );
    drop(held);

    // A reader that never reads, with a small receive window: the node's answers back up.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::new(lo(14), 0)).unwrap();
    let mut s = sock.connect(node.dns).await.unwrap();
    let q = query("web.service.cairn.", RecordType::SRV, None);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    let batch = frame.repeat(100);
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Err(e) = s.write_all(&batch).await {
                return e;
            }
        }
    })
    .await;
    let e = ended.expect("the node dropped the connection that took no answers");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{e}"
    );
    eprintln!("dropped after {:?}", t0.elapsed());
    // The node still answers.
    assert_eq!(
        resolve_tcp(lo(13), node.dns, "web.service.cairn.")
            .await
            .len(),
        10
    );
}
