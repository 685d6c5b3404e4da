//! What goes through the Raft log, and what applying it answers.

use cairn_client::HealthStatus;
use serde::{Deserialize, Serialize};

use crate::model::InstanceSpec;

/// A log entry's payload: an operation and the leader's wall clock when it proposed it.
///
/// Apply reads time only from `time_ms`, never from the applying node's clock, so every replica
/// computes the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub time_ms: u64,
    pub op: Op,
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
    /// Set an instance's custom health.
    SetHealth {
        service: String,
        id: String,
        status: HealthStatus,
        output: String,
    },
}

impl Op {
    /// The service the op touches.
    pub fn service(&self) -> &str {
        match self {
            Op::Register { service, .. }
            | Op::Deregister { service, .. }
            | Op::SetHealth { service, .. } => service,
        }
    }
}

/// The result of applying one entry. The index that committed it travels beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// Applied; for blank and membership entries as well.
    Ok,
    /// The op names an instance that does not exist; nothing changed.
    NotFound { message: String },
}
