//! ACLs: every route answers to a token, lists and watches are filtered, revocation reaches every
//! node, and ACL state survives restarts. Each refused write is shown to change nothing.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::dns::udp;
use crate::harness::{eventually, Cluster};

/// A request with `token` (`None`: no token) to `node`: the status and the JSON body (a body that
/// is not JSON, as Consul's 403 text, as a JSON string).
async fn call(
    c: &Cluster,
    node: u64,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = crate::harness::client();
    let mut req = http.request(method, c.node(node).url(path));
    if let Some(t) = token {
        req = req.header("x-cairn-token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The management client's view: (applied index, digest) of `node`.
async fn digest(c: &Cluster, node: u64) -> (u64, String) {
    let (status, body) = c.get(node, "/v1/cluster/digest").await;
    assert_eq!(status, 200, "digest: {body}");
    (
        body["applied_index"].as_u64().unwrap(),
        body["digest"].as_str().unwrap().to_owned(),
    )
}

async fn policy(c: &Cluster, name: &str, rules: Value) {
    let (status, body) = c
        .put(
            1,
            &format!("/v1/acl/policies/{name}"),
            &json!({"rules": rules}),
        )
        .await;
    assert_eq!(status, 200, "policy {name}: {body}");
}

/// A new token linked to `policies`: its secret.
async fn token(c: &Cluster, policies: &[&str], ttl: Option<&str>) -> (String, String) {
    let mut body = json!({"policies": policies, "description": "test"});
    if let Some(t) = ttl {
        body["expiration_ttl"] = json!(t);
    }
    let res = c
        .http
        .post(c.node(1).url("/v1/acl/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    (
        v["accessor"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    ServiceRead,
    ServiceWrite,
    OperatorRead,
    OperatorWrite,
    AclRead,
    AclWrite,
}

/// The tokens of the matrix, and what each may do. `valid: false`: refused whatever it asks.
struct Who {
    name: &'static str,
    secret: Option<String>,
    valid: bool,
    rights: &'static [Need],
}

#[tokio::test]
async fn t10_every_route_answers_to_the_token_and_refusals_change_nothing() {
    let (c, mgmt) = Cluster::start_acl(3, &[]).await;
    c.register(1, "web", "w1").await;
    c.register(1, "db", "d1").await;
    policy(&c, "web-read", json!({"service": {"web": "read"}})).await;
    policy(&c, "web-write", json!({"service_prefix": {"web": "write"}})).await;
    policy(&c, "db-read", json!({"service": {"db": "read"}})).await;
    policy(&c, "db-write", json!({"service": {"db": "write"}})).await;
    policy(&c, "op", json!({"operator": "write"})).await;
    policy(&c, "acl-read", json!({"acl": "read"})).await;
    let secret = |t: (String, String)| Some(t.1);
    let deleted = token(&c, &["web-write"], None).await;
    let (status, _) = c.delete(1, &format!("/v1/acl/tokens/{}", deleted.0)).await;
    assert_eq!(status, 200);
    use Need::*;
    let whos = vec![
        Who {
            name: "no token",
            secret: None,
            valid: true,
            rights: &[],
        },
        Who {
            name: "read other",
            secret: secret(token(&c, &["db-read"], None).await),
            valid: true,
            rights: &[],
        },
        Who {
            name: "write other",
            secret: secret(token(&c, &["db-write"], None).await),
            valid: true,
            rights: &[],
        },
        Who {
            name: "read this",
            secret: secret(token(&c, &["web-read"], None).await),
            valid: true,
            rights: &[ServiceRead],
        },
        Who {
            name: "write this",
            secret: secret(token(&c, &["web-write"], None).await),
            valid: true,
            rights: &[ServiceRead, ServiceWrite],
        },
        Who {
            name: "operator",
            secret: secret(token(&c, &["op"], None).await),
            valid: true,
            rights: &[OperatorRead, OperatorWrite],
        },
        Who {
            name: "acl read",
            secret: secret(token(&c, &["acl-read"], None).await),
            valid: true,
            rights: &[AclRead],
        },
        Who {
            name: "management",
            secret: Some(mgmt.clone()),
            valid: true,
            rights: &[
                ServiceRead,
                ServiceWrite,
                OperatorRead,
                OperatorWrite,
                AclRead,
                AclWrite,
            ],
        },
        Who {
            name: "deleted",
            secret: Some(deleted.1),
            valid: false,
            rights: &[],
        },
        Who {
            name: "unknown",
            secret: Some("00000000-0000-4000-8000-000000000000".into()),
            valid: false,
            rights: &[],
        },
    ];
    let reg = json!({"address": "10.0.0.9", "port": 80});
    let routes: Vec<(Method, &str, Option<Value>, Need)> = vec![
        (Method::GET, "/v1/services/web", None, ServiceRead),
        (Method::GET, "/v1/services/web/settings", None, ServiceRead),
        (
            Method::PUT,
            "/v1/services/web/instances/w9",
            Some(reg.clone()),
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/services/web/instances/w1/health",
            Some(json!({"status": "passing"})),
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/services/web/instances/w1/maintenance",
            Some(json!({"enable": false})),
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/services/web/instances/w1/heartbeat",
            None,
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/services/web/settings",
            Some(json!({"fail_open": false})),
            ServiceWrite,
        ),
        (
            Method::DELETE,
            "/v1/services/web/instances/w9",
            None,
            ServiceWrite,
        ),
        (Method::GET, "/v1/cluster", None, OperatorRead),
        (Method::GET, "/v1/cluster/digest", None, OperatorRead),
        (Method::GET, "/v1/operator/raft", None, OperatorRead),
        (Method::GET, "/metrics", None, OperatorRead),
        (Method::GET, "/v1/audit", None, OperatorRead),
        (
            Method::POST,
            "/v1/cluster/members",
            Some(json!({"id": 0, "rpc_addr": "x:1"})),
            OperatorWrite,
        ),
        (Method::DELETE, "/v1/cluster/members/9", None, OperatorWrite),
        (Method::GET, "/v1/snapshot", None, OperatorWrite),
        (Method::PUT, "/v1/snapshot", Some(json!({})), OperatorWrite),
        (Method::GET, "/v1/agent/self", None, OperatorRead),
        (
            Method::PUT,
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "ID": "w8", "Address": "10.0.0.8", "Port": 80})),
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/agent/service/deregister/w1",
            None,
            ServiceWrite,
        ),
        (
            Method::PUT,
            "/v1/agent/service/maintenance/w1?enable=false",
            None,
            ServiceWrite,
        ),
        (Method::GET, "/v1/agent/service/w1", None, ServiceRead),
        (Method::GET, "/v1/acl/tokens", None, AclRead),
        (Method::GET, "/v1/acl/policies", None, AclRead),
        (
            Method::PUT,
            "/v1/acl/policies/p-new",
            Some(json!({"rules": {"operator": "read"}})),
            AclWrite,
        ),
        (
            Method::POST,
            "/v1/acl/tokens",
            Some(json!({"policies": ["op"]})),
            AclWrite,
        ),
    ];
    // Writes are acknowledged once the leader applied them: its digest is current between cells.
    let leader = c.leader().await;
    let mut cells = 0;
    for who in &whos {
        for (method, path, body, need) in &routes {
            // The instance the Consul routes name must exist for the right to be asked.
            if path.contains("/w1") {
                c.register(1, "web", "w1").await;
            }
            let node = 1 + (cells % 3);
            cells += 1;
            let allowed = who.valid && who.rights.contains(need);
            let before = digest(&c, leader).await;
            let (status, res) = call(
                &c,
                node,
                who.secret.as_deref(),
                method.clone(),
                path,
                body.clone(),
            )
            .await;
            if allowed {
                assert_ne!(status, 403, "{} {method} {path}: refused: {res}", who.name);
            } else {
                assert_eq!(
                    status, 403,
                    "{} {method} {path}: not refused: {res}",
                    who.name
                );
                // Consul's routes answer as Consul does: the error's text, no JSON.
                let message = if path.starts_with("/v1/agent/") {
                    res.as_str()
                } else {
                    assert_eq!(
                        res["code"], "permission_denied",
                        "{} {path}: {res}",
                        who.name
                    );
                    res["message"].as_str()
                };
                let message = message.unwrap_or_default();
                let expected = match (who.valid, who.secret.is_some()) {
                    (false, _) => "ACL not found",
                    (true, false) => "Permission denied: anonymous token lacks permission '",
                    (true, true) => "Permission denied: token with AccessorID '",
                };
                assert!(
                    message.starts_with(expected),
                    "{} {method} {path}: {res}",
                    who.name
                );
                if *method != Method::GET {
                    assert_eq!(
                        digest(&c, leader).await,
                        before,
                        "{} {method} {path} via node {node} changed state",
                        who.name
                    );
                }
            }
        }
        // Lists are filtered to what the token may read.
        let (status, list) = call(
            &c,
            2,
            who.secret.as_deref(),
            Method::GET,
            "/v1/services",
            None,
        )
        .await;
        if who.valid {
            assert_eq!(status, 200, "{}: {list}", who.name);
            let names: Vec<&str> = list["services"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names.contains(&"web"),
                who.rights.contains(&ServiceRead),
                "{}: {names:?}",
                who.name
            );
            let may_db = matches!(who.name, "read other" | "write other" | "management");
            assert_eq!(names.contains(&"db"), may_db, "{}: {names:?}", who.name);
            let (_, catalog) = call(
                &c,
                3,
                who.secret.as_deref(),
                Method::GET,
                "/v1/catalog/services",
                None,
            )
            .await;
            assert_eq!(
                catalog.get("web").is_some(),
                who.rights.contains(&ServiceRead),
                "{}: {catalog}",
                who.name
            );
        } else {
            assert_eq!(status, 403, "{}: {list}", who.name);
        }
    }
    println!("ACL matrix: {cells} route × token cells checked");
}

#[tokio::test]
async fn t20_escalation_is_refused() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    c.register(1, "db", "d1").await;
    policy(&c, "web-write", json!({"service_prefix": {"web": "write"}})).await;
    policy(&c, "acl-read", json!({"acl": "read"})).await;
    let (_, web) = token(&c, &["web-write"], None).await;
    let (_, acl_read) = token(&c, &["acl-read"], None).await;
    let before = digest(&c, 1).await;
    // An `acl read` token cannot make tokens or policies.
    let (s, _) = call(
        &c,
        1,
        Some(&acl_read),
        Method::POST,
        "/v1/acl/tokens",
        Some(json!({"policies": ["global-management"]})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &c,
        1,
        Some(&acl_read),
        Method::PUT,
        "/v1/acl/policies/x",
        Some(json!({"rules": {"acl": "write"}})),
    )
    .await;
    assert_eq!(s, 403);
    // A `service_prefix "web"` write token cannot register into db, nor see db anywhere.
    let (s, _) = call(
        &c,
        1,
        Some(&web),
        Method::PUT,
        "/v1/services/db/instances/evil",
        Some(json!({"address": "6.6.6.6", "port": 1, "weight": 65535})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &c,
        1,
        Some(&web),
        Method::PUT,
        "/v1/agent/service/register",
        Some(json!({"Name": "db", "Address": "6.6.6.6", "Port": 1})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &c,
        1,
        Some(&web),
        Method::GET,
        "/v1/services/db/watch",
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, rows) = call(
        &c,
        1,
        Some(&web),
        Method::GET,
        "/v1/health/service/db",
        None,
    )
    .await;
    assert_eq!((s, rows), (200, json!([])));
    let (_, state) = call(&c, 1, Some(&web), Method::GET, "/v1/health/state/any", None).await;
    assert_eq!(
        state,
        json!([]),
        "health/state shows only readable services"
    );
    assert_eq!(
        digest(&c, 1).await,
        before,
        "refused writes changed the state"
    );
    // It can register into its own prefix, and the audit list names its accessor.
    let (s, _) = call(
        &c,
        1,
        Some(&web),
        Method::PUT,
        "/v1/services/web-api/instances/a1",
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, me) = call(&c, 1, Some(&web), Method::GET, "/v1/acl/whoami", None).await;
    let accessor = me["token"]["accessor"].as_str().unwrap().to_owned();
    let (_, audit) = c.get(1, "/v1/audit").await;
    let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["accessor"], json!(accessor));
    assert_eq!(
        (last["op"].as_str(), last["service"].as_str()),
        (Some("register"), Some("web-api"))
    );
    assert!(
        !audit.to_string().contains(&web),
        "the audit list shows a secret"
    );
}

#[tokio::test]
async fn t30_a_deleted_token_is_refused_everywhere_and_ends_open_watches() {
    let (c, _) = Cluster::start_acl(3, &[]).await;
    c.register(1, "web", "w1").await;
    policy(&c, "web-read", json!({"service": {"web": "read"}})).await;
    let (accessor, secret) = token(&c, &["web-read"], None).await;
    for n in 1..=3 {
        eventually(Duration::from_secs(5), "token replicated", || async {
            call(&c, n, Some(&secret), Method::GET, "/v1/services/web", None)
                .await
                .0
                == 200
        })
        .await;
    }
    // An open watch on node 3.
    let mut stream = crate::harness::client()
        .get(c.node(3).url("/v1/services/web/watch"))
        .header("authorization", format!("Bearer {secret}"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: state"));
    let deleted_at = Instant::now();
    let (status, _) = c.delete(1, &format!("/v1/acl/tokens/{accessor}")).await;
    assert_eq!(status, 200);
    let mut delays = Vec::new();
    for n in [2, 3] {
        eventually(Duration::from_secs(5), "revocation applied", || async {
            call(&c, n, Some(&secret), Method::GET, "/v1/services/web", None)
                .await
                .0
                == 403
        })
        .await;
        delays.push(deleted_at.elapsed());
    }
    let mut rest = String::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("event: error") && rest.contains("permission_denied"),
        "stream ended with: {rest}"
    );
    println!("revocation seen on nodes 2 and 3 after {delays:?}");
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(1)),
        "revocation took {delays:?}"
    );
}

#[tokio::test]
async fn t40_acls_survive_restarts_and_bootstrap_works_once() {
    let (mut c, mgmt) = Cluster::start_acl(3, &[]).await;
    policy(&c, "web-write", json!({"service": {"web": "write"}})).await;
    let (_, secret) = token(&c, &["web-write"], None).await;
    // Bootstrap again: refused with the reset procedure in the message.
    let (s, body) = call(&c, 2, None, Method::PUT, "/v1/acl/bootstrap", None).await;
    assert_eq!(s, 403, "{body}");
    let msg = body["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("acl-bootstrap-reset"), "{msg}");
    for n in 1..=3 {
        c.node_mut(n).kill();
    }
    for n in 1..=3 {
        c.node_mut(n).restart();
    }
    c.wait_voters(3).await;
    let (s, body) = call(
        &c,
        3,
        Some(&secret),
        Method::PUT,
        "/v1/services/web/instances/w1",
        Some(json!({"address": "10.0.0.1", "port": 80})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = call(&c, 3, Some(&secret), Method::GET, "/v1/cluster", None).await;
    assert_eq!(s, 403);
    let (s, _) = call(&c, 1, Some(&mgmt), Method::GET, "/v1/acl/tokens", None).await;
    assert_eq!(s, 200);
    // The reset procedure: the index from the message, in the file, on the node asked.
    let index: String = msg
        .split("reset index: ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    std::fs::write(
        c.dir.path().join("node2").join("acl-bootstrap-reset"),
        &index,
    )
    .unwrap();
    let (s, body) = call(&c, 2, None, Method::PUT, "/v1/acl/bootstrap", None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["secret"].is_string());
    let (s, _) = call(&c, 2, None, Method::PUT, "/v1/acl/bootstrap", None).await;
    assert_eq!(s, 403, "a reset allows one bootstrap");
}

#[tokio::test]
async fn t50_expired_tokens_are_refused_and_dns_answers_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let dns_token = dir.path().join("dns.token");
    // Written after bootstrap; the agent reads it at start, so node 1 is restarted below.
    let (mut c, _) = Cluster::start_acl(1, &[]).await;
    c.register(1, "web", "w1").await;
    c.register(1, "db", "d1").await;
    policy(&c, "dns", json!({"service": {"web": "read"}})).await;
    let (_, dns_secret) = token(&c, &["dns"], None).await;
    std::fs::write(&dns_token, &dns_secret).unwrap();
    // The anonymous token sees nothing under default deny: DNS answers NXDOMAIN for both.
    let dns = c.node(1).dns;
    assert_eq!(
        udp(dns, "web.service.cairn.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let (s, list) = call(&c, 1, None, Method::GET, "/v1/services", None).await;
    assert_eq!((s, list["services"].clone()), (200, json!([])));
    c.node_mut(1).kill();
    c.nodes[0] = crate::harness::Node::start(
        1,
        c.dir.path(),
        &["--acl", "--dns-token-file", dns_token.to_str().unwrap()],
    );
    c.wait_voters(1).await;
    let dns = c.node(1).dns;
    assert_eq!(
        udp(dns, "web.service.cairn.", RecordType::A)
            .await
            .answers
            .len(),
        1
    );
    assert_eq!(
        udp(dns, "db.service.cairn.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    // A token with a 2 s TTL works, then is refused (and deleted by the leader's clock).
    policy(&c, "web-write", json!({"service": {"web": "write"}})).await;
    let (accessor, short) = token(&c, &["web-write"], Some("2s")).await;
    let (s, _) = call(&c, 1, Some(&short), Method::GET, "/v1/services/web", None).await;
    assert_eq!(s, 200);
    eventually(Duration::from_secs(6), "expired token refused", || async {
        call(&c, 1, Some(&short), Method::GET, "/v1/services/web", None)
            .await
            .0
            == 403
    })
    .await;
    let (s, _) = c.get(1, &format!("/v1/acl/tokens/{accessor}")).await;
    assert_eq!(s, 404, "the expired token was deleted");
}

#[tokio::test]
async fn t60_py_consul_registers_with_a_token_and_reports_permission_denied_without() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    policy(&c, "web-write", json!({"service_prefix": {"web": "write"}})).await;
    let (_, secret) = token(&c, &["web-write"], None).await;
    let python = crate::consul::python_with_py_consul();
    let (host, port) = (
        c.node(1).http.ip().to_string(),
        c.node(1).http.port().to_string(),
    );
    let script = r#"
import sys, consul
host, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with_token = consul.Consul(host=host, port=port, token=secret)
assert with_token.agent.service.register("web", service_id="web-1", address="10.0.0.1", port=80)
_, rows = with_token.health.service("web")
assert [r["Service"]["ID"] for r in rows] == ["web-1"], rows
anonymous = consul.Consul(host=host, port=port)
try:
    anonymous.agent.service.register("web", service_id="web-2", address="10.0.0.2", port=80)
except consul.ACLPermissionDenied as e:
    # Consul's 403 body, word for word: the text, no JSON.
    want = ("Permission denied: anonymous token lacks permission 'service:write' on \"web\". "
            "The anonymous token is used implicitly when a request does not specify a token.")
    assert str(e) == want, repr(str(e))
else:
    sys.exit("registered without a token")
try:
    with_token.agent.service.register("db", service_id="db-1", address="10.0.0.3", port=80)
except consul.ACLPermissionDenied as e:
    assert str(e).startswith("Permission denied: token with AccessorID '"), repr(str(e))
    assert str(e).endswith("' lacks permission 'service:write' on \"db\""), repr(str(e))
    assert secret not in str(e), "the secret in an error"
else:
    sys.exit("registered into db with a web token")
unknown = consul.Consul(host=host, port=port, token="00000000-0000-4000-8000-000000000000")
try:
    unknown.health.service("web")
except consul.ACLPermissionDenied as e:
    assert str(e) == "ACL not found", repr(str(e))
else:
    sys.exit("read with an unknown token")
"#;
    let out = tokio::process::Command::new(python)
        .args(["-c", script, &host, &port, &secret])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.instance_ids(1, "web").await, ["web-1"]);
}

/// `cairn acl policy create NAME --rules-file F` with F as a Consul policy file (HCL): the
/// policy the cluster stores grants what the file says; a Consul rule Cairn has no resource for
/// is refused (exit 64) and stores nothing.
#[tokio::test]
async fn t70_the_cli_takes_consul_hcl_policy_files() {
    let (c, mgmt) = Cluster::start_acl(1, &[]).await;
    let addr = c.node(1).http.to_string();
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .args(["--http-addr", &addr, "--token", &mgmt])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = dir.path().join("web.hcl");
    std::fs::write(
        &file,
        "# web's deployer\nservice_prefix \"web\" {\n  policy = \"write\"\n}\nservice \"db\" { policy = \"read\" }\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, _, err) = cli(&["acl", "policy", "create", "web-deploy", "--rules-file", f]);
    assert_eq!(code, 0, "{err}");
    let (s, body) = call(&c, 1, Some(&mgmt), Method::GET, "/v1/acl/policies", None).await;
    assert_eq!(s, 200, "{body}");
    let stored = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web-deploy")
        .unwrap_or_else(|| panic!("no web-deploy policy in {body}"));
    assert_eq!(
        stored["rules"],
        json!({"service_prefix": {"web": "write"}, "service": {"db": "read"}})
    );
    let (_, secret) = token(&c, &["web-deploy"], None).await;
    let reg = json!({"address": "10.0.0.1", "port": 80});
    let (s, body) = call(
        &c,
        1,
        Some(&secret),
        Method::PUT,
        "/v1/services/web-api/instances/a",
        Some(reg.clone()),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = call(
        &c,
        1,
        Some(&secret),
        Method::PUT,
        "/v1/services/db/instances/a",
        Some(reg),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(&c, 1, Some(&secret), Method::GET, "/v1/services/db", None).await;
    assert!(s == 200 || s == 404, "read on db: {s}");

    // Consul's KV rule: no such resource here; refused before anything is sent.
    let before = digest(&c, 1).await;
    std::fs::write(&file, "key_prefix \"\" { policy = \"write\" }\n").unwrap();
    let (code, _, err) = cli(&["acl", "policy", "create", "kv", "--rules-file", f]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("`key_prefix` is not a Cairn rule"), "{err}");
    let (code, _, err) = cli(&[
        "acl",
        "policy",
        "create",
        "kv",
        "--rules",
        "service \"x\" {",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not policy rules (HCL)"), "{err}");
    assert_eq!(
        digest(&c, 1).await.1,
        before.1,
        "a refused policy changed the registry"
    );
}
