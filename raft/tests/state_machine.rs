//! The state machine through its openraft interface: apply, snapshot round trip, restart
//! rebuild, and refusal of bad snapshots.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use tokio::io::AsyncWriteExt;

use cairn_raft::store::{self, StateMachine};
use cairn_raft::TypeConfig;
use cairn_registry::model::{validate_registration, SettingsSpec};
use cairn_registry::{Command, Op, OpResult};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn register(index: u64, service: &str, id: &str) -> Entry<TypeConfig> {
    let body = serde_json::json!({"address": "10.0.0.1", "port": 80, "tags": ["a"]});
    let instance = validate_registration(id, &serde_json::from_value(body).unwrap()).unwrap();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command {
            by: Vec::new(),
            time_ms: 1_700_000_000_000 + index,
            ops: vec![Op::Register {
                service: service.into(),
                instance,
                health: None,
            }],
        }),
    }
}

fn deregister(index: u64, service: &str, id: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command {
            by: Vec::new(),
            time_ms: 0,
            ops: vec![Op::Deregister {
                service: service.into(),
                id: id.into(),
            }],
        }),
    }
}

fn settings(index: u64, service: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command {
            by: Vec::new(),
            time_ms: 0,
            ops: vec![Op::SetSettings {
                service: service.into(),
                settings: SettingsSpec {
                    fail_open: true,
                    dns_ttl_s: Some(30),
                    cloudmap: None,
                },
            }],
        }),
    }
}

async fn populated(dir: &std::path::Path) -> StateMachine {
    let (_log, mut sm) = store::open(dir).unwrap();
    let results = sm
        .apply(vec![
            register(1, "web", "a"),
            register(2, "web", "b"),
            register(3, "db", "c"),
            deregister(4, "web", "a"),
            deregister(5, "web", "nope"),
            settings(6, "web"),
        ])
        .await
        .unwrap();
    for r in &results[..4] {
        assert_eq!(r[..], [OpResult::Ok]);
    }
    assert!(matches!(results[4][..], [OpResult::NotFound { .. }]));
    sm
}

#[tokio::test]
async fn restart_rebuilds_the_view_from_rocksdb_without_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut sm = populated(dir.path()).await;
        let state = sm.applied_state().await.unwrap();
        (sm.registry().export(), state.0)
    };
    let (_log, mut sm) = store::open(dir.path()).unwrap();
    assert_eq!(sm.registry().export(), before.0);
    assert_eq!(sm.applied_state().await.unwrap().0, before.1);
    assert_eq!(sm.registry().applied_index(), 6);
    assert!(sm
        .registry()
        .service("web")
        .unwrap()
        .instances
        .contains_key("b"));
}

/// A restart decodes instance records on a second thread, a few thousand at a time: a registry
/// of many batches comes back whole, services and counts included, and a bad record in a late
/// batch still stops the start.
#[tokio::test]
async fn restart_rebuilds_a_registry_of_many_decode_batches() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (_log, mut sm) = store::open(dir.path()).unwrap();
        // 10,000 instances in 7 services, 500 to an entry, as group commit batches them.
        let entries: Vec<Entry<TypeConfig>> = (0..20u64)
            .map(|e| {
                let ops = (0..500u64)
                    .map(|k| {
                        let i = e * 500 + k;
                        let body = serde_json::json!({"address": "10.0.0.1", "port": 80,
                            "tags": [format!("t{}", i % 3)], "meta": {"n": i.to_string()}});
                        let instance = validate_registration(
                            &format!("i{i}"),
                            &serde_json::from_value(body).unwrap(),
                        )
                        .unwrap();
                        Op::Register {
                            service: format!("s{}", i % 7),
                            instance,
                            health: None,
                        }
                    })
                    .collect();
                Entry {
                    log_id: log_id(e + 1),
                    payload: EntryPayload::Normal(Command::new(1_700_000_000_000, ops)),
                }
            })
            .collect();
        sm.apply(entries).await.unwrap();
        sm.registry().export()
    };
    let (log, sm) = store::open(dir.path()).unwrap();
    let after = sm.registry().export();
    assert_eq!(after, before);
    assert_eq!(
        after
            .services
            .iter()
            .map(|s| s.instances.len())
            .sum::<usize>(),
        10_000
    );
    let s3 = sm.registry().service("s3").unwrap();
    assert_eq!(s3.tags().collect::<Vec<_>>(), ["t0", "t1", "t2"]);
    assert_eq!(s3.instances["i9999"].spec.meta.get("n"), Some("9999"));
    assert_eq!(s3.summary(), before.services[3].summary());
    drop((log, sm));

    with_db(dir.path(), |db| {
        let reg = db.cf_handle("registry").unwrap();
        db.put_cf(reg, b"i\0s6\0i9999", b"{not json").unwrap();
    });
    let err = open_error(dir.path());
    assert!(err.contains("instance in s6"), "{err}");
}

#[tokio::test]
async fn snapshot_round_trips_into_a_fresh_store() {
    let a = tempfile::tempdir().unwrap();
    let mut source = populated(a.path()).await;
    let snap = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(6)));
    assert!(source.registry().export().settings.contains_key("web"));

    let b = tempfile::tempdir().unwrap();
    let (log, mut target) = store::open(b.path()).unwrap();
    target
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(target.registry().export(), source.registry().export());
    assert_eq!(target.applied_state().await.unwrap().0, Some(log_id(6)));
    let current = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    let kept = source.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        kept.meta, snap.meta,
        "the source keeps its own snapshot file"
    );

    // And the installed state survives a restart.
    drop((log, target));
    let (_log, again) = store::open(b.path()).unwrap();
    assert_eq!(again.registry().export(), source.registry().export());
}

#[tokio::test]
async fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = populated(dir.path()).await;
    let before = sm.registry().export();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(9)),
        last_membership: Default::default(),
        snapshot_id: "bad".into(),
    };
    let bad_inputs: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        br#"{"format": 99, "list_index": 0, "services": []}"#.to_vec(),
        br#"{"format": 1, "list_index": 0, "services": [{"name": "Bad Name", "create_index": 1, "modify_index": 1, "instances": {}}]}"#.to_vec(),
        br#"{"format": 1, "list_index": 50, "services": []}"#.to_vec(),
    ];
    for bytes in bad_inputs {
        let mut data = sm.begin_receiving_snapshot().await.unwrap();
        data.write_all(&bytes).await.unwrap();
        let res = sm.install_snapshot(&meta, data).await;
        assert!(res.is_err());
        assert_eq!(sm.registry().export(), before);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(6)));
    }
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files.is_empty(),
        "no refused snapshot stays behind: {files:?}"
    );
    drop(sm);
    let (_log, sm) = store::open(dir.path()).unwrap();
    assert_eq!(sm.registry().export(), before, "nothing was written either");
}

#[tokio::test]
async fn the_audit_list_keeps_its_last_entries_across_a_restart() {
    use cairn_registry::acl::AUDIT_LEN;
    let dir = tempfile::tempdir().unwrap();
    let total = AUDIT_LEN as u64 + 250;
    {
        let (_log, mut sm) = store::open(dir.path()).unwrap();
        // Batches of several entries, as group commit applies them.
        let entries: Vec<_> = (1..=total)
            .map(|i| register(i, "web", &format!("i{i}")))
            .collect();
        for chunk in entries.chunks(7) {
            sm.apply(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(sm.registry().audit().len(), AUDIT_LEN);
    }
    // What RocksDB holds, not what the view keeps: the evicted entries' keys are gone.
    {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf_for_read_only(
            &opts,
            dir.path(),
            ["logs", "raft", "registry", "sm"],
            false,
        )
        .unwrap();
        let sm_cf = db.cf_handle("sm").unwrap();
        let stored = db
            .iterator_cf(sm_cf, rocksdb::IteratorMode::Start)
            .filter(|kv| kv.as_ref().unwrap().0.starts_with(b"audit\0"))
            .count();
        assert_eq!(stored, AUDIT_LEN, "audit records in RocksDB");
    }
    let (_log, sm) = store::open(dir.path()).unwrap();
    let audit = sm.registry().audit();
    assert_eq!(audit.len(), AUDIT_LEN);
    assert_eq!(
        audit.first().map(|e| e.index),
        Some(total - AUDIT_LEN as u64 + 1)
    );
    assert_eq!(audit.last().map(|e| e.index), Some(total));
}

/// Builds a snapshot of `sm`, then drops it; answers the snapshot file's path.
async fn snapshot_file(mut sm: StateMachine, dir: &std::path::Path) -> std::path::PathBuf {
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    drop(sm);
    dir.join("snapshots")
        .join(format!("{}.snap", snap.meta.snapshot_id))
}

fn open_error(dir: &std::path::Path) -> String {
    match store::open(dir) {
        Ok(_) => panic!("the store opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_damaged_or_missing_snapshot_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = snapshot_file(populated(dir.path()).await, dir.path()).await;
    // The file is checked at every start, and a good one passes.
    drop(store::open(dir.path()).unwrap());

    // One byte flipped where JSON still parses: a digit of an index.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(b"\"modify_index\":".len())
        .position(|w| w == b"\"modify_index\":")
        .unwrap()
        + b"\"modify_index\":".len();
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, &bytes).unwrap();
    let err = open_error(dir.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is damaged"), "{err}");

    std::fs::remove_file(&path).unwrap();
    let err = open_error(dir.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is missing"), "{err}");
}

#[tokio::test]
async fn a_snapshot_without_a_recorded_sum_is_decoded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = snapshot_file(populated(dir.path()).await, dir.path()).await;
    with_db(dir.path(), |db| {
        db.delete_cf(db.cf_handle("sm").unwrap(), b"snapshot_sum")
            .unwrap()
    });
    std::fs::write(
        &path,
        b"{\"format\": 1, \"list_index\": 99, \"services\": []}",
    )
    .unwrap();
    let err = open_error(dir.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is not a valid snapshot"), "{err}");
}

/// Runs `f` on the store's RocksDB database directly, as a disk fault or a hand would.
fn with_db(dir: &std::path::Path, f: impl FnOnce(&rocksdb::DB)) {
    let db = rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        dir,
        ["logs", "raft", "registry", "sm"],
    )
    .unwrap();
    f(&db);
}

#[tokio::test]
async fn instance_records_that_break_the_model_are_refused_at_start() {
    // An instance with one check state more than it has checks: the registry indexes states
    // by position, so this would panic or mislead on the first read.
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()).await);
    with_db(dir.path(), |db| {
        let reg = db.cf_handle("registry").unwrap();
        let key = b"i\0web\0b";
        let mut inst: serde_json::Value =
            serde_json::from_slice(&db.get_cf(reg, key).unwrap().unwrap()).unwrap();
        inst["checks"] =
            serde_json::json!([{"status": "passing", "output": "", "changed_at_ms": 0}]);
        db.put_cf(reg, key, serde_json::to_vec(&inst).unwrap())
            .unwrap();
    });
    let err = open_error(dir.path());
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(
        err.contains("instance \"b\" of \"web\" is inconsistent"),
        "{err}"
    );

    // A record stored under another instance's key.
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()).await);
    with_db(dir.path(), |db| {
        let reg = db.cf_handle("registry").unwrap();
        let b = db.get_cf(reg, b"i\0web\0b").unwrap().unwrap();
        db.put_cf(reg, b"i\0web\0z", b).unwrap();
    });
    let err = open_error(dir.path());
    assert!(err.contains("holds instance \"b\""), "{err}");
}

#[tokio::test]
async fn a_build_never_replaces_a_newer_installed_snapshot_nor_prunes_it() {
    // A build that began at index 6 finishes after a snapshot of index 9 was installed (openraft
    // runs the two on different tasks).
    let a = tempfile::tempdir().unwrap();
    let mut source = populated(a.path()).await;
    source
        .apply(vec![
            register(7, "api", "x"),
            register(8, "api", "y"),
            register(9, "api", "z"),
        ])
        .await
        .unwrap();
    let newer = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(newer.meta.last_log_id, Some(log_id(9)));

    let b = tempfile::tempdir().unwrap();
    let mut target = populated(b.path()).await;
    let mut late_builder = target.get_snapshot_builder().await;
    target
        .install_snapshot(&newer.meta, newer.snapshot)
        .await
        .unwrap();
    let built = late_builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta, newer.meta, "the newer snapshot stays current");
    let current = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, newer.meta);
    drop((target, built, current, late_builder));
    let (_log, again) = store::open(b.path()).unwrap();
    assert_eq!(again.registry().applied_index(), 9);
}

/// A data folder written in a newer format stops the node at open, naming both versions, and
/// is left as it was (an older build never rewrites a newer folder).
#[test]
fn a_data_folder_of_a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(store::open(dir.path()).unwrap());
    let newer = cairn_registry::format::FORMAT_VERSION + 1;
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["logs", "raft", "registry", "sm"],
        )
        .unwrap();
        let sm = db.cf_handle("sm").unwrap();
        db.put_cf(sm, b"format", newer.to_string()).unwrap();
    }
    for _ in 0..2 {
        let err = store::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(&format!(
                "holds format {newer}; this build reads format {}",
                cairn_registry::format::FORMAT_VERSION
            )),
            "{err}"
        );
    }
}
