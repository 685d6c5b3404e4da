//! A native registration body (`PUT /v1/services/web/instances/web-1`): validation never panics,
//! and what it accepts is what the rest of the cluster takes. A follower forwards the validated
//! instance to the leader, which validates it again ([`validate_op`]); the leader applies it;
//! the registry then snapshots and restores. A body the API accepts but one of those refuses
//! would be a write acknowledged by nobody, or a cluster that cannot install its own snapshot.

use cairn_api::InstanceRegistration;
use cairn_registry::model::{validate_op, validate_registration, InstanceSpec};
use cairn_registry::{Command, Dirty, Op, OpResult, Registry};

use super::state::snapshots;

pub fn check(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<InstanceRegistration>(data) else {
        return;
    };
    if let Ok(instance) = validate_registration("web-1", &body) {
        accepted("web", instance);
    }
}

/// What must hold for every instance the API validated for `service`.
pub fn accepted(service: &str, instance: InstanceSpec) {
    let op = Op::Register {
        service: service.to_owned(),
        instance,
        health: None,
    };
    if let Err(e) = validate_op(&op) {
        panic!("the leader refuses what the API accepted ({e}): {op:?}");
    }
    // The log entry's encoding round-trips.
    let json = serde_json::to_vec(&op).unwrap_or_else(|e| panic!("cannot encode {op:?}: {e}"));
    let decoded: Op = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("cannot decode our own op ({e}): {op:?}"));
    assert_eq!(decoded, op, "the op changes through its encoding");
    applies_and_snapshots(&[op]);
}

/// Applies `ops` (each already accepted by [`validate_op`]) to a registry, reads every instance's
/// health, and checks that the result snapshots and restores to the same data.
fn applies_and_snapshots(ops: &[Op]) {
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
