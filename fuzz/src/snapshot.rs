//! Snapshot decoding (a snapshot arrives from the leader, or is read back from disk): it never
//! panics, a snapshot it accepts loads into a registry that can be served (every instance's
//! health read), and that registry snapshots again to the same data.

use cairn_registry::format::{decode_snapshot, read_snapshot};
use cairn_registry::{Registry, RegistryData};

use super::state::snapshots;

/// The index the snapshot claims to be taken at; indexes past it are refused.
const LAST_INDEX: u64 = 1_000;

pub fn check(data: &[u8]) {
    let decoded = decode_snapshot(data, LAST_INDEX);
    // The streaming reader is the same reader.
    assert_eq!(decoded, read_snapshot(data, LAST_INDEX));
    let Ok(data) = decoded else {
        return;
    };
    let registry = Registry::from_data(data.clone(), LAST_INDEX);
    assert_eq!(
        registry.export(),
        sorted(data),
        "loading changes the snapshot's data"
    );
    snapshots(&registry, LAST_INDEX);
}

/// `data` in the order a registry exports it: services, policies and tokens sorted by name.
fn sorted(mut data: RegistryData) -> RegistryData {
    data.services.sort_by(|a, b| a.name.cmp(&b.name));
    data.acl
        .policies
        .sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    data.acl.tokens.sort_by(|a, b| a.accessor.cmp(&b.accessor));
    data
}
