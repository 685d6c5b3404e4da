//! Quotas: how much the registry may hold, what its records weigh, and what a write would add.
//!
//! The registry keeps its usage as running counts that apply updates ([`Registry::usage`]), so
//! admitting a write costs a few lookups, never a walk over the instances. The leader admits
//! each write against those counts before proposing it (`cairn-raft`'s batcher); apply itself
//! never looks at a quota. That is deliberate: quotas are per-node flags, and a limit checked in
//! apply would let two replicas with different flags apply the same log differently. Refused
//! before it enters the log, a write is refused for every replica alike, and apply stays a pure
//! function of the log.
//!
//! Only growth is refused. Deregistrations, settings deletions, health and maintenance changes,
//! check results, liveness and ACL changes add nothing the quotas count (ACL records are not
//! counted: an operator must always be able to make the token that cleans up), and a
//! registration that replaces an instance with one no larger than it is always admitted.

use std::collections::HashMap;

use crate::command::Op;
use crate::model::{Instance, InstanceSpec};
use crate::registry::{registered_instance, Registry, RegistryData, ServiceSettings};

/// The default of `--quota-bytes`: 2 GiB, etcd's default backend quota.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// The default of `--quota-services`: far more services than a large deployment runs.
pub const DEFAULT_QUOTA_SERVICES: u64 = 100_000;
/// The default of `--quota-instances-per-service`: room for a million-instance service.
pub const DEFAULT_QUOTA_INSTANCES_PER_SERVICE: u64 = 2_000_000;
/// The default of `--quota-checks`: two checks for each of a million instances.
pub const DEFAULT_QUOTA_CHECKS: u64 = 2_000_000;

/// How much the registry holds, as the quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// What the instance and settings records take in storage, keys included: the sum of
    /// [`instance_bytes`] and [`settings_bytes`].
    pub bytes: u64,
    /// Services with at least one instance.
    pub services: u64,
    /// Checks of all instances.
    pub checks: u64,
}

/// The limits a leader admits writes against; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub bytes: u64,
    pub services: u64,
    pub instances_per_service: u64,
    /// Checks of all instances together: the probing the cluster's nodes share.
    pub checks: u64,
}

impl Quotas {
    /// No limit at all.
    pub const NONE: Quotas = Quotas {
        bytes: 0,
        services: 0,
        instances_per_service: 0,
        checks: 0,
    };

    /// The limit of `kind` (0: none).
    pub fn limit(&self, kind: QuotaKind) -> u64 {
        match kind {
            QuotaKind::Bytes => self.bytes,
            QuotaKind::Services => self.services,
            QuotaKind::InstancesPerService => self.instances_per_service,
            QuotaKind::Checks => self.checks,
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            bytes: DEFAULT_QUOTA_BYTES,
            services: DEFAULT_QUOTA_SERVICES,
            instances_per_service: DEFAULT_QUOTA_INSTANCES_PER_SERVICE,
            checks: DEFAULT_QUOTA_CHECKS,
        }
    }
}

/// Which quota a write ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    Bytes,
    Services,
    InstancesPerService,
    Checks,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::Bytes,
        QuotaKind::Services,
        QuotaKind::InstancesPerService,
        QuotaKind::Checks,
    ];

    /// The name metrics and messages use.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "bytes",
            QuotaKind::Services => "services",
            QuotaKind::InstancesPerService => "instances_per_service",
            QuotaKind::Checks => "checks",
        }
    }

    /// The agent flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            QuotaKind::Bytes => "--quota-bytes",
            QuotaKind::Services => "--quota-services",
            QuotaKind::InstancesPerService => "--quota-instances-per-service",
            QuotaKind::Checks => "--quota-checks",
        }
    }

    /// Its position in [`QuotaKind::ALL`], for per-kind counters.
    pub fn slot(self) -> usize {
        self as usize
    }
}

/// A write refused because it would take the registry past a quota; nothing was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    pub message: String,
}

/// What one write would add to the registry, as the quotas count it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Growth {
    pub bytes: u64,
    pub checks: u64,
    /// The service the write creates.
    pub service: Option<String>,
    /// The instance (service, id) the write creates.
    pub instance: Option<(String, String)>,
}

impl Growth {
    /// Whether the write adds anything a quota counts.
    pub fn is_none(&self) -> bool {
        *self == Growth::default()
    }
}

/// Growth admitted and proposed but not yet applied: the view does not show it, and the next
/// admission must count it, or concurrent writers would all fit under the same last slot.
#[derive(Debug, Default)]
pub struct Pending {
    bytes: u64,
    checks: u64,
    /// New services, with how many writes in flight create each.
    services: HashMap<String, u32>,
    /// New instances by service, then id, with how many writes in flight create each.
    instances: HashMap<String, HashMap<String, u32>>,
}

impl Pending {
    pub fn add(&mut self, g: &Growth) {
        self.bytes += g.bytes;
        self.checks += g.checks;
        if let Some(s) = &g.service {
            *self.services.entry(s.clone()).or_default() += 1;
        }
        if let Some((s, id)) = &g.instance {
            *self
                .instances
                .entry(s.clone())
                .or_default()
                .entry(id.clone())
                .or_default() += 1;
        }
    }

    /// Forgets growth that was applied (or failed): the view shows it now, or never will.
    pub fn remove(&mut self, g: &Growth) {
        self.bytes = self.bytes.saturating_sub(g.bytes);
        self.checks = self.checks.saturating_sub(g.checks);
        if let Some(s) = &g.service {
            if let Some(n) = self.services.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.services.remove(s);
                }
            }
        }
        if let Some((s, id)) = &g.instance {
            if let Some(ids) = self.instances.get_mut(s) {
                if let Some(n) = ids.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        ids.remove(id);
                    }
                }
                if ids.is_empty() {
                    self.instances.remove(s);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.checks == 0 && self.services.is_empty() && self.instances.is_empty()
    }
}

/// Counts the bytes written to it.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value`'s JSON, as the store encodes it; nothing is allocated.
fn json_len<T: serde::Serialize>(value: &T) -> u64 {
    let mut n = Counter(0);
    // Serialising plain data into a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, value);
    n.0
}

/// What an instance's record takes in storage: its JSON and its key (`i\0<service>\0<id>`).
pub fn instance_bytes(service: &str, inst: &Instance) -> u64 {
    json_len(inst) + (service.len() + inst.spec.id.len() + 3) as u64
}

/// What a service's settings record takes in storage: its JSON and its key (`c\0<service>`).
pub fn settings_bytes(service: &str, settings: &ServiceSettings) -> u64 {
    json_len(settings) + (service.len() + 2) as u64
}

impl Registry {
    /// What `op` would add to the registry as it is now. Only registrations and new settings
    /// grow it; a registration that replaces an instance with a spec no larger adds no bytes
    /// (its committed check results and health stay as they are).
    pub fn growth(&self, op: &Op) -> Growth {
        match op {
            Op::Register {
                service,
                instance,
                health,
            } => {
                let entry = self.service(service);
                let prev = entry
                    .as_ref()
                    .and_then(|e| e.instances.get(&instance.id).cloned());
                let new = registered_instance(
                    instance,
                    health.as_ref(),
                    prev.as_deref(),
                    self.applied_index() + 1,
                    self.time_ms(),
                );
                let bytes = match &prev {
                    Some(p) if spec_bytes(instance) <= spec_bytes(&p.spec) => 0,
                    Some(p) => {
                        instance_bytes(service, &new).saturating_sub(instance_bytes(service, p))
                    }
                    None => instance_bytes(service, &new),
                };
                let old_checks = prev.as_ref().map_or(0, |p| p.spec.checks.len());
                Growth {
                    bytes,
                    checks: instance.checks.len().saturating_sub(old_checks) as u64,
                    service: entry.is_none().then(|| service.clone()),
                    instance: prev
                        .is_none()
                        .then(|| (service.clone(), instance.id.clone())),
                }
            }
            Op::SetSettings { service, settings } => {
                let old = self.settings(service);
                let new = ServiceSettings {
                    settings: settings.clone(),
                    // The same index as the old record, so only the settings are compared.
                    modify_index: old
                        .as_ref()
                        .map_or(self.applied_index() + 1, |o| o.modify_index),
                };
                let old_bytes = old.as_ref().map_or(0, |o| settings_bytes(service, o));
                Growth {
                    bytes: settings_bytes(service, &new).saturating_sub(old_bytes),
                    ..Growth::default()
                }
            }
            Op::Deregister { .. }
            | Op::DeleteSettings { .. }
            | Op::SetCheckStatus { .. }
            | Op::SetMaintenance { .. }
            | Op::SetNodeUp { .. }
            | Op::SetHealth { .. }
            | Op::AclBootstrap { .. }
            | Op::AclSetPolicy { .. }
            | Op::AclDeletePolicy { .. }
            | Op::AclSetToken { .. }
            | Op::AclDeleteToken { .. }
            | Op::AclExpireTokens
            // Checked as a whole by `admit`: it replaces, it does not add.
            | Op::Restore { .. }
            | Op::RestoreText { .. } => Growth::default(),
        }
    }

    /// Admits `op` under `quotas`, counting the growth of writes admitted before it and not yet
    /// applied (`pending`): its growth, to add to `pending` until it is applied; or the quota it
    /// would break. A write that adds nothing is always admitted.
    pub fn admit(
        &self,
        op: &Op,
        quotas: &Quotas,
        pending: &Pending,
    ) -> Result<Growth, QuotaExceeded> {
        match op {
            Op::Restore { data, .. } => {
                return restore_fits(data, quotas).map(|()| Growth::default())
            }
            // Validated (so parsed) before it is admitted: a text that does not parse never
            // gets here, and one that did not would add nothing.
            Op::RestoreText { data, .. } => {
                return match data.decode() {
                    Ok(data) => restore_fits(&data, quotas).map(|()| Growth::default()),
                    Err(_) => Ok(Growth::default()),
                }
            }
            _ => {}
        }
        let g = self.growth(op);
        if g.is_none() {
            return Ok(g);
        }
        let usage = self.usage();
        let refuse = |kind: QuotaKind, message: String| {
            Err(QuotaExceeded {
                kind,
                message: format!(
                    "quota exceeded: {message} (the {} quota, {}); deregister instances or \
                     delete service settings to make room",
                    kind.name(),
                    kind.flag()
                ),
            })
        };
        if let Some(s) = &g.service {
            // Services other writes in flight create, which the view does not show yet.
            let coming = pending
                .services
                .keys()
                .filter(|p| *p != s && self.service(p).is_none())
                .count() as u64;
            if quotas.services > 0 && usage.services + coming >= quotas.services {
                return refuse(
                    QuotaKind::Services,
                    format!(
                        "the registry has {} services, the most allowed: {}; service {s:?} \
                         would be one more",
                        usage.services + coming,
                        quotas.services
                    ),
                );
            }
        }
        if let Some((s, id)) = &g.instance {
            let entry = self.service(s);
            let coming = pending.instances.get(s).map_or(0, |ids| {
                ids.keys()
                    .filter(|i| {
                        *i != id && !entry.as_ref().is_some_and(|e| e.instances.contains_key(*i))
                    })
                    .count() as u64
            });
            let n = entry.as_ref().map_or(0, |e| e.instances.len() as u64) + coming;
            if quotas.instances_per_service > 0 && n >= quotas.instances_per_service {
                return refuse(
                    QuotaKind::InstancesPerService,
                    format!(
                        "service {s:?} has {n} instances, the most allowed: {}; instance {id:?} \
                         would be one more",
                        quotas.instances_per_service
                    ),
                );
            }
        }
        let checks = usage.checks + pending.checks;
        if g.checks > 0 && quotas.checks > 0 && checks + g.checks > quotas.checks {
            return refuse(
                QuotaKind::Checks,
                format!(
                    "the registry has {checks} checks and this write adds {}, past the limit \
                     of {}",
                    g.checks, quotas.checks
                ),
            );
        }
        let bytes = usage.bytes + pending.bytes;
        if g.bytes > 0 && quotas.bytes > 0 && bytes + g.bytes > quotas.bytes {
            return refuse(
                QuotaKind::Bytes,
                format!(
                    "the registry holds {bytes} bytes and this write adds {}, past the limit \
                     of {}",
                    g.bytes, quotas.bytes
                ),
            );
        }
        Ok(g)
    }
}

/// The length of a registration's JSON: what replacing an instance is compared by.
fn spec_bytes(spec: &InstanceSpec) -> u64 {
    json_len(spec)
}

/// Whether a restored registry fits the quotas as a whole: a restore replaces the registry, so
/// what counts is what the backup holds, not what it adds. A backup over a quota is refused
/// before it is proposed, like any write that would take the registry past one.
fn restore_fits(data: &RegistryData, quotas: &Quotas) -> Result<(), QuotaExceeded> {
    let refuse = |kind: QuotaKind, message: String| {
        Err(QuotaExceeded {
            kind,
            message: format!(
                "quota exceeded: the backup {message} (the {} quota, {}); raise the quota on \
                 every server to restore it",
                kind.name(),
                kind.flag()
            ),
        })
    };
    let services = data.services.len() as u64;
    if quotas.services > 0 && services > quotas.services {
        return refuse(
            QuotaKind::Services,
            format!("holds {services} services, over {}", quotas.services),
        );
    }
    if let Some(s) = data.services.iter().max_by_key(|s| s.instances.len()) {
        let n = s.instances.len() as u64;
        if quotas.instances_per_service > 0 && n > quotas.instances_per_service {
            return refuse(
                QuotaKind::InstancesPerService,
                format!(
                    "holds {n} instances of {:?}, over {}",
                    s.name, quotas.instances_per_service
                ),
            );
        }
    }
    let checks: u64 = data.services.iter().map(|s| s.checks()).sum();
    if quotas.checks > 0 && checks > quotas.checks {
        return refuse(
            QuotaKind::Checks,
            format!("holds {checks} checks, over {}", quotas.checks),
        );
    }
    let bytes = data.services.iter().map(|s| s.bytes()).sum::<u64>()
        + data
            .settings
            .iter()
            .map(|(name, s)| settings_bytes(name, s))
            .sum::<u64>();
    if quotas.bytes > 0 && bytes > quotas.bytes {
        return refuse(
            QuotaKind::Bytes,
            format!("holds {bytes} bytes, over {}", quotas.bytes),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_snapshot, encode_snapshot};
    use crate::model::{validate_registration, SettingsSpec};
    use crate::{Command, Dirty, HealthStatus, OpResult};

    fn spec(id: &str, body: serde_json::Value) -> InstanceSpec {
        validate_registration(id, &serde_json::from_value(body).unwrap()).unwrap()
    }

    fn register(service: &str, id: &str, tags: &[&str], checks: usize) -> Op {
        let checks: Vec<_> = (0..checks)
            .map(|i| serde_json::json!({"id": format!("c{i}"), "kind": "ttl", "ttl": "5s"}))
            .collect();
        Op::Register {
            service: service.into(),
            instance: spec(
                id,
                serde_json::json!({"address": "10.0.0.1", "port": 80, "tags": tags, "checks": checks}),
            ),
            health: None,
        }
    }

    fn apply(r: &Registry, op: Op) -> OpResult {
        let index = r.applied_index() + 1;
        let cmd = Command::new(1000 + index, vec![op]);
        r.apply(index, &cmd, &mut Dirty::default()).remove(0)
    }

    /// The usage counted from scratch: a walk over every record.
    fn walked(r: &Registry) -> Usage {
        let data = r.export();
        let mut u = Usage {
            services: data.services.len() as u64,
            ..Usage::default()
        };
        for s in &data.services {
            for inst in s.instances.values() {
                u.bytes += instance_bytes(&s.name, inst);
                u.checks += inst.spec.checks.len() as u64;
            }
        }
        for (name, s) in &data.settings {
            u.bytes += settings_bytes(name, s);
        }
        u
    }

    /// Every op that changes a record's size, in turn.
    fn history() -> Vec<Op> {
        vec![
            register("web", "a", &["x"], 2),
            register("web", "b", &[], 0),
            register("db", "a", &["primary"], 1),
            Op::SetSettings {
                service: "web".into(),
                settings: SettingsSpec {
                    fail_open: true,
                    dns_ttl_s: Some(30),
                    cloudmap: None,
                },
            },
            Op::SetCheckStatus {
                service: "web".into(),
                id: "a".into(),
                check: "c1".into(),
                status: HealthStatus::Passing,
                output: "all good, and a longer output than before".into(),
            },
            Op::SetHealth {
                service: "web".into(),
                id: "b".into(),
                status: HealthStatus::Warning,
                output: "slow".into(),
            },
            Op::SetMaintenance {
                service: "db".into(),
                id: "a".into(),
                reason: Some("upgrade".into()),
            },
            register("web", "a", &["x", "y"], 3),
            register("web", "b", &[], 1),
            Op::Deregister {
                service: "db".into(),
                id: "a".into(),
            },
            Op::SetSettings {
                service: "db".into(),
                settings: SettingsSpec::default(),
            },
            Op::SetSettings {
                service: "web".into(),
                settings: SettingsSpec::default(),
            },
        ]
    }

    #[test]
    fn usage_follows_every_apply_and_equals_a_walk() {
        let r = Registry::default();
        assert_eq!(r.usage(), Usage::default());
        for op in history() {
            assert_eq!(apply(&r, op.clone()), OpResult::Ok, "{op:?}");
            assert_eq!(r.usage(), walked(&r), "after {op:?}");
        }
        let u = r.usage();
        assert_eq!((u.services, u.checks), (1, 4));
        assert!(u.bytes > 500, "{u:?}");
    }

    #[test]
    fn restart_and_snapshot_install_rebuild_the_same_usage() {
        let r = Registry::default();
        for op in history() {
            apply(&r, op);
        }
        let index = r.applied_index();
        // A restart: the store hands the records back as data.
        let restarted = Registry::from_data(r.export(), index);
        assert_eq!(restarted.usage(), r.usage());
        // A snapshot install: decoded from its bytes, over a registry holding something else.
        let bytes = encode_snapshot(r.export()).unwrap();
        let installed = Registry::default();
        apply(&installed, register("other", "z", &[], 5));
        installed.replace(decode_snapshot(&bytes, index).unwrap(), index);
        assert_eq!(installed.usage(), r.usage());
        assert_eq!(installed.usage(), walked(&installed));
    }

    #[test]
    fn deleting_everything_gives_the_bytes_back() {
        let r = Registry::default();
        for op in history() {
            apply(&r, op);
        }
        for id in ["a", "b"] {
            apply(
                &r,
                Op::Deregister {
                    service: "web".into(),
                    id: id.into(),
                },
            );
        }
        for s in ["web", "db"] {
            assert_eq!(
                apply(&r, Op::DeleteSettings { service: s.into() }),
                OpResult::Ok
            );
        }
        assert_eq!(r.usage(), Usage::default());
        assert!(r.settings("web").is_none());
        assert!(matches!(
            apply(
                &r,
                Op::DeleteSettings {
                    service: "web".into()
                }
            ),
            OpResult::NotFound { .. }
        ));
    }

    fn quotas() -> Quotas {
        Quotas {
            bytes: 0,
            services: 2,
            instances_per_service: 2,
            checks: 3,
        }
    }

    fn refused(r: &Registry, op: &Op, q: &Quotas) -> QuotaKind {
        match r.admit(op, q, &Pending::default()) {
            Err(e) => {
                assert!(e.message.starts_with("quota exceeded: "), "{}", e.message);
                assert!(e.message.contains(e.kind.flag()), "{}", e.message);
                e.kind
            }
            Ok(g) => panic!("{op:?} admitted with {g:?}"),
        }
    }

    #[test]
    fn each_quota_refuses_only_growth() {
        let r = Registry::default();
        let q = quotas();
        for op in [register("web", "a", &[], 1), register("web", "b", &[], 1)] {
            assert!(r.admit(&op, &q, &Pending::default()).is_ok());
            apply(&r, op);
        }
        assert_eq!(
            refused(&r, &register("web", "c", &[], 0), &q),
            QuotaKind::InstancesPerService
        );
        apply(&r, register("db", "a", &[], 1));
        assert_eq!(
            refused(&r, &register("cache", "a", &[], 0), &q),
            QuotaKind::Services
        );
        assert_eq!(
            refused(&r, &register("web", "a", &[], 2), &q),
            QuotaKind::Checks,
            "a replacement that adds a check"
        );
        let full = r.usage().bytes;
        let bytes = Quotas {
            bytes: full,
            ..Quotas::NONE
        };
        assert_eq!(
            refused(&r, &register("web", "a", &["new-tag"], 1), &bytes),
            QuotaKind::Bytes,
            "a larger replacement"
        );
        assert_eq!(
            refused(
                &r,
                &Op::SetSettings {
                    service: "web".into(),
                    settings: SettingsSpec::default()
                },
                &bytes
            ),
            QuotaKind::Bytes,
            "new settings"
        );
        // Past index 9, a re-registration's new modify index takes one more digit than the
        // record it replaces: still no growth.
        while r.applied_index() < 12 {
            apply(&r, Op::SetNodeUp { node: 9, up: true });
        }
        // Over every quota at once, all that does not grow the registry is admitted.
        let over = Quotas {
            bytes: 1,
            services: 1,
            instances_per_service: 1,
            checks: 1,
        };
        for op in [
            register("web", "a", &[], 1),
            register("web", "a", &[], 0),
            Op::Deregister {
                service: "web".into(),
                id: "a".into(),
            },
            Op::DeleteSettings {
                service: "web".into(),
            },
            Op::SetHealth {
                service: "web".into(),
                id: "a".into(),
                status: HealthStatus::Critical,
                output: "x".repeat(4000),
            },
            Op::SetCheckStatus {
                service: "web".into(),
                id: "a".into(),
                check: "c0".into(),
                status: HealthStatus::Critical,
                output: "x".repeat(4000),
            },
            Op::SetMaintenance {
                service: "web".into(),
                id: "a".into(),
                reason: Some("x".repeat(4000)),
            },
            Op::SetNodeUp { node: 2, up: false },
            Op::AclExpireTokens,
        ] {
            assert_eq!(
                r.admit(&op, &over, &Pending::default()),
                Ok(Growth::default()),
                "{op:?}"
            );
        }
        assert_eq!(
            r.admit(
                &register("x", "y", &[], 0),
                &Quotas::NONE,
                &Pending::default()
            )
            .map(|g| g.service),
            Ok(Some("x".into()))
        );
    }

    #[test]
    fn growth_in_flight_counts_until_released() {
        let r = Registry::default();
        let q = quotas();
        let mut pending = Pending::default();
        let a = r
            .admit(&register("web", "a", &[], 1), &q, &pending)
            .unwrap();
        pending.add(&a);
        let b = r
            .admit(&register("web", "b", &[], 1), &q, &pending)
            .unwrap();
        pending.add(&b);
        // Neither is applied yet: a third would still make three instances, three checks.
        let third = register("web", "c", &[], 0);
        assert!(r.admit(&third, &q, &pending).is_err());
        let svc = r.admit(&register("db", "a", &[], 0), &q, &pending).unwrap();
        pending.add(&svc);
        assert!(
            r.admit(&register("cache", "a", &[], 0), &q, &pending)
                .is_err(),
            "web and db are coming"
        );
        for g in [&a, &b, &svc] {
            pending.remove(g);
        }
        assert!(pending.is_empty());
        assert!(r.admit(&third, &q, &pending).is_ok(), "nothing applied");
    }
}
