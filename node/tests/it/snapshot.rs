//! Backup and restore against real processes: `cairn snapshot save|inspect|restore` and
//! `GET`/`PUT /v1/snapshot`. A restore goes through Raft: every node ends with the same registry,
//! indexes move forward, watchers wake; a damaged, cut, foreign or newer file changes nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{get, header_u64, Cluster};

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `cairn snapshot` command against `node` and asserts it succeeded; its stdout.
fn snapshot_ok(c: &Cluster, node: u64, args: &[&str]) -> String {
    let addr = c.node(node).http.to_string();
    let mut full = vec!["snapshot"];
    full.extend(args);
    full.extend(["--http-addr", addr.as_str()]);
    let out = cairn(&full);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "cairn {full:?}: {stdout}{stderr}");
    stdout
}

/// (applied index, digest) of every node, once they all agree.
async fn agreed_digest(c: &Cluster) -> (u64, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for node in &c.nodes {
            let (status, body) = get(&c.http, &node.url("/v1/cluster/digest")).await;
            seen.push((
                status,
                body["applied_index"].as_u64().unwrap_or(0),
                body["digest"].as_str().unwrap_or("").to_owned(),
            ));
        }
        if seen[0].0 == 200 && seen.windows(2).all(|w| w[0] == w[1]) {
            let (_, index, digest) = seen.swap_remove(0);
            return (index, digest);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes never agreed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn restore_raw(c: &Cluster, node: u64, bytes: Vec<u8>) -> (u16, Value) {
    let res = c
        .http
        .put(c.node(node).url("/v1/snapshot"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn t10_a_restore_replaces_the_registry_on_every_node_at_a_new_index() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    c.register(1, "web", "a").await;
    c.register(2, "web", "b").await;
    c.register(3, "db", "c").await;

    let file = c.dir.path().join("backup.snap");
    let file_s = file.to_str().unwrap();
    let saved = snapshot_ok(&c, follower, &["save", file_s]);
    assert!(
        saved.starts_with(&format!("saved {file_s}: index ")),
        "{saved}"
    );
    assert!(saved.contains("2 services, 3 instances"), "{saved}");
    // Nothing but the backup is left in the folder: the temporary file was renamed.
    let names: Vec<String> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup"))
        .collect();
    assert_eq!(names, ["backup.snap"]);

    // Offline: no node is asked.
    let out = cairn(&["snapshot", "inspect", file_s, "--http-addr", "127.0.0.1:1"]);
    let (inspect, err) = text(&out);
    assert!(out.status.success(), "{inspect}{err}");
    for want in [
        "Cluster:   cairn",
        "Format:    1",
        "Services:  2",
        "Instances: 3",
        "(verified)",
    ] {
        assert!(inspect.contains(want), "{want:?} in:\n{inspect}");
    }
    let rows: Vec<Vec<&str>> = inspect
        .lines()
        .skip_while(|l| !l.starts_with("SERVICE"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, [vec!["db", "1"], vec!["web", "2"]]);
    let out = cairn(&["snapshot", "inspect", file_s, "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup_index = summary["index"].as_u64().unwrap();
    assert_eq!(
        summary["by_service"],
        serde_json::json!([["db", 1], ["web", 2]])
    );

    // Registered after the backup: gone after the restore.
    c.register(1, "web", "later").await;
    let cache_index = c.register(2, "cache", "x").await;
    assert!(cache_index > backup_index);
    let (_, before) = agreed_digest(&c).await;
    let res = c
        .http
        .get(c.node(3).url("/v1/services/web"))
        .send()
        .await
        .unwrap();
    let web_index = header_u64(&res, "x-cairn-index").unwrap();
    // Watchers of a restored service and of one the backup lacks, on two nodes.
    let watch = |node: u64, service: &str, index: u64| {
        let url = c
            .node(node)
            .url(&format!("/v1/services/{service}?index={index}&wait=30s"));
        let http = c.http.clone();
        tokio::spawn(async move {
            let res = http.get(url).send().await.unwrap();
            let index = header_u64(&res, "x-cairn-index").unwrap();
            let status = res.status().as_u16();
            (
                status,
                index,
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    let web_watch = watch(3, "web", web_index);
    let cache_watch = watch(leader, "cache", cache_index);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!web_watch.is_finished() && !cache_watch.is_finished());

    let restored = snapshot_ok(&c, follower, &["restore", file_s, "--json"]);
    let r: Value = serde_json::from_str(&restored).unwrap();
    let restore_index = r["index"].as_u64().unwrap();
    assert!(restore_index > cache_index, "{r}");
    assert_eq!(r["backup_index"], backup_index);
    assert_eq!(
        (r["services"].as_u64(), r["instances"].as_u64()),
        (Some(2), Some(3))
    );

    let (index, after) = agreed_digest(&c).await;
    assert!(index >= restore_index);
    assert_ne!(after, before);
    for node in 1..=3 {
        assert_eq!(c.instance_ids(node, "web").await, ["a", "b"], "node {node}");
        assert_eq!(c.instance_ids(node, "db").await, ["c"], "node {node}");
        assert!(
            c.instance_ids(node, "cache").await.is_empty(),
            "node {node}"
        );
        // Indexes never go back: every restored service carries the restore's index.
        let res = c
            .http
            .get(c.node(node).url("/v1/services/web"))
            .send()
            .await
            .unwrap();
        assert_eq!(header_u64(&res, "x-cairn-index"), Some(restore_index));
    }
    let (status, index, body) = web_watch.await.unwrap();
    assert_eq!((status, index), (200, restore_index), "{body}");
    let ids: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let (status, index, _) = cache_watch.await.unwrap();
    assert_eq!((status, index), (404, restore_index));

    // The restore is a write like any other: the cluster goes on from it, and a restarted node
    // loads what it stored.
    c.register(3, "web", "d").await;
    let (_, digest) = agreed_digest(&c).await;
    c.node_mut(follower).kill();
    c.node_mut(follower).restart();
    c.wait_voters(3).await;
    assert_eq!(agreed_digest(&c).await.1, digest);
    for node in 1..=3 {
        assert_eq!(c.instance_ids(node, "web").await, ["a", "b", "d"]);
        assert!(c.instance_ids(node, "cache").await.is_empty());
    }
}

/// Byte `at` of `bytes` changed so that the JSON stays valid: only the checksum can tell.
fn flip_digit(bytes: &mut [u8]) {
    let mid = bytes.len() / 2;
    let at = (mid..bytes.len())
        .find(|&i| bytes[i].is_ascii_digit())
        .unwrap();
    bytes[at] = if bytes[at] == b'9' {
        b'0'
    } else {
        bytes[at] + 1
    };
}

async fn save_raw(c: &Cluster, node: u64) -> Vec<u8> {
    let res = c
        .http
        .get(c.node(node).url("/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    res.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn t20_corrupt_truncated_foreign_or_newer_backups_change_nothing() {
    let c = Cluster::start(1, &["--max-restore-bytes", "65536"]).await;
    let other = Cluster::start(1, &["--cluster", "other"]).await;
    c.register(1, "web", "a").await;
    other.register(1, "web", "z").await;
    let good = save_raw(&c, 1).await;
    let foreign = save_raw(&other, 1).await;
    c.register(1, "web", "b").await;
    let (_, before) = agreed_digest(&c).await;

    let mut corrupt = good.clone();
    flip_digit(&mut corrupt);
    let truncated = good[..good.len() / 2].to_vec();
    let newer = String::from_utf8(good.clone())
        .unwrap()
        .replacen("\"format\":1", "\"format\":2", 1)
        .into_bytes();
    let mut big = good.clone();
    big.resize(70_000, b' ');
    let cases: [(&str, Vec<u8>, u16, &str); 6] = [
        ("corrupt", corrupt.clone(), 400, "the backup is corrupt"),
        (
            "truncated",
            truncated.clone(),
            400,
            "the backup is truncated",
        ),
        (
            "foreign",
            foreign,
            400,
            "the backup is of cluster \"other\"",
        ),
        ("newer", newer, 400, "written in format 2"),
        ("not a backup", b"{}".to_vec(), 400, "not a Cairn backup"),
        ("too large", big, 413, "--max-restore-bytes"),
    ];
    for (what, bytes, status, message) in cases {
        let (got, body) = restore_raw(&c, 1, bytes).await;
        assert_eq!(got, status, "{what}: {body}");
        let text = body["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {body}");
        assert_eq!(
            agreed_digest(&c).await.1,
            before,
            "{what} changed the registry"
        );
    }
    assert_eq!(c.instance_ids(1, "web").await, ["a", "b"]);

    // The CLI names the damage before it sends anything, and exits 1.
    let addr = c.node(1).http.to_string();
    for (name, bytes, message) in [
        ("corrupt.snap", corrupt, "is corrupt"),
        ("cut.snap", truncated, "is truncated"),
    ] {
        let path = c.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for cmd in ["inspect", "restore"] {
            let out = cairn(&[
                "snapshot",
                cmd,
                path.to_str().unwrap(),
                "--http-addr",
                &addr,
            ]);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(1), "{cmd} {name}: {stderr}");
            assert!(stderr.contains(message), "{cmd} {name}: {stderr}");
        }
    }
    assert_eq!(agreed_digest(&c).await.1, before);

    // And the good one still restores.
    let (status, body) = restore_raw(&c, 1, good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.instance_ids(1, "web").await, ["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn t30_a_restore_that_would_lock_the_operator_out_is_refused_unless_asked_for() {
    let (c, mgmt) = Cluster::start_acl(1, &[]).await;
    c.register(1, "web", "a").await;
    let backup = save_raw(&c, 1).await;
    // A token made after the backup, with operator:write: the backup does not hold it.
    let (status, _) = c
        .put(
            1,
            "/v1/acl/policies/ops",
            &serde_json::json!({"rules": {"operator": "write"}}),
        )
        .await;
    assert_eq!(status, 200);
    let res = c
        .http
        .post(c.node(1).url("/v1/acl/tokens"))
        .json(&serde_json::json!({"policies": ["ops"]}))
        .send()
        .await
        .unwrap();
    let token: Value = res.json().await.unwrap();
    let ops = token["secret"].as_str().unwrap().to_owned();
    let (_, before) = agreed_digest(&c).await;
    let restore = |secret: String, query: &'static str| {
        let http = crate::harness::client();
        let url = c.node(1).url(&format!("/v1/snapshot{query}"));
        let body = backup.clone();
        async move {
            let res = http
                .put(url)
                .header("x-cairn-token", secret)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = restore(ops.clone(), "").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the backup does not hold your token"),
        "{body}"
    );
    assert_eq!(agreed_digest(&c).await.1, before);
    // Asked for: restored, and the token is gone with everything made after the backup.
    let (status, body) = restore(ops.clone(), "?allow_lockout").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = restore(ops, "").await;
    assert_eq!(
        status, 403,
        "the restored ACL state does not know the token"
    );
    // The management token is in the backup: it restores without being asked.
    let (status, body) = restore(mgmt, "").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn t40_a_backup_over_a_quota_is_refused_whole() {
    let c = Cluster::start(1, &[]).await;
    c.register(1, "web", "a").await;
    c.register(1, "db", "b").await;
    let backup = save_raw(&c, 1).await;
    drop(c);
    // The same cluster name, a quota of one service.
    let small = Cluster::start(1, &["--quota-services", "1"]).await;
    small.register(1, "web", "z").await;
    let (_, before) = agreed_digest(&small).await;
    let (status, body) = restore_raw(&small, 1, backup).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the backup holds 2 services, over 1"),
        "{body}"
    );
    assert_eq!(agreed_digest(&small).await.1, before);
}

/// `inspect` works on a file alone, and says what a file that is no backup is.
#[test]
fn t50_inspect_names_a_file_that_is_no_backup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, "hello\n").unwrap();
    let out = cairn(&["snapshot", "inspect", path.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("not a Cairn backup"), "{stderr}");
    let missing = Path::new("/nonexistent/backup.snap");
    let out = cairn(&["snapshot", "inspect", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// A backup of megabytes restores through a follower: forwarded to the leader and replicated to
/// every node in one entry, each within one cluster RPC. Before the registry travelled as text
/// (`Op::RestoreText`), decoding it in the followers' RPC handler outran openraft's append
/// time-out (one heartbeat, 150 ms) and a backup of 1.1 MB never committed.
#[tokio::test(flavor = "multi_thread")]
async fn t60_a_backup_of_megabytes_restores_through_a_follower() {
    use cairn_registry::backup::{write_backup, BackupHeader};
    use cairn_registry::{Command, Dirty, Op, Registry};

    let registry = Registry::default();
    let mut index = 0;
    let mut bytes = Vec::new();
    // Grow the registry until its backup is close to the default limit (2 MiB).
    while bytes.len() < 1700 << 10 {
        let ops = (0..1000)
            .map(|i| {
                let n = index * 1000 + i;
                let body = serde_json::json!({"address": "10.0.0.1", "port": 80, "tags": ["a"]});
                let instance = cairn_registry::model::validate_registration(
                    &format!("instance-{n}"),
                    &serde_json::from_value(body).unwrap(),
                )
                .unwrap();
                Op::Register {
                    service: format!("svc-{}", n % 50),
                    instance,
                    health: None,
                }
            })
            .collect();
        index += 1;
        registry.apply(
            index,
            &Command::new(1_700_000_000_000, ops),
            &mut Dirty::default(),
        );
        let data = registry.export();
        let header = BackupHeader::new("cairn", index, 1, 1_700_000_000_000, &data);
        bytes.clear();
        write_backup(&header, data, &mut bytes).unwrap();
    }
    let instances = index * 1000;
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let size = bytes.len();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let res = http
        .put(c.node(follower).url("/v1/snapshot"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    eprintln!(
        "restored {size} bytes, {instances} instances through a follower in {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{size} bytes: {body}");
    assert_eq!(body["instances"], instances, "{body}");
    agreed_digest(&c).await;
    for node in 1..=3 {
        let (_, list) = c.get(node, "/v1/services").await;
        let total: u64 = list["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instances"].as_u64().unwrap())
            .sum();
        assert_eq!(total, instances, "node {node}");
    }
}
