//! Upgrades: every build reads the data of the formats before it. The fixtures under
//! `node/tests/fixtures/format-<N>/` were written by a build of format N and are committed, so
//! each later build's tests start a node on them:
//!
//! - `data/`: a node's data folder (RocksDB without its info logs, and its snapshot folder);
//! - `backup.snap`: a backup (`cairn snapshot save`) of the same registry;
//! - `expected.json`: what the registry holds and its digest.
//!
//! [`make_fixtures`] writes them (by hand, once per format: see its docs). The tests copy a
//! fixture, never change it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{copy_dir, get, Cluster, Node};

/// The format this build writes; keep one test set per fixture format as formats are added.
const FORMAT: u32 = 1;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{FORMAT}"))
}

/// What the fixture's registry holds: service → sorted instance ids.
fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn digest(http: &reqwest::Client, node: &Node) -> (u64, String) {
    let (status, body) = get(http, &node.url("/v1/cluster/digest")).await;
    assert_eq!(status, 200, "{body}");
    (
        body["applied_index"].as_u64().unwrap(),
        body["digest"].as_str().unwrap().to_owned(),
    )
}

/// Writes `node/tests/fixtures/format-<FORMAT>/` from a node of this build. Run by hand when a
/// format is added (the fixtures of the formats before it stay as they are):
///
/// ```text
/// CAIRN_MAKE_FIXTURES=1 cargo test -p cairn-node --test it -- upgrade::make_fixtures --ignored
/// ```
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes the committed fixtures; run by hand"]
async fn make_fixtures() {
    if std::env::var_os("CAIRN_MAKE_FIXTURES").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(1, &[]).await;
    let reg = |address: &str, port: u16, tags: &[&str]| json!({"address": address, "port": port, "tags": tags, "meta": {"version": "1.2"}});
    for (service, id, body) in [
        ("web", "web-1", reg("10.0.0.1", 8080, &["blue"])),
        ("web", "web-2", reg("10.0.0.2", 8080, &["green"])),
        ("db", "db-1", reg("fd00::1", 5432, &[])),
        (
            "api",
            "api-1",
            json!({"address": "api.example.com", "port": 443, "weight": 5,
                   "checks": [{"kind": "ttl", "ttl": "24h"}]}),
        ),
    ] {
        crate::harness::register_with(&c, 1, service, id, body).await;
    }
    let (status, body) = c
        .put(1, "/v1/services/web/settings", &json!({"dns_ttl": "30s"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let res = c
        .http
        .get(c.node(1).url("/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let backup = res.bytes().await.unwrap();
    let (index, digest) = digest(&c.http, c.node(1)).await;
    let mut services = serde_json::Map::new();
    for s in ["api", "db", "web"] {
        services.insert(s.into(), json!(c.instance_ids(1, s).await));
    }
    c.node(1).signal("TERM");
    assert!(c.node_mut(1).wait_exit(Duration::from_secs(20)).is_some());

    let out = fixture();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    // The data folder without RocksDB's info logs (text, large, and of no use to a reader).
    let data = c.node(1).data_dir.clone();
    copy_dir(&data, &tmp.path().join("data"));
    for e in std::fs::read_dir(tmp.path().join("data")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("LOG") || name == "LOCK" {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    copy_dir(&tmp.path().join("data"), &out.join("data"));
    std::fs::write(out.join("backup.snap"), &backup).unwrap();
    let expected = json!({
        "format": FORMAT,
        "applied_index": index,
        "digest": digest,
        "services": services,
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

/// A node of this build starts on a data folder of the committed format with its registry
/// intact, and a cluster of it and two fresh nodes of this build replicates.
#[tokio::test(flavor = "multi_thread")]
async fn t10_a_node_on_a_fixture_data_folder_serves_it_and_replicates_to_new_nodes() {
    let want = expected();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    copy_dir(&fixture().join("data"), &data);
    let old = Node::start_with_data(1, dir.path(), data, &["--bootstrap"]);
    let http = crate::harness::client();
    crate::harness::eventually(
        Duration::from_secs(20),
        "the fixture node leads",
        || async { get(&http, &old.url("/v1/ready")).await.0 == 200 },
    )
    .await;
    let (index, digest_now) = digest(&http, &old).await;
    assert!(index >= want["applied_index"].as_u64().unwrap());
    assert_eq!(
        digest_now, want["digest"],
        "the registry read from the fixture differs from the one that was written"
    );
    let join = old.url("");
    let mut c = Cluster {
        nodes: vec![old],
        dir,
        http,
    };
    for id in [2, 3] {
        let node = Node::start(id, c.dir.path(), &["--join", join.as_str()]);
        c.nodes.push(node);
    }
    c.wait_voters(3).await;
    // Writes through the fixture node (it leads: its membership still names the address the
    // fixture was made at, which only the followers' forwarding would use).
    c.register(1, "web", "web-3").await;
    let (_, body) = c.delete(1, "/v1/services/db/instances/db-1").await;
    assert!(body["index"].is_u64(), "{body}");
    let mut agreed = false;
    for _ in 0..100 {
        let mut seen = Vec::new();
        for node in &c.nodes {
            seen.push(digest(&c.http, node).await);
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agreed, "the three nodes never agreed on a digest");
    for node in 1..=3 {
        let mut web: Vec<String> = serde_json::from_value(want["services"]["web"].clone()).unwrap();
        web.push("web-3".into());
        assert_eq!(c.instance_ids(node, "web").await, web, "node {node}");
        assert_eq!(
            json!(c.instance_ids(node, "api").await),
            want["services"]["api"],
            "node {node}"
        );
        assert!(c.instance_ids(node, "db").await.is_empty(), "node {node}");
        // Settings came through too.
        let (status, body) = c.get(node, "/v1/services/web/settings").await;
        assert_eq!(
            (status, body["dns_ttl"].as_str()),
            (200, Some("30s")),
            "{body}"
        );
    }
}

/// The committed backup of the fixture format inspects and restores with this build.
#[tokio::test(flavor = "multi_thread")]
async fn t20_a_fixture_backup_inspects_and_restores() {
    let want = expected();
    let file = fixture().join("backup.snap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["snapshot", "inspect", file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["format"], FORMAT);
    assert_eq!(summary["index"], want["applied_index"]);

    let c = Cluster::start(1, &[]).await;
    c.register(1, "other", "x").await;
    let res = c
        .http
        .put(c.node(1).url("/v1/snapshot"))
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (service, ids) in want["services"].as_object().unwrap() {
        assert_eq!(json!(c.instance_ids(1, service).await), *ids);
    }
    assert!(c.instance_ids(1, "other").await.is_empty());
}

/// A data folder of a newer format than this build's stops the node before it serves anything,
/// with a message naming both versions; the folder is left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn t30_a_data_folder_of_a_newer_format_stops_the_node_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    copy_dir(&fixture().join("data"), &data);
    let newer = FORMAT + 1;
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            &data,
            ["logs", "raft", "registry", "sm"],
        )
        .unwrap();
        db.put_cf(db.cf_handle("sm").unwrap(), b"format", newer.to_string())
            .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "agent",
            "--node-id",
            "1",
            "--bootstrap",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "holds format {newer}; this build reads format {FORMAT}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("cairn listening"), "{stderr}");
}
