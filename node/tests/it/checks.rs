//! Health checks run by the cluster: HTTP, TCP and TTL, rise and fall, deregistration,
//! maintenance, ownership moving off a killed node, and no writes while nothing changes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness;
use crate::harness::register_with as register;
use crate::harness::{eventually, Cluster};

/// What the test target answers.
const OK: u8 = 0;
const ERROR: u8 = 1;
const TOO_MANY: u8 = 2;
const HANG: u8 = 3;

/// A tiny HTTP target whose answer the test switches, counting the probes it receives.
struct Target {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU32>,
}

impl Target {
    async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let hits = Arc::new(AtomicU32::new(0));
        let (m, h) = (mode.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (m, h) = (m.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    h.fetch_add(1, Ordering::SeqCst);
                    let status = match m.load(Ordering::SeqCst) {
                        OK => "200 OK",
                        ERROR => "500 Internal Server Error",
                        TOO_MANY => "429 Too Many Requests",
                        _ => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let body = format!("mode {}", m.load(Ordering::SeqCst));
                    let res = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(res.as_bytes()).await;
                });
            }
        });
        Target { addr, mode, hits }
    }

    fn set(&self, mode: u8) -> u32 {
        self.mode.store(mode, Ordering::SeqCst);
        self.hits.load(Ordering::SeqCst)
    }
}

async fn instance(c: &Cluster, node: u64, service: &str, id: &str) -> Option<Value> {
    let (status, body) = c.get(node, &format!("/v1/services/{service}")).await;
    if status != 200 {
        return None;
    }
    body["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

async fn check_status(c: &Cluster, node: u64, service: &str, id: &str) -> Option<String> {
    let i = instance(c, node, service, id).await?;
    i["checks"][0]["status"].as_str().map(str::to_owned)
}

async fn wait_status(
    c: &Cluster,
    node: u64,
    service: &str,
    id: &str,
    want: &str,
    within: Duration,
) {
    let what = format!("{service}/{id} check {want} on node {node}");
    eventually(within, &what, || async {
        check_status(c, node, service, id).await.as_deref() == Some(want)
    })
    .await;
}

#[tokio::test]
async fn t10_http_check_follows_its_target_with_exact_rise_and_fall() {
    let c = Cluster::start(1, &[]).await;
    let target = Target::start().await;
    register(
        &c,
        1,
        "web",
        "w1",
        json!({
            "address": "127.0.0.1", "port": target.addr.port(),
            "checks": [{"kind": "http", "url": format!("http://{}/health", target.addr),
                        "interval": "300ms", "timeout": "150ms", "rise": 2, "fall": 3}]
        }),
    )
    .await;
    assert_eq!(
        check_status(&c, 1, "web", "w1").await.as_deref(),
        Some("critical"),
        "initial status"
    );
    wait_status(&c, 1, "web", "w1", "passing", Duration::from_secs(5)).await;
    // Rise 2: passing after exactly two successful probes.
    assert_eq!(target.hits.load(Ordering::SeqCst), 2);

    for (mode, want) in [
        (ERROR, "critical"),
        (TOO_MANY, "warning"),
        (HANG, "critical"),
    ] {
        let at = target.set(mode);
        wait_status(&c, 1, "web", "w1", want, Duration::from_secs(5)).await;
        let probes = target.hits.load(Ordering::SeqCst) - at;
        assert_eq!(
            probes, 3,
            "fall 3: {want} after exactly three probes (mode {mode})"
        );
    }
    let i = instance(&c, 1, "web", "w1").await.unwrap();
    assert!(
        i["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{i}"
    );

    let at = target.set(OK);
    wait_status(&c, 1, "web", "w1", "passing", Duration::from_secs(5)).await;
    assert_eq!(target.hits.load(Ordering::SeqCst) - at, 2, "rise 2");
    let i = instance(&c, 1, "web", "w1").await.unwrap();
    assert!(
        i["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("200 OK"),
        "{i}"
    );
}

#[tokio::test]
async fn t20_tcp_check_sees_a_listener_open_and_close() {
    let c = Cluster::start(1, &[]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    register(
        &c,
        1,
        "db",
        "d1",
        json!({
            "address": "127.0.0.1", "port": port,
            "checks": [{"kind": "tcp", "interval": "200ms", "timeout": "100ms"}]
        }),
    )
    .await;
    wait_status(&c, 1, "db", "d1", "passing", Duration::from_secs(5)).await;
    drop(listener);
    wait_status(&c, 1, "db", "d1", "critical", Duration::from_secs(5)).await;
    let i = instance(&c, 1, "db", "d1").await.unwrap();
    assert!(
        i["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("TCP connect"),
        "{i}"
    );
}

async fn heartbeat(c: &Cluster, node: u64, service: &str, id: &str) -> u16 {
    c.http
        .put(
            c.node(node)
                .url(&format!("/v1/services/{service}/instances/{id}/heartbeat")),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn t30_ttl_heartbeats_to_any_node_keep_a_check_passing_until_they_stop() {
    let c = Cluster::start(3, &[]).await;
    register(
        &c,
        1,
        "job",
        "j1",
        json!({
            "address": "10.0.0.1", "port": 80, "checks": [{"kind": "ttl", "ttl": "1s"}]
        }),
    )
    .await;
    wait_status(&c, 2, "job", "j1", "critical", Duration::from_secs(5)).await;
    // Heartbeats through every node: two of them relay to the check's owner.
    for n in 1..=3 {
        assert_eq!(heartbeat(&c, n, "job", "j1").await, 200);
    }
    wait_status(&c, 3, "job", "j1", "passing", Duration::from_secs(3)).await;
    let (_, before) = c.get(1, "/v1/services/job").await;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(heartbeat(&c, 1 + i % 3, "job", "j1").await, 200);
        assert_eq!(
            check_status(&c, 1, "job", "j1").await.as_deref(),
            Some("passing")
        );
    }
    let (_, after) = c.get(1, "/v1/services/job").await;
    assert_eq!(
        before["index"], after["index"],
        "steady heartbeats write nothing"
    );
    let stopped = Instant::now();
    wait_status(&c, 2, "job", "j1", "critical", Duration::from_secs(5)).await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(700),
        "no premature expiry"
    );
    let i = instance(&c, 1, "job", "j1").await.unwrap();
    assert!(i["checks"][0]["output"]
        .as_str()
        .unwrap()
        .contains("expired"));

    assert_eq!(heartbeat(&c, 1, "job", "nope").await, 404);
    register(
        &c,
        1,
        "job",
        "plain",
        json!({"address": "10.0.0.2", "port": 80}),
    )
    .await;
    assert_eq!(
        heartbeat(&c, 1, "job", "plain").await,
        404,
        "no TTL check to pass"
    );
}

#[tokio::test]
async fn t40_deregister_after_removes_an_instance_left_critical() {
    let c = Cluster::start(1, &[]).await;
    register(
        &c,
        1,
        "tmp",
        "t1",
        json!({
            "address": "10.0.0.1", "port": 80,
            "checks": [{"kind": "ttl", "ttl": "1s", "deregister_after": "1s"}]
        }),
    )
    .await;
    register(
        &c,
        1,
        "tmp",
        "keep",
        json!({"address": "10.0.0.2", "port": 80}),
    )
    .await;
    eventually(Duration::from_secs(8), "t1 deregistered", || async {
        instance(&c, 1, "tmp", "t1").await.is_none()
    })
    .await;
    assert!(instance(&c, 1, "tmp", "keep").await.is_some());
}

#[tokio::test]
async fn t50_maintenance_takes_an_instance_out_until_it_ends() {
    let c = Cluster::start(1, &[]).await;
    register(
        &c,
        1,
        "web",
        "w",
        json!({"address": "10.0.0.1", "port": 80}),
    )
    .await;
    let (s, _) = c
        .put(
            1,
            "/v1/services/web/instances/w/maintenance",
            &json!({"enable": true, "reason": "deploy"}),
        )
        .await;
    assert_eq!(s, 200);
    let i = instance(&c, 1, "web", "w").await.unwrap();
    assert_eq!(i["health"], "critical");
    assert_eq!(i["maintenance"]["output"], "deploy");
    let (_, passing) = c.get(1, "/v1/services/web?health=passing").await;
    assert_eq!(passing["instances"].as_array().unwrap().len(), 0);
    let (s, _) = c
        .put(
            1,
            "/v1/services/web/instances/w/maintenance",
            &json!({"enable": false}),
        )
        .await;
    assert_eq!(s, 200);
    let i = instance(&c, 1, "web", "w").await.unwrap();
    assert_eq!(i["health"], "passing");
    assert!(i.get("maintenance").is_none());
    let (s, _) = c
        .put(
            1,
            "/v1/services/web/instances/gone/maintenance",
            &json!({"enable": true}),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn t60_checks_move_off_a_killed_node_and_keep_tracking_health() {
    let mut c = Cluster::start(3, &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Thirty checks over three nodes: the chance a given node owns none is (2/3)^30, 5e-6.
    let ids: Vec<String> = (0..30).map(|i| format!("i{i}")).collect();
    for id in &ids {
        register(
            &c,
            1,
            "pool",
            id,
            json!({
                "address": "127.0.0.1", "port": port,
                "checks": [{"kind": "tcp", "interval": "300ms", "timeout": "200ms"}]
            }),
        )
        .await;
    }
    for id in &ids {
        wait_status(&c, 1, "pool", id, "passing", Duration::from_secs(5)).await;
    }
    // Kill a follower, which owns about a third of the checks.
    let leader = c.leader().await;
    let victim = (1..=3).find(|n| *n != leader).unwrap();
    let owned_by_victim = c.node(victim).log_contains("check status changed");
    c.node_mut(victim).kill();
    // The leader marks it down within seconds; its checks move.
    let survivor = (1..=3).find(|n| *n != victim && *n != leader).unwrap();
    drop(listener);
    for id in &ids {
        wait_status(
            &c,
            survivor,
            "pool",
            id,
            "critical",
            Duration::from_secs(15),
        )
        .await;
    }
    assert!(owned_by_victim, "the killed node had been running checks");
    // And every remaining node stops handing the instances out, in DNS and over HTTP.
    for n in [leader, survivor] {
        let (_, body) = c.get(n, "/v1/services/pool?health=passing").await;
        assert_eq!(body["instances"].as_array().unwrap().len(), 0);
        let answer = harness::dns::udp(c.node(n).dns, "pool.service.cairn.", RecordType::A).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(
            answer.answers.is_empty(),
            "node {n} still answers {:?}",
            answer.answers
        );
    }
}

#[tokio::test]
async fn t70_thirty_seconds_of_steady_probes_and_heartbeats_move_no_index() {
    let c = Cluster::start(3, &[]).await;
    let target = Target::start().await;
    register(&c, 1, "steady", "h", json!({
        "address": "127.0.0.1", "port": target.addr.port(),
        "checks": [{"kind": "http", "url": format!("http://{}/", target.addr), "interval": "200ms", "timeout": "100ms"}]
    }))
    .await;
    register(
        &c,
        1,
        "steady",
        "t",
        json!({
            "address": "10.0.0.1", "port": 80, "checks": [{"kind": "ttl", "ttl": "2s"}]
        }),
    )
    .await;
    // Node 2 may not have applied the registration yet: a heartbeat there is 404 until it has.
    eventually(
        Duration::from_secs(5),
        "first heartbeat accepted by node 2",
        || async { heartbeat(&c, 2, "steady", "t").await == 200 },
    )
    .await;
    wait_status(&c, 1, "steady", "h", "passing", Duration::from_secs(5)).await;
    wait_status(&c, 1, "steady", "t", "passing", Duration::from_secs(5)).await;
    let (_, before) = c.get(1, "/v1/cluster").await;
    let hits_before = target.hits.load(Ordering::SeqCst);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        assert_eq!(heartbeat(&c, 3, "steady", "t").await, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, after) = c.get(1, "/v1/cluster").await;
    let probes = target.hits.load(Ordering::SeqCst) - hits_before;
    assert!(probes >= 100, "the HTTP check kept probing: {probes}");
    assert_eq!(
        before["last_log_index"], after["last_log_index"],
        "{probes} probes and 60 heartbeats wrote nothing to the log"
    );
}

#[tokio::test]
async fn t80_bad_check_definitions_are_refused_naming_the_field() {
    let c = Cluster::start(1, &[]).await;
    let cases = [
        (
            json!({"kind": "http", "url": "http://x/", "interval": "0s"}),
            "checks[0].interval",
        ),
        (
            json!({"kind": "http", "url": "http://x/", "interval": "1s", "timeout": "2s"}),
            "checks[0].timeout",
        ),
        (json!({"kind": "ttl"}), "checks[0].ttl"),
    ];
    for (check, field) in cases {
        let (status, body) = c
            .put(
                1,
                "/v1/services/web/instances/x",
                &json!({"address": "10.0.0.1", "port": 80, "checks": [check]}),
            )
            .await;
        assert_eq!(status, 400);
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{body}"
        );
    }
    let (status, _) = c
        .put(
            1,
            "/v1/services/web/instances/x",
            &json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "grpc"}]}),
        )
        .await;
    assert_eq!(status, 400, "unknown kind");
    assert_eq!(
        c.get(1, "/v1/services/web").await.0,
        404,
        "nothing was registered"
    );
}

#[tokio::test]
async fn t35_a_heartbeated_ttl_check_never_expires_across_leader_and_owner_changes() {
    let mut c = Cluster::start(3, &[]).await;
    register(
        &c,
        1,
        "job",
        "j",
        json!({
            "address": "10.0.0.1", "port": 80, "checks": [{"kind": "ttl", "ttl": "4s"}]
        }),
    )
    .await;
    eventually(Duration::from_secs(5), "first heartbeat", || async {
        heartbeat(&c, 1, "job", "j").await == 200
    })
    .await;
    wait_status(&c, 1, "job", "j", "passing", Duration::from_secs(5)).await;

    // Kill the leader, bring it back, kill the next leader: every node has been leader or gone,
    // and the check's owner has moved at least once. Heartbeats go on through any live node.
    for round in 0..2 {
        let leader = c.leader().await;
        c.node_mut(leader).kill();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            for n in (1..=3).filter(|n| c.node(*n).is_running()) {
                let _ = heartbeat(&c, n, "job", "j").await;
                let status = check_status(&c, n, "job", "j").await;
                assert_ne!(
                    status.as_deref(),
                    Some("critical"),
                    "expired early (round {round}, node {n})"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        c.node_mut(leader).restart();
        c.wait_voters(3).await;
    }
}

/// A registration through a follower is acknowledged once the leader applied it, possibly before
/// the follower did; a heartbeat sent through the same follower right after then got 404 (seen
/// as a flaky py-consul `ttl_pass`). The follower now catches up before it answers "not found".
#[tokio::test]
async fn regression_heartbeat_right_after_registering_through_a_follower() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    for i in 0..30 {
        let id = format!("j{i}");
        register(
            &c,
            follower,
            "job",
            &id,
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "ttl", "ttl": "30s"}]}),
        )
        .await;
        assert_eq!(
            heartbeat(&c, follower, "job", &id).await,
            200,
            "heartbeat {i}"
        );
    }
}
