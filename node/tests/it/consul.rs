//! The Consul-compatible API, over plain HTTP, and with the real py-consul client.
//!
//! Prometheus' consul_sd is not tested: Debian 12's prometheus (2.42.0+ds) is built without it
//! (its configuration parser rejects `consul_sd_configs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness;
use crate::harness::{eventually, Cluster};

async fn put(c: &Cluster, path: &str, body: Option<Value>) -> (u16, String) {
    let mut req = c.http.put(c.node(1).url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn get(c: &Cluster, path: &str) -> (u16, u64, Value) {
    let res = c
        .http
        .get(c.node(1).url(path))
        .header("X-Consul-Token", "anything")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let index = harness::header_u64(&res, "x-consul-index").unwrap_or(0);
    assert!(res.headers().contains_key("x-consul-knownleader"), "{path}");
    assert!(res.headers().contains_key("x-consul-lastcontact"), "{path}");
    (status, index, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn t10_consul_endpoints_map_onto_the_registry() {
    let c = Cluster::start(1, &[]).await;
    // CamelCase, lower case and snake_case keys, as Consul takes them.
    let (s, _) = put(&c, "/v1/agent/service/register", Some(json!({
        "ID": "web-1", "Name": "web", "Address": "10.0.0.1", "Port": 8080, "Tags": ["v1", "eu"],
        "Meta": {"Version": "1.2"}, "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "10m"}
    }))).await;
    assert_eq!(s, 200);
    let (s, body) = put(&c, "/v1/agent/service/register", Some(json!({
        "id": "web-2", "name": "web", "address": "10.0.0.2", "port": 8081, "tags": ["v1"],
        "checks": [{"tcp": "10.0.0.2:8081", "interval": "10s", "success_before_passing": 2, "failures_before_critical": 3}]
    }))).await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = put(
        &c,
        "/v1/agent/service/register",
        Some(json!({
            "id": "db-1", "name": "db", "address": "10.0.0.3", "port": 5432
        })),
    )
    .await;
    assert_eq!(s, 200);

    let (s, index, services) = get(&c, "/v1/catalog/services").await;
    assert_eq!(s, 200);
    assert!(index >= 1);
    assert_eq!(services["web"], json!(["eu", "v1"]));
    assert_eq!(services["db"], json!([]));

    let (_, web_index, catalog) = get(&c, "/v1/catalog/service/web").await;
    assert_eq!(catalog.as_array().unwrap().len(), 2);
    assert_eq!(catalog[0]["ServiceID"], "web-1");
    assert_eq!(catalog[0]["ServiceMeta"]["Version"], "1.2");
    assert_eq!(catalog[0]["ServicePort"], 8080);
    assert_eq!(catalog[0]["Node"], "10.0.0.1");
    let (_, _, tagged) = get(&c, "/v1/catalog/service/web?tag=v1&tag=eu").await;
    assert_eq!(
        tagged.as_array().unwrap().len(),
        1,
        "repeated tags mean AND"
    );

    // Health: the TTL check starts critical, the TCP one too (nothing listens there).
    let (_, idx, health) = get(&c, "/v1/health/service/web").await;
    assert_eq!(
        idx, web_index,
        "the catalog and health lists share the service's index"
    );
    assert_eq!(health.as_array().unwrap().len(), 2);
    assert_eq!(health[0]["Service"]["ID"], "web-1");
    assert_eq!(health[0]["Checks"][0]["CheckID"], "service:web-1");
    assert_eq!(health[0]["Checks"][0]["Status"], "critical");
    assert_eq!(health[1]["Checks"][0]["CheckID"], "service:web-2");
    for passing in ["passing", "passing=", "passing=1", "passing=true"] {
        let (_, _, p) = get(&c, &format!("/v1/health/service/web?{passing}")).await;
        assert_eq!(p.as_array().unwrap().len(), 0, "{passing}");
    }

    // TTL pass, warn and fail by check id.
    let (s, _) = put(&c, "/v1/agent/check/pass/service:web-1?note=ok", None).await;
    assert_eq!(s, 200);
    eventually(Duration::from_secs(5), "web-1 passing", || async {
        get(&c, "/v1/health/service/web?passing")
            .await
            .2
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    let (s, _) = put(&c, "/v1/agent/check/warn/service:web-1?note=slow", None).await;
    assert_eq!(s, 200);
    let (_, _, checks) = get(&c, "/v1/health/checks/web").await;
    let web1 = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:web-1")
        .unwrap();
    assert_eq!(
        (web1["Status"].as_str(), web1["Output"].as_str()),
        (Some("warning"), Some("slow"))
    );
    let (_, _, warning) = get(&c, "/v1/health/state/warning").await;
    assert_eq!(warning.as_array().unwrap().len(), 1);
    let (s, _) = put(&c, "/v1/agent/check/fail/service:web-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(put(&c, "/v1/agent/check/pass/nope", None).await.0, 404);
    assert_eq!(
        put(&c, "/v1/agent/check/pass/service:web-2", None).await.0,
        400,
        "not a TTL check"
    );

    // Blocking: returns at the end of the wait with the same index, or on a change.
    let (_, now, _) = get(&c, "/v1/catalog/service/web").await;
    let t = Instant::now();
    let (_, same, _) = get(
        &c,
        &format!("/v1/catalog/service/web?index={now}&wait=1s&stale"),
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "blocked for the wait"
    );
    assert_eq!(same, now);
    let waiter = {
        let (http, url) = (
            c.http.clone(),
            c.node(1)
                .url(&format!("/v1/health/service/web?index={now}&wait=30s")),
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let res = http.get(url).send().await.unwrap();
            (
                t.elapsed(),
                harness::header_u64(&res, "x-consul-index").unwrap(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        put(&c, "/v1/agent/check/pass/service:web-1", None).await.0,
        200
    );
    let (waited, moved) = waiter.await.unwrap();
    assert!(
        moved > now && waited < Duration::from_secs(10),
        "woken by the change"
    );
    let (_, _, consistent) = get(&c, "/v1/catalog/service/web?consistent=").await;
    assert_eq!(consistent.as_array().unwrap().len(), 2);

    // Maintenance, agent views, nodes, datacenters, self, status.
    let (s, _) = put(
        &c,
        "/v1/agent/service/maintenance/db-1?enable=true&reason=upgrade",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (_, _, db) = get(&c, "/v1/health/service/db").await;
    assert_eq!(db[0]["Checks"][0]["CheckID"], "_service_maintenance:db-1");
    assert_eq!(db[0]["Checks"][0]["Notes"], "upgrade");
    let (_, _, agent_services) = get(&c, "/v1/agent/services").await;
    assert_eq!(agent_services["web-2"]["Service"], "web");
    let (_, _, one) = get(&c, "/v1/agent/service/db-1").await;
    assert_eq!(one["Port"], 5432);
    let (_, _, agent_checks) = get(&c, "/v1/agent/checks").await;
    assert!(agent_checks.get("service:web-2").is_some());
    let (_, _, nodes) = get(&c, "/v1/catalog/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    let (_, _, dcs) = get(&c, "/v1/catalog/datacenters").await;
    assert_eq!(dcs, json!(["dc1"]));
    let (_, _, me) = get(&c, "/v1/agent/self").await;
    assert!(
        me.as_object().unwrap().values().all(Value::is_object),
        "every top-level value an object"
    );
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    let leader: Value = c
        .http
        .get(c.node(1).url("/v1/status/leader"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader.as_str().unwrap(), c.node(1).rpc.to_string());

    // Deregister, and the errors.
    assert_eq!(
        put(&c, "/v1/agent/service/deregister/web-2", None).await.0,
        200
    );
    assert_eq!(
        put(&c, "/v1/agent/service/deregister/web-2", None).await.0,
        404
    );
    assert_eq!(
        put(&c, "/v1/agent/service/register", Some(json!({"Name": "x"})))
            .await
            .0,
        400,
        "no address"
    );
    assert_eq!(
        put(
            &c,
            "/v1/agent/service/register",
            Some(json!({"Name": "x", "Address": "10.0.0.9", "Check": {"Args": ["/bin/true"]}}))
        )
        .await
        .0,
        400,
        "script checks are not supported"
    );
    let (_, _, web) = get(&c, "/v1/catalog/service/web").await;
    assert_eq!(web.as_array().unwrap().len(), 1);
}

/// Python with py-consul, as `scripts/test` installs it.
pub fn python_with_py_consul() -> String {
    let python = std::env::var("CAIRN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import consul"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import consul: run scripts/test, or `pip install py-consul`"
    );
    python
}

#[tokio::test]
async fn t20_py_consul_registers_checks_reads_and_blocks_against_a_three_node_cluster() {
    let c = Cluster::start(3, &[]).await;
    let python = python_with_py_consul();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/py_consul_check.py"
    );
    let addr = c.node(2).http.to_string();
    let out = tokio::process::Command::new(python)
        .args([script, &addr])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn put_body(c: &Cluster, path: &str, body: &str) -> (u16, String) {
    let res = c
        .http
        .put(c.node(1).url(path))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn a_records(c: &Cluster, name: &str) -> usize {
    use hickory_proto::rr::RecordType;
    harness::dns::udp(c.node(1).dns, name, RecordType::A)
        .await
        .answers
        .len()
}

/// What the Go client's `Agent().UpdateTTL`, `CheckRegister`, `CheckDeregister` and `Members`
/// send, and the node views, over plain HTTP.
#[tokio::test]
async fn t30_check_update_register_deregister_members_and_node_views() {
    let c = Cluster::start(1, &[]).await;
    let (s, body) = put(
        &c,
        "/v1/agent/service/register",
        Some(json!({
            "ID": "api-1", "Name": "api", "Address": "10.0.1.1", "Port": 80,
            "Check": {"CheckID": "api-ttl", "TTL": "2s"}
        })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        put(
            &c,
            "/v1/agent/service/register",
            Some(json!({"ID": "db-1", "Name": "db", "Address": "10.0.1.1", "Port": 5432}))
        )
        .await
        .0,
        200
    );

    // A TTL check kept alive only by check/update calls stays passing and in DNS.
    assert_eq!(
        a_records(&c, "api.service.cairn.").await,
        0,
        "starts critical"
    );
    let update = |status: &'static str, output: &'static str| {
        let c = &c;
        async move {
            put(
                c,
                "/v1/agent/check/update/api-ttl",
                Some(json!({"Status": status, "Output": output})),
            )
            .await
        }
    };
    assert_eq!(update("passing", "fine").await.0, 200);
    eventually(Duration::from_secs(5), "api passing in DNS", || async {
        a_records(&c, "api.service.cairn.").await == 1
    })
    .await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(update("passing", "fine").await.0, 200);
        let (_, _, checks) = get(&c, "/v1/health/checks/api").await;
        assert_eq!(checks[0]["Status"], "passing", "{checks}");
        assert_eq!(a_records(&c, "api.service.cairn.").await, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A status change wakes a blocking read on the service; the output is kept.
    let (_, now, _) = get(&c, "/v1/health/service/api").await;
    let waiter = {
        let (http, url) = (
            c.http.clone(),
            c.node(1)
                .url(&format!("/v1/health/service/api?index={now}&wait=30s")),
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let res = http.get(url).send().await.unwrap();
            let index = harness::header_u64(&res, "x-consul-index").unwrap();
            (t.elapsed(), index, res.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(update("warning", "slow disk").await.0, 200);
    let (waited, moved, body) = waiter.await.unwrap();
    assert!(moved > now && waited < Duration::from_secs(10), "woken");
    assert_eq!(body[0]["Checks"][0]["Status"], "warning", "{body}");
    assert_eq!(body[0]["Checks"][0]["Output"], "slow disk", "{body}");
    assert_eq!(update("critical", "").await.0, 200);
    let (_, _, checks) = get(&c, "/v1/health/checks/api").await;
    assert_eq!(checks[0]["Status"], "critical");
    // An output longer than a check keeps is cut, as Consul cuts it.
    let long = "x".repeat(5000);
    let (s, _) = put(
        &c,
        "/v1/agent/check/update/api-ttl",
        Some(json!({"Status": "warning", "Output": long})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, _, checks) = get(&c, "/v1/health/checks/api").await;
    assert_eq!(checks[0]["Output"].as_str().unwrap().len(), 4096);

    // Errors, with Consul's status codes and texts; nothing changes.
    let (_, before, _) = get(&c, "/v1/health/service/api").await;
    let (s, body) = put(
        &c,
        "/v1/agent/check/update/nope",
        Some(json!({"Status": "passing"})),
    )
    .await;
    assert_eq!(s, 404);
    assert!(body.contains("Unknown check ID \\\"nope\\\""), "{body}");
    let (s, body) = put(
        &c,
        "/v1/agent/check/update/api-ttl",
        Some(json!({"Status": "ok"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(body.contains("Invalid check status: 'ok'"), "{body}");
    assert_eq!(
        put(&c, "/v1/agent/check/update/api-ttl", Some(json!({})))
            .await
            .0,
        400
    );
    assert_eq!(
        put_body(&c, "/v1/agent/check/update/api-ttl", "{").await.0,
        400
    );
    assert_eq!(put(&c, "/v1/agent/check/fail/nope", None).await.0, 404);
    let (_, after, _) = get(&c, "/v1/health/service/api").await;
    assert_eq!(before, after, "refused updates write nothing");

    // A check added to an existing service, and removed again.
    let (s, body) = put(
        &c,
        "/v1/agent/check/register",
        Some(json!({"Name": "db-alive", "ServiceID": "db-1", "TTL": "30s", "Status": "passing"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (_, _, checks) = get(&c, "/v1/agent/checks").await;
    assert_eq!(checks["db-alive"]["ServiceID"], "db-1", "{checks}");
    assert_eq!(checks["db-alive"]["Status"], "passing");
    assert_eq!(checks["db-alive"]["Type"], "ttl");
    let (s, _) = put(
        &c,
        "/v1/agent/check/register",
        Some(json!({"ID": "db-ttl-2", "Name": "second", "ServiceID": "db-1", "TTL": "30s"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, _, health) = get(&c, "/v1/health/service/db").await;
    assert_eq!(health[0]["Checks"].as_array().unwrap().len(), 2, "{health}");
    assert_eq!(
        put(&c, "/v1/agent/check/warn/db-ttl-2", None).await.0,
        200,
        "the added check is a TTL check like any other"
    );
    for (bad, why) in [
        (
            json!({"ServiceID": "db-1", "TTL": "30s"}),
            "Missing check name",
        ),
        (json!({"Name": "x", "TTL": "30s"}), "ServiceID: required"),
        (
            json!({"Name": "x", "ServiceID": "nope", "TTL": "30s"}),
            "ServiceID \\\"nope\\\" does not exist",
        ),
        (
            json!({"Name": "x", "ServiceID": "db-1", "TTL": "30s", "Status": "bad"}),
            "Bad check status",
        ),
        (
            json!({"Name": "x", "ServiceID": "db-1", "Args": ["/bin/true"], "Interval": "5s"}),
            "unsupported check",
        ),
        (
            json!({"Name": "x", "ServiceID": "db-1", "TTL": "soon"}),
            "ttl",
        ),
        (
            json!({"Name": "has space", "ServiceID": "db-1", "TTL": "30s"}),
            "not a valid check id",
        ),
    ] {
        let (s, body) = put(&c, "/v1/agent/check/register", Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (s, _) = put(&c, "/v1/agent/check/deregister/db-ttl-2", None).await;
    assert_eq!(s, 200);
    let (s, body) = put(&c, "/v1/agent/check/deregister/db-ttl-2", None).await;
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("Unknown check ID"), "{body}");
    let (_, _, health) = get(&c, "/v1/health/service/db").await;
    let ids: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["db-alive"]);

    // Members: this one node, alive.
    let (s, _, members) = get(&c, "/v1/agent/members").await;
    assert_eq!(s, 200);
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members[0]["Status"], 1);
    assert_eq!(members[0]["Port"], c.node(1).rpc.port());
    assert_eq!(members[0]["Addr"], c.node(1).rpc.ip().to_string());
    assert_eq!(members[0]["Tags"]["dc"], "dc1");

    // Node views: both instances live at 10.0.1.1.
    let (s, index, node) = get(&c, "/v1/catalog/node/10.0.1.1").await;
    assert_eq!(s, 200);
    assert!(index >= 1);
    assert_eq!(node["Node"]["Node"], "10.0.1.1");
    assert_eq!(node["Services"]["api-1"]["Service"], "api");
    assert_eq!(node["Services"]["db-1"]["Port"], 5432);
    let (_, _, list) = get(&c, "/v1/catalog/node-services/10.0.1.1").await;
    assert_eq!(list["Node"]["Address"], "10.0.1.1");
    assert_eq!(list["Services"].as_array().unwrap().len(), 2);
    let (_, node_index, checks) = get(&c, "/v1/health/node/10.0.1.1").await;
    assert_eq!(checks.as_array().unwrap().len(), 2, "{checks}");
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["Node"] == "10.0.1.1"));
    let (s, i, unknown) = get(&c, "/v1/catalog/node/10.9.9.9").await;
    assert_eq!((s, unknown), (200, Value::Null));
    assert!(i >= 1);
    assert_eq!(
        get(&c, "/v1/catalog/node-services/10.9.9.9").await.2,
        Value::Null
    );
    assert_eq!(get(&c, "/v1/health/node/10.9.9.9").await.2, json!([]));

    // A blocking node read returns at the end of its wait, or on a change.
    let t = Instant::now();
    let (_, same, _) = get(
        &c,
        &format!("/v1/health/node/10.0.1.1?index={node_index}&wait=1s"),
    )
    .await;
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(same, node_index);
    let waiter = {
        let (http, url) = (
            c.http.clone(),
            c.node(1).url(&format!(
                "/v1/health/node/10.0.1.1?index={node_index}&wait=30s"
            )),
        );
        tokio::spawn(async move {
            let res = http.get(url).send().await.unwrap();
            harness::header_u64(&res, "x-consul-index").unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(put(&c, "/v1/agent/check/fail/db-alive", None).await.0, 200);
    assert!(waiter.await.unwrap() > node_index);

    // No service mesh: Connect lists are empty, with the service's index.
    for path in ["/v1/health/connect/api", "/v1/catalog/connect/api"] {
        let (s, i, list) = get(&c, path).await;
        assert_eq!((s, list), (200, json!([])), "{path}");
        assert!(i > 1, "{path}: the service's index");
    }
}

/// Runs `consul_clients_check.py` with `python` against node 2 of a three-node cluster, and
/// returns its output.
async fn run_clients_check(python: &str) -> String {
    let c = Cluster::start(3, &[]).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/consul_clients_check.py"
    );
    let out = tokio::process::Command::new(python)
        .args([
            script,
            &c.node(2).http.to_string(),
            &c.node(2).dns.to_string(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{python} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn t40_py_consul_drives_ttl_checks_added_checks_members_and_node_views() {
    let python = python_with_py_consul();
    let out = run_clients_check(&python).await;
    assert!(out.contains("all checks passed"), "{out}");
}

#[tokio::test]
async fn t41_debians_python_consul2_drives_the_same() {
    let python =
        std::env::var("CAIRN_TEST_DEBIAN_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import consul"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import consul: run scripts/deps --test (installs python3-consul2)"
    );
    let out = run_clients_check(&python).await;
    assert!(
        out.contains("/usr/lib/python3/dist-packages/consul: all checks passed"),
        "not Debian's python-consul2: {out}"
    );
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How many items a list or map response holds.
fn count(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => usize::MAX,
    }
}

#[tokio::test]
async fn t50_filter_expressions_and_node_meta_on_every_list_endpoint() {
    let c = Cluster::start(1, &[]).await;
    for (id, addr, tags, meta, ttl) in [
        (
            "web-1",
            "10.0.2.1",
            json!(["v1", "eu"]),
            json!({"zone": "a", "version": "1.2.0"}),
            false,
        ),
        (
            "web-2",
            "10.0.2.2",
            json!(["v2", "eu"]),
            json!({"zone": "b", "version": "2.0.1"}),
            true,
        ),
        (
            "web-3",
            "10.0.2.3",
            json!(["v2", "us"]),
            json!({"zone": "a"}),
            false,
        ),
    ] {
        let mut body = json!({"ID": id, "Name": "web", "Address": addr, "Port": 80, "Tags": tags, "Meta": meta});
        if ttl {
            body["Check"] = json!({"TTL": "30s"});
        }
        assert_eq!(
            put(&c, "/v1/agent/service/register", Some(body)).await.0,
            200
        );
    }
    assert_eq!(
        put(
            &c,
            "/v1/agent/service/register",
            Some(json!({"ID": "db-1", "Name": "db", "Address": "10.0.2.9", "Port": 5432, "Check": {"TTL": "30s"}}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put(&c, "/v1/agent/check/pass/service:db-1", None).await.0,
        200
    );
    eventually(Duration::from_secs(5), "db passing", || async {
        get(&c, "/v1/health/state/passing")
            .await
            .2
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;

    // Every operator, on health/service entries ({Node, Service, Checks}).
    let ids = |body: &Value| -> Vec<String> {
        let mut v: Vec<String> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    for (expr, want) in [
        (r#"Service.Meta.zone == "a""#, vec!["web-1", "web-3"]),
        (r#"Service.Meta.zone != "a""#, vec!["web-2"]),
        (r#""v2" in Service.Tags"#, vec!["web-2", "web-3"]),
        (r#""v2" not in Service.Tags"#, vec!["web-1"]),
        (r#"Service.Tags contains "eu""#, vec!["web-1", "web-2"]),
        (r#"Service.Tags not contains "eu""#, vec!["web-3"]),
        ("Service.Meta.version is empty", vec!["web-3"]),
        ("Service.Meta.version is not empty", vec!["web-1", "web-2"]),
        (r#"Service.Meta.version matches "^2\\.""#, vec!["web-2"]),
        (
            r#"Service.Meta.version not matches "^2\\.""#,
            vec!["web-1", "web-3"],
        ),
        (
            r#"Service.Tags contains "v2" and Service.Meta.zone == "a""#,
            vec!["web-3"],
        ),
        (
            r#"Service.ID == "web-1" or Service.ID == "web-3""#,
            vec!["web-1", "web-3"],
        ),
        (r#"not (Service.Tags contains "eu")"#, vec!["web-3"]),
        (r#"Checks.Status == critical"#, vec!["web-2"]),
        (r#"Checks is empty"#, vec!["web-1", "web-3"]),
        (
            r#"Node.Meta.zone == "b" and Service.Port == 80"#,
            vec!["web-2"],
        ),
    ] {
        let (s, _, body) = get(&c, &format!("/v1/health/service/web?filter={}", enc(expr))).await;
        assert_eq!(s, 200, "{expr}: {body}");
        assert_eq!(ids(&body), want, "{expr}");
    }

    // On each endpoint: one filter matching nothing, one matching everything, one malformed
    // (400 naming the position), and the unfiltered count.
    for (path, nothing, everything, all) in [
        (
            "/v1/catalog/service/web",
            r#"ServiceMeta.zone == "z""#,
            r#"ServiceName == "web""#,
            3,
        ),
        (
            "/v1/catalog/services",
            r#"ServiceTags contains "nope""#,
            "ServiceID is not empty",
            2,
        ),
        (
            "/v1/health/service/web",
            r#"Service.Service == "db""#,
            r#"Service.Service == "web""#,
            3,
        ),
        (
            "/v1/health/checks/web",
            r#"Status == "passing""#,
            r#"ServiceName == "web""#,
            1,
        ),
        (
            "/v1/health/state/any",
            r#"Status == "warning""#,
            "CheckID is not empty",
            2,
        ),
        (
            "/v1/agent/services",
            r#"Meta.zone == "z""#,
            "Port == 80 or Port == 5432",
            4,
        ),
        (
            "/v1/agent/checks",
            r#"ServiceName == "nope""#,
            r#"CheckID matches "^service:""#,
            2,
        ),
    ] {
        let (s, _, body) = get(&c, path).await;
        assert_eq!((s, count(&body)), (200, all), "{path}: {body}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let (s, index, body) = get(&c, &format!("{path}{sep}filter={}", enc(nothing))).await;
        assert_eq!((s, count(&body)), (200, 0), "{path} {nothing}: {body}");
        assert!(index >= 1, "{path}: an index even when nothing matches");
        let (s, _, body) = get(&c, &format!("{path}{sep}filter={}", enc(everything))).await;
        assert_eq!((s, count(&body)), (200, all), "{path} {everything}: {body}");
        let res = c
            .http
            .get(
                c.node(1)
                    .url(&format!("{path}{sep}filter={}", enc("ServiceName == "))),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{path}");
        let text = res.text().await.unwrap();
        assert!(
            text.contains(
                "Failed to create boolean expression evaluator: 1:16 (15): expected a value"
            ),
            "{path}: {text}"
        );
    }
    // A selector that names no field of the endpoint's items is a 400 with Consul's text, on
    // every endpoint that filters, before anything is read; a map's keys stay free.
    let unknown = |sel: &str| {
        format!("Failed to create boolean expression evaluator: Selector {sel:?} is not valid")
    };
    for (path, valid, bad, named) in [
        (
            "/v1/catalog/service/web",
            r#"ServiceMeta.anything == "x""#,
            "ServiceWeights.Heavy == 1",
            "ServiceWeights.Heavy",
        ),
        (
            "/v1/catalog/services",
            r#"NodeMeta["any key"] == "x""#,
            r#"Service.Tags contains "v1""#,
            "Service",
        ),
        (
            "/v1/catalog/nodes",
            r#"Meta.anything == "x""#,
            r#"Meta.zone.deeper == "x""#,
            "Meta.zone.deeper",
        ),
        (
            "/v1/health/service/web",
            r#"Service.Meta.anything == "x" and Node.Meta.x == "y""#,
            r#"Service.Foo == "x""#,
            "Service.Foo",
        ),
        (
            "/v1/health/checks/web",
            r#"Status == "critical" and ServiceTags is empty"#,
            r#"Foo.Bar == "x""#,
            "Foo",
        ),
        (
            "/v1/health/state/any",
            r#"checkid is not empty"#,
            r#"not (Status == "passing" or Sttus == "x")"#,
            "Sttus",
        ),
        (
            "/v1/health/node/10.0.2.1",
            r#"Output is empty"#,
            r#"Service.ID == "web-1""#,
            "Service",
        ),
        (
            "/v1/agent/services",
            r#"Weights.Passing == 1 and Proxy.Upstreams is empty"#,
            r#"ServiceName == "web""#,
            "ServiceName",
        ),
        (
            "/v1/agent/checks",
            r#"Definition.HTTP is empty"#,
            r#""v1" in Tags"#,
            "Tags",
        ),
        (
            "/v1/catalog/node/10.0.2.1",
            r#"Meta.anything is empty"#,
            r#"Node == "x""#,
            "Node",
        ),
        (
            "/v1/catalog/node-services/10.0.2.1",
            r#"Service == "web""#,
            r#"Checks is empty"#,
            "Checks",
        ),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (s, _, body) = get(&c, &format!("{path}{sep}filter={}", enc(valid))).await;
        assert_eq!(s, 200, "{path} {valid}: {body}");
        let t = Instant::now();
        let res = c
            .http
            .get(c.node(1).url(&format!(
                "{path}{sep}filter={}&index=99999999&wait=30s",
                enc(bad)
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{path} {bad}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{path}: refused before blocking"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["message"], unknown(named), "{path} {bad}");
    }

    // catalog/services aggregates the tags of the instances that pass.
    let (_, _, services) = get(
        &c,
        &format!(
            "/v1/catalog/services?filter={}",
            enc(r#"ServiceMeta.zone == "a""#)
        ),
    )
    .await;
    assert_eq!(services, json!({"web": ["eu", "us", "v1", "v2"]}));
    let (_, _, services) = get(
        &c,
        &format!(
            "/v1/catalog/services?filter={}",
            enc(r#"ServiceID == "web-2""#)
        ),
    )
    .await;
    assert_eq!(services, json!({"web": ["eu", "v2"]}));

    // node-meta: the instance's meta is its node's; every pair must match.
    let (_, _, rows) = get(&c, "/v1/catalog/service/web?node-meta=zone:a").await;
    assert_eq!(count(&rows), 2, "{rows}");
    assert_eq!(rows[0]["NodeMeta"]["zone"], "a");
    let (_, _, rows) = get(
        &c,
        "/v1/health/service/web?node-meta=zone:a&node-meta=version:1.2.0",
    )
    .await;
    assert_eq!(ids(&rows), ["web-1"]);
    let (_, _, rows) = get(&c, "/v1/catalog/service/web?node-meta=rack:r1").await;
    assert_eq!(count(&rows), 0, "a key no instance has matches nothing");
    let (_, _, services) = get(&c, "/v1/catalog/services?node-meta=zone:b").await;
    assert_eq!(services, json!({"web": ["eu", "v2"]}));
    let (_, _, nodes) = get(&c, "/v1/catalog/nodes?node-meta=zone:a").await;
    assert_eq!(count(&nodes), 2, "{nodes}");
    let (_, _, nodes) = get(&c, "/v1/catalog/nodes").await;
    assert_eq!(count(&nodes), 4, "no node-meta: every node");
}

/// External services, as consul-esm and catalog-sync tools write them: the health the
/// registration states, no check run for it, and DNS like any other instance.
#[tokio::test]
async fn t60_catalog_register_and_deregister_external_services() {
    let c = Cluster::start(1, &[]).await;
    let (s, body) = put(
        &c,
        "/v1/catalog/register",
        Some(json!({
            "Node": "saas-db", "Address": "10.0.3.1", "NodeMeta": {"external-node": "true"},
            "Service": {"ID": "pg-1", "Service": "pg", "Port": 5432, "Tags": ["primary"], "Meta": {"zone": "a"}},
            "Check": {"CheckID": "pg-alive", "Name": "pg alive", "Status": "passing", "ServiceID": "pg-1", "Output": "seen by esm"}
        })),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "true"));
    let (s, _) = put(
        &c,
        "/v1/catalog/register",
        Some(json!({
            "Node": "saas-db-2", "Address": "10.0.3.2",
            "Service": {"ID": "pg-2", "Service": "pg", "Port": 5432},
            "Checks": [{"CheckID": "a", "Status": "passing"}, {"CheckID": "b", "Status": "critical", "Output": "down"}]
        })),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = put(
        &c,
        "/v1/catalog/register",
        Some(json!({"Node": "n", "Address": "10.0.3.3", "Service": {"Service": "cache", "Port": 6379}})),
    )
    .await;
    assert_eq!(s, 200, "no check: passing, id = name");

    // In DNS: the passing ones only.
    eventually(Duration::from_secs(5), "pg in DNS", || async {
        a_records(&c, "pg.service.cairn.").await == 1
    })
    .await;
    assert_eq!(a_records(&c, "cache.service.cairn.").await, 1);
    let (_, _, rows) = get(&c, "/v1/catalog/service/pg").await;
    assert_eq!(count(&rows), 2);
    let pg1 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ServiceID"] == "pg-1")
        .unwrap();
    assert_eq!(pg1["ServiceAddress"], "10.0.3.1");
    assert_eq!(pg1["NodeMeta"]["external-node"], "true");
    assert_eq!(pg1["ServiceMeta"]["zone"], "a");
    let (_, _, health) = get(&c, "/v1/health/service/pg?passing").await;
    assert_eq!(count(&health), 1);
    assert_eq!(health[0]["Service"]["ID"], "pg-1");
    assert_eq!(health[0]["Checks"][0]["Output"], "seen by esm");
    let (_, _, critical) = get(&c, "/v1/health/state/critical").await;
    assert_eq!(critical[0]["Output"], "down", "{critical}");
    let (_, _, cache) = get(&c, "/v1/agent/service/cache").await;
    assert_eq!(cache["Port"], 6379);

    // A definition is a check the cluster runs: a TTL one starts critical and expires.
    let (s, _) = put(
        &c,
        "/v1/catalog/register",
        Some(json!({
            "Node": "n", "Address": "10.0.3.3", "Service": {"ID": "cache", "Service": "cache", "Port": 6379},
            "Check": {"CheckID": "cache-ttl", "Definition": {"TTL": "30s"}}
        })),
    )
    .await;
    assert_eq!(s, 200);
    let (_, _, checks) = get(&c, "/v1/agent/checks").await;
    assert_eq!(checks["cache-ttl"]["Type"], "ttl", "{checks}");
    assert_eq!(checks["cache-ttl"]["Status"], "critical");

    // Bad input: 400 with Consul's text, nothing stored.
    let (_, before, _) = get(&c, "/v1/catalog/services").await;
    for (bad, why) in [
        (
            json!({"Address": "10.0.3.9", "Service": {"Service": "x", "Port": 1}}),
            "Must provide node",
        ),
        (
            json!({"Node": "n", "Service": {"Service": "x", "Port": 1}}),
            "Must provide address",
        ),
        (
            json!({"Node": "n", "Address": "10.0.3.9"}),
            "Service: required",
        ),
        (
            json!({"Node": "n", "Address": "10.0.3.9", "Service": {"Port": 1}}),
            "Must provide service name",
        ),
        (
            json!({"Node": "n", "Address": "10.0.3.9", "Service": {"Service": "x", "Port": 1}, "Check": {"Status": "fine"}}),
            "Invalid check status: 'fine'",
        ),
        (
            json!({"Node": "n", "Address": "10.0.3.9", "Service": {"Service": "x", "Port": 1}, "Check": {"Status": "passing", "ServiceID": "other"}}),
            "is not the registered service's ID",
        ),
        (
            json!({"Node": "n", "Address": "10.0.3.9", "Service": {"Service": "x"}}),
            "port",
        ),
    ] {
        let (s, body) = put(&c, "/v1/catalog/register", Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (_, after, services) = get(&c, "/v1/catalog/services").await;
    assert_eq!(before, after, "refused registrations write nothing");
    assert!(services.get("x").is_none());

    // Deregister: a check, an instance, a whole node.
    let (s, body) = put(
        &c,
        "/v1/catalog/deregister",
        Some(json!({"Node": "10.0.3.3", "CheckID": "cache-ttl"})),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "true"));
    assert!(get(&c, "/v1/agent/checks")
        .await
        .2
        .get("cache-ttl")
        .is_none());
    let (s, body) = put(
        &c,
        "/v1/catalog/deregister",
        Some(json!({"Node": "10.0.3.1", "ServiceID": "nope"})),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = put(
        &c,
        "/v1/catalog/deregister",
        Some(json!({"Node": "10.0.3.9", "ServiceID": "pg-1"})),
    )
    .await;
    assert_eq!(s, 404, "pg-1 is not at that node");
    let (s, _) = put(
        &c,
        "/v1/catalog/deregister",
        Some(json!({"Node": "10.0.3.1", "ServiceID": "pg-1"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = put(
        &c,
        "/v1/catalog/deregister",
        Some(json!({"Node": "10.0.3.2"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, _, services) = get(&c, "/v1/catalog/services").await;
    assert_eq!(services, json!({"cache": []}));
    assert_eq!(
        put(&c, "/v1/catalog/deregister", Some(json!({}))).await.0,
        400
    );
}

/// The new routes ask the rights the native ones do: a token that may only read `web`, or
/// write `db`, cannot update, add or remove `web`'s checks or register `web` in the catalog, and
/// its refused writes change nothing; node views and filtered lists hide what it may not read.
#[tokio::test]
async fn t70_acls_on_check_updates_check_registration_catalog_writes_and_node_views() {
    let (c, _mgmt) = Cluster::start_acl(1, &[]).await;
    for (name, rules) in [
        ("web-read", json!({"service": {"web": "read"}})),
        ("web-write", json!({"service": {"web": "write"}})),
        ("db-write", json!({"service": {"db": "write"}})),
    ] {
        let (s, body) = c
            .put(
                1,
                &format!("/v1/acl/policies/{name}"),
                &json!({"rules": rules}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let mut secrets = std::collections::BTreeMap::new();
    for name in ["web-read", "web-write", "db-write"] {
        let res = c
            .http
            .post(c.node(1).url("/v1/acl/tokens"))
            .json(&json!({"policies": [name]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        secrets.insert(name, v["secret"].as_str().unwrap().to_owned());
    }
    // Management registers web-1 (TTL check) and db-1 at the same address.
    for body in [
        json!({"ID": "web-1", "Name": "web", "Address": "10.0.4.1", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "30s"}}),
        json!({"ID": "db-1", "Name": "db", "Address": "10.0.4.1", "Port": 5432}),
    ] {
        assert_eq!(
            put(&c, "/v1/agent/service/register", Some(body)).await.0,
            200
        );
    }
    // Without the management token the cluster's client sends.
    let http = harness::client();
    let call = |token: &str, path: &str, body: Option<Value>| {
        let mut req = http
            .put(c.node(1).url(path))
            .header("X-Consul-Token", token.to_owned());
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }
    };
    let writes: Vec<(&str, Option<Value>)> = vec![
        (
            "/v1/agent/check/update/web-ttl",
            Some(json!({"Status": "warning"})),
        ),
        ("/v1/agent/check/fail/web-ttl", None),
        (
            "/v1/agent/check/register",
            Some(json!({"Name": "extra", "ServiceID": "web-1", "TTL": "30s"})),
        ),
        ("/v1/agent/check/deregister/web-ttl", None),
        (
            "/v1/catalog/register",
            Some(
                json!({"Node": "n", "Address": "10.0.4.2", "Service": {"Service": "web", "ID": "web-9", "Port": 80}}),
            ),
        ),
        (
            "/v1/catalog/deregister",
            Some(json!({"Node": "10.0.4.1", "ServiceID": "web-1"})),
        ),
        ("/v1/catalog/deregister", Some(json!({"Node": "10.0.4.1"}))),
    ];
    for who in ["web-read", "db-write"] {
        for (path, body) in &writes {
            let (_, before, _) = get(&c, "/v1/health/node/10.0.4.1").await;
            let (s, text) = call(&secrets[who], path, body.clone()).await;
            assert_eq!(s, 403, "{who} {path}: {text}");
            let (_, after, _) = get(&c, "/v1/health/node/10.0.4.1").await;
            assert_eq!(before, after, "{who} {path}: refused, yet written");
        }
    }
    // Members are the operator's.
    let res = http
        .get(c.node(1).url("/v1/agent/members"))
        .header("X-Consul-Token", secrets["web-write"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    // The write token may.
    for (path, body) in writes.iter().take(5) {
        let (s, text) = call(&secrets["web-write"], path, body.clone()).await;
        assert_eq!(s, 200, "web-write {path}: {text}");
    }
    // Node views show only what the token may read.
    let res = http
        .get(c.node(1).url("/v1/catalog/node-services/10.0.4.1"))
        .header("X-Consul-Token", secrets["web-read"].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()
            .get("x-consul-results-filtered-by-acls")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("true".into())
    );
    let v: Value = res.json().await.unwrap();
    let names: Vec<&str> = v["Services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "{v}");
}

/// Counts of what the pollers of [`t80_an_external_service_registered_critical_is_never_seen_passing`] saw.
#[derive(Default)]
struct Seen {
    polls: AtomicU64,
    passing: AtomicU64,
}

/// An external service registered with `Status: critical` is one log entry: no watch event,
/// blocking read, health list or DNS answer on any node ever shows it passing. Written as a
/// registration then a health change, each watch stream would show every instance passing at
/// the registration's index (an event per index), and the pollers may catch the same window.
#[tokio::test]
async fn t80_an_external_service_registered_critical_is_never_seen_passing() {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;

    const INSTANCES: usize = 12;
    let c = Cluster::start(3, &[]).await;
    let mut watches = Vec::new();
    for n in 1..=3 {
        let mut res = c
            .http
            .get(c.node(n).url("/v1/services/pg/watch"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let first = crate::reads::read_events(&mut res, 1, Duration::from_secs(5)).await;
        assert_eq!(first[0].0, "state");
        watches.push(res);
    }

    // Pollers on every node: DNS, the passing health list, and a chain of blocking reads.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut pollers = Vec::new();
    for n in 1..=3 {
        let (dns, stop1, seen1) = (c.node(n).dns, stop.clone(), seen.clone());
        pollers.push(tokio::spawn(async move {
            let q = harness::dns::query("pg.service.cairn.", RecordType::A, None);
            while !stop1.load(Ordering::Relaxed) {
                let Some(bytes) = harness::dns::udp_raw(dns, &q).await else {
                    continue;
                };
                seen1.polls.fetch_add(1, Ordering::Relaxed);
                if Message::from_vec(&bytes).is_ok_and(|m| !m.answers.is_empty()) {
                    seen1.passing.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let (http, url) = (
            c.http.clone(),
            c.node(n).url("/v1/health/service/pg?passing"),
        );
        let (stop2, seen2) = (stop.clone(), seen.clone());
        pollers.push(tokio::spawn(async move {
            let mut index = 0;
            while !stop2.load(Ordering::Relaxed) {
                let Ok(res) = http
                    .get(format!("{url}&index={index}&wait=2s"))
                    .send()
                    .await
                else {
                    continue;
                };
                index = harness::header_u64(&res, "x-consul-index").unwrap_or(index);
                let rows: Value = res.json().await.unwrap_or(Value::Null);
                seen2.polls.fetch_add(1, Ordering::Relaxed);
                if count(&rows) > 0 {
                    seen2.passing.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let (http, url) = (
            c.http.clone(),
            c.node(n).url("/v1/health/service/pg?passing"),
        );
        let (stop3, seen3) = (stop.clone(), seen.clone());
        pollers.push(tokio::spawn(async move {
            while !stop3.load(Ordering::Relaxed) {
                let Ok(res) = http.get(&url).send().await else {
                    continue;
                };
                let rows: Value = res.json().await.unwrap_or(Value::Null);
                seen3.polls.fetch_add(1, Ordering::Relaxed);
                if count(&rows) > 0 {
                    seen3.passing.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Registered through every node in turn: forwarded writes carry the stated health too.
    for i in 0..INSTANCES {
        let via = c.node(i as u64 % 3 + 1);
        let res = c
            .http
            .put(via.url("/v1/catalog/register"))
            .json(&json!({
                "Node": format!("db-{i}"), "Address": format!("10.0.4.{}", i + 1),
                "Service": {"ID": format!("pg-{i}"), "Service": "pg", "Port": 5432},
                "Check": {"CheckID": format!("pg-{i}-alive"), "Status": "critical", "Output": "down"}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }

    for (n, res) in watches.iter_mut().enumerate() {
        let events = crate::reads::read_events(res, INSTANCES, Duration::from_secs(10)).await;
        assert_eq!(
            events.len(),
            INSTANCES,
            "node {}: one event per registration",
            n + 1
        );
        for (kind, index, data) in &events {
            let instances = data["instances"].as_array().unwrap();
            for inst in instances {
                assert_eq!(
                    inst["health"],
                    "critical",
                    "node {}, event {kind} at {index}: {inst}",
                    n + 1
                );
            }
        }
        let last = &events[INSTANCES - 1].2["instances"];
        assert_eq!(last.as_array().map(Vec::len), Some(INSTANCES));
    }
    let polls = seen.polls.load(Ordering::Relaxed);
    assert_eq!(
        seen.passing.load(Ordering::Relaxed),
        0,
        "of {polls} polls, some saw pg passing"
    );
    assert!(polls > 100, "the pollers ran: {polls} polls");
    eprintln!("t80: {polls} polls of DNS and health/service on 3 nodes, none saw pg passing");

    // The same pollers would have seen a passing one.
    let (s, _) = put(
        &c,
        "/v1/catalog/register",
        Some(json!({"Node": "db-ok", "Address": "10.0.4.99", "Service": {"ID": "pg-ok", "Service": "pg", "Port": 5432}})),
    )
    .await;
    assert_eq!(s, 200);
    for n in 1..=3 {
        let dns = c.node(n).dns;
        eventually(Duration::from_secs(5), "pg-ok in DNS", || async {
            harness::dns::udp(dns, "pg.service.cairn.", RecordType::A)
                .await
                .answers
                .len()
                == 1
        })
        .await;
    }
}
