//! DNS against abuse (issue 16, item 4): recursion only for allowed clients, relayed answers
//! that fit the client's UDP size, and response rate limiting per client prefix. Clients on
//! other addresses of 127.0.0.0/8 stand for other hosts and other prefixes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::net::UdpSocket;

use crate::dns::fake_upstream_with;
use crate::harness::dns::{query, tcp_raw_from, udp_raw, udp_raw_from};
use crate::harness::{client, eventually, Node};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addresses(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

async fn udp_from(source: &str, dns: SocketAddr, name: &str, edns: Option<u16>) -> Message {
    let raw = udp_raw_from(ip(source), dns, &query(name, RecordType::A, edns))
        .await
        .expect("an answer");
    Message::from_vec(&raw).unwrap()
}

/// The value of a line of `/metrics` that starts with `series ` (0 when absent).
async fn metric(node: &Node, series: &str) -> u64 {
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn t10_names_outside_the_zone_are_forwarded_only_for_allowed_clients() {
    let (upstream, _task) = fake_upstream_with(1).await;
    let dir = tempfile::tempdir().unwrap();
    let recursors = upstream.to_string();
    let node = Node::start(
        1,
        dir.path(),
        &[
            "--bootstrap",
            "--recursors",
            &recursors,
            "--recursors-allow",
            "127.0.0.2/32",
        ],
    );
    let dns = node.dns;

    // Allowed: the upstream's answer, over UDP and TCP.
    let allowed = udp_from("127.0.0.2", dns, "example.com.", None).await;
    assert_eq!(allowed.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&allowed), BTreeSet::from(["192.0.2.53".into()]));
    let tcp_query = query("example.org.", RecordType::A, None);
    let over_tcp = tcp_raw_from(ip("127.0.0.2"), dns, &tcp_query).await;
    let over_tcp = Message::from_vec(&over_tcp).unwrap();
    assert_eq!(addresses(&over_tcp), BTreeSet::from(["192.0.2.53".into()]));

    // Anyone else: REFUSED, with nothing relayed, over UDP and TCP.
    for source in ["127.0.0.1", "127.0.0.3"] {
        let refused = udp_from(source, dns, "example.com.", Some(1232)).await;
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(refused.answers.is_empty());
        assert!(!refused.metadata.recursion_available);
        assert!(refused.edns.is_some(), "an EDNS query gets an OPT back");
    }
    let refused = tcp_raw_from(ip("127.0.0.1"), dns, &tcp_query).await;
    let refused = Message::from_vec(&refused).unwrap();
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

    // In-zone answers are everyone's. The node's own record exists once its bootstrap has
    // committed, which the queries above did not wait for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let own = loop {
        let own = udp_from("127.0.0.1", dns, "node-1.node.cairn.", None).await;
        if own.metadata.response_code == ResponseCode::NoError
            || std::time::Instant::now() > deadline
        {
            break own;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(own.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&own), BTreeSet::from(["127.0.0.1".into()]));

    assert_eq!(metric(&node, "cairn_dns_recursion_refused_total").await, 3);
}

#[tokio::test]
async fn t20_a_relayed_answer_larger_than_the_client_takes_comes_truncated() {
    // 40 A records: over 512 bytes however they are encoded, under 1232 when compressed.
    let (upstream, _task) = fake_upstream_with(40).await;
    let dir = tempfile::tempdir().unwrap();
    let recursors = upstream.to_string();
    let node = Node::start(1, dir.path(), &["--bootstrap", "--recursors", &recursors]);
    let dns = node.dns;

    let q = query("big.example.com.", RecordType::A, None);
    let raw = udp_raw(dns, &q).await.unwrap();
    assert!(
        raw.len() <= 512,
        "{} bytes to a client without EDNS",
        raw.len()
    );
    let small = Message::from_vec(&raw).unwrap();
    assert!(
        small.metadata.truncation,
        "TC tells the client to retry over TCP"
    );
    assert_eq!(small.metadata.response_code, ResponseCode::NoError);
    assert!(small.answers.is_empty());
    assert_eq!(raw[..2], q[..2], "the query's ID");
    assert_eq!(raw[12..], q[12..], "the question, echoed");

    // A client that takes more gets it whole; over TCP too.
    let edns = udp_from("127.0.0.1", dns, "big.example.com.", Some(1232)).await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 40);
    let whole = tcp_raw_from(ip("127.0.0.1"), dns, &q).await;
    assert_eq!(Message::from_vec(&whole).unwrap().answers.len(), 40);

    assert_eq!(metric(&node, "cairn_dns_relayed_truncated_total").await, 1);
}

/// Sends `n` queries from each source address, in turn, as fast as the kernel's buffers allow
/// (a short pause every few dozen), then reads answers until none comes for half a second:
/// (whole answers, truncated ones) per source.
async fn burst(sources: &[(&str, u16)], dns: SocketAddr) -> Vec<(usize, usize)> {
    let mut socks = Vec::new();
    for (source, _) in sources {
        socks.push(
            UdpSocket::bind(SocketAddr::new(ip(source), 0))
                .await
                .unwrap(),
        );
    }
    let mut q = query("node-1.node.cairn.", RecordType::A, None);
    let most = sources.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for id in 0..most {
        q[..2].copy_from_slice(&id.to_be_bytes());
        for (sock, (_, n)) in socks.iter().zip(sources) {
            if id < *n {
                sock.send_to(&q, dns).await.unwrap();
            }
        }
        if id % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut counts = Vec::new();
    let mut buf = vec![0u8; 4096];
    for sock in &socks {
        let (mut whole, mut truncated) = (0, 0);
        while let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
        {
            let m = Message::from_vec(&buf[..len]).unwrap();
            if m.metadata.truncation {
                assert!(m.answers.is_empty(), "a slip carries no records");
                truncated += 1;
            } else {
                assert_eq!(addresses(&m).len(), 1);
                whole += 1;
            }
        }
        counts.push((whole, truncated));
    }
    counts
}

#[tokio::test]
async fn t30_a_burst_over_the_rate_is_mostly_dropped_with_slips_and_other_prefixes_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        1,
        dir.path(),
        &["--bootstrap", "--dns-rrl-rate", "20", "--dns-rrl-slip", "4"],
    );
    let dns = node.dns;
    // The node answers for itself once it has initialised its cluster; the burst starts after
    // (these few queries come from another /24).
    eventually(
        Duration::from_secs(10),
        "the node's own address",
        || async {
            addresses(&udp_from("127.0.9.1", dns, "node-1.node.cairn.", None).await).len() == 1
        },
    )
    .await;

    // 100 queries each from two addresses of one /24 and 10 from another /24, interleaved.
    let counts = burst(
        &[("127.0.0.1", 100), ("127.0.0.77", 100), ("127.0.1.1", 10)],
        dns,
    )
    .await;
    // The /24 of 127.0.0.x shares 20 answers (a few more if the burst takes a while); of the
    // other 180, one in four slips through truncated, three in four are dropped.
    let whole = counts[0].0 + counts[1].0;
    let truncated = counts[0].1 + counts[1].1;
    assert!((20..=25).contains(&whole), "{counts:?}");
    assert!((38..=45).contains(&truncated), "{counts:?}");
    // The other /24 is served in full meanwhile.
    assert_eq!(counts[2], (10, 0), "{counts:?}");

    // TCP is not limited.
    let q = query("node-1.node.cairn.", RecordType::A, None);
    let over_tcp = tcp_raw_from(ip("127.0.0.1"), dns, &q).await;
    assert_eq!(addresses(&Message::from_vec(&over_tcp).unwrap()).len(), 1);

    let dropped = metric(&node, "cairn_dns_rrl_responses_total{action=\"dropped\"}").await;
    let slipped = metric(&node, "cairn_dns_rrl_responses_total{action=\"slipped\"}").await;
    assert_eq!(slipped, truncated as u64);
    assert_eq!(dropped, 200 - (whole + truncated) as u64);

    // Tokens come back at the rate: a second later the /24 is answered again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(burst(&[("127.0.0.1", 5)], dns).await, [(5, 0)]);
}
