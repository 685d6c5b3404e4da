//! The Consul-compatible API, over plain HTTP, and with the real py-consul client.
//!
//! Prometheus' consul_sd is not tested: Debian 12's prometheus (2.42.0+ds) is built without it
//! (its configuration parser rejects `consul_sd_configs`).

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
