//! Quotas: over each one, a write that grows the registry gets 507 `quota_exceeded` and changes
//! nothing, through the native and the Consul API, from any node; deletes, heartbeats, health
//! and maintenance still work, and once something is deleted writes fit again. Racing writers
//! cannot share the last slot. Service settings can be deleted.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, Cluster};

/// (applied index, digest) of `node`.
async fn digest(c: &Cluster, node: u64) -> (u64, String) {
    let (status, body) = c.get(node, "/v1/cluster/digest").await;
    assert_eq!(status, 200, "digest: {body}");
    (
        body["applied_index"].as_u64().unwrap(),
        body["digest"].as_str().unwrap().to_owned(),
    )
}

fn instance_path(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}

/// A registration with `checks` TTL checks, named `ttl<n>`.
fn body(checks: usize) -> Value {
    let checks: Vec<Value> = (0..checks)
        .map(|i| json!({"id": format!("ttl{i}"), "kind": "ttl", "ttl": "30s"}))
        .collect();
    json!({"address": "10.0.0.1", "port": 8080, "checks": checks})
}

/// PUTs `path` through `node` and asserts the answer is a 200.
async fn ok(c: &Cluster, node: u64, path: &str, body: &Value) {
    let (status, res) = c.put(node, path, body).await;
    assert_eq!(status, 200, "PUT {path} via node {node}: {res}");
}

/// PUTs `path` through `node`, asserts a 507 `quota_exceeded` naming `flag`, and that the
/// leader's replicated state did not move.
async fn refused(c: &Cluster, node: u64, path: &str, body: &Value, flag: &str) {
    let leader = c.leader().await;
    let before = digest(c, leader).await;
    let (status, res) = c.put(node, path, body).await;
    assert_eq!(status, 507, "PUT {path} via node {node}: {res}");
    assert_eq!(res["code"], "quota_exceeded", "{res}");
    let message = res["message"].as_str().unwrap();
    assert!(
        message.starts_with("quota exceeded: ") && message.contains(flag),
        "{message}"
    );
    assert_eq!(
        digest(c, leader).await,
        before,
        "a refused write changed nothing"
    );
}

/// The value of the metric line `name{quota="kind"}` on `node`.
async fn metric(c: &Cluster, node: u64, name: &str, kind: &str) -> u64 {
    let text = c
        .http
        .get(c.node(node).url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{quota=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} in {text}"))
        .parse()
        .unwrap()
}

/// The bytes usage every node reports, once all three have applied the same state.
async fn agreed_bytes(c: &Cluster) -> Option<u64> {
    let mut seen = Vec::new();
    for n in 1..=3 {
        seen.push((
            digest(c, n).await,
            metric(c, n, "cairn_quota_usage", "bytes").await,
        ));
    }
    seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].1)
}

#[tokio::test]
async fn t10_over_a_count_quota_growth_is_refused_and_the_rest_works() {
    let c = Cluster::start(
        3,
        &[
            "--quota-services",
            "2",
            "--quota-instances-per-service",
            "3",
            "--quota-checks",
            "4",
        ],
    )
    .await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();

    // Instances per service: three fit, the fourth is refused, through either node.
    for id in ["a", "b", "c"] {
        ok(&c, follower, &instance_path("web", id), &body(1)).await;
    }
    for node in [leader, follower] {
        refused(
            &c,
            node,
            &instance_path("web", "d"),
            &body(0),
            "--quota-instances-per-service",
        )
        .await;
    }

    // Services: a second fits, a third is refused, through the Consul API too.
    ok(&c, leader, &instance_path("db", "d1"), &body(0)).await;
    refused(
        &c,
        follower,
        &instance_path("cache", "a"),
        &body(0),
        "--quota-services",
    )
    .await;
    refused(
        &c,
        follower,
        "/v1/agent/service/register",
        &json!({"ID": "cache-1", "Name": "cache", "Address": "10.0.0.9", "Port": 6379}),
        "--quota-services",
    )
    .await;

    // Checks: four in all; a new instance's check fits, then a replacement that adds one is
    // refused.
    ok(&c, follower, &instance_path("db", "d1"), &body(1)).await;
    refused(
        &c,
        follower,
        &instance_path("web", "a"),
        &body(2),
        "--quota-checks",
    )
    .await;

    // Over every count quota, what does not grow the registry still works.
    ok(&c, follower, &instance_path("web", "a"), &body(1)).await;
    ok(
        &c,
        follower,
        &format!("{}/health", instance_path("web", "b")),
        &json!({"status": "warning", "output": "slow"}),
    )
    .await;
    ok(
        &c,
        follower,
        &format!("{}/maintenance", instance_path("web", "c")),
        &json!({"enable": true, "reason": "deploy"}),
    )
    .await;
    ok(
        &c,
        follower,
        &format!("{}/heartbeat", instance_path("web", "a")),
        &json!({}),
    )
    .await;
    ok(
        &c,
        follower,
        "/v1/agent/check/fail/ttl0?note=down",
        &json!({}),
    )
    .await;
    ok(
        &c,
        follower,
        "/v1/agent/service/maintenance/d1?enable=true",
        &json!({}),
    )
    .await;

    // The leader says so: a counter per quota and one log line, not one per refusal.
    assert_eq!(
        metric(&c, leader, "cairn_quota_refused_total", "services").await,
        2
    );
    assert_eq!(
        metric(
            &c,
            leader,
            "cairn_quota_refused_total",
            "instances_per_service"
        )
        .await,
        2
    );
    assert_eq!(
        metric(&c, leader, "cairn_quota_exceeded", "services").await,
        1
    );
    assert_eq!(metric(&c, leader, "cairn_quota_usage", "services").await, 2);
    assert_eq!(metric(&c, leader, "cairn_quota_limit", "checks").await, 4);
    let lines = c.node(leader).log_count("registry quota reached");
    assert_eq!(
        lines,
        3,
        "one line per quota hit:\n{}",
        c.node(leader).log_tail(30)
    );

    // Deletes work, and make room.
    let (status, res) = c.delete(follower, &instance_path("web", "c")).await;
    assert_eq!(status, 200, "{res}");
    ok(&c, follower, &instance_path("web", "d"), &body(0)).await;
    let (status, res) = c.delete(follower, &instance_path("db", "d1")).await;
    assert_eq!(status, 200, "{res}");
    ok(&c, follower, &instance_path("cache", "a"), &body(0)).await;
    assert_eq!(
        metric(&c, leader, "cairn_quota_exceeded", "services").await,
        0,
        "a new service was admitted since"
    );
}

#[tokio::test]
async fn t20_the_bytes_quota_fills_then_deletes_and_settings_deletes_make_room() {
    let mut c = Cluster::start(3, &["--quota-bytes", "4000"]).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let big = |i: usize| {
        let mut b = body(1);
        b["meta"] = json!({"blob": "x".repeat(400), "n": i.to_string()});
        b
    };

    let mut fitted = 0;
    loop {
        let path = instance_path("web", &format!("i{fitted}"));
        let (status, res) = c.put(follower, &path, &big(fitted)).await;
        if status == 507 {
            assert_eq!(res["code"], "quota_exceeded", "{res}");
            break;
        }
        assert_eq!(status, 200, "{res}");
        fitted += 1;
        assert!(fitted < 20, "4000 bytes hold fewer than 20 such instances");
    }
    assert!(fitted >= 3, "only {fitted} fitted");
    let full = instance_path("web", &format!("i{fitted}"));
    refused(&c, leader, &full, &big(fitted), "--quota-bytes").await;
    // Settings fill the rest, until they are refused too.
    let mut n = 0;
    let settings = loop {
        let path = format!("/v1/services/s{n}/settings");
        let (status, res) = c.put(follower, &path, &json!({"dns_ttl": "30s"})).await;
        if status == 507 {
            break path;
        }
        assert_eq!(status, 200, "{res}");
        n += 1;
        assert!(n < 40, "settings never refused");
    };
    refused(
        &c,
        follower,
        &settings,
        &json!({"dns_ttl": "30s"}),
        "--quota-bytes",
    )
    .await;
    let usage = metric(&c, leader, "cairn_quota_usage", "bytes").await;
    assert!((3500..=4000).contains(&usage), "{usage}");
    assert_eq!(metric(&c, leader, "cairn_quota_limit", "bytes").await, 4000);

    // Full, and still: a same-size re-registration, health with a long output, maintenance,
    // a heartbeat.
    ok(&c, follower, &instance_path("web", "i0"), &big(0)).await;
    ok(
        &c,
        follower,
        &format!("{}/health", instance_path("web", "i1")),
        &json!({"status": "critical", "output": "x".repeat(4000)}),
    )
    .await;
    ok(
        &c,
        follower,
        &format!("{}/maintenance", instance_path("web", "i2")),
        &json!({"enable": true}),
    )
    .await;
    ok(
        &c,
        follower,
        &format!("{}/heartbeat", instance_path("web", "i0")),
        &json!({}),
    )
    .await;

    // Every replica counts the same bytes, and a restarted one rebuilds the count from its
    // records.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        if let Some(usage) = agreed_bytes(&c).await {
            break usage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas count the same bytes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        usage > 4000,
        "a long health output is taken even when full: {usage}"
    );
    c.node_mut(follower).kill();
    c.node_mut(follower).restart();
    eventually(
        Duration::from_secs(20),
        "the restarted node counts the same bytes",
        || async { agreed_bytes(&c).await == Some(usage) },
    )
    .await;

    // Deleting makes room, and the room is taken again until the quota refuses once more.
    for id in ["i1", "i2"] {
        let (status, res) = c.delete(follower, &instance_path("web", id)).await;
        assert_eq!(status, 200, "{res}");
    }
    ok(&c, follower, &full, &big(fitted)).await;
    ok(&c, follower, &settings, &json!({"dns_ttl": "30s"})).await;
    let mut more = 0;
    while c
        .put(
            follower,
            &instance_path("web", &format!("more{more}")),
            &big(100 + more),
        )
        .await
        .0
        == 200
    {
        more += 1;
        assert!(more < 3, "two deleted instances make room for at most two");
    }
    refused(
        &c,
        follower,
        &instance_path("web", &format!("more{more}")),
        &big(100 + more),
        "--quota-bytes",
    )
    .await;
}

#[tokio::test]
async fn t30_settings_can_be_deleted_and_deleting_them_makes_room() {
    let mut c = Cluster::start(1, &[]).await;
    ok(
        &c,
        1,
        "/v1/services/web/settings",
        &json!({"dns_ttl": "30s", "fail_open": true}),
    )
    .await;
    let (status, body) = c.get(1, "/v1/services/web/settings").await;
    assert_eq!(
        (status, body["dns_ttl"].clone()),
        (200, json!("30s")),
        "{body}"
    );

    let (status, res) = c.delete(1, "/v1/services/web/settings").await;
    assert_eq!(status, 200, "{res}");
    assert!(res["index"].as_u64().is_some(), "{res}");
    let (status, body) = c.get(1, "/v1/services/web/settings").await;
    assert_eq!(status, 200);
    assert_eq!(body["dns_ttl"], Value::Null, "{body}");
    assert_eq!(body["fail_open"], false, "{body}");
    let (status, res) = c.delete(1, "/v1/services/web/settings").await;
    assert_eq!(
        (status, res["code"].clone()),
        (404, json!("not_found")),
        "{res}"
    );
    let (status, res) = c.delete(1, "/v1/services/Bad_Name/settings").await;
    assert_eq!(status, 400, "{res}");

    // The deletion is stored: gone after a restart too.
    ok(
        &c,
        1,
        "/v1/services/db/settings",
        &json!({"dns_ttl": "10s"}),
    )
    .await;
    let (status, _) = c.delete(1, "/v1/services/db/settings").await;
    assert_eq!(status, 200);
    c.node_mut(1).kill();
    c.node_mut(1).restart();
    eventually(Duration::from_secs(20), "node back", || async {
        c.get(1, "/v1/ready").await.0 == 200
    })
    .await;
    let (_, body) = c.get(1, "/v1/services/db/settings").await;
    assert_eq!(body["dns_ttl"], Value::Null, "{body}");
    assert_eq!(body["index"], 0, "{body}");

    // Settings count toward the bytes quota; deleting them makes room.
    drop(c);
    let c = Cluster::start(1, &["--quota-bytes", "200"]).await;
    ok(&c, 1, "/v1/services/a/settings", &json!({"dns_ttl": "30s"})).await;
    let mut n = 0;
    let last = loop {
        let path = format!("/v1/services/s{n}/settings");
        let (status, res) = c.put(1, &path, &json!({"dns_ttl": "30s"})).await;
        if status == 507 {
            assert_eq!(res["code"], "quota_exceeded", "{res}");
            break path;
        }
        assert_eq!(status, 200, "{res}");
        n += 1;
        assert!(n < 10, "200 bytes hold fewer than 10 settings");
    };
    let (status, _) = c.delete(1, "/v1/services/a/settings").await;
    assert_eq!(status, 200);
    ok(&c, 1, &last, &json!({"dns_ttl": "30s"})).await;
}

#[tokio::test]
async fn t40_racing_writers_cannot_share_the_last_slot() {
    let c = Cluster::start(3, &["--quota-instances-per-service", "5"]).await;
    let writes = (0..30u64).map(|i| {
        let c = &c;
        async move {
            let path = instance_path("web", &format!("i{i}"));
            c.put(1 + i % 3, &path, &body(0)).await.0
        }
    });
    let statuses = futures::future::join_all(writes).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 507).count();
    assert_eq!((admitted, refused), (5, 25), "{statuses:?}");
    let leader = c.leader().await;
    assert_eq!(c.instance_ids(leader, "web").await.len(), 5);
}
