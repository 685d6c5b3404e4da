//! The cluster RPC's bodies as a node receives them: decoding never panics, and a forwarded
//! write the leader accepts ([`Forward::check`]) applies to a registry that then snapshots and
//! restores. The same holds for the commands of an append-entries request whose ops all pass
//! [`validate_op`]: what a leader would have proposed.
//!
//! The first byte picks the body, the rest is its JSON: 0 a forwarded request, 1 an
//! append-entries request, 2 a vote request, 3 a snapshot chunk, 4 a forwarded request's reply.

use cairn_raft::rpc::{Forward, ForwardReply};
use cairn_raft::{NodeId, TypeConfig, WriteError};
use cairn_registry::model::validate_op;
use cairn_registry::{Command, Dirty, Registry};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::EntryPayload;

use super::state::snapshots;

pub fn check(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => forward(body),
        1 => append(body),
        2 => {
            let _ = serde_json::from_slice::<VoteRequest<NodeId>>(body);
        }
        3 => {
            let _ = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<Result<ForwardReply, WriteError>>(body);
        }
    }
}

fn forward(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Forward>(body) else {
        return;
    };
    if req.check().is_err() {
        return;
    }
    if let Forward::Write { op, by, .. } = req {
        let mut cmd = Command::new(2_000, vec![op]);
        cmd.by = vec![by];
        applies(&cmd);
    }
}

fn append(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(body) else {
        return;
    };
    for entry in &req.entries {
        if let EntryPayload::Normal(cmd) = &entry.payload {
            if cmd.ops.iter().all(|op| validate_op(op).is_ok()) {
                applies(cmd);
            }
        }
    }
}

/// Applies `cmd` at index 2 to a registry holding one instance with a TTL check (so that ops
/// naming it find it), and checks that the result snapshots.
fn applies(cmd: &Command) {
    let registry = seeded();
    let results = registry.apply(2, cmd, &mut Dirty::default());
    assert_eq!(results.len(), cmd.ops.len());
    snapshots(&registry, 2);
}

fn seeded() -> Registry {
    let body = serde_json::json!({
        "address": "10.0.0.1",
        "port": 80,
        "tags": ["v1"],
        "checks": [{"kind": "ttl", "ttl": "10s"}],
    });
    let body = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
    let instance = cairn_registry::model::validate_registration("web-1", &body)
        .unwrap_or_else(|e| panic!("{e}"));
    let registry = Registry::default();
    let op = cairn_registry::Op::Register {
        service: "web".into(),
        instance,
        health: None,
    };
    registry.apply(1, &Command::new(1_000, vec![op]), &mut Dirty::default());
    registry
}
