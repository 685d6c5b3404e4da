//! The registry's persisted records beyond the model itself, and the format version.
//!
//! What the cluster writes to disk and sends between nodes is made of this crate's types only:
//! log entries carry a [`Command`](crate::Command); RocksDB holds [`ServiceRecord`]s,
//! [`Instance`](crate::model::Instance)s and [`ServiceSettings`]; a snapshot is a
//! [`SnapshotFile`]. Their JSON encodings are pinned by the golden files under `tests/golden/`,
//! so a renamed field fails a test instead of corrupting a cluster.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{validate_id, validate_service_name};
use crate::registry::{RegistryData, ServiceEntry, ServiceSettings};

/// Version of the persisted format. A data folder or snapshot of a newer version is refused,
/// not misread. Bump it (and add a migration) whenever a golden file has to change.
pub const FORMAT_VERSION: u32 = 1;

/// A service as stored in RocksDB: its own record, instances under their own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a snapshot's bytes hold: the format version and the whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub format: u32,
    #[serde(flatten)]
    pub data: RegistryData,
}

/// A snapshot that cannot be used; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot.
    #[error("snapshot does not parse: {0}")]
    Parse(String),
    /// A snapshot of a format this build does not read.
    #[error("snapshot format {0} is not {FORMAT_VERSION}")]
    Format(u32),
    /// The snapshot parses but breaks a rule of the model.
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
}

/// Encodes the registry as a snapshot.
pub fn encode_snapshot(data: RegistryData) -> serde_json::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    write_snapshot(data, &mut bytes)?;
    Ok(bytes)
}

/// Encodes the registry as a snapshot into `writer` as it goes, so a large registry is never
/// held as bytes in memory. Give it a buffered writer.
pub fn write_snapshot(data: RegistryData, writer: impl io::Write) -> serde_json::Result<()> {
    serde_json::to_writer(
        writer,
        &SnapshotFile {
            format: FORMAT_VERSION,
            data,
        },
    )
}

/// Decodes and checks a snapshot taken at `last_index`, before anything is replaced.
pub fn decode_snapshot(bytes: &[u8], last_index: u64) -> Result<RegistryData, SnapshotError> {
    read_snapshot(bytes, last_index)
}

/// [`decode_snapshot`] from a reader, as it goes: the snapshot's bytes are never all in memory.
/// Give it a buffered reader.
pub fn read_snapshot(
    reader: impl io::Read,
    last_index: u64,
) -> Result<RegistryData, SnapshotError> {
    let file: SnapshotWire =
        serde_json::from_reader(reader).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    if file.format != FORMAT_VERSION {
        return Err(SnapshotError::Format(file.format));
    }
    let data = RegistryData {
        list_index: file.list_index,
        services: file.services,
        settings: file.settings,
        down_nodes: file.down_nodes,
        acl: file.acl,
    };
    validate_registry(&data, last_index).map_err(SnapshotError::Invalid)?;
    Ok(data)
}

/// [`SnapshotFile`] as it is read: the same fields, spelled out rather than flattened, because
/// serde reads a flattened struct by first copying the whole document into a generic tree: for a
/// large registry, several times the snapshot's own size in memory. The golden test pins that both read the
/// same bytes the same way; building [`RegistryData`] field by field above keeps them in step.
#[derive(Deserialize)]
struct SnapshotWire {
    format: u32,
    list_index: u64,
    services: Vec<Arc<ServiceEntry>>,
    #[serde(default)]
    settings: BTreeMap<String, Arc<ServiceSettings>>,
    #[serde(default)]
    down_nodes: BTreeSet<u64>,
    #[serde(default)]
    acl: crate::acl::AclData,
}

/// Checks names, ids, indexes (none past `last_index`) and the shape of every instance (one check
/// state per check spec: the registry indexes them by position) of a registry that comes from
/// outside the running process: a snapshot, or the records a node loads at start.
pub fn validate_registry(data: &RegistryData, last_index: u64) -> Result<(), String> {
    if data.list_index > last_index {
        return Err(format!(
            "list index {} is past the snapshot",
            data.list_index
        ));
    }
    for (name, s) in &data.settings {
        // A settings key is a service name, or (holding a namespace) a Cloud Map namespace key;
        // a Cloud Map record must belong under its key.
        match s.settings.cloudmap.as_deref() {
            Some(record) => crate::cloudmap::validate_record(name, record),
            None => validate_service_name(name).map(|_| ()),
        }
        .map_err(|e| format!("settings of {name:?}: {e}"))?;
        if s.modify_index > last_index {
            return Err(format!(
                "settings of {name:?} have an index past the snapshot"
            ));
        }
    }
    let acl = &data.acl;
    if acl.bootstrap_index.is_some_and(|i| i > last_index) {
        return Err("the ACL bootstrap index is past the snapshot".into());
    }
    let mut names = HashSet::new();
    for p in &acl.policies {
        crate::acl::validate_policy(&p.spec).map_err(|e| format!("policy: {e}"))?;
        if !names.insert(&p.spec.name) || p.modify_index > last_index {
            return Err(format!(
                "policy {:?} is duplicated or from the future",
                p.spec.name
            ));
        }
    }
    let mut accessors = HashSet::new();
    for t in &acl.tokens {
        crate::acl::validate_accessor(&t.accessor).map_err(|e| format!("token: {e}"))?;
        if !accessors.insert(&t.accessor) || t.modify_index > last_index {
            return Err(format!(
                "token {} is duplicated or from the future",
                t.accessor
            ));
        }
    }
    let mut seen = HashSet::new();
    for s in &data.services {
        validate_service_name(&s.name).map_err(|e| e.to_string())?;
        if !seen.insert(&s.name) {
            return Err(format!("service {:?} appears twice", s.name));
        }
        if s.instances.is_empty() {
            return Err(format!("service {:?} has no instances", s.name));
        }
        if s.modify_index > last_index || s.create_index > s.modify_index {
            return Err(format!("service {:?} has impossible indexes", s.name));
        }
        for (id, inst) in &s.instances {
            validate_id("id", id).map_err(|e| e.to_string())?;
            if *id != inst.spec.id || inst.checks.len() != inst.spec.checks.len() {
                return Err(format!("instance {id:?} of {:?} is inconsistent", s.name));
            }
            if inst.modify_index > last_index {
                return Err(format!("instance {id:?} has an index past the snapshot"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::acl::{hash_secret, Access, AclData, Policy, PolicySpec, Rules, Token};

    /// Every field of the registry makes the round trip through a snapshot: the reader spells its
    /// fields out, so a field added to [`RegistryData`] but not to the reader would be lost.
    #[test]
    fn acl_state_survives_a_snapshot_round_trip() {
        let data = RegistryData {
            list_index: 3,
            acl: AclData {
                bootstrap_index: Some(2),
                policies: vec![Policy {
                    spec: PolicySpec {
                        name: "web".into(),
                        description: String::new(),
                        rules: Rules {
                            operator: Some(Access::Read),
                            ..Rules::default()
                        },
                    },
                    create_index: 2,
                    modify_index: 3,
                }],
                tokens: vec![Token {
                    accessor: "a-1".into(),
                    secret_hash: Some(hash_secret("s")),
                    description: String::new(),
                    policies: BTreeSet::from(["web".to_owned()]),
                    expires_at_ms: Some(9),
                    create_time_ms: 1,
                    create_index: 2,
                    modify_index: 2,
                }],
            },
            ..RegistryData::default()
        };
        let mut bytes = Vec::new();
        write_snapshot(data.clone(), &mut bytes).unwrap();
        assert_eq!(read_snapshot(bytes.as_slice(), 3).unwrap(), data);
        assert_eq!(
            decode_snapshot(&encode_snapshot(data.clone()).unwrap(), 3).unwrap(),
            data
        );
    }

    /// A Cloud Map namespace lives under a key no service name can take: snapshots and restarts
    /// take it, and take no other record under such a key.
    #[test]
    fn cloudmap_namespaces_survive_a_snapshot_and_stray_keys_do_not() {
        use crate::cloudmap::{namespace_key, CloudMapRecord, NamespaceRecord};
        use crate::model::SettingsSpec;
        let id = "ns-0123456789abcdef";
        let namespace = |cloudmap| {
            Arc::new(ServiceSettings {
                settings: SettingsSpec {
                    fail_open: false,
                    dns_ttl_s: None,
                    cloudmap,
                },
                modify_index: 2,
            })
        };
        let record = CloudMapRecord::Namespace(NamespaceRecord {
            id: id.into(),
            name: "example.internal".into(),
            kind: "DNS_PRIVATE".into(),
            description: String::new(),
            creator_request_id: None,
            create_ms: 1,
            tags: BTreeMap::new(),
        });
        let mut data = RegistryData {
            list_index: 3,
            ..RegistryData::default()
        };
        data.settings
            .insert(namespace_key(id), namespace(Some(Box::new(record))));
        let bytes = encode_snapshot(data.clone()).unwrap();
        assert_eq!(decode_snapshot(&bytes, 3).unwrap(), data);

        let mut stray = RegistryData::default();
        stray.settings.insert(namespace_key(id), namespace(None));
        assert!(validate_registry(&stray, 3).is_err());
    }
}
