//! Mutual TLS on the cluster RPC: a cluster made with `cairn tls` certificates works, and every
//! way in without the right certificate is refused with nothing changed.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cairn_tls::certs::{self, Validity};
use serde_json::{json, Value};

use crate::harness::tls::Pki;
use crate::harness::{eventually, Cluster};

/// A three-node cluster of `cluster` running on `pki`'s certificates.
async fn tls_cluster(dir: tempfile::TempDir, pki: &Pki) -> Cluster {
    Cluster::start_each(3, dir, |id| pki.agent_args(id)).await
}

/// Waits until every node has applied the same state; that state's (applied index, digest).
async fn settled(c: &Cluster) -> (u64, String) {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = digests(c).await;
        if last.windows(2).all(|w| w[0] == w[1]) {
            return last[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replicas never agreed: {last:?}");
}

/// Every node's (applied index, digest).
async fn digests(c: &Cluster) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for n in 1..=3 {
        let (status, body) = c.get(n, "/v1/cluster/digest").await;
        assert_eq!(status, 200);
        out.push((
            body["applied_index"].as_u64().unwrap_or_default(),
            body["digest"].to_string(),
        ));
    }
    out
}

fn forged_forward() -> Value {
    json!({"write": {"op": "deregister", "service": "web", "id": "w1"}})
}

#[tokio::test]
async fn t10_a_cluster_on_mutual_tls_replicates_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = tls_cluster(dir, &pki).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    // A write through a follower is forwarded to the leader over TLS.
    let index = c.register(follower, "web", "w1").await;
    assert!(index > 0);
    for n in 1..=3 {
        eventually(Duration::from_secs(5), "replicated", || async {
            c.instance_ids(n, "web").await == ["w1"]
        })
        .await;
    }
    assert!(
        !c.node(1).log_contains("--insecure-rpc"),
        "a node with certificates warns of no plaintext RPC"
    );
}

#[tokio::test]
async fn t20_rpc_without_the_right_certificate_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let other = Pki::new(&dir.path().join("other"), "cairn");
    let stranger_dir = dir.path().join("pki-extra");
    let c = tls_cluster(dir, &pki).await;
    let leader = c.leader().await;
    c.register(leader, "web", "w1").await;
    let before = settled(&c).await;
    let target = (1..=3).find(|n| *n != leader).unwrap();
    let rpc = c.node(target).rpc;
    let name = cairn_tls::node_name("cairn", target);
    let url = |path: &str| format!("https://{name}:{}{path}", rpc.port());

    // 1. The exact forged request of the issue, in plaintext: refused at the TLS layer (the
    //    listener speaks only TLS), so there is no HTTP answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let res = plain
        .post(format!("http://{rpc}/raft/forward"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", "2")
        .json(&forged_forward())
        .send()
        .await;
    assert!(
        res.as_ref().map_or(true, |r| !r.status().is_success()),
        "a plaintext forward must not be answered: {res:?}"
    );

    // 2. A client certificate from another CA: the handshake fails.
    let (cert, key) = other.node(1);
    let foreign = pki.client(Some((&cert, &key)), &name, rpc);
    let res = foreign
        .post(url("/raft/forward"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", "1")
        .json(&forged_forward())
        .send()
        .await;
    assert!(res.is_err(), "another CA's certificate: {res:?}");

    // 3. No client certificate at all: the handshake fails.
    let anonymous = pki.client(None, &name, rpc);
    let res = anonymous
        .post(url("/raft/vote"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", "1")
        .json(&json!({}))
        .send()
        .await;
    assert!(res.is_err(), "no client certificate: {res:?}");

    // 4. A member's valid certificate used to speak as another member: 403.
    let impostor_id = (1..=3).find(|n| *n != target).unwrap();
    let claimed = (1..=3).find(|n| *n != target && *n != impostor_id).unwrap();
    let (cert, key) = (
        pki.dir.join(format!("node-{impostor_id}.pem")),
        pki.dir.join(format!("node-{impostor_id}-key.pem")),
    );
    let impostor = pki.client(Some((&cert, &key)), &name, rpc);
    let res = impostor
        .post(url("/raft/forward"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", claimed.to_string())
        .json(&forged_forward())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        403,
        "node {impostor_id}'s certificate speaking as node {claimed}"
    );

    // 5. A certificate of the same CA for a node that is not a member: cannot append, vote,
    //    install a snapshot, or forward.
    let stranger = Pki {
        dir: stranger_dir,
        cluster: "cairn".into(),
    };
    std::fs::create_dir_all(&stranger.dir).unwrap();
    for f in ["cairn-ca.pem", "cairn-ca-key.pem"] {
        std::fs::copy(pki.dir.join(f), stranger.dir.join(f)).unwrap();
    }
    let (cert, key) = stranger.node(7);
    let non_member = pki.client(Some((&cert, &key)), &name, rpc);
    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/raft/forward",
    ] {
        let res = non_member
            .post(url(path))
            .header("x-cairn-cluster", "cairn")
            .header("x-cairn-from", "7")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403, "non-member node 7 on {path}");
    }

    // A member's own certificate, speaking as itself, is admitted (the refusals above are
    // about identity, not a broken listener): a vote for an unknown candidate is answered.
    let (cert, key) = (
        pki.dir.join(format!("node-{impostor_id}.pem")),
        pki.dir.join(format!("node-{impostor_id}-key.pem")),
    );
    let member = pki.client(Some((&cert, &key)), &name, rpc);
    let vote = json!({"vote": {"leader_id": {"term": 0, "node_id": impostor_id}, "committed": false}, "last_log_id": null});
    let res = member
        .post(url("/raft/vote"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", impostor_id.to_string())
        .json(&vote)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    // Nothing any refused request carried was applied (a liveness entry could move the index,
    // so the digest, which covers the registry, is what is compared).
    let after = settled(&c).await;
    assert_eq!(
        after.1, before.1,
        "registry changed: {before:?} -> {after:?}"
    );
    assert_eq!(c.instance_ids(leader, "web").await, ["w1"]);
}

#[tokio::test]
async fn t30_the_https_api_with_client_certificates() {
    use cairn_client::{Client, InstanceRegistration, ReadOptions, RetryPolicy, TlsOptions};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let (cert, key) = pki.node(1);
    let (client_cert, client_key) = pki.client_cert("ops");
    let node = crate::harness::Node::start(
        1,
        dir.path(),
        &[
            "--bootstrap",
            "--https-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca().to_str().unwrap(),
        ],
    );
    let https = node
        .https
        .expect("the listening line names the HTTPS address");
    let url = format!("https://127.0.0.1:{}", https.port());
    let policy = RetryPolicy {
        attempts: 2,
        ..RetryPolicy::default()
    };
    // With the CA and a client certificate: the whole API, over HTTP/2 or 1.1.
    let tls = TlsOptions {
        ca_file: Some(pki.ca()),
        client_cert: Some(client_cert.clone()),
        client_key: Some(client_key.clone()),
    };
    let client = Client::with_tls([url.as_str()], policy.clone(), &tls).unwrap();
    let reg: InstanceRegistration =
        serde_json::from_value(json!({"address": "10.0.0.1", "port": 80})).unwrap();
    eventually(
        Duration::from_secs(10),
        "a leader answers over HTTPS",
        || async { client.register("web", "w1", &reg).await.is_ok() },
    )
    .await;
    let got = client
        .service("web", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(got.value.instances.len(), 1);

    // Without a client certificate the handshake is refused.
    let no_cert = TlsOptions {
        ca_file: Some(pki.ca()),
        ..TlsOptions::default()
    };
    let anonymous = Client::with_tls([url.as_str()], policy.clone(), &no_cert).unwrap();
    let err = anonymous
        .service("web", &ReadOptions::default())
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(err, cairn_client::ClientError::Unreachable { .. }),
        "{err:?}"
    );

    // Without the CA the server is not trusted.
    let untrusting = Client::with_tls([url.as_str()], policy, &TlsOptions::default()).unwrap();
    assert!(untrusting
        .service("web", &ReadOptions::default())
        .await
        .is_err());

    // The CLI, with and without a client certificate.
    let cli = |with_cert: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["services", "--http-addr", &url, "--ca-file"])
            .arg(pki.ca());
        if with_cert {
            cmd.arg("--client-cert")
                .arg(&client_cert)
                .arg("--client-key")
                .arg(&client_key);
        }
        cmd.output().unwrap()
    };
    let out = cli(true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
    let out = cli(false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        stderr.contains("certificaterequired"),
        "the error says why: {stderr}"
    );

    // Plain HTTP on --http-addr is still there (loopback by default).
    assert!(node.http.ip().is_loopback());

    // py-consul over HTTPS, verifying against the CA, with the client certificate.
    let script = format!(
        "import consul\n\
         c = consul.Consul(host='127.0.0.1', port={port}, scheme='https', verify='{ca}', cert=('{cert}', '{key}'))\n\
         idx, nodes = c.catalog.service('web')\n\
         assert [n['ServiceID'] for n in nodes] == ['w1'], nodes\n\
         print('ok')\n",
        port = https.port(),
        ca = pki.ca().display(),
        cert = client_cert.display(),
        key = client_key.display(),
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul over HTTPS: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn t40_certificates_rotate_on_sighup_while_writes_run_without_losing_any() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = Arc::new(tls_cluster(dir, &pki).await);
    let leader = c.leader().await;
    let (_, before) = c.get(leader, "/v1/cluster").await;
    let term = before["term"].as_u64().unwrap();

    // A writer registering through every node in turn, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let node = i % 3 + 1;
                let id = format!("r{i}");
                let (status, _) = c
                    .put(
                        node,
                        &format!("/v1/services/rot/instances/{id}"),
                        &json!({"address": "10.0.0.1", "port": 80}),
                    )
                    .await;
                if status == 200 {
                    acked.push(id);
                }
                i += 1;
            }
            acked
        })
    };
    for id in 1..=3u64 {
        // New key and certificate from the same CA, in place; then SIGHUP.
        let reloads = c.node(id).log_count("reloaded certificates");
        pki.node(id);
        c.node(id).signal("HUP");
        eventually(Duration::from_secs(10), "the node reloads", || async {
            c.node(id).log_count("reloaded certificates") > reloads
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 20,
        "writes kept going: {} acknowledged",
        acked.len()
    );

    for n in 1..=3 {
        eventually(
            Duration::from_secs(10),
            "every acknowledged write everywhere",
            || async {
                let ids = c.instance_ids(n, "rot").await;
                acked.iter().all(|a| ids.contains(a))
            },
        )
        .await;
    }
    let (_, after) = c.get(leader, "/v1/cluster").await;
    assert_eq!(after["leader"].as_u64(), Some(leader), "no leader change");
    assert_eq!(after["term"].as_u64(), Some(term), "no election");
}

#[tokio::test]
async fn t50_a_reload_with_a_wrong_certificate_keeps_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let c = tls_cluster(dir, &pki).await;
    let (cert1, key1) = (pki.dir.join("node-1.pem"), pki.dir.join("node-1-key.pem"));
    let (good_cert, good_key) = (
        std::fs::read(&cert1).unwrap(),
        std::fs::read(&key1).unwrap(),
    );
    // Node 2's certificate and key copied over node 1's by mistake.
    std::fs::copy(pki.dir.join("node-2.pem"), &cert1).unwrap();
    std::fs::copy(pki.dir.join("node-2-key.pem"), &key1).unwrap();
    let refused = c.node(1).log_count("certificates not reloaded");
    c.node(1).signal("HUP");
    eventually(Duration::from_secs(10), "the reload is refused", || async {
        c.node(1).log_count("certificates not reloaded") > refused
    })
    .await;
    assert!(c.node(1).log_contains("node-1.cairn.cairn"));
    // Node 1 still speaks as itself: a write through it is forwarded or proposed as before.
    let index = c.register(1, "web", "still").await;
    assert!(index > 0);
    for n in 1..=3 {
        eventually(Duration::from_secs(5), "replicated", || async {
            c.instance_ids(n, "web").await == ["still"]
        })
        .await;
    }
    std::fs::write(&cert1, good_cert).unwrap();
    std::fs::write(&key1, good_key).unwrap();
}

/// Node `node`'s and client `ops`'s certificates from `pki`'s own CA, valid only within
/// `validity`, written to `pki`'s folder under `tag`: ((node cert, key), (client cert, key)).
fn certificates_within(
    pki: &Pki,
    tag: &str,
    node: u64,
    validity: Validity,
) -> ((PathBuf, PathBuf), (PathBuf, PathBuf)) {
    let ca = std::fs::read_to_string(pki.ca()).unwrap();
    let ca_key = std::fs::read_to_string(pki.dir.join(certs::CA_KEY_FILE)).unwrap();
    let node_cert =
        certs::create_node_cert(&ca, &ca_key, &pki.cluster, node, &[], &[], validity).unwrap();
    let client_cert =
        certs::create_client_cert(&ca, &ca_key, &pki.cluster, "ops", validity).unwrap();
    let write = |stem: String, issued| {
        let w = certs::write_issued(&pki.dir, &stem, issued, true).unwrap();
        (w.cert, w.key)
    };
    (
        write(format!("{tag}-node-{node}"), &node_cert),
        write(format!("{tag}-client-ops"), &client_cert),
    )
}

/// An error with its causes: the TLS alert hides under "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Asserts that `res` failed because the server found the client certificate out of its
/// validity (rustls answers both expired and not yet valid with this alert).
fn refused_as_expired(res: Result<reqwest::Response, reqwest::Error>, what: &str) {
    match res {
        Ok(r) => panic!("{what}: answered {}", r.status()),
        Err(e) => {
            let chain = error_chain(&e);
            assert!(chain.contains("CertificateExpired"), "{what}: {chain}");
        }
    }
}

#[tokio::test]
async fn t60_an_expired_or_not_yet_valid_certificate_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let ca = pki.ca().display().to_string();
    let c = Cluster::start_each(3, dir, |id| {
        let mut args = pki.agent_args(id);
        args.extend(["--https-addr", "127.0.0.1:0", "--tls-client-ca", &ca].map(String::from));
        args
    })
    .await;
    let leader = c.leader().await;
    c.register(leader, "web", "w1").await;
    let before = settled(&c).await;
    let target = (1..=3).find(|n| *n != leader).unwrap();
    let speaker = (1..=3).find(|n| *n != target).unwrap();
    let rpc = c.node(target).rpc;
    let name = cairn_tls::node_name("cairn", target);
    let url = |path: &str| format!("https://{name}:{}{path}", rpc.port());
    let https = c.node(target).https.expect("an HTTPS listener");
    let api = format!("https://localhost:{}/v1/services/web", https.port());
    let vote = json!({"vote": {"leader_id": {"term": 0, "node_id": speaker}, "committed": false}, "last_log_id": null});

    // Member `speaker`'s certificate and a client certificate, from the cluster's CA, that
    // expire in a moment: admitted while valid...
    let now = SystemTime::now();
    let ends = now + Duration::from_secs(3);
    let window = Validity::Window {
        not_before: now - Duration::from_secs(60),
        not_after: ends,
    };
    let (node_cert, client_cert) = certificates_within(&pki, "expiring", speaker, window);
    let as_speaker = |(cert, key): &(PathBuf, PathBuf)| pki.client(Some((cert, key)), &name, rpc);
    let res = as_speaker(&node_cert)
        .post(url("/raft/vote"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", speaker.to_string())
        .json(&vote)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "the certificate while valid");
    let ops = |(cert, key): &(PathBuf, PathBuf)| pki.client(Some((cert, key)), "localhost", https);
    let res = ops(&client_cert).get(&api).send().await.unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "the client certificate while valid"
    );

    // ...and refused once expired; as are certificates that are not valid yet.
    let wait = ends.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
    let now = SystemTime::now();
    let later = Validity::Window {
        not_before: now + Duration::from_secs(3600),
        not_after: now + Duration::from_secs(7200),
    };
    let expired = (node_cert, client_cert);
    let not_yet = certificates_within(&pki, "later", speaker, later);
    for (what, (node_cert, client_cert)) in [("expired", expired), ("not yet valid", not_yet)] {
        // Every RPC route, each with a fresh connection, with what it would act on: the forged
        // forward of the issue would deregister w1.
        for (path, body) in [
            ("/raft/append", json!({})),
            ("/raft/vote", vote.clone()),
            ("/raft/snapshot", json!({})),
            ("/raft/forward", forged_forward()),
        ] {
            let res = as_speaker(&node_cert)
                .post(url(path))
                .header("x-cairn-cluster", "cairn")
                .header("x-cairn-from", speaker.to_string())
                .json(&body)
                .send()
                .await;
            refused_as_expired(res, &format!("{what} node certificate on {path}"));
        }
        // The HTTPS API with --tls-client-ca: neither a read nor a write gets through.
        let client = ops(&client_cert);
        refused_as_expired(
            client.get(&api).send().await,
            &format!("{what} client certificate reading"),
        );
        refused_as_expired(
            client.delete(format!("{api}/instances/w1")).send().await,
            &format!("{what} client certificate deregistering"),
        );
    }

    let after = settled(&c).await;
    assert_eq!(
        after.1, before.1,
        "registry changed: {before:?} -> {after:?}"
    );
    for n in 1..=3 {
        assert_eq!(c.instance_ids(n, "web").await, ["w1"], "node {n}");
    }
}

/// Kills the agent it holds when dropped, also when the test fails.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn t70_http_addr_off_serves_https_only() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cairn");
    let (cert, key) = pki.node(1);
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["agent", "--dev", "--http-addr", "off"])
            .args(["--https-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0"])
            .args(["--rpc-addr", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = agent.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("cairn listening"))
    })
    .await
    .unwrap()
    .expect("the agent's listening line");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
    };
    assert_eq!(field("http=").as_deref(), Some("off"), "{line}");
    let https: std::net::SocketAddr = field("https=").unwrap().parse().unwrap();
    let client = pki.client(None, "localhost", https);
    eventually(Duration::from_secs(20), "the HTTPS API answers", || async {
        client
            .get(format!("https://localhost:{}/v1/ready", https.port()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}
