//! DNS answers from running agents, decoded by an independent implementation (hickory-proto).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::dns::{query, tcp, udp, udp_raw};
use crate::harness::register_with as register;
use crate::harness::{eventually, Cluster, Node};

fn addresses(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn srv_ports(m: &Message) -> BTreeSet<u16> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect()
}

fn has_soa_authority(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)))
}

#[tokio::test]
async fn t10_a_aaaa_srv_tags_addr_and_cname_answers_from_a_follower() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    register(
        &c,
        leader,
        "web",
        "web-1",
        json!({"address": "10.0.0.1", "port": 8080, "tags": ["v1"]}),
    )
    .await;
    register(
        &c,
        leader,
        "web",
        "web-2",
        json!({"address": "10.0.0.2", "port": 8081, "tags": ["v2"], "weight": 5}),
    )
    .await;
    register(
        &c,
        leader,
        "web",
        "web-6",
        json!({"address": "2001:db8::6", "port": 8086}),
    )
    .await;
    register(
        &c,
        leader,
        "db",
        "db-1",
        json!({"address": "db.example.com", "port": 5432}),
    )
    .await;
    let dns = c.node(follower).dns;
    eventually(
        Duration::from_secs(5),
        "registrations applied on the follower",
        || async { addresses(&udp(dns, "web.service.cairn.", RecordType::A).await).len() == 2 },
    )
    .await;

    let a = udp(dns, "web.service.cairn.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(
        addresses(&a),
        BTreeSet::from(["10.0.0.1".into(), "10.0.0.2".into()])
    );
    assert!(a.answers.iter().all(|r| r.ttl == 5));

    let aaaa = udp(dns, "web.service.cairn.", RecordType::AAAA).await;
    assert_eq!(addresses(&aaaa), BTreeSet::from(["2001:db8::6".into()]));

    let tagged = udp(dns, "v1.web.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&tagged), BTreeSet::from(["10.0.0.1".into()]));

    let srv = udp(dns, "web.service.cairn.", RecordType::SRV).await;
    assert_eq!(srv_ports(&srv), BTreeSet::from([8080, 8081, 8086]));
    let targets: BTreeSet<String> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_string()),
            _ => None,
        })
        .collect();
    assert!(targets.contains("0a000001.addr.cairn."), "{targets:?}");
    let weight_of_2 = srv.answers.iter().find_map(|r| match &r.data {
        RData::SRV(s) if s.port == 8081 => Some(s.weight),
        _ => None,
    });
    assert_eq!(weight_of_2, Some(5));
    let glue: BTreeSet<String> = srv
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(
        glue, targets,
        "every SRV target's address is in the additional section"
    );

    assert_eq!(
        srv_ports(&udp(dns, "_web._tcp.service.cairn.", RecordType::SRV).await).len(),
        3
    );
    assert_eq!(
        srv_ports(&udp(dns, "_web._v2.service.cairn.", RecordType::SRV).await),
        BTreeSet::from([8081])
    );
    assert_eq!(
        addresses(&udp(dns, "0a000001.addr.cairn.", RecordType::A).await),
        BTreeSet::from(["10.0.0.1".into()])
    );

    let cname = udp(dns, "db.service.cairn.", RecordType::A).await;
    assert!(
        matches!(&cname.answers[..], [r] if matches!(&r.data, RData::CNAME(n) if n.0.to_string() == "db.example.com.")),
        "{:?}",
        cname.answers
    );
    let db_srv = udp(dns, "db.service.cairn.", RecordType::SRV).await;
    assert!(
        matches!(&db_srv.answers[..], [r] if matches!(&r.data, RData::SRV(s) if s.target.to_string() == "db.example.com."))
    );

    // Names compare case-insensitively; the question comes back as asked (0x20 randomisation).
    // hickory lower-cases names it encodes, so the case is set in the raw bytes.
    let mut mixed = query("web.service.cairn.", RecordType::A, None);
    mixed[13..16].copy_from_slice(b"WeB");
    mixed[17..24].copy_from_slice(b"SeRvIcE");
    let raw = udp_raw(dns, &mixed).await.unwrap();
    assert_eq!(&raw[12..25], &mixed[12..25]);
    assert_eq!(addresses(&Message::from_vec(&raw).unwrap()).len(), 2);
}

#[tokio::test]
async fn t20_negative_answers_apex_and_refusals() {
    let c = Cluster::start(1, &[]).await;
    register(
        &c,
        1,
        "web",
        "w",
        json!({"address": "10.0.0.1", "port": 80}),
    )
    .await;
    let dns = c.node(1).dns;

    let nx = udp(dns, "nope.service.cairn.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa_authority(&nx));
    let nx_tag = udp(dns, "v9.web.service.cairn.", RecordType::A).await;
    assert_eq!(nx_tag.metadata.response_code, ResponseCode::NXDomain);
    let nx_other = udp(dns, "what.ever.cairn.", RecordType::A).await;
    assert_eq!(nx_other.metadata.response_code, ResponseCode::NXDomain);

    let nodata = udp(dns, "web.service.cairn.", RecordType::TXT).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let soa = nodata.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some((r.ttl, s.minimum)),
        _ => None,
    });
    assert_eq!(soa, Some((5, 5)), "negative TTL is the SOA minimum");

    let apex_soa = udp(dns, "cairn.", RecordType::SOA).await;
    assert!(matches!(&apex_soa.answers[..], [r] if matches!(r.data, RData::SOA(_))));
    let ns = udp(dns, "cairn.", RecordType::NS).await;
    assert!(
        matches!(&ns.answers[..], [r] if matches!(&r.data, RData::NS(n) if n.0.to_string() == "node-1.node.cairn."))
    );
    assert_eq!(
        addresses(&udp(dns, "node-1.node.cairn.", RecordType::A).await),
        BTreeSet::from(["127.0.0.1".into()])
    );

    let outside = udp(dns, "example.com.", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    let any = udp(dns, "web.service.cairn.", RecordType::ANY).await;
    assert_eq!(any.metadata.response_code, ResponseCode::NotImp);
    let axfr = tcp(dns, "cairn.", RecordType::AXFR).await;
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);

    let mut chaos = Message::query();
    let mut q = Query::query(Name::from_str("web.service.cairn.").unwrap(), RecordType::A);
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    let res = Message::from_vec(&udp_raw(dns, &chaos.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(res.metadata.response_code, ResponseCode::Refused);

    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_str("web.service.cairn.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_str("web.service.cairn.").unwrap(),
        RecordType::AAAA,
    ));
    let res = Message::from_vec(&udp_raw(dns, &two.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(res.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn t30_only_healthy_instances_are_answered_and_fail_open_hands_out_all() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    for i in 1..=3 {
        register(
            &c,
            leader,
            "api",
            &format!("a{i}"),
            json!({"address": format!("10.1.0.{i}"), "port": 80}),
        )
        .await;
    }
    let c = &c;
    let set_health = |id: &str, status: &str| {
        let path = format!("/v1/services/api/instances/{id}/health");
        let body = json!({"status": status, "output": "test"});
        async move {
            let (s, _) = c.put(leader, &path, &body).await;
            assert_eq!(s, 200);
        }
    };
    set_health("a1", "critical").await;
    for n in 1..=3 {
        let dns = c.node(n).dns;
        eventually(
            Duration::from_secs(5),
            "critical instance left DNS on every node",
            || async {
                addresses(&udp(dns, "api.service.cairn.", RecordType::A).await)
                    == BTreeSet::from(["10.1.0.2".into(), "10.1.0.3".into()])
            },
        )
        .await;
    }
    // Warning is left out by default too.
    set_health("a2", "warning").await;
    set_health("a3", "critical").await;
    let dns = c.node(leader).dns;
    let none = udp(dns, "api.service.cairn.", RecordType::A).await;
    assert_eq!(none.metadata.response_code, ResponseCode::NoError);
    assert!(none.answers.is_empty() && has_soa_authority(&none));

    let (s, _) = c
        .put(
            leader,
            "/v1/services/api/settings",
            &json!({"fail_open": true, "dns_ttl": "30s"}),
        )
        .await;
    assert_eq!(s, 200);
    let all = udp(dns, "api.service.cairn.", RecordType::A).await;
    assert_eq!(
        addresses(&all).len(),
        3,
        "fail-open hands out every instance"
    );
    assert!(all.answers.iter().all(|r| r.ttl == 30));

    set_health("a2", "passing").await;
    let one = udp(dns, "api.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&one), BTreeSet::from(["10.1.0.2".into()]));
}

#[tokio::test]
async fn t40_sixty_instances_truncate_over_udp_and_come_whole_over_tcp() {
    let c = Cluster::start(1, &[]).await;
    for i in 0..60 {
        register(
            &c,
            1,
            "big",
            &format!("b{i}"),
            json!({"address": format!("10.2.0.{}", i + 1), "port": 9000}),
        )
        .await;
    }
    let dns = c.node(1).dns;
    let raw = udp_raw(dns, &query("big.service.cairn.", RecordType::SRV, None))
        .await
        .unwrap();
    assert!(
        raw.len() <= 512,
        "{} bytes over UDP without EDNS",
        raw.len()
    );
    let small = Message::from_vec(&raw).unwrap();
    assert!(small.metadata.truncation);
    assert!(!small.answers.is_empty() && small.answers.len() < 60);

    let raw = udp_raw(
        dns,
        &query("big.service.cairn.", RecordType::SRV, Some(1232)),
    )
    .await
    .unwrap();
    assert!(raw.len() <= 1232);
    let edns = Message::from_vec(&raw).unwrap();
    assert!(edns.metadata.truncation && edns.answers.len() > small.answers.len());
    assert!(edns.edns.is_some(), "an EDNS query gets an OPT back");

    let full = tcp(dns, "big.service.cairn.", RecordType::SRV).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 60);
    assert_eq!(full.additionals.len(), 60);
    let a = tcp(dns, "big.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&a).len(), 60);

    // Shuffled: the first answer is not always the same instance.
    let mut firsts = BTreeSet::new();
    for _ in 0..20 {
        let m = tcp(dns, "big.service.cairn.", RecordType::A).await;
        if let RData::A(a) = &m.answers[0].data {
            firsts.insert(a.0);
        }
    }
    assert!(firsts.len() > 1, "answers are shuffled per query");
}

#[tokio::test]
async fn t50_garbage_never_ends_a_listener() {
    let c = Cluster::start(1, &[]).await;
    register(
        &c,
        1,
        "web",
        "w",
        json!({"address": "10.0.0.1", "port": 80}),
    )
    .await;
    let dns = c.node(1).dns;
    let valid = query("web.service.cairn.", RecordType::A, None);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0; 11],
        vec![0xff; 12],
        valid[..valid.len() - 3].to_vec(),
        [valid.clone(), vec![1, 2, 3]].concat(),
        (0..600u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for g in &garbage {
        sock.send_to(g, dns).await.unwrap();
    }
    // A header that can be read gets FORMERR with its ID.
    let bad = udp_raw(dns, &valid[..valid.len() - 3]).await.unwrap();
    let bad = Message::from_vec(&bad).unwrap();
    assert_eq!(bad.metadata.response_code, ResponseCode::FormErr);
    // And the listener still answers.
    let ok = udp(dns, "web.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&ok), BTreeSet::from(["10.0.0.1".into()]));

    // TCP: a connection sending garbage is closed; the next one is served.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    let ok = tcp(dns, "web.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&ok).len(), 1);
}

/// A stand-in upstream resolver: answers every query with one A record, 192.0.2.53. (Also the
/// upstream of the encrypted DNS tests.)
pub(crate) async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    fake_upstream_with(1).await
}

/// A stand-in upstream resolver answering every query with `records` A records, 192.0.2.53 and
/// on, over UDP whatever size the query allows (as a careless or hostile upstream may).
pub async fn fake_upstream_with(records: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().clone();
            for i in 0..records {
                r.add_answer(hickory_proto::rr::Record::from_rdata(
                    name.clone(),
                    60,
                    RData::A(hickory_proto::rr::rdata::A([192, 0, 2, 53 + i].into())),
                ));
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn t60_other_names_are_forwarded_to_recursors_and_servfail_when_they_fail() {
    let (upstream, task) = fake_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let recursors = format!("{upstream}");
    let node = Node::start(1, dir.path(), &["--bootstrap", "--recursors", &recursors]);
    let dns = node.dns;
    let fwd = udp(dns, "example.com.", RecordType::A).await;
    assert_eq!(fwd.metadata.response_code, ResponseCode::NoError);
    assert!(fwd.metadata.recursion_available);
    assert_eq!(addresses(&fwd), BTreeSet::from(["192.0.2.53".into()]));
    let over_tcp = tcp(dns, "example.org.", RecordType::A).await;
    assert_eq!(addresses(&over_tcp), BTreeSet::from(["192.0.2.53".into()]));

    task.abort();
    let _ = task.await;
    let failed = udp(dns, "example.net.", RecordType::A).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn t70_a_node_cut_off_from_the_leader_keeps_answering() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    register(
        &c,
        leader,
        "web",
        "w",
        json!({"address": "10.0.0.1", "port": 80}),
    )
    .await;
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    let dns = c.node(survivor).dns;
    eventually(Duration::from_secs(5), "replicated", || async {
        addresses(&udp(dns, "web.service.cairn.", RecordType::A).await).len() == 1
    })
    .await;
    for n in (1..=3).filter(|n| *n != survivor) {
        c.node_mut(n).kill();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = udp(dns, "web.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&m), BTreeSet::from(["10.0.0.1".into()]));
}
