//! Properties of a registry's state shared by the targets: it applies, is served, and snapshots.

use cairn_registry::format::{decode_snapshot, encode_snapshot};
use cairn_registry::{Command, Dirty, Op, OpResult, Registry};

/// Applies `ops` (each already accepted by [`validate_op`]) to a registry, reads every instance's
/// health, and checks that the result snapshots and restores to the same data.
pub fn applies_and_snapshots(ops: &[Op]) {
    let registry = Registry::default();
    let index = 1;
    let results = registry.apply(
        index,
        &Command::new(1_000, ops.to_vec()),
        &mut Dirty::default(),
    );
    assert_eq!(results.len(), ops.len());
    if ops.len() == 1 && matches!(ops[0], Op::Register { .. }) {
        assert_eq!(results[0], OpResult::Ok, "registering {:?}", ops[0]);
    }
    snapshots(&registry, index);
}

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
