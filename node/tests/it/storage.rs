//! Storage faults: damaged files stop a node at start naming them (and the node, removed, wiped
//! and joined again, catches up), and a full disk stops it (non-zero exit, the error named)
//! without losing an acknowledged write.
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

/// Flips a byte in a record of `service` in the table file under `data_dir` holding it: answers
/// the file.
fn flip_a_record_byte(data_dir: &Path, service: &str) -> PathBuf {
    let key = format!("i\0{service}\0").into_bytes();
    let (table, at) = files_ending(data_dir, ".sst")
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
    table
}

/// Stops node 1 of `c` with SIGTERM, as an operator would.
fn stop(c: &mut Cluster) {
    stop_node(c, 1);
}

fn stop_node(c: &mut Cluster, id: u64) {
    let node = c.node_mut(id);
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20)).expect("node stops");
    assert!(status.success(), "{status}");
}

/// Restarts node 1, which must refuse: answers its log.
fn refused_start(c: &mut Cluster) -> String {
    refused_start_of(c, 1)
}

fn refused_start_of(c: &mut Cluster, id: u64) -> String {
    let node = c.node_mut(id);
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
    let table = flip_a_record_byte(&c.node(1).data_dir, "flipsvc");

    let log = refused_start(&mut c);
    assert!(log.contains(&table.display().to_string()), "{log}");
    assert!(log.contains("Corruption"), "{log}");
}

/// The README's runbook for a node whose data is damaged: remove it from the cluster, wipe its
/// data folder, start it again with `--join` (same id and addresses). It joins as a learner,
/// catches up from the others (a snapshot, then the log) while registrations go on, becomes a
/// voter, and its replica ends equal to the others': same digest at the same index, every
/// acknowledged registration present, and DNS answers from it for a service registered while it
/// was out.
#[tokio::test]
async fn t25_a_damaged_node_removed_wiped_and_rejoined_catches_up_under_writes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut c = Cluster::start(3, &["--snapshot-threshold", "20"]).await;
    for i in 0..30 {
        c.register(1, "flipsvc", &format!("f{i}")).await;
    }
    let leader = c.leader().await;
    let damaged = (1..=3).rev().find(|n| *n != leader).unwrap();
    let live: Vec<u64> = (1..=3).filter(|n| *n != damaged).collect();
    stop_node(&mut c, damaged);
    let table = flip_a_record_byte(&c.node(damaged).data_dir, "flipsvc");
    let log = refused_start_of(&mut c, damaged);
    assert!(log.contains(&table.display().to_string()), "{log}");

    // Registrations go on through the two live nodes the whole time.
    let stop_writes = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (http, stop_writes) = (c.http.clone(), stop_writes.clone());
        let urls: Vec<String> = live.iter().map(|n| c.node(*n).url("")).collect();
        async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop_writes.load(Ordering::Relaxed) {
                let id = format!("l{i}");
                let url = format!("{}/v1/services/live/instances/{id}", urls[i % urls.len()]);
                let res = http
                    .put(url)
                    .json(&json!({"address": "10.0.0.2", "port": 80}))
                    .send()
                    .await;
                if res.is_ok_and(|r| r.status() == 200) {
                    acked.push(id);
                }
                i += 1;
            }
            acked
        }
    });

    // 1. Remove it, through any live member.
    let (status, body) = c
        .delete(live[0], &format!("/v1/cluster/members/{damaged}"))
        .await;
    assert_eq!(status, 200, "{body}");
    c.wait_voters(2).await;
    c.register(live[1], "probe", "p1").await;
    // 2. Wipe its data folder. 3. Start it with --join, on its old id and addresses.
    let node = c.node(damaged);
    let (data_dir, http, rpc, dns) = (node.data_dir.clone(), node.http, node.rpc, node.dns);
    std::fs::remove_dir_all(&data_dir).unwrap();
    let join = c.node(live[0]).url("");
    let (http, rpc, dns) = (http.to_string(), rpc.to_string(), dns.to_string());
    let fresh = Node::start_with_data(
        damaged,
        c.dir.path(),
        data_dir,
        &[
            "--join",
            &join,
            "--http-addr",
            &http,
            "--rpc-addr",
            &rpc,
            "--dns-addr",
            &dns,
            "--snapshot-threshold",
            "20",
        ],
    );
    *c.node_mut(damaged) = fresh;
    c.wait_voters(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writes.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 20,
        "writes went on: {} acknowledged",
        acked.len()
    );

    // Caught up: the same registry at the same index on all three.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for n in 1..=3 {
            let (_, d) = c.get(n, "/v1/cluster/digest").await;
            seen.push((d["applied_index"].as_u64(), d["digest"].clone()));
        }
        if seen.iter().all(|s| *s == seen[0]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "digests differ: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = c.instance_ids(damaged, "live").await;
    let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "missing on the rejoined node: {missing:?}"
    );
    assert_eq!(c.instance_ids(damaged, "flipsvc").await.len(), 30);
    let answers = crate::harness::dns::udp(
        c.node(damaged).dns,
        "probe.service.cairn.",
        hickory_proto::rr::RecordType::A,
    )
    .await
    .answers
    .len();
    assert_eq!(answers, 1, "DNS from the rejoined node");
    eprintln!(
        "node {damaged} rejoined; {} registrations acknowledged meanwhile, digests equal",
        acked.len()
    );
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
