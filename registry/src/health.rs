//! Health as the registry stores it.
//!
//! These are persisted types: they are written into log entries, RocksDB records and snapshots,
//! so their encoding is pinned by the golden files under `tests/golden/`. The API has types of
//! the same shape (`cairn_api::HealthStatus`, `cairn_api::CheckState`); the conversions below are
//! the only bridge, so a change to the API's serde never changes what the cluster replicates.

use serde::{Deserialize, Serialize};

/// The health of a check or an instance. Ordered from best to worst, so the health of an
/// instance is the `max` of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<cairn_api::HealthStatus> for HealthStatus {
    fn from(h: cairn_api::HealthStatus) -> Self {
        match h {
            cairn_api::HealthStatus::Passing => HealthStatus::Passing,
            cairn_api::HealthStatus::Warning => HealthStatus::Warning,
            cairn_api::HealthStatus::Critical => HealthStatus::Critical,
        }
    }
}

impl From<HealthStatus> for cairn_api::HealthStatus {
    fn from(h: HealthStatus) -> Self {
        match h {
            HealthStatus::Passing => cairn_api::HealthStatus::Passing,
            HealthStatus::Warning => cairn_api::HealthStatus::Warning,
            HealthStatus::Critical => cairn_api::HealthStatus::Critical,
        }
    }
}

/// A status with its output and the leader-stamped time (Unix ms) it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    pub status: HealthStatus,
    pub output: String,
    pub changed_at_ms: u64,
}

impl From<&CheckState> for cairn_api::CheckState {
    fn from(c: &CheckState) -> Self {
        cairn_api::CheckState {
            status: c.status.into(),
            output: c.output.clone(),
            changed_at_ms: c.changed_at_ms,
        }
    }
}
