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
    /// The last request received, as text.
    last: Arc<parking_lot::Mutex<String>>,
}

impl Target {
    async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let hits = Arc::new(AtomicU32::new(0));
        let last = Arc::new(parking_lot::Mutex::new(String::new()));
        let (m, h, l) = (mode.clone(), hits.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (m, h, l) = (m.clone(), h.clone(), l.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    *l.lock() = String::from_utf8_lossy(&buf[..n]).into_owned();
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
        Target {
            addr,
            mode,
            hits,
            last,
        }
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
    let i = instance(&c, 1, "db", "d1").await.unwrap();
    assert_eq!(
        i["checks"][0]["output"],
        format!("TCP 127.0.0.1:{port}: connected"),
        "{i}"
    );
    drop(listener);
    wait_status(&c, 1, "db", "d1", "critical", Duration::from_secs(5)).await;
    // The class of the failure, not the system's words for it: checks are no port scanner.
    let i = instance(&c, 1, "db", "d1").await.unwrap();
    assert_eq!(
        i["checks"][0]["output"],
        format!("TCP 127.0.0.1:{port}: connection refused"),
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

/// PUTs a registration; answers the status and the error message.
async fn try_register(c: &Cluster, id: &str, body: Value) -> (u16, String) {
    let (status, res) = c
        .put(1, &format!("/v1/services/ssrf/instances/{id}"), &body)
        .await;
    (
        status,
        res["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn t90_check_targets_in_denied_ranges_are_refused_at_registration_naming_the_rule() {
    // Loopback is denied here, as on any node without --dev (the harness allows it otherwise).
    let c = Cluster::start(
        1,
        &[
            "--check-allow",
            "192.0.2.0/24",
            "--check-deny",
            "10.9.0.0/16",
        ],
    )
    .await;
    let http = |url: &str| json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "http", "url": url}]});
    let tcp = |target: &str| json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "tcp", "target": target}]});
    let own = c.node(1).http;
    let cases = [
        (
            http("http://169.254.169.254/latest/meta-data/"),
            "checks[0].url: health checks may not connect there: 169.254.169.254 is refused by the default rule denying 169.254.169.254/32 (cloud metadata",
        ),
        (http("http://[fd00:ec2::254]/"), "fd00:ec2::254/128 (cloud metadata"),
        (http("http://169.254.10.1:8080/"), "169.254.0.0/16 (link-local"),
        (http("http://[fe80::1]/"), "fe80::/10 (link-local"),
        (http("http://localhost:8080/"), "(loopback"),
        (http("http://0.0.0.0:8080/"), "0.0.0.0/8 (this host"),
        (tcp("127.0.0.1:5432"), "checks[0].target: health checks may not connect there: 127.0.0.1 is refused by the default rule denying 127.0.0.0/8 (loopback"),
        (tcp("[::ffff:127.0.0.1]:5432"), "127.0.0.0/8 (loopback"),
        (tcp("10.9.3.4:5432"), "10.9.3.4 is refused by --check-deny 10.9.0.0/16"),
        (http(&format!("http://{own}/v1/services")), "this node's own listener"),
    ];
    for (body, want) in cases {
        let (status, message) = try_register(&c, "x", body.clone()).await;
        assert_eq!(status, 400, "{body}: {message}");
        assert!(message.contains(want), "{body}: {message}");
    }
    // The default check of an instance on loopback is refused too.
    let (status, message) = try_register(
        &c,
        "x",
        json!({"address": "127.0.0.1", "port": 80, "checks": [{"kind": "tcp"}]}),
    )
    .await;
    assert_eq!(status, 400, "{message}");
    // And through the Consul API.
    let res = c
        .http
        .put(c.node(1).url("/v1/agent/service/register"))
        .json(
            &json!({"Name": "ssrf", "ID": "y", "Address": "10.0.0.1", "Port": 80,
                      "Check": {"HTTP": "http://169.254.169.254/", "Interval": "10s"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("cloud metadata"));
    // Allowed: another machine, and a range opened by flag.
    for (id, url) in [("a", "http://10.0.0.1/"), ("b", "http://192.0.2.7/")] {
        let (status, message) = try_register(&c, id, http(url)).await;
        assert_eq!(status, 200, "{url}: {message}");
    }
    assert_eq!(
        c.instance_ids(1, "ssrf").await,
        ["a", "b"],
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn t91_the_nodes_own_listeners_are_refused_even_where_loopback_is_allowed() {
    let c = Cluster::start(1, &[]).await;
    let n = c.node(1);
    for url in [
        format!("http://{}/v1/services", n.http),
        format!("http://localhost:{}/v1/cluster", n.http.port()),
        format!("http://{}/raft/vote", n.rpc),
    ] {
        let (status, message) = try_register(
            &c,
            "x",
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "http", "url": url}]}),
        )
        .await;
        assert_eq!(status, 400, "{url}: {message}");
        assert!(
            message.contains("this node's own listener"),
            "{url}: {message}"
        );
    }
}

#[tokio::test]
async fn t92_every_probe_checks_the_resolved_target_against_its_nodes_rules() {
    // Node 1 lets checks reach loopback and registers them; nodes 2 and 3 deny loopback, so
    // the checks that land on them must never reach their targets, and say why. This is what a
    // name that comes to resolve into a denied range after registration meets.
    let c = Cluster::start_each(3, tempfile::tempdir().unwrap(), |id| {
        let allow = if id == 1 {
            "127.0.0.0/8,::1/128"
        } else {
            "192.0.2.0/24"
        };
        vec!["--check-allow".into(), allow.into()]
    })
    .await;
    let mut targets = Vec::new();
    for i in 0..12 {
        let target = Target::start().await;
        let check = if i % 2 == 0 {
            json!({"kind": "http", "url": format!("http://localhost:{}/h", target.addr.port()), "interval": "200ms", "timeout": "150ms", "initial_status": "warning"})
        } else {
            json!({"kind": "tcp", "target": target.addr.to_string(), "interval": "200ms", "timeout": "150ms", "initial_status": "warning"})
        };
        register(
            &c,
            1,
            "probe",
            &format!("p{i}"),
            json!({"address": "10.0.0.1", "port": 80, "checks": [check]}),
        )
        .await;
        targets.push(target);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut refused = 0;
    for (i, target) in targets.iter().enumerate() {
        let inst = instance(&c, 1, "probe", &format!("p{i}")).await.unwrap();
        let (status, output) = (
            &inst["checks"][0]["status"],
            inst["checks"][0]["output"].as_str().unwrap(),
        );
        if status == "critical" {
            refused += 1;
            assert!(
                output.contains("is refused by the default rule denying"),
                "p{i}: {output}"
            );
            assert!(output.contains("(loopback"), "p{i}: {output}");
            assert_eq!(
                target.hits.load(Ordering::SeqCst),
                0,
                "p{i} was probed: {output}"
            );
        } else {
            assert_eq!(status, "passing", "p{i}: {inst}");
        }
    }
    assert!(refused > 0, "no check landed on nodes 2 or 3");
}

#[tokio::test]
async fn t93_header_values_are_sent_but_never_shown_and_bodies_only_when_asked() {
    let c = Cluster::start(1, &[]).await;
    let target = Target::start().await;
    let url = format!("http://{}/health", target.addr);
    register(
        &c,
        1,
        "web",
        "w1",
        json!({"address": "10.0.0.1", "port": 80, "checks": [
            {"kind": "http", "url": url, "interval": "200ms", "headers": {"Authorization": "Bearer s3cret-token"}},
            {"kind": "http", "url": url, "interval": "200ms", "output_body": true},
        ]}),
    )
    .await;
    eventually(Duration::from_secs(5), "both checks passing", || async {
        let i = instance(&c, 1, "web", "w1").await.unwrap();
        i["checks"][0]["status"] == "passing" && i["checks"][1]["status"] == "passing"
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the header reaches the target",
        || async {
            target
                .last
                .lock()
                .to_ascii_lowercase()
                .contains("authorization: bearer s3cret-token")
        },
    )
    .await;
    let i = instance(&c, 1, "web", "w1").await.unwrap();
    assert_eq!(
        i["checks"][0]["definition"]["headers"]["Authorization"], "<redacted>",
        "{i}"
    );
    assert_eq!(
        i["checks"][0]["output"],
        format!("HTTP GET {url}: 200 OK"),
        "{i}"
    );
    assert_eq!(
        i["checks"][1]["output"],
        format!("HTTP GET {url}: 200 OK\nmode 0"),
        "{i}"
    );
    for path in [
        "/v1/services/web",
        "/v1/health/service/web",
        "/v1/health/checks/web",
        "/v1/catalog/service/web",
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/agent/service/w1",
        "/v1/health/state/any",
    ] {
        let text = c
            .http
            .get(c.node(1).url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("s3cret"), "{path}: {text}");
    }
    // Sending back what a read showed is refused rather than storing the placeholder.
    let (status, message) = try_register(
        &c,
        "w2",
        json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "http", "url": url, "headers": {"Authorization": "<redacted>"}}]}),
    )
    .await;
    assert_eq!(
        (status, message.starts_with("checks[0].headers")),
        (400, true),
        "{message}"
    );
    let (status, message) = try_register(
        &c,
        "w2",
        json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "http", "url": url, "method": "DELETE"}]}),
    )
    .await;
    assert_eq!(
        (status, message.starts_with("checks[0].method")),
        (400, true),
        "{message}"
    );
}
