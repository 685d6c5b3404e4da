//! Golden files: the persisted encodings, byte for byte.
//!
//! Log entries, RocksDB records and snapshots are written by one build and read by another (a
//! restart after an upgrade, a follower of a newer leader). Each test here encodes a fixed value
//! that exercises every field and variant, compares the bytes with the file committed under
//! `tests/golden/`, and decodes the file back to the same value. Renaming a field, changing a
//! serde attribute or reordering a variant fails here, not in a cluster.
//!
//! A deliberate format change bumps `format::FORMAT_VERSION`, adds a migration, and rewrites the
//! files with `CAIRN_BLESS=1 cargo test -p cairn-registry --test golden`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cairn_registry::backup;
use cairn_registry::command::RegistryText;
use cairn_registry::format::{self, ServiceRecord, SnapshotFile, FORMAT_VERSION};
use cairn_registry::model::{CheckKindSpec, CheckSpec, Instance, InstanceSpec, SettingsSpec};
use cairn_registry::{
    CheckState, Command, Dirty, HealthStatus, Op, OpResult, Registry, ServiceSettings, StatedHealth,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Encodes `value` as the store does (compact JSON), compares it with the golden file, and
/// decodes the file back to `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let bytes = serde_json::to_vec(value).unwrap();
    let file = path(name);
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::write(&file, &bytes).unwrap();
    }
    let golden = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (CAIRN_BLESS=1 writes it)", file.display()));
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&golden),
        "the encoding of {name} changed: a persisted format changed (see this file's docs)"
    );
    let back: T = serde_json::from_slice(&golden).unwrap();
    assert_eq!(
        &back, value,
        "{name} does not decode to the value it encodes"
    );
}

fn http_check() -> CheckSpec {
    CheckSpec {
        id: "http".into(),
        kind: CheckKindSpec::Http {
            url: "https://10.0.0.7:8443/health".into(),
            method: "HEAD".into(),
            headers: BTreeMap::from([("Authorization".into(), "Bearer x".into())]),
            tls_skip_verify: true,
            // Off, so absent: the golden file predates the field.
            output_body: false,
        },
        interval_ms: 10_000,
        timeout_ms: 2_000,
        rise: 2,
        fall: 3,
        initial_status: HealthStatus::Warning,
        deregister_after_ms: Some(60_000),
    }
}

fn instance_spec() -> InstanceSpec {
    InstanceSpec {
        id: "web-1".into(),
        address: "10.0.0.7".into(),
        port: 8080,
        tags: BTreeSet::from(["v2".to_owned(), "canary".to_owned()]).into(),
        meta: BTreeMap::from([("zone".to_owned(), "a".to_owned())]).into(),
        weight: 3,
        checks: vec![
            http_check(),
            CheckSpec {
                id: "tcp".into(),
                kind: CheckKindSpec::Tcp {
                    target: "10.0.0.7:8080".into(),
                },
                interval_ms: 5_000,
                timeout_ms: 1_000,
                rise: 1,
                fall: 1,
                initial_status: HealthStatus::Critical,
                deregister_after_ms: None,
            },
            CheckSpec {
                id: "ttl".into(),
                kind: CheckKindSpec::Ttl { ttl_ms: 30_000 },
                interval_ms: 10_000,
                timeout_ms: 5_000,
                rise: 1,
                fall: 1,
                initial_status: HealthStatus::Passing,
                deregister_after_ms: None,
            },
        ],
    }
}

fn state(status: HealthStatus, output: &str, at: u64) -> CheckState {
    CheckState {
        status,
        output: output.into(),
        changed_at_ms: at,
    }
}

fn instance() -> Instance {
    Instance {
        spec: instance_spec(),
        checks: vec![
            state(HealthStatus::Passing, "HTTP 200", 1_700_000_000_001),
            state(HealthStatus::Warning, "", 1_700_000_000_002),
            state(HealthStatus::Critical, "TTL expired", 1_700_000_000_003),
        ],
        custom_health: Some(Box::new(state(
            HealthStatus::Passing,
            "ok",
            1_700_000_000_004,
        ))),
        maintenance: Some(Box::new(state(
            HealthStatus::Critical,
            "upgrade",
            1_700_000_000_005,
        ))),
        create_index: 7,
        modify_index: 9,
    }
}

/// A log entry's payload with every operation.
fn command() -> Command {
    Command {
        by: Vec::new(),
        time_ms: 1_700_000_000_000,
        ops: vec![
            Op::Register {
                service: "web".into(),
                instance: instance_spec(),
                health: None,
            },
            Op::Deregister {
                service: "web".into(),
                id: "web-2".into(),
            },
            Op::SetSettings {
                service: "web".into(),
                settings: SettingsSpec {
                    fail_open: true,
                    dns_ttl_s: Some(30),
                    cloudmap: None,
                },
            },
            Op::SetCheckStatus {
                service: "web".into(),
                id: "web-1".into(),
                check: "http".into(),
                status: HealthStatus::Critical,
                output: "HTTP 503".into(),
            },
            Op::SetMaintenance {
                service: "web".into(),
                id: "web-1".into(),
                reason: Some("upgrade".into()),
            },
            Op::SetNodeUp { node: 3, up: false },
            Op::SetHealth {
                service: "web".into(),
                id: "web-1".into(),
                status: HealthStatus::Warning,
                output: "slow".into(),
            },
        ],
    }
}

#[test]
fn log_entry_payload() {
    check("command.json", &command());
}

/// Operations added after the format was first pinned, each in its own file: adding a variant
/// leaves every encoding above unchanged, so the format version stays.
#[test]
fn later_operations() {
    check(
        "command_delete_settings.json",
        &Command {
            by: Vec::new(),
            time_ms: 1_700_000_000_000,
            ops: vec![Op::DeleteSettings {
                service: "web".into(),
            }],
        },
    );
    check(
        "command_register_health.json",
        &Command {
            by: Vec::new(),
            time_ms: 1_700_000_000_000,
            ops: vec![Op::Register {
                service: "pg".into(),
                instance: instance_spec(),
                health: Some(StatedHealth {
                    status: HealthStatus::Critical,
                    output: "seen down by esm".into(),
                }),
            }],
        },
    );
}

/// The restore operation carries a whole registry: its encoding is the registry's.
#[test]
fn restore_operation() {
    let registry = Registry::default();
    let mut cmd = command();
    cmd.ops.truncate(1);
    registry.apply(9, &cmd, &mut Dirty::default());
    check(
        "command_restore.json",
        &Command {
            by: vec![Some("a-1".into())],
            time_ms: 1_700_000_000_000,
            ops: vec![Op::Restore {
                from_index: 9,
                from_term: 2,
                data: Box::new(registry.export()),
            }],
        },
    );
    // What a leader proposes since: the same registry as JSON text in one string.
    check(
        "command_restore_text.json",
        &Command {
            by: vec![Some("a-1".into())],
            time_ms: 1_700_000_000_000,
            ops: vec![Op::RestoreText {
                from_index: 9,
                from_term: 2,
                data: RegistryText::encode(&registry.export()).unwrap(),
            }],
        },
    );
}

/// A log entry names its format when it is not 1, and one newer than this build's is refused,
/// naming both versions.
#[test]
fn a_log_entry_of_a_newer_format_is_refused_naming_both_versions() {
    let current: Command =
        serde_json::from_str(&format!(r#"{{"v":{FORMAT_VERSION},"time_ms":1,"ops":[]}}"#)).unwrap();
    assert_eq!(current, Command::new(1, Vec::new()));
    let newer = FORMAT_VERSION + 1;
    let err = serde_json::from_str::<Command>(&format!(r#"{{"v":{newer},"time_ms":1,"ops":[]}}"#))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "format {newer}; this build reads format {FORMAT_VERSION}"
        )),
        "{err}"
    );
}

/// A whole backup file, byte for byte: what `cairn snapshot save` wrote with this format, read
/// by every later build (`tests/golden/backup.snap`).
#[test]
fn backup_file() {
    let registry = Registry::default();
    let mut cmd = command();
    cmd.ops.truncate(1);
    registry.apply(9, &cmd, &mut Dirty::default());
    let data = registry.export();
    let header = backup::BackupHeader::new("cairn", 9, 2, 1_700_000_000_000, &data);
    let mut bytes = Vec::new();
    backup::write_backup(&header, data.clone(), &mut bytes).unwrap();
    let file = path("backup.snap");
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::write(&file, &bytes).unwrap();
    }
    let golden = std::fs::read(&file).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&golden),
        "the encoding of a backup changed"
    );
    let back = backup::read_backup(std::io::Cursor::new(golden)).unwrap();
    assert_eq!((back.header, back.data), (header, data));
}

#[test]
fn apply_results() {
    check(
        "op_results.json",
        &vec![
            OpResult::Ok,
            OpResult::NotFound {
                message: "service \"web\" has no instance \"x\"".into(),
            },
        ],
    );
}

#[test]
fn rocksdb_records() {
    check("instance.json", &instance());
    check(
        "service_record.json",
        &ServiceRecord {
            create_index: 7,
            modify_index: 9,
        },
    );
    check(
        "service_settings.json",
        &ServiceSettings {
            settings: SettingsSpec {
                fail_open: true,
                cloudmap: None,
                dns_ttl_s: None,
            },
            modify_index: 11,
        },
    );
}

#[test]
fn snapshot_file() {
    // Built through apply, as a real snapshot is.
    let registry = Registry::default();
    let mut dirty = Dirty::default();
    let mut cmd = command();
    cmd.ops.truncate(1);
    registry.apply(9, &cmd, &mut dirty);
    let settings = Command {
        by: Vec::new(),
        time_ms: 1_700_000_000_100,
        ops: vec![
            Op::SetSettings {
                service: "db".into(),
                settings: SettingsSpec {
                    cloudmap: None,
                    fail_open: false,
                    dns_ttl_s: Some(5),
                },
            },
            Op::SetNodeUp { node: 2, up: false },
        ],
    };
    registry.apply(10, &settings, &mut dirty);
    let file = SnapshotFile {
        format: FORMAT_VERSION,
        data: registry.export(),
    };
    check("snapshot.json", &file);
    // What the store writes is exactly this encoding, and it reads back through the same
    // checks a snapshot from the network passes.
    let bytes = format::encode_snapshot(registry.export()).unwrap();
    assert_eq!(bytes, std::fs::read(path("snapshot.json")).unwrap());
    let back = format::decode_snapshot(&bytes, 10).unwrap();
    assert_eq!(back, registry.export());
    assert_eq!(back.services[0].instances["web-1"].spec, instance_spec());
}

#[test]
fn the_format_version_is_pinned_with_the_files() {
    // Changing a golden file means a new format: bump the version with it.
    assert_eq!(FORMAT_VERSION, 1);
}

/// The Cloud Map records that ride on settings: a namespace under its reserved key and a
/// service's configuration, every field set.
#[test]
fn cloudmap_settings_records() {
    use cairn_registry::cloudmap::{
        CloudMapRecord, DnsConfigRecord, DnsRecordSpec, HealthCheckRecord, NamespaceRecord,
        ServiceRecord,
    };
    let tags = BTreeMap::from([("team".to_owned(), "core".to_owned())]);
    check(
        "cloudmap_namespace.json",
        &ServiceSettings {
            settings: SettingsSpec {
                fail_open: false,
                dns_ttl_s: None,
                cloudmap: Some(Box::new(CloudMapRecord::Namespace(NamespaceRecord {
                    id: "ns-0123456789abcdef".into(),
                    name: "example.internal".into(),
                    kind: "DNS_PRIVATE".into(),
                    description: "the example".into(),
                    creator_request_id: Some("req-1".into()),
                    create_ms: 1_700_000_000_000,
                    tags: tags.clone(),
                }))),
            },
            modify_index: 12,
        },
    );
    check(
        "cloudmap_service.json",
        &ServiceSettings {
            settings: SettingsSpec {
                fail_open: false,
                dns_ttl_s: Some(60),
                cloudmap: Some(Box::new(CloudMapRecord::Service(ServiceRecord {
                    id: "srv-web".into(),
                    namespace_id: "ns-0123456789abcdef".into(),
                    description: "web tier".into(),
                    creator_request_id: Some("req-2".into()),
                    create_ms: 1_700_000_000_001,
                    kind: "DNS_HTTP".into(),
                    dns: Some(DnsConfigRecord {
                        routing_policy: "MULTIVALUE".into(),
                        records: vec![DnsRecordSpec {
                            kind: "A".into(),
                            ttl_s: 60,
                        }],
                    }),
                    health_check: Some(HealthCheckRecord {
                        kind: "HTTP".into(),
                        resource_path: Some("/health".into()),
                        failure_threshold: 2,
                    }),
                    custom_health: true,
                    attributes: BTreeMap::from([("tier".to_owned(), "front".to_owned())]),
                    tags,
                }))),
            },
            modify_index: 13,
        },
    );
}
