//! The OpenAPI document: served without a token, the same as the committed `api/openapi.json`,
//! and true to the router (every documented operation is served, every other method of a
//! documented path is 405).

use serde_json::Value;

use crate::harness::{self, Cluster};

const COMMITTED: &str = include_str!("../../../api/openapi.json");

#[tokio::test]
async fn t10_the_document_is_served_without_a_token_and_is_the_committed_one() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    let anonymous = harness::client();
    let res = anonymous
        .get(c.node(1).url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = res.json().await.unwrap();
    let committed: Value = serde_json::from_str(COMMITTED).unwrap();
    assert_eq!(
        served, committed,
        "regenerate with `cairn openapi > api/openapi.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");
}

/// A request that the route `method path` answers, with placeholders in the path; the body is
/// empty, so no write is accepted.
async fn send(c: &Cluster, method: &str, path: &str) -> (u16, Value) {
    let path = path
        .replace("{service}", "web")
        .replace("{id}", "i-1")
        .replace("{accessor}", "no-such-token")
        .replace("{name}", "no-such-policy");
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let res = c
        .http
        .request(method, c.node(1).url(&path))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn t20_every_documented_operation_is_served_and_no_other_method() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    let doc: Value = serde_json::from_str(COMMITTED).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Blocking until a change: not with an empty request.
        if path.ends_with("/watch") {
            continue;
        }
        for method in ["get", "put", "post", "delete"] {
            let (status, body) = send(&c, method, path).await;
            if item.get(method).is_some() {
                operations += 1;
                assert!(
                    status != 405 && body["message"] != "no such endpoint",
                    "{method} {path} is documented but not served: {status} {body}"
                );
                let documented = &item[method]["responses"][status.to_string()];
                assert!(
                    documented.is_object(),
                    "{method} {path} answered {status}, which its document does not list"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented");
            }
        }
    }
    assert!(operations >= 30, "{operations} operations");
}

/// The bounded schemathesis run of `scripts/api-fuzz` (three nodes with ACLs, in a network
/// namespace of their own): every schemathesis check, no refused request storing anything, and
/// equal digests at the end. A fixed seed keeps CI repeatable; run the script with more examples
/// and a random seed to explore further. Needs schemathesis: `scripts/deps --test` installs it.
#[tokio::test]
async fn t30_schemathesis_finds_nothing_against_a_three_node_cluster() {
    let _busy = crate::harness::busy().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/api-fuzz");
    let out = tokio::process::Command::new("bash")
        .args([
            script,
            "--binary",
            env!("CARGO_BIN_EXE_cairn"),
            "--max-examples",
            "5",
            "--seed",
            "1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/api-fuzz failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("passed (seed 1)"), "{stderr}");
}

/// What schemathesis found, each refused now with nothing stored: a JSON array read as a struct
/// (`[null, null]` set a service's settings), and a maintenance reason over the output limit
/// accepted when `enable` is false.
#[tokio::test]
async fn t40_regression_bodies_schemathesis_found_are_refused_and_store_nothing() {
    let c = Cluster::start(1, &[]).await;
    c.register(1, "web", "i-1").await;
    let (_, before) = c.get(1, "/v1/cluster/digest").await;
    for (path, body) in [
        ("/v1/services/web/settings", serde_json::json!([null, null])),
        (
            "/v1/services/web/settings",
            serde_json::json!([true, "30s"]),
        ),
        (
            "/v1/services/web/instances/i-1",
            serde_json::json!(["10.0.0.2", 80]),
        ),
        (
            "/v1/services/web/instances/i-1/maintenance",
            serde_json::json!({"enable": false, "reason": "x".repeat(4097)}),
        ),
    ] {
        let (status, res) = c.put(1, path, &body).await;
        assert_eq!(status, 400, "PUT {path} {body}: {res}");
        assert_eq!(res["code"], "invalid_argument", "{res}");
    }
    let (_, after) = c.get(1, "/v1/cluster/digest").await;
    assert_eq!(before["digest"], after["digest"]);
    let (status, _) = c
        .put(
            1,
            "/v1/services/web/instances/i-1/maintenance",
            &serde_json::json!({"enable": false, "reason": "x".repeat(4096)}),
        )
        .await;
    assert_eq!(status, 200, "a reason at the limit is fine");
}
