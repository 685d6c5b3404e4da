//! A property of a registry's state that the targets share: it is served, and it snapshots.

use cairn_registry::format::{decode_snapshot, encode_snapshot};
use cairn_registry::Registry;

/// The registry's state snapshots, and the snapshot decodes to the same state.
pub fn snapshots(registry: &Registry, index: u64) {
    let (_, services) = registry.services();
    for service in &services {
        for instance in service.instances.values() {
            let _ = instance.health();
            let _ = instance.to_info();
        }
    }
    let data = registry.export();
    let bytes = encode_snapshot(data.clone()).unwrap_or_else(|e| panic!("cannot encode: {e}"));
    let restored = decode_snapshot(&bytes, index)
        .unwrap_or_else(|e| panic!("the registry's own snapshot is refused: {e}"));
    assert_eq!(restored, data, "the snapshot changes the registry");
}
