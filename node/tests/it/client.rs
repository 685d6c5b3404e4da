//! cairn-client against three-node clusters of real processes, and the CLI end to end.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{
    Balancer, Client, ClientError, ErrorCode, InstanceRegistration, ReadOptions, Registration,
    Resolver, WatchOptions,
};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::proxy::{Link, Net, Proxy, CLIENT};
use crate::harness::{eventually, Cluster};

fn reg(body: Value) -> InstanceRegistration {
    serde_json::from_value(body).unwrap()
}

fn client_of(c: &Cluster, order: &[u64]) -> Client {
    Client::new(order.iter().map(|n| c.node(*n).http.to_string())).unwrap()
}

#[tokio::test]
async fn t10_registrations_and_watches_survive_the_death_of_the_node_the_client_uses() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    // The client prefers a follower; that follower will die.
    let first = (1..=3).find(|n| *n != leader).unwrap();
    let rest: Vec<u64> = (1..=3).filter(|n| *n != first).collect();
    let client = client_of(&c, &[first, rest[0], rest[1]]);
    client
        .register(
            "api",
            "a1",
            &reg(json!({"address": "10.0.0.1", "port": 80})),
        )
        .await
        .unwrap();

    let stream = cairn_client::watch(client.clone(), "api".into(), WatchOptions::default());
    futures::pin_mut!(stream);
    // The follower may not have applied the registration yet: the first set can be empty, and
    // the next one then brings it.
    let mut first_set = stream.next().await.unwrap().unwrap();
    if first_set.instances.is_empty() {
        first_set = stream.next().await.unwrap().unwrap();
    }
    assert_eq!(first_set.instances.len(), 1);

    c.node_mut(first).kill();
    // Writes move to another node by themselves.
    client
        .register(
            "api",
            "a2",
            &reg(json!({"address": "10.0.0.2", "port": 80})),
        )
        .await
        .unwrap();
    // And the watch, whose node died, comes back with the change.
    let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("watch delivered after failover")
        .unwrap()
        .unwrap();
    assert_eq!(next.instances.len(), 2);
    assert!(next.index > first_set.index);

    // A definite error is not retried: it comes back as it is.
    let err = client.deregister("api", "nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn t20_a_registration_handle_keeps_its_ttl_check_passing_and_deregisters_on_drop() {
    let c = Cluster::start(3, &[]).await;
    let client = client_of(&c, &[1, 2, 3]);
    let handle = Registration::start(
        client.clone(),
        "job",
        "j1",
        reg(json!({"address": "10.0.0.5", "port": 9000, "checks": [{"kind": "ttl", "ttl": "1s"}]})),
    )
    .await
    .unwrap();
    let passing = || async {
        client
            .service(
                "job",
                &ReadOptions {
                    passing_only: true,
                    ..ReadOptions::default()
                },
            )
            .await
            .unwrap()
            .value
            .instances
            .len()
    };
    eventually(
        Duration::from_secs(5),
        "TTL check passing from heartbeats",
        || async { passing().await == 1 },
    )
    .await;
    // Three TTLs later it is still passing: the heartbeats go on in the background.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(passing().await, 1);

    drop(handle);
    eventually(Duration::from_secs(5), "deregistered on drop", || async {
        client
            .service("job", &ReadOptions::default())
            .await
            .unwrap()
            .value
            .instances
            .is_empty()
    })
    .await;
}

#[tokio::test]
async fn t30_the_balancer_and_the_resolver_hand_out_only_healthy_instances() {
    let c = Cluster::start(1, &[]).await;
    // Two real HTTP servers as instances: one healthy, one to be marked critical.
    let mut ports = Vec::new();
    for name in ["good", "bad"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = name;
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(res.as_bytes()).await;
            }
        });
    }
    let client = client_of(&c, &[1]);
    for (id, port) in ["good", "bad"].iter().zip(&ports) {
        client
            .register(
                "web",
                id,
                &reg(json!({"address": "127.0.0.1", "port": port})),
            )
            .await
            .unwrap();
    }
    client
        .set_health("web", "bad", cairn_client::HealthStatus::Critical, None)
        .await
        .unwrap();

    let balancer = Balancer::start(client.clone(), "web");
    assert!(balancer.ready(Duration::from_secs(5)).await);
    eventually(
        Duration::from_secs(5),
        "balancer sees one healthy instance",
        || async { balancer.instances().len() == 1 },
    )
    .await;
    for _ in 0..50 {
        assert_eq!(balancer.pick().unwrap().id, "good");
        assert_eq!(balancer.pick_two(|_| 0).unwrap().id, "good");
    }

    let http = reqwest::Client::builder()
        .dns_resolver(Resolver::new(client.clone(), "cairn"))
        .build()
        .unwrap();
    for _ in 0..10 {
        let body = http
            .get("http://web.service.cairn/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "good");
    }
}

/// The leader's last log index: every write adds one entry, and nothing else writes while the
/// cluster is idle.
async fn last_log_index(c: &Cluster, leader: u64) -> u64 {
    let (status, body) = c.get(leader, "/v1/cluster").await;
    assert_eq!(status, 200, "{body}");
    body["last_log_index"].as_u64().unwrap()
}

fn expect_outcome_unknown<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::OutcomeUnknown { .. }) => {}
        other => panic!("{what}: expected OutcomeUnknown, got {other:?}"),
    }
}

/// Writes whose answer is lost are not sent again (they were applied, once), and reads move on.
/// The proxy passes every request to a follower and closes the connection at the first byte of
/// the answer, as a connection breaking after the request was sent would.
#[tokio::test]
async fn t50_a_write_whose_answer_is_lost_is_not_sent_again_and_a_read_moves_on() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let (behind, healthy) = (followers[0], followers[1]);
    let net = Arc::new(Net::default());
    let proxy = Proxy::start(behind, net.clone()).await;
    proxy.set_upstream(c.node(behind).http);
    net.set(CLIENT, behind, Link::DropReplies);
    let lossy = proxy.addr.to_string();
    let good = c.node(healthy).http.to_string();
    let body = reg(json!({"address": "10.0.0.1", "port": 80}));

    // (1) A register through the proxy alone: one request passes, the write commits once, and
    // the client reports that it cannot tell.
    let before = last_log_index(&c, leader).await;
    let only_lossy = Client::new([&lossy]).unwrap();
    expect_outcome_unknown("register", only_lossy.register("web", "w1", &body).await);
    assert_eq!(proxy.connections(), 1, "the register was sent again");
    assert_eq!(last_log_index(&c, leader).await - before, 1);
    // With a healthy node next in line, it still is not sent again.
    let before = last_log_index(&c, leader).await;
    let lossy_first = Client::new([&lossy, &good]).unwrap();
    expect_outcome_unknown("register", lossy_first.register("web", "w2", &body).await);
    assert_eq!(proxy.connections(), 2);
    assert_eq!(
        last_log_index(&c, leader).await - before,
        1,
        "the register was applied twice"
    );
    for n in [leader, healthy] {
        eventually(
            Duration::from_secs(5),
            "both registrations applied",
            || async { c.instance_ids(n, "web").await == ["w1", "w2"] },
        )
        .await;
    }

    // (2) A deregister whose answer is lost: sending it to the healthy node next would answer
    // not_found for an instance that this very call removed.
    let before = last_log_index(&c, leader).await;
    let lossy_first = Client::new([&lossy, &good]).unwrap();
    expect_outcome_unknown("deregister", lossy_first.deregister("web", "w1").await);
    assert_eq!(proxy.connections(), 3);
    assert_eq!(last_log_index(&c, leader).await - before, 1);
    for n in [leader, healthy] {
        eventually(Duration::from_secs(5), "w1 deregistered", || async {
            c.instance_ids(n, "web").await == ["w2"]
        })
        .await;
    }

    // (3) A read through the proxy loses its answer too, and moves on to the healthy node.
    let lossy_first = Client::new([&lossy, &good]).unwrap();
    let read = lossy_first
        .service("web", &ReadOptions::default())
        .await
        .unwrap();
    let ids: Vec<&str> = read.value.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["w2"]);
    assert_eq!(
        proxy.connections(),
        4,
        "the read went through the proxy first"
    );
}

fn cairn(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn t40_cli_commands_print_tables_json_and_exit_codes() {
    let c = Cluster::start(1, &[]).await;
    let addr = c.node(1).http.to_string();
    let a = addr.as_str();

    let (code, out, err) = cairn(&[
        "register",
        "web",
        "w1",
        "--address",
        "10.0.0.1",
        "--port",
        "8080",
        "--tag",
        "v1",
        "--meta",
        "zone=a",
        "--ttl-check",
        "30s",
        "--http-addr",
        a,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("registered web/w1 (index "), "{out}");

    let (code, out, _) = cairn(&["services", "--http-addr", a]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SERVICE  INSTANCES  PASSING"), "{out}");
    assert!(lines[1].starts_with("web      1          0"), "{out}");

    let (code, out, _) = cairn(&["instances", "web", "--json", "--http-addr", a]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"][0]["id"], "w1");
    assert_eq!(v["instances"][0]["meta"]["zone"], "a");

    let (code, out, _) = cairn(&["health", "set", "web", "w1", "warning", "--http-addr", a]);
    assert_eq!(code, 0);
    assert!(out.contains("web/w1 is warning"));

    let (code, out, _) = cairn(&["members", "--http-addr", a]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().contains("leader"), "{out}");

    let (code, _, err) = cairn(&["deregister", "web", "nope", "--http-addr", a]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not_found") || err.contains("no instance"),
        "{err}"
    );

    let (code, _, err) = cairn(&[
        "register",
        "web",
        "x",
        "--address",
        "10.0.0.1",
        "--port",
        "0",
        "--http-addr",
        a,
    ]);
    assert_eq!(code, 64, "a value the server refuses is bad usage: {err}");
    let (code, _, _) = cairn(&["health", "set", "web", "w1", "sick", "--http-addr", a]);
    assert_eq!(code, 64);
    let (code, _, _) = cairn(&["instances"]);
    assert_eq!(code, 64, "missing argument");

    let (code, out, _) = cairn(&["deregister", "web", "w1", "--json", "--http-addr", a]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["index"]
        .as_u64()
        .is_some());

    // No node: a clear message and exit 1.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, _, err) = cairn(&["services", "--http-addr", &dead]);
    assert_eq!(code, 1);
    assert!(err.contains("no Cairn node reachable"), "{err}");
}
