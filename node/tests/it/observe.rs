//! Observability: what `/metrics` exports (and that the Grafana dashboard in `deploy/grafana/`
//! asks only for that), the request id every HTTP answer carries, and a registration followed
//! across two nodes' JSON logs by that id.

use std::collections::BTreeSet;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

use crate::harness::{dns, eventually, Cluster, Node};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/cairn.json");

/// The sample names of an exposition text: the first word of each line that is not a comment,
/// without its labels.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `cairn_*` metric name in the dashboard's PromQL expressions.
fn dashboard_names(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("cairn_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    names
}

/// The value of the sample `name{labels}` (labels as written, in order), if exported.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(node: &Node) -> String {
    let res = reqwest::get(node.url("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// One node with a check, a read, DNS queries and a blocking read in flight: the families the
/// issue asks for are there with the counts just made, and every name the dashboard queries is
/// exported (a typo in either fails here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_metrics_cover_http_dns_raft_checks_and_the_dashboard() {
    let c = Cluster::start(1, &[]).await;
    let node = c.node(1);
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let (status, body) = c
        .put(
            1,
            "/v1/services/web/instances/web-1",
            &json!({"address": "127.0.0.1", "port": port, "checks": [
                {"kind": "tcp", "interval": "200ms", "timeout": "150ms", "initial_status": "passing"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let read = c
        .http
        .get(node.url("/v1/services/web"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let index = crate::harness::header_u64(&read, "x-cairn-index").expect("X-Cairn-Index");
    let answer = dns::udp(node.dns, "web.service.cairn.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 1);
    dns::udp(node.dns, "nothing.service.cairn.", RecordType::SRV).await;
    // Answer latency is sampled by message id (low byte a multiple of 16): two that are.
    for id in [0x0100u16, 0x0210] {
        let mut q = dns::query("web.service.cairn.", RecordType::A, None);
        q[..2].copy_from_slice(&id.to_be_bytes());
        assert!(dns::udp_raw(node.dns, &q).await.is_some());
    }
    // A blocking read that waits while the node is scraped.
    let blocking = {
        let url = node.url(&format!("/v1/services/web?index={index}&wait=5s"));
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
    };

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(node).await;
        if sample(
            &text,
            "cairn_check_results_total{kind=\"tcp\",result=\"passing\"}",
        )
        .is_some_and(|n| n >= 2.0)
            && sample(&text, "cairn_blocking_reads_open") == Some(1.0)
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probes and the blocking read not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (series, at_least) in [
        (
            "cairn_http_request_duration_seconds_count{route=\"/v1/services/{service}\",method=\"GET\",status=\"2xx\"}",
            1.0,
        ),
        (
            "cairn_http_request_duration_seconds_count{route=\"/v1/services/{service}/instances/{id}\",method=\"PUT\",status=\"2xx\"}",
            1.0,
        ),
        ("cairn_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}", 1.0),
        ("cairn_dns_queries_total{qtype=\"SRV\",rcode=\"NXDOMAIN\"}", 1.0),
        ("cairn_dns_answer_seconds_count", 2.0),
        ("cairn_raft_commit_seconds_count", 1.0),
        ("cairn_raft_leader_changes_total", 1.0),
        ("cairn_checks_owned", 1.0),
        ("cairn_check_probe_seconds_count{kind=\"tcp\"}", 2.0),
        ("cairn_watchers_open", 0.0),
        ("cairn_raft_apply_lag", 0.0),
        // The metrics that were there before, by their old names.
        ("cairn_raft_is_leader", 1.0),
        ("cairn_instances", 1.0),
        ("cairn_quota_usage{quota=\"services\"}", 1.0),
    ] {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert!(value >= at_least, "{series} = {value}, want >= {at_least}");
    }
    assert_eq!(blocking.await.unwrap().unwrap(), 200);

    let exported = exported_names(&text);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let used = dashboard_names(&dashboard);
    assert!(used.len() >= 20, "the dashboard's names: {used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the node does not export: {missing:?}"
    );
    drop(target);
}

/// Every answer carries `X-Request-Id`: the client's when it is sane, a new one otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_every_answer_carries_a_request_id() {
    let c = Cluster::start(1, &[]).await;
    let url = c.node(1).url("/v1/services");
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let a = c.http.get(&url).send().await.unwrap();
    let b = c.http.get(&url).send().await.unwrap();
    let (a, b) = (id_of(&a).expect("an id"), id_of(&b).expect("an id"));
    assert_ne!(a, b, "each request gets its own id");
    let mine = c
        .http
        .get(&url)
        .header("x-request-id", "client-7.trace:01")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&mine).as_deref(), Some("client-7.trace:01"));
    let long = "x".repeat(65);
    for bad in [long.as_str(), "has space", "quote\"d"] {
        let res = c
            .http
            .get(&url)
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "a bad id is replaced, not refused");
        let id = id_of(&res).expect("an id");
        assert_ne!(id, bad);
        assert!(
            id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    // A 404 of no route has one too.
    let res = c.http.get(c.node(1).url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(id_of(&res).is_some());
}

/// The JSON log lines of `node` (every line must be a JSON object) that mention `id`.
fn json_lines_with(node: &Node, id: &str) -> Vec<Value> {
    let text = node.log_tail(100_000);
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v.to_string().contains(id))
        .collect()
}

/// A registration sent to a follower with `--log-format json` is followed across both nodes by
/// its request id: the follower's line that forwards it and the leader's line of the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_a_forwarded_write_shows_the_same_request_id_in_both_nodes_logs() {
    let c = Cluster::start(2, &["--log-format", "json"]).await;
    let leader = c.leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let id = "reg-0042.follow-me";
    let res = c
        .http
        .put(c.node(follower).url("/v1/services/api/instances/api-1"))
        .header("x-request-id", id)
        .json(&json!({"address": "10.0.0.9", "port": 9000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("x-request-id").unwrap().to_str().unwrap(),
        id
    );
    let mut seen = (Vec::new(), Vec::new());
    eventually(Duration::from_secs(5), "the id in both logs", || {
        seen = (
            json_lines_with(c.node(follower), id),
            json_lines_with(c.node(leader), id),
        );
        let found = !seen.0.is_empty() && !seen.1.is_empty();
        async move { found }
    })
    .await;
    let (on_follower, on_leader) = seen;
    assert!(
        on_follower
            .iter()
            .any(|l| l["message"] == "forwarding a write to the leader" && l["request_id"] == id),
        "{on_follower:?}"
    );
    assert!(
        on_leader.iter().any(|l| l["message"] == "forwarded write"
            && l["request_id"] == id
            && l["outcome"] == "ok"),
        "{on_leader:?}"
    );
}
