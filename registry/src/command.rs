//! What goes through the Raft log, and what applying it answers.

use serde::{Deserialize, Serialize};

use crate::acl::{PolicySpec, TokenSpec};
use crate::health::HealthStatus;
use crate::model::{InstanceSpec, SettingsSpec};
use crate::registry::RegistryData;

/// A log entry's payload: the operations the leader batched into it, and its wall clock when it
/// proposed them.
///
/// Apply reads time only from `time_ms`, never from the applying node's clock, so every replica
/// computes the same state. Operations apply in order; each has its own result.
///
/// Versioned like every persisted record: an entry names its format in `v`, and one of a format
/// newer than this build's [`FORMAT_VERSION`](crate::format::FORMAT_VERSION) is refused when
/// read, naming both, rather than misread. Format 1 leaves `v` out (the entries written before
/// the field existed are format 1 too); a later format writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CommandWire")]
pub struct Command {
    pub time_ms: u64,
    pub ops: Vec<Op>,
    /// The accessor id of the token behind each op, in the order of `ops` (`None`: a node's own
    /// op, or ACLs off); empty when no op has one. The audit list records it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by: Vec<Option<String>>,
}

/// [`Command`] as it is read: the same fields and the format version.
#[derive(Deserialize)]
struct CommandWire {
    #[serde(default)]
    v: Option<u32>,
    time_ms: u64,
    ops: Vec<Op>,
    #[serde(default)]
    by: Vec<Option<String>>,
}

/// A log entry of a format this build does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a log entry of format {found}; this build reads format {}: upgrade this node first \
     (README \"Upgrading\": followers first, the leader last)",
    crate::format::FORMAT_VERSION
)]
pub struct NewerFormat {
    pub found: u32,
}

impl TryFrom<CommandWire> for Command {
    type Error = NewerFormat;

    fn try_from(w: CommandWire) -> Result<Command, NewerFormat> {
        match w.v {
            Some(found) if found > crate::format::FORMAT_VERSION => Err(NewerFormat { found }),
            _ => Ok(Command {
                time_ms: w.time_ms,
                ops: w.ops,
                by: w.by,
            }),
        }
    }
}

impl Command {
    /// A command of ops proposed by the nodes themselves.
    pub fn new(time_ms: u64, ops: Vec<Op>) -> Command {
        Command {
            time_ms,
            ops,
            by: Vec::new(),
        }
    }

    /// The accessor behind op `i`.
    pub fn by(&self, i: usize) -> Option<&str> {
        self.by.get(i).and_then(Option::as_deref)
    }
}

/// A change to the registry. Every field was validated before the op was proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create or replace an instance. `health`, when set, is the instance's custom health from
    /// this very entry on (an external service registered with the health it states), so no
    /// reader ever sees the instance without it.
    Register {
        service: String,
        instance: InstanceSpec,
        /// Added after the format was pinned: absent from older entries, which mean `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<StatedHealth>,
    },
    /// Remove an instance; the service goes with its last instance.
    Deregister {
        service: String,
        id: String,
    },
    /// Set a service's settings (DNS TTL, fail-open), which outlive its instances.
    SetSettings {
        service: String,
        settings: SettingsSpec,
    },
    /// Remove a service's settings (its DNS answers go back to the agent's defaults).
    DeleteSettings {
        service: String,
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
    SetNodeUp {
        node: u64,
        up: bool,
    },
    /// Set an instance's custom health.
    SetHealth {
        service: String,
        id: String,
        status: HealthStatus,
        output: String,
    },
    /// Make the first management token; refused once done, unless `reset_index` names the
    /// bootstrap to undo (the reset procedure).
    AclBootstrap {
        accessor: String,
        secret_hash: String,
        reset_index: Option<u64>,
    },
    /// Create or replace a policy.
    AclSetPolicy {
        policy: PolicySpec,
    },
    AclDeletePolicy {
        name: String,
    },
    /// Create a token, or change an existing token's description and policies.
    AclSetToken {
        token: TokenSpec,
    },
    AclDeleteToken {
        accessor: String,
    },
    /// Delete every token whose expiry is at or before the entry's time (proposed by the leader).
    AclExpireTokens,
    /// Replace the whole registry with a backup's (`cairn snapshot restore`): services, settings,
    /// tokens and policies. Everything restored is stamped with the entry's index, so no index a
    /// client has seen goes back; the members marked down stay as they are (they describe this
    /// cluster now). The leader checked the backup (checksum, format, cluster, model rules)
    /// before proposing it.
    Restore {
        /// The index and term the backup was taken at, for the audit list and the log.
        from_index: u64,
        from_term: u64,
        data: Box<RegistryData>,
    },
    /// [`Op::Restore`] with the registry carried as its JSON text, in one string: what a leader
    /// proposes. An entry must reach each follower within one append-entries RPC, which
    /// openraft 0.9 bounds by the heartbeat interval (150 ms); decoding the nested registry of a
    /// backup of thousands of instances inside the follower's RPC handler took longer, retried
    /// forever, and a 2 MB backup never committed. A string decodes at memory speed; the
    /// registry is parsed when the entry is applied, once per node. `Restore` entries already
    /// in a log still apply.
    RestoreText {
        from_index: u64,
        from_term: u64,
        data: RegistryText,
    },
}

/// A registry as JSON text ([`Op::RestoreText`]). Shared, so a proposal retried or cloned does
/// not copy megabytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegistryText(std::sync::Arc<str>);

impl RegistryText {
    /// The registry's JSON text.
    pub fn encode(data: &RegistryData) -> serde_json::Result<RegistryText> {
        Ok(RegistryText(serde_json::to_string(data)?.into()))
    }

    /// The registry back. Every node parses the same text, so all fail or none does.
    pub fn decode(&self) -> Result<RegistryData, String> {
        serde_json::from_str(&self.0)
            .map_err(|e| format!("the restored registry does not parse: {e}"))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for RegistryText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryText({} bytes)", self.0.len())
    }
}

impl Op {
    /// A cheap estimate of the op's encoded size, to bound how much goes into one log entry.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = 128;
        match self {
            Op::Register {
                service,
                instance,
                health,
            } => {
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
                    + instance
                        .meta
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()
                    + checks
                    + health.as_ref().map_or(0, |h| h.output.len() + 32)
            }
            Op::Deregister { service, id } => FIXED + service.len() + id.len(),
            Op::SetSettings { service, .. } | Op::DeleteSettings { service } => {
                FIXED + service.len()
            }
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
            Op::AclBootstrap { .. } | Op::AclExpireTokens => FIXED,
            Op::AclSetPolicy { policy } => {
                FIXED
                    + policy.description.len()
                    + policy
                        .rules
                        .service
                        .keys()
                        .chain(policy.rules.service_prefix.keys())
                        .map(|k| k.len() + 16)
                        .sum::<usize>()
            }
            Op::AclDeletePolicy { name } => FIXED + name.len(),
            Op::AclSetToken { token } => {
                FIXED
                    + token.description.len()
                    + token.policies.iter().map(|p| p.len() + 4).sum::<usize>()
            }
            Op::AclDeleteToken { accessor } => FIXED + accessor.len(),
            // Megabytes: counted as more than any batch holds, so it closes its batch.
            Op::Restore { .. } | Op::RestoreText { .. } => 1 << 30,
        }
    }

    /// The op's name, as the audit list shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Register { .. } => "register",
            Op::Deregister { .. } => "deregister",
            Op::SetSettings { .. } => "set_settings",
            Op::DeleteSettings { .. } => "delete_settings",
            Op::SetCheckStatus { .. } => "set_check_status",
            Op::SetMaintenance { .. } => "set_maintenance",
            Op::SetNodeUp { .. } => "set_node_up",
            Op::SetHealth { .. } => "set_health",
            Op::AclBootstrap { .. } => "acl_bootstrap",
            Op::AclSetPolicy { .. } => "acl_set_policy",
            Op::AclDeletePolicy { .. } => "acl_delete_policy",
            Op::AclSetToken { .. } => "acl_set_token",
            Op::AclDeleteToken { .. } => "acl_delete_token",
            Op::AclExpireTokens => "acl_expire_tokens",
            Op::Restore { .. } | Op::RestoreText { .. } => "restore",
        }
    }

    /// Whether the audit list records the op: changes made through the API, not the nodes' own
    /// bookkeeping (check results, liveness, token expiry).
    pub fn audited(&self) -> bool {
        !matches!(
            self,
            Op::SetCheckStatus { .. } | Op::SetNodeUp { .. } | Op::AclExpireTokens
        )
    }

    /// The instance id the op touches, for the audit list.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Op::Register { instance, .. } => Some(&instance.id),
            Op::Deregister { id, .. }
            | Op::SetCheckStatus { id, .. }
            | Op::SetMaintenance { id, .. }
            | Op::SetHealth { id, .. } => Some(id),
            Op::AclSetPolicy { policy } => Some(&policy.name),
            Op::AclDeletePolicy { name } => Some(name),
            Op::AclSetToken { token } => Some(&token.accessor),
            Op::AclDeleteToken { accessor } | Op::AclBootstrap { accessor, .. } => Some(accessor),
            _ => None,
        }
    }

    /// The service the op touches; `None` for ops about the cluster, not a service.
    pub fn service(&self) -> Option<&str> {
        match self {
            Op::Register { service, .. }
            | Op::Deregister { service, .. }
            | Op::SetSettings { service, .. }
            | Op::DeleteSettings { service }
            | Op::SetCheckStatus { service, .. }
            | Op::SetMaintenance { service, .. }
            | Op::SetHealth { service, .. } => Some(service),
            Op::SetNodeUp { .. }
            | Op::AclBootstrap { .. }
            | Op::AclSetPolicy { .. }
            | Op::AclDeletePolicy { .. }
            | Op::AclSetToken { .. }
            | Op::AclDeleteToken { .. }
            | Op::AclExpireTokens
            | Op::Restore { .. }
            | Op::RestoreText { .. } => None,
        }
    }
}

/// A health stated by whoever registers an instance (Consul's `catalog/register` with a check
/// status), stored as the instance's custom health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatedHealth {
    pub status: HealthStatus,
    pub output: String,
}

/// The result of applying one operation. The index that committed it travels beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    /// Applied.
    Ok,
    /// The op names an instance that does not exist; nothing changed.
    NotFound { message: String },
    /// The op is not allowed in the current state (a second ACL bootstrap); nothing changed.
    Denied { message: String },
    /// The op conflicts with the current state (a policy still in use); nothing changed.
    Conflict { message: String },
}
