//! Storage faults: damaged files stop a node at start naming them, and a full disk stops it
//! (non-zero exit, the error named) without losing an acknowledged write.
//!
//! The full-disk test mounts a tmpfs, so it needs root; without it, it says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, get, Cluster, Node};

/// Files under `dir` (recursively) whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
    out
}

/// Stops node 1 of `c` with SIGTERM, as an operator would.
fn stop(c: &mut Cluster) {
    let node = c.node_mut(1);
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20)).expect("node stops");
    assert!(status.success(), "{status}");
}

/// Restarts node 1, which must refuse: answers its log.
fn refused_start(c: &mut Cluster) -> String {
    let node = c.node_mut(1);
    let status = node.restart_refused();
    assert!(
        !status.success(),
        "a refused start exits non-zero: {status}"
    );
    node.log_tail(20)
}

#[tokio::test]
async fn t10_a_flipped_byte_in_the_snapshot_file_stops_the_start_naming_it() {
    let mut c = Cluster::start(1, &["--snapshot-threshold", "20"]).await;
    for i in 0..40 {
        c.register(1, "web", &format!("w{i}")).await;
    }
    eventually(Duration::from_secs(20), "a snapshot", || async {
        get(&c.http, &c.node(1).url("/v1/cluster")).await.1["snapshot_index"]
            .as_u64()
            .is_some_and(|i| i > 0)
    })
    .await;
    stop(&mut c);
    let snaps = files_ending(&c.node(1).data_dir.join("snapshots"), ".snap");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let mut bytes = std::fs::read(&snaps[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&snaps[0], &bytes).unwrap();

    let log = refused_start(&mut c);
    assert!(
        log.contains(&format!(
            "the snapshot file {} is damaged",
            snaps[0].display()
        )),
        "{log}"
    );
}

#[tokio::test]
async fn t20_a_flipped_byte_in_a_table_file_stops_the_start_naming_it() {
    let mut c = Cluster::start(1, &[]).await;
    for i in 0..20 {
        c.register(1, "flipsvc", &format!("f{i}")).await;
    }
    // A clean stop flushes the registry's records into table files.
    stop(&mut c);
    let key = b"i\0flipsvc\0";
    let (table, at) = files_ending(&c.node(1).data_dir, ".sst")
        .into_iter()
        .find_map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let at = bytes.windows(key.len()).position(|w| w == key)?;
            Some((path, at))
        })
        .expect("a table file holds the registry's records");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[at + key.len() + 1] ^= 0x01;
    std::fs::write(&table, &bytes).unwrap();

    let log = refused_start(&mut c);
    assert!(log.contains(&table.display().to_string()), "{log}");
    assert!(log.contains("Corruption"), "{log}");
}

/// A tmpfs mounted for the test and unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn t30_a_full_disk_stops_the_node_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path().join("disk"), "32m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let reserve = (8 << 20).to_string();
    let mut node = Node::start_with_data(
        1,
        dir.path(),
        disk.0.join("node1"),
        &["--bootstrap", "--min-free-disk-bytes", &reserve],
    );
    let http = crate::harness::client();
    eventually(Duration::from_secs(20), "node ready", || async {
        get(&http, &node.url("/v1/ready")).await.0 == 200
    })
    .await;
    // 16 KiB of meta per instance: the disk fills after a few hundred registrations.
    let meta: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|i| (format!("k{i}"), json!("v".repeat(500))))
        .collect();
    let body = json!({"address": "10.0.0.1", "port": 80, "meta": meta});
    let mut acked = Vec::new();
    let mut failures = 0;
    for i in 0..10_000 {
        let id = format!("i{i}");
        let sent = http
            .put(node.url(&format!("/v1/services/fill/instances/{id}")))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status() == 200 => acked.push(id),
            _ => {
                failures += 1;
                if failures > 20 {
                    break;
                }
            }
        }
    }
    assert!(
        acked.len() > 50,
        "only {} writes before the disk filled",
        acked.len()
    );
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("the node exits once its disk is full");
    assert!(!status.success(), "{status}");
    let log = node.log_tail(40);
    assert!(log.contains("raft stopped on a fatal error"), "{log}");
    assert!(log.contains("no space left for the log"), "{log}");

    disk.resize("256m");
    node.restart();
    eventually(Duration::from_secs(20), "node ready again", || async {
        get(&http, &node.url("/v1/ready")).await.0 == 200
    })
    .await;
    let (status, service) = get(&http, &node.url("/v1/services/fill")).await;
    assert_eq!(status, 200, "{service}");
    let present: std::collections::HashSet<&str> = service["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !present.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    eprintln!(
        "disk full after {} acknowledged registrations; all present after the restart",
        acked.len()
    );
    node.kill();
}
