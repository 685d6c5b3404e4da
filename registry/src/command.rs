//! What goes through the Raft log, and what applying it answers.

use serde::{Deserialize, Serialize};

use crate::health::HealthStatus;
use crate::model::{InstanceSpec, SettingsSpec};

/// A log entry's payload: the operations the leader batched into it, and its wall clock when it
/// proposed them.
///
/// Apply reads time only from `time_ms`, never from the applying node's clock, so every replica
/// computes the same state. Operations apply in order; each has its own result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub time_ms: u64,
    pub ops: Vec<Op>,
}

/// A change to the registry. Every field was validated before the op was proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create or replace an instance.
    Register {
        service: String,
        instance: InstanceSpec,
    },
    /// Remove an instance; the service goes with its last instance.
    Deregister { service: String, id: String },
    /// Set a service's settings (DNS TTL, fail-open), which outlive its instances.
    SetSettings {
        service: String,
        settings: SettingsSpec,
    },
    /// Record a check's new status, decided by the node that owns the check. Only changes of
    /// status are proposed; the output travels along.
    SetCheckStatus {
        service: String,
        id: String,
        check: String,
        status: HealthStatus,
        output: String,
    },
    /// Put an instance in maintenance (`reason` set) or take it out (`None`).
    SetMaintenance {
        service: String,
        id: String,
        reason: Option<String>,
    },
    /// Mark a member up or down, as the leader observes it; check ownership follows.
    SetNodeUp { node: u64, up: bool },
    /// Set an instance's custom health.
    SetHealth {
        service: String,
        id: String,
        status: HealthStatus,
        output: String,
    },
}

impl Op {
    /// A cheap estimate of the op's encoded size, to bound how much goes into one log entry.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = 128;
        match self {
            Op::Register { service, instance } => {
                let strings = |m: &std::collections::BTreeMap<String, String>| {
                    m.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
                };
                let checks: usize = instance
                    .checks
                    .iter()
                    .map(|c| {
                        256 + match &c.kind {
                            crate::model::CheckKindSpec::Http { url, headers, .. } => {
                                url.len() + strings(headers)
                            }
                            _ => 0,
                        }
                    })
                    .sum();
                FIXED
                    + service.len()
                    + instance.id.len()
                    + instance.address.len()
                    + instance.tags.iter().map(|t| t.len() + 4).sum::<usize>()
                    + strings(&instance.meta)
                    + checks
            }
            Op::Deregister { service, id } => FIXED + service.len() + id.len(),
            Op::SetSettings { service, .. } => FIXED + service.len(),
            Op::SetCheckStatus {
                service,
                id,
                check,
                output,
                ..
            } => FIXED + service.len() + id.len() + check.len() + output.len(),
            Op::SetMaintenance {
                service,
                id,
                reason,
            } => FIXED + service.len() + id.len() + reason.as_ref().map_or(0, String::len),
            Op::SetNodeUp { .. } => FIXED,
            Op::SetHealth {
                service,
                id,
                output,
                ..
            } => FIXED + service.len() + id.len() + output.len(),
        }
    }

    /// The service the op touches; `None` for ops about the cluster, not a service.
    pub fn service(&self) -> Option<&str> {
        match self {
            Op::Register { service, .. }
            | Op::Deregister { service, .. }
            | Op::SetSettings { service, .. }
            | Op::SetCheckStatus { service, .. }
            | Op::SetMaintenance { service, .. }
            | Op::SetHealth { service, .. } => Some(service),
            Op::SetNodeUp { .. } => None,
        }
    }
}

/// The result of applying one operation. The index that committed it travels beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    /// Applied.
    Ok,
    /// The op names an instance that does not exist; nothing changed.
    NotFound { message: String },
}
