//! The registry's in-memory read view, and the deterministic apply that keeps it current.
//!
//! Every reader (HTTP, DNS, the health checker) reads this view; nothing reads RocksDB on a
//! request path. Each service is an immutable `Arc<ServiceEntry>`: a read is a map lookup and an
//! `Arc` clone under a lock held for nanoseconds, and apply builds a new entry beside the old one
//! and swaps it in, so readers never wait on a half-applied change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_client::{CheckState, HealthStatus, ServiceSummary};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Op};
use crate::model::Instance;

/// A service and its instances at one point in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub create_index: u64,
    /// Index of the last change to the service or any of its instances.
    pub modify_index: u64,
    pub instances: BTreeMap<String, Arc<Instance>>,
}

impl ServiceEntry {
    fn new(name: &str, index: u64) -> Self {
        ServiceEntry {
            name: name.to_owned(),
            create_index: index,
            modify_index: index,
            instances: BTreeMap::new(),
        }
    }

    /// The union of the instances' tags.
    pub fn tags(&self) -> BTreeSet<&str> {
        self.instances
            .values()
            .flat_map(|i| i.spec.tags.iter().map(String::as_str))
            .collect()
    }

    pub fn summary(&self) -> ServiceSummary {
        let mut s = ServiceSummary {
            name: self.name.clone(),
            index: self.modify_index,
            tags: self.tags().into_iter().map(str::to_owned).collect(),
            instances: self.instances.len() as u32,
            passing: 0,
            warning: 0,
            critical: 0,
        };
        for inst in self.instances.values() {
            match inst.health() {
                HealthStatus::Passing => s.passing += 1,
                HealthStatus::Warning => s.warning += 1,
                HealthStatus::Critical => s.critical += 1,
            }
        }
        s
    }
}

/// The whole registry as plain data: what snapshots carry and restarts load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryData {
    /// Index of the last change to the set of services or their tags.
    pub list_index: u64,
    pub services: Vec<Arc<ServiceEntry>>,
}

/// The keys apply touched, so the store persists exactly those.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub services: BTreeSet<String>,
    pub instances: BTreeSet<(String, String)>,
    pub list_index: bool,
}

/// The shared, always-current view of the registry on this node.
#[derive(Debug, Default)]
pub struct Registry {
    services: RwLock<HashMap<String, Arc<ServiceEntry>>>,
    list_index: AtomicU64,
    applied_index: AtomicU64,
}

impl Registry {
    pub(crate) fn from_data(data: RegistryData, applied_index: u64) -> Self {
        let r = Registry::default();
        r.replace(data, applied_index);
        r
    }

    /// One service, or `None` when it has no instances.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceEntry>> {
        self.services.read().get(name).cloned()
    }

    /// Every service, sorted by name, with the service-list index they were read at.
    pub fn services(&self) -> (u64, Vec<Arc<ServiceEntry>>) {
        let guard = self.services.read();
        let index = self.list_index.load(Ordering::Acquire);
        let mut all: Vec<_> = guard.values().cloned().collect();
        drop(guard);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        (index, all)
    }

    /// Index of the last change to the set of services or their tags.
    pub fn list_index(&self) -> u64 {
        self.list_index.load(Ordering::Acquire)
    }

    /// Index of the last log entry applied to this view.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The whole registry as data, for a snapshot. Cheap: clones `Arc`s, not instances.
    pub fn export(&self) -> RegistryData {
        let (list_index, services) = self.services();
        RegistryData {
            list_index,
            services,
        }
    }

    /// Replaces everything (snapshot install, restart).
    pub(crate) fn replace(&self, data: RegistryData, applied_index: u64) {
        let map = data
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut guard = self.services.write();
        *guard = map;
        self.list_index.store(data.list_index, Ordering::Release);
        self.applied_index.store(applied_index, Ordering::Release);
    }

    pub(crate) fn set_applied(&self, index: u64) {
        self.applied_index.store(index, Ordering::Release);
    }

    /// Applies one command at log `index`. Deterministic: reads nothing but the view, the index
    /// and the command (including its leader-stamped time).
    pub(crate) fn apply(&self, index: u64, cmd: &Command, dirty: &mut Dirty) -> CommandResult {
        let name = cmd.op.service();
        let old = self.service(name);
        let old_tags: BTreeSet<String> = old
            .as_ref()
            .map(|s| s.tags().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        // Only apply writes the view, so nothing changes between this read and the swap below.
        let mut entry = match &old {
            Some(s) => ServiceEntry::clone(s),
            None => ServiceEntry::new(name, index),
        };
        let changed_id = match &cmd.op {
            Op::Register { instance, .. } => {
                let prev = entry.instances.get(&instance.id);
                let checks = instance
                    .checks
                    .iter()
                    .map(|spec| {
                        // A check that survives a re-registration keeps its committed result.
                        prev.and_then(|p| {
                            p.spec
                                .checks
                                .iter()
                                .position(|c| c.id == spec.id && c.kind() == spec.kind())
                                .map(|i| p.checks[i].clone())
                        })
                        .unwrap_or_else(|| CheckState {
                            status: spec.initial_status,
                            output: String::new(),
                            changed_at_ms: cmd.time_ms,
                        })
                    })
                    .collect();
                let inst = Instance {
                    spec: instance.clone(),
                    checks,
                    custom_health: prev.and_then(|p| p.custom_health.clone()),
                    create_index: prev.map_or(index, |p| p.create_index),
                    modify_index: index,
                };
                entry.instances.insert(instance.id.clone(), Arc::new(inst));
                instance.id.clone()
            }
            Op::Deregister { id, .. } => {
                if entry.instances.remove(id).is_none() {
                    return not_found(name, id);
                }
                id.clone()
            }
            Op::SetHealth {
                id, status, output, ..
            } => {
                let Some(inst) = entry.instances.get_mut(id) else {
                    return not_found(name, id);
                };
                let inst = Arc::make_mut(inst);
                let changed = inst.custom_health.as_ref().map(|c| c.status) != Some(*status);
                let changed_at_ms = match &inst.custom_health {
                    Some(c) if !changed => c.changed_at_ms,
                    _ => cmd.time_ms,
                };
                inst.custom_health = Some(CheckState {
                    status: *status,
                    output: output.clone(),
                    changed_at_ms,
                });
                if !changed {
                    // New output alone is stored but does not move any index: watchers are woken
                    // by changes of health, not by chatter.
                    dirty.instances.insert((name.to_owned(), id.clone()));
                    self.swap(name, Some(entry));
                    return CommandResult::Ok;
                }
                inst.modify_index = index;
                id.clone()
            }
        };
        entry.modify_index = index;
        dirty.services.insert(name.to_owned());
        dirty.instances.insert((name.to_owned(), changed_id));
        let new_tags: BTreeSet<String> = entry.tags().into_iter().map(str::to_owned).collect();
        let appeared_or_gone = old.is_none() || entry.instances.is_empty();
        if appeared_or_gone || new_tags != old_tags {
            self.list_index.store(index, Ordering::Release);
            dirty.list_index = true;
        }
        let entry = (!entry.instances.is_empty()).then_some(entry);
        self.swap(name, entry);
        CommandResult::Ok
    }

    fn swap(&self, name: &str, entry: Option<ServiceEntry>) {
        let mut guard = self.services.write();
        match entry {
            Some(e) => {
                guard.insert(name.to_owned(), Arc::new(e));
            }
            None => {
                guard.remove(name);
            }
        }
    }
}

fn not_found(service: &str, id: &str) -> CommandResult {
    CommandResult::NotFound {
        message: format!("service {service:?} has no instance {id:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate_registration;

    fn register(service: &str, id: &str, tags: &[&str]) -> Command {
        let body = serde_json::json!({"address": "10.0.0.1", "port": 80, "tags": tags});
        let spec = validate_registration(id, &serde_json::from_value(body).unwrap()).unwrap();
        Command {
            time_ms: 1000,
            op: Op::Register {
                service: service.into(),
                instance: spec,
            },
        }
    }

    fn deregister(service: &str, id: &str) -> Command {
        Command {
            time_ms: 2000,
            op: Op::Deregister {
                service: service.into(),
                id: id.into(),
            },
        }
    }

    fn set_health(service: &str, id: &str, status: HealthStatus, output: &str) -> Command {
        Command {
            time_ms: 3000,
            op: Op::SetHealth {
                service: service.into(),
                id: id.into(),
                status,
                output: output.into(),
            },
        }
    }

    #[test]
    fn register_creates_the_service_and_moves_both_indexes() {
        let r = Registry::default();
        let mut d = Dirty::default();
        assert_eq!(
            r.apply(5, &register("web", "a", &["v1"]), &mut d),
            CommandResult::Ok
        );
        let s = r.service("web").unwrap();
        assert_eq!((s.create_index, s.modify_index), (5, 5));
        assert_eq!(r.list_index(), 5);
        assert!(d.list_index && d.services.contains("web"));
        assert!(d.instances.contains(&("web".into(), "a".into())));
    }

    #[test]
    fn replacing_keeps_create_index_and_tags_unchanged_keeps_list_index() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(5, &register("web", "a", &["v1"]), &mut d);
        r.apply(6, &register("web", "a", &["v1"]), &mut d);
        let inst = r.service("web").unwrap().instances["a"].clone();
        assert_eq!((inst.create_index, inst.modify_index), (5, 6));
        assert_eq!(
            r.list_index(),
            5,
            "same tags: the service list did not change"
        );
        r.apply(7, &register("web", "b", &["v2"]), &mut d);
        assert_eq!(r.list_index(), 7, "a new tag changes the service list");
    }

    #[test]
    fn the_service_goes_with_its_last_instance() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &[]), &mut d);
        r.apply(2, &register("web", "b", &[]), &mut d);
        assert_eq!(
            r.apply(3, &deregister("web", "a"), &mut d),
            CommandResult::Ok
        );
        assert_eq!(r.service("web").unwrap().modify_index, 3);
        assert_eq!(r.list_index(), 1);
        r.apply(4, &deregister("web", "b"), &mut d);
        assert!(r.service("web").is_none());
        assert_eq!(r.list_index(), 4);
    }

    #[test]
    fn unknown_instances_are_not_found_and_change_nothing() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &[]), &mut d);
        let before = r.export();
        let mut d = Dirty::default();
        assert!(matches!(
            r.apply(2, &deregister("web", "zzz"), &mut d),
            CommandResult::NotFound { .. }
        ));
        assert!(matches!(
            r.apply(3, &set_health("db", "a", HealthStatus::Passing, ""), &mut d),
            CommandResult::NotFound { .. }
        ));
        assert_eq!(r.export(), before);
        assert!(d.services.is_empty() && d.instances.is_empty());
        assert!(r.service("db").is_none());
    }

    #[test]
    fn custom_health_moves_the_index_on_status_change_only() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &[]), &mut d);
        r.apply(
            2,
            &set_health("web", "a", HealthStatus::Critical, "down"),
            &mut d,
        );
        let s = r.service("web").unwrap();
        assert_eq!(s.modify_index, 2);
        assert_eq!(s.instances["a"].health(), HealthStatus::Critical);
        assert_eq!(
            s.instances["a"]
                .custom_health
                .as_ref()
                .unwrap()
                .changed_at_ms,
            3000
        );
        r.apply(
            3,
            &set_health("web", "a", HealthStatus::Critical, "still down"),
            &mut d,
        );
        let s = r.service("web").unwrap();
        assert_eq!(s.modify_index, 2, "output alone must not move the index");
        assert_eq!(
            s.instances["a"].custom_health.as_ref().unwrap().output,
            "still down"
        );
        assert_eq!(s.summary().critical, 1);
    }

    #[test]
    fn apply_is_deterministic_across_replicas() {
        let cmds = [
            register("web", "a", &["x"]),
            register("db", "b", &[]),
            set_health("web", "a", HealthStatus::Warning, "slow"),
            deregister("db", "b"),
            register("web", "c", &["y"]),
        ];
        let run = || {
            let r = Registry::default();
            let mut d = Dirty::default();
            for (i, c) in cmds.iter().enumerate() {
                r.apply(i as u64 + 1, c, &mut d);
            }
            serde_json::to_string(&r.export()).unwrap()
        };
        assert_eq!(run(), run());
    }
}
