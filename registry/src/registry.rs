//! The registry's in-memory read view, and the deterministic apply that keeps it current.
//!
//! Every reader (HTTP, DNS, the health checker) reads this view; nothing reads RocksDB on a
//! request path. Each service is an immutable `Arc<ServiceEntry>`: a read is a map lookup and an
//! `Arc` clone under a lock held for nanoseconds, and apply builds a new entry beside the old one
//! and swaps it in, so readers never wait on a half-applied change.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_api::ServiceSummary;
use imbl::OrdMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::acl::{self, AclData, AclState, AuditEntry, Policy, Token};
use crate::command::{Command, Op, OpResult, StatedHealth};
use crate::hash::Fnv1a;
use crate::health::{CheckState, HealthStatus};
use crate::ids::IdIndex;
use crate::model::{Instance, InstanceSpec, SettingsSpec};
use crate::quota::{instance_bytes, settings_bytes, Usage};
use crate::watch::Watches;

/// A service and its instances at one point in the log.
///
/// `instances` is a persistent map: apply copies an entry in O(log n) however many instances the
/// service has. The tag and health counts are kept beside it, so neither apply nor a service
/// listing walks the instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ServiceWire")]
pub struct ServiceEntry {
    pub name: String,
    pub create_index: u64,
    /// Index of the last change to the service or any of its instances.
    pub modify_index: u64,
    pub instances: OrdMap<String, Arc<Instance>>,
    /// How many instances carry each tag.
    #[serde(skip_serializing)]
    tag_counts: TagCounts,
    /// Instances by health: passing, warning, critical.
    #[serde(skip_serializing)]
    health_counts: [u32; 3],
    /// Instances with at least one check, so the checker can skip services without any.
    #[serde(skip_serializing)]
    checked: u32,
    /// Checks of all instances, for the checks quota.
    #[serde(skip_serializing)]
    checks: u64,
    /// What the instances' records take in storage ([`instance_bytes`]), for the bytes quota.
    #[serde(skip_serializing)]
    bytes: u64,
}

/// Distinct tags beyond which a service's tag counts move from a list to a persistent map.
const FEW_TAGS: usize = 8;

/// How many instances of a service carry each tag (none with 0), sorted by tag.
///
/// Most services have a handful of distinct tags: they are a short list then, one small
/// allocation copied with the entry. An OrdMap allocates a node of 16 slots even for one tag, a
/// few hundred bytes per service: at ten instances per service, more than an instance's own
/// tags. Beyond [`FEW_TAGS`] a persistent map keeps each edit O(log n) however many tags.
#[derive(Debug, Clone)]
enum TagCounts {
    Few(Vec<(Box<str>, u32)>),
    Many(OrdMap<Box<str>, u32>),
}

impl Default for TagCounts {
    fn default() -> Self {
        TagCounts::Few(Vec::new())
    }
}

impl TagCounts {
    /// How many instances carry `tag`.
    fn get(&self, tag: &str) -> u32 {
        match self {
            TagCounts::Few(list) => list
                .binary_search_by(|(t, _)| (**t).cmp(tag))
                .map_or(0, |i| list[i].1),
            TagCounts::Many(map) => map.get(tag).copied().unwrap_or(0),
        }
    }

    /// Sets how many instances carry `tag`; 0 forgets it.
    fn set(&mut self, tag: &str, n: u32) {
        match self {
            TagCounts::Few(list) => match list.binary_search_by(|(t, _)| (**t).cmp(tag)) {
                Ok(i) if n == 0 => {
                    list.remove(i);
                }
                Ok(i) => list[i].1 = n,
                Err(_) if n == 0 => {}
                Err(i) if list.len() < FEW_TAGS => list.insert(i, (tag.into(), n)),
                Err(_) => {
                    let mut map: OrdMap<Box<str>, u32> = list.drain(..).collect();
                    map.insert(tag.into(), n);
                    *self = TagCounts::Many(map);
                }
            },
            TagCounts::Many(map) if n == 0 => {
                map.remove(tag);
            }
            TagCounts::Many(map) => {
                map.insert(tag.into(), n);
            }
        }
    }

    /// The tags carried by at least one instance, sorted.
    fn tags(&self) -> impl Iterator<Item = &str> {
        let (few, many) = match self {
            TagCounts::Few(list) => (Some(list.iter().map(|(t, _)| &**t)), None),
            TagCounts::Many(map) => (None, Some(map.keys().map(|t| &**t))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn counts(&self) -> impl Iterator<Item = (&str, u32)> {
        self.tags().map(|t| (t, self.get(t)))
    }
}

/// Equal when the counts are, whichever form holds them.
impl PartialEq for TagCounts {
    fn eq(&self, other: &Self) -> bool {
        self.counts().eq(other.counts())
    }
}

impl Eq for TagCounts {}

/// What a service looks like serialized: the derived counts are rebuilt on the way in.
#[derive(Deserialize)]
struct ServiceWire {
    name: String,
    create_index: u64,
    modify_index: u64,
    instances: OrdMap<String, Arc<Instance>>,
}

impl From<ServiceWire> for ServiceEntry {
    fn from(w: ServiceWire) -> Self {
        let mut entry = ServiceEntry::new(&w.name, w.create_index);
        entry.modify_index = w.modify_index;
        for inst in w.instances.values() {
            entry.count(inst, 1);
        }
        entry.instances = w.instances;
        entry
    }
}

fn health_slot(h: HealthStatus) -> usize {
    match h {
        HealthStatus::Passing => 0,
        HealthStatus::Warning => 1,
        HealthStatus::Critical => 2,
    }
}

impl ServiceEntry {
    pub fn new(name: &str, index: u64) -> Self {
        ServiceEntry {
            name: name.to_owned(),
            create_index: index,
            modify_index: index,
            instances: OrdMap::new(),
            tag_counts: TagCounts::default(),
            health_counts: [0; 3],
            checked: 0,
            checks: 0,
            bytes: 0,
        }
    }

    /// Adds (`delta` 1) or removes (`delta` -1) an instance's tags and health from the counts;
    /// answers whether the set of tags changed.
    fn count(&mut self, inst: &Instance, delta: i32) -> bool {
        let mut tags_changed = false;
        for tag in inst.spec.tags.iter() {
            let n = self.tag_counts.get(tag);
            let m = n.saturating_add_signed(delta);
            tags_changed |= (n == 0) != (m == 0);
            self.tag_counts.set(tag, m);
        }
        let slot = &mut self.health_counts[health_slot(inst.health())];
        *slot = slot.saturating_add_signed(delta);
        if !inst.spec.checks.is_empty() {
            self.checked = self.checked.saturating_add_signed(delta);
        }
        let checks = inst.spec.checks.len() as u64;
        let bytes = instance_bytes(&self.name, inst);
        if delta > 0 {
            self.checks += checks;
            self.bytes += bytes;
        } else {
            self.checks = self.checks.saturating_sub(checks);
            self.bytes = self.bytes.saturating_sub(bytes);
        }
        tags_changed
    }

    /// Inserts or replaces an instance; answers whether the service's set of tags changed.
    pub fn put(&mut self, inst: Arc<Instance>) -> bool {
        let Some(old) = self.instances.get(&inst.spec.id).cloned() else {
            let changed = self.count(&inst, 1);
            self.instances.insert(inst.spec.id.clone(), inst);
            return changed;
        };
        // Presence of each tag either instance carries, before and after the replacement: a
        // tag dropped and re-added by the same instance is no change.
        let touched: BTreeSet<&str> = old.spec.tags.iter().chain(inst.spec.tags.iter()).collect();
        let before: Vec<bool> = touched.iter().map(|t| self.tag_counts.get(t) > 0).collect();
        self.count(&old, -1);
        self.count(&inst, 1);
        let changed = touched
            .iter()
            .zip(before)
            .any(|(t, was)| (self.tag_counts.get(t) > 0) != was);
        self.instances.insert(inst.spec.id.clone(), inst);
        changed
    }

    /// Removes an instance; `None` when it is not there. The flag says whether tags changed.
    pub(crate) fn take(&mut self, id: &str) -> Option<(Arc<Instance>, bool)> {
        let old = self.instances.remove(id)?;
        let changed = self.count(&old, -1);
        Some((old, changed))
    }

    /// How many instances have at least one check.
    pub fn checked_instances(&self) -> u32 {
        self.checked
    }

    /// How many checks the instances have in all.
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// What the instances' records take in storage, keys included ([`instance_bytes`]).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The union of the instances' tags, sorted.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tag_counts.tags()
    }

    pub fn summary(&self) -> ServiceSummary {
        let [passing, warning, critical] = self.health_counts;
        ServiceSummary {
            name: self.name.clone(),
            index: self.modify_index,
            tags: self.tags().map(str::to_owned).collect(),
            instances: self.instances.len() as u32,
            passing,
            warning,
            critical,
        }
    }
}

/// The whole registry as plain data: what snapshots carry and restarts load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryData {
    /// Index of the last change to the set of services or their tags.
    pub list_index: u64,
    pub services: Vec<Arc<ServiceEntry>>,
    /// Per-service settings; they outlive the service's instances.
    #[serde(default)]
    pub settings: BTreeMap<String, Arc<ServiceSettings>>,
    /// Members the leader has marked down; checks move off them.
    #[serde(default)]
    pub down_nodes: BTreeSet<u64>,
    /// Tokens and policies.
    #[serde(default, skip_serializing_if = "AclData::is_empty")]
    pub acl: AclData,
}

/// A service's settings as stored, with the index that last changed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSettings {
    #[serde(flatten)]
    pub settings: SettingsSpec,
    pub modify_index: u64,
}

/// The keys apply touched, so the store persists exactly those.
#[derive(Debug, Default)]
pub struct Dirty {
    pub down_nodes: bool,
    pub services: BTreeSet<String>,
    pub settings: BTreeSet<String>,
    pub instances: BTreeSet<(String, String)>,
    pub list_index: bool,
    pub acl_tokens: BTreeSet<String>,
    pub acl_policies: BTreeSet<String>,
    pub acl_bootstrap: bool,
    /// Audit entries appended by this batch.
    pub audit: Vec<AuditEntry>,
    /// A restore replaced the whole registry: every record is written again, and the ones not
    /// in the view any more deleted.
    pub replaced: bool,
}

/// The shared, always-current view of the registry on this node.
#[derive(Debug)]
pub struct Registry {
    services: RwLock<HashMap<String, Arc<ServiceEntry>>>,
    /// The entries of `services` with at least one checked instance, kept with it: what the
    /// health checker walks after each applied batch, without visiting every service.
    checked: RwLock<HashMap<String, Arc<ServiceEntry>>>,
    /// Where each instance id and check id lives, for the Consul API's lookups by id. Apply
    /// adds to it before publishing a service and removes from it after, so a reader finds
    /// every instance it could see, and checks each place it is given (see [`Self::find_instance`]).
    ids: RwLock<IdIndex>,
    settings: RwLock<HashMap<String, Arc<ServiceSettings>>>,
    down_nodes: RwLock<BTreeSet<u64>>,
    acl: RwLock<Arc<AclState>>,
    /// The applied index at the last change to tokens or policies, for whoever must notice a
    /// revocation (open watch streams).
    acl_changes: tokio::sync::watch::Sender<u64>,
    /// The same index, stored after the state it belongs to: what every request compares its
    /// cached rights against, with a plain load.
    acl_version: AtomicU64,
    /// The most recent changes made through the API: this node's, bounded, persisted.
    audit: parking_lot::Mutex<VecDeque<AuditEntry>>,
    /// The leader's time in the last applied entry: the clock token expiry is judged by.
    time_ms: AtomicU64,
    list_index: AtomicU64,
    /// The applied index at the last change to any settings record (a restore or snapshot
    /// install included): caches built from settings across services (DNS's namespace zones)
    /// are current while it stays the same.
    settings_version: AtomicU64,
    applied_index: AtomicU64,
    /// What the services' and settings' records take in storage, kept by apply so a quota check
    /// never walks the registry: the sum of [`ServiceEntry::bytes`] and [`settings_bytes`].
    bytes: AtomicU64,
    /// Checks of every instance: the sum of [`ServiceEntry::checks`].
    checks: AtomicU64,
    /// Odd while a batch is being applied (a sequence lock), so [`Registry::digest`] can read a
    /// state that belongs to exactly one applied index without blocking apply.
    apply_seq: AtomicU64,
    /// The applied index, published after each applied batch, for whoever waits on changes.
    changes: tokio::sync::watch::Sender<u64>,
    /// Per-service and service-list change channels, with replay history.
    watches: Watches,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            services: RwLock::default(),
            checked: RwLock::default(),
            ids: RwLock::default(),
            settings: RwLock::default(),
            down_nodes: RwLock::default(),
            acl: RwLock::default(),
            acl_changes: tokio::sync::watch::Sender::new(0),
            acl_version: AtomicU64::new(0),
            audit: parking_lot::Mutex::default(),
            time_ms: AtomicU64::new(0),
            list_index: AtomicU64::new(0),
            settings_version: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            apply_seq: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
            watches: Watches::default(),
        }
    }
}

impl Registry {
    pub fn from_data(data: RegistryData, applied_index: u64) -> Self {
        let r = Registry::default();
        r.replace(data, applied_index);
        r
    }

    /// One service, or `None` when it has no instances.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceEntry>> {
        self.services.read().get(name).cloned()
    }

    /// A receiver that sees the applied index move after every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Change channels and replay history, for blocking reads and watch streams.
    pub fn watches(&self) -> &Watches {
        &self.watches
    }

    /// The index a read of `name` reflects: its last change; for a service without instances,
    /// the service list's index (which moved when it was removed, and survives restarts, unlike
    /// the in-memory watch history); at least 1. It never goes back, even across a restart.
    pub fn service_index(&self, name: &str) -> u64 {
        match self.service(name) {
            Some(s) => s.modify_index,
            None => self.watches.last_index(name).max(self.list_index()),
        }
        .max(1)
    }

    /// Members currently marked down.
    pub fn down_nodes(&self) -> BTreeSet<u64> {
        self.down_nodes.read().clone()
    }

    /// The ACL state as of the last applied entry.
    pub fn acl(&self) -> Arc<AclState> {
        self.acl.read().clone()
    }

    /// A receiver that sees the applied index of every change to tokens or policies.
    pub fn subscribe_acl(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acl_changes.subscribe()
    }

    /// The applied index of the last change to tokens or policies: a cache of rights is current
    /// while it stays the same. It moves only after the new state is in place, so rights
    /// computed from [`Registry::acl`] after reading it are at least as new as it says.
    pub fn acl_version(&self) -> u64 {
        self.acl_version.load(Ordering::Acquire)
    }

    /// The leader's time in the last applied entry.
    pub fn time_ms(&self) -> u64 {
        self.time_ms.load(Ordering::Acquire)
    }

    /// Sets the leader time last seen (restart: the persisted value).
    pub fn set_time_ms(&self, time_ms: u64) {
        self.time_ms.fetch_max(time_ms, Ordering::AcqRel);
    }

    /// The audit list, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.audit.lock().iter().cloned().collect()
    }

    /// Loads the persisted audit list (restart).
    pub fn load_audit(&self, entries: Vec<AuditEntry>) {
        let mut a = self.audit.lock();
        a.clear();
        a.extend(entries);
        while a.len() > acl::AUDIT_LEN {
            a.pop_front();
        }
    }

    /// A service's settings, if any were ever set.
    pub fn settings(&self, name: &str) -> Option<Arc<ServiceSettings>> {
        self.settings.read().get(name).cloned()
    }

    /// The applied index of the last change to any settings record. It moves only after the
    /// change is in place, so what is read from [`Registry::settings_list`] after reading it is
    /// at least as new as it says.
    pub fn settings_version(&self) -> u64 {
        self.settings_version.load(Ordering::Acquire)
    }

    /// Every settings record whose key starts with `prefix` (`""`: all), sorted by key.
    pub fn settings_list(&self, prefix: &str) -> Vec<(String, Arc<ServiceSettings>)> {
        let mut all: Vec<_> = self
            .settings
            .read()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The service holding instance `id`, and the instance. Ids are unique per service only:
    /// when several services hold one, the first by name, as a scan of [`Self::services`] finds.
    /// A few hash lookups, however many services and instances there are.
    pub fn find_instance(&self, id: &str) -> Option<(Arc<ServiceEntry>, Arc<Instance>)> {
        let names = self.ids.read().services_of(id);
        names.into_iter().find_map(|name| {
            let svc = self.service(&name)?;
            let inst = svc.instances.get(id).cloned()?;
            Some((svc, inst))
        })
    }

    /// The instance carrying check `check`, and its service. Check ids are unique per instance
    /// only: when several carry one, the first by service name then instance id, as a scan of
    /// [`Self::services`] and their instances finds.
    pub fn find_check(&self, check: &str) -> Option<(Arc<ServiceEntry>, Arc<Instance>)> {
        let places = self.ids.read().instances_of(check);
        places.into_iter().find_map(|(name, id)| {
            let svc = self.service(&name)?;
            let inst = svc.instances.get(&*id).cloned()?;
            inst.check(check)?;
            Some((svc, inst))
        })
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

    /// The services with at least one checked instance, in no particular order: what the health
    /// checker walks, at a cost that does not grow with the services that have no checks.
    pub fn checked_services(&self) -> Vec<Arc<ServiceEntry>> {
        self.checked.read().values().cloned().collect()
    }

    /// Index of the last change to the set of services or their tags.
    pub fn list_index(&self) -> u64 {
        self.list_index.load(Ordering::Acquire)
    }

    /// How much the registry holds, as the quotas count it. Cheap: counters apply keeps.
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes.load(Ordering::Acquire),
            services: self.services.read().len() as u64,
            checks: self.checks.load(Ordering::Acquire),
        }
    }

    /// Index of the last log entry applied to this view.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The whole registry as data, for a snapshot. Cheap: clones `Arc`s, not instances.
    pub fn export(&self) -> RegistryData {
        let (list_index, services) = self.services();
        let settings = self
            .settings
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        RegistryData {
            list_index,
            services,
            settings,
            down_nodes: self.down_nodes(),
            acl: self.acl().export(),
        }
    }

    /// Replaces everything (snapshot install, restart).
    pub fn replace(&self, data: RegistryData, applied_index: u64) {
        self.apply_seq.fetch_add(1, Ordering::AcqRel);
        let map: HashMap<String, Arc<ServiceEntry>> = data
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        // The entries counted their own instances as they were built (restart, snapshot): one
        // step per service and per settings record here, none per instance.
        let bytes = map.values().map(|s| s.bytes).sum::<u64>()
            + data
                .settings
                .iter()
                .map(|(name, s)| settings_bytes(name, s))
                .sum::<u64>();
        self.bytes.store(bytes, Ordering::Release);
        self.checks
            .store(map.values().map(|s| s.checks).sum(), Ordering::Release);
        *self.ids.write() = IdIndex::build(map.values().map(|s| &**s));
        *self.settings.write() = data.settings.into_iter().collect();
        self.settings_version
            .store(applied_index, Ordering::Release);
        *self.down_nodes.write() = data.down_nodes;
        *self.acl.write() = Arc::new(AclState::from_data(data.acl));
        let mut guard = self.services.write();
        *self.checked.write() = checked_of(&map);
        *guard = map;
        self.list_index.store(data.list_index, Ordering::Release);
        self.applied_index.store(applied_index, Ordering::Release);
        drop(guard);
        self.apply_seq.fetch_add(1, Ordering::AcqRel);
        self.watches.reset(
            |name| self.service(name).map(|s| s.modify_index),
            data.list_index,
        );
        self.changes.send_replace(applied_index);
        self.acl_version.store(applied_index, Ordering::Release);
        self.acl_changes.send_replace(applied_index);
    }

    pub fn set_applied(&self, index: u64) {
        self.applied_index.store(index, Ordering::Release);
    }

    /// Tells subscribers that a batch was applied.
    pub fn publish(&self) {
        self.changes
            .send_replace(self.applied_index.load(Ordering::Acquire));
    }

    /// Applies one command at log `index`. Deterministic: reads nothing but the view, the index
    /// and the command (including its leader-stamped time).
    pub fn apply(&self, index: u64, cmd: &Command, dirty: &mut Dirty) -> Vec<OpResult> {
        self.apply_seq.fetch_add(1, Ordering::AcqRel);
        self.set_time_ms(cmd.time_ms);
        let results = cmd
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let result = self.apply_op(index, cmd.time_ms, op, dirty);
                if op.audited() && result == OpResult::Ok {
                    self.record(index, cmd.time_ms, cmd.by(i), op, dirty);
                }
                result
            })
            .collect();
        self.applied_index.store(index, Ordering::Release);
        self.apply_seq.fetch_add(1, Ordering::AcqRel);
        results
    }

    /// A digest of the replicated state and the applied index it belongs to. Replicas at the
    /// same applied index must report the same digest: the fault tests compare them, and an
    /// operator can too (`GET /v1/cluster/digest`). Local-only state (watch history, caches) is
    /// not part of it.
    pub fn digest(&self) -> (u64, u64) {
        let (index, data) = self.export_at();
        let mut hash = Fnv1a::default();
        // Serialising plain data into a hasher cannot fail.
        let _ = serde_json::to_writer(&mut hash, &data);
        (index, hash.finish())
    }

    /// [`Registry::export`] with the applied index the export belongs to: exactly the state after
    /// that index, never half of a batch. Retries while apply runs (it never waits on apply).
    pub fn export_at(&self) -> (u64, RegistryData) {
        loop {
            let before = self.apply_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let index = self.applied_index();
            let data = self.export();
            if self.apply_seq.load(Ordering::Acquire) == before && self.applied_index() == index {
                return (index, data);
            }
        }
    }

    fn record(&self, index: u64, time_ms: u64, by: Option<&str>, op: &Op, dirty: &mut Dirty) {
        let mut audit = self.audit.lock();
        let entry = AuditEntry {
            seq: audit.back().map_or(1, |e| e.seq + 1),
            index,
            time_ms,
            accessor: by.map(str::to_owned),
            op: op.name().to_owned(),
            service: op.service().map(str::to_owned),
            id: op.instance_id().map(str::to_owned),
        };
        audit.push_back(entry.clone());
        if audit.len() > acl::AUDIT_LEN {
            audit.pop_front();
        }
        dirty.audit.push(entry);
    }

    /// Applies an ACL op to a copy of the ACL state and swaps it in when it changed.
    fn apply_acl(&self, index: u64, time_ms: u64, op: &Op, dirty: &mut Dirty) -> OpResult {
        let mut state = AclState::clone(&self.acl());
        let result = match op {
            Op::AclBootstrap {
                accessor,
                secret_hash,
                reset_index,
            } => {
                if let Some(done) = state.bootstrap_index {
                    if *reset_index != Some(done) {
                        return OpResult::Denied {
                            message: format!(
                                "ACL bootstrap already done (reset index: {done}); to bootstrap \
                                 again, write {done} to the file acl-bootstrap-reset in a server's \
                                 data folder and call bootstrap on that server"
                            ),
                        };
                    }
                }
                state.bootstrap_index = Some(index);
                dirty.acl_bootstrap = true;
                state.put_token(Token {
                    accessor: accessor.clone(),
                    secret_hash: Some(secret_hash.clone()),
                    description: "bootstrap token (global management)".into(),
                    policies: BTreeSet::from([acl::MANAGEMENT_POLICY.to_owned()]),
                    expires_at_ms: None,
                    create_time_ms: time_ms,
                    create_index: index,
                    modify_index: index,
                });
                dirty.acl_tokens.insert(accessor.clone());
                OpResult::Ok
            }
            Op::AclSetPolicy { policy } => {
                let create_index = state
                    .policies
                    .get(&policy.name)
                    .map_or(index, |p| p.create_index);
                state.policies.insert(
                    policy.name.clone(),
                    Arc::new(Policy {
                        spec: policy.clone(),
                        create_index,
                        modify_index: index,
                    }),
                );
                dirty.acl_policies.insert(policy.name.clone());
                OpResult::Ok
            }
            Op::AclDeletePolicy { name } => {
                if state.policies.remove(name).is_none() {
                    return OpResult::NotFound {
                        message: format!("no policy {name:?}"),
                    };
                }
                if let Some(t) = state.tokens.values().find(|t| t.policies.contains(name)) {
                    return OpResult::Conflict {
                        message: format!(
                            "policy {name:?} is linked to token {}; unlink it first",
                            t.accessor
                        ),
                    };
                }
                dirty.acl_policies.insert(name.clone());
                OpResult::Ok
            }
            Op::AclSetToken { token } => {
                if let Some(p) = token
                    .policies
                    .iter()
                    .find(|p| *p != acl::MANAGEMENT_POLICY && !state.policies.contains_key(*p))
                {
                    return OpResult::NotFound {
                        message: format!("no policy {p:?}"),
                    };
                }
                let stored = match state.tokens.get(&token.accessor) {
                    Some(old) => Token {
                        description: token.description.clone(),
                        policies: token.policies.clone(),
                        modify_index: index,
                        ..Token::clone(old)
                    },
                    None if token.secret_hash.is_none() && token.accessor != acl::ANONYMOUS => {
                        return OpResult::NotFound {
                            message: format!("no token {}", token.accessor),
                        }
                    }
                    None => Token {
                        accessor: token.accessor.clone(),
                        secret_hash: token.secret_hash.clone(),
                        description: token.description.clone(),
                        policies: token.policies.clone(),
                        expires_at_ms: token.ttl_ms.map(|t| time_ms.saturating_add(t)),
                        create_time_ms: time_ms,
                        create_index: index,
                        modify_index: index,
                    },
                };
                state.put_token(stored);
                dirty.acl_tokens.insert(token.accessor.clone());
                OpResult::Ok
            }
            Op::AclDeleteToken { accessor } => {
                if state.remove_token(accessor).is_none() {
                    return OpResult::NotFound {
                        message: format!("no token {accessor}"),
                    };
                }
                dirty.acl_tokens.insert(accessor.clone());
                OpResult::Ok
            }
            Op::AclExpireTokens => {
                let expired = state.expired_by(time_ms);
                if expired.is_empty() {
                    return OpResult::Ok;
                }
                for a in expired {
                    state.remove_token(&a);
                    dirty.acl_tokens.insert(a);
                }
                OpResult::Ok
            }
            _ => return OpResult::Ok,
        };
        *self.acl.write() = Arc::new(state);
        self.acl_version.store(index, Ordering::Release);
        self.acl_changes.send_replace(index);
        result
    }

    fn apply_op(&self, index: u64, time_ms: u64, op: &Op, dirty: &mut Dirty) -> OpResult {
        match op {
            Op::AclBootstrap { .. }
            | Op::AclSetPolicy { .. }
            | Op::AclDeletePolicy { .. }
            | Op::AclSetToken { .. }
            | Op::AclDeleteToken { .. }
            | Op::AclExpireTokens => self.apply_acl(index, time_ms, op, dirty),
            Op::Restore { data, .. } => self.restore(index, data, dirty),
            Op::RestoreText { data, .. } => match data.decode() {
                Ok(data) => self.restore(index, &data, dirty),
                Err(message) => OpResult::Conflict { message },
            },
            Op::SetNodeUp { node, up } => {
                let mut down = self.down_nodes.write();
                let changed = if *up {
                    down.remove(node)
                } else {
                    down.insert(*node)
                };
                dirty.down_nodes |= changed;
                OpResult::Ok
            }
            Op::SetSettings { service, settings } => {
                let stored = ServiceSettings {
                    settings: settings.clone(),
                    modify_index: index,
                };
                self.bytes
                    .fetch_add(settings_bytes(service, &stored), Ordering::AcqRel);
                let old = self
                    .settings
                    .write()
                    .insert(service.clone(), Arc::new(stored));
                if let Some(old) = old {
                    self.bytes
                        .fetch_sub(settings_bytes(service, &old), Ordering::AcqRel);
                }
                self.settings_version.store(index, Ordering::Release);
                dirty.settings.insert(service.clone());
                OpResult::Ok
            }
            Op::DeleteSettings { service } => {
                let Some(old) = self.settings.write().remove(service) else {
                    return OpResult::NotFound {
                        message: format!("service {service:?} has no settings"),
                    };
                };
                self.bytes
                    .fetch_sub(settings_bytes(service, &old), Ordering::AcqRel);
                self.settings_version.store(index, Ordering::Release);
                dirty.settings.insert(service.clone());
                OpResult::Ok
            }
            Op::Register {
                service,
                instance,
                health,
            } => self.edit_service(service, index, dirty, |entry, _| {
                let prev = entry.instances.get(&instance.id).cloned();
                let inst =
                    registered_instance(instance, health.as_ref(), prev.as_deref(), index, time_ms);
                let tags_changed = entry.put(Arc::new(inst));
                Edit::Moved {
                    id: instance.id.clone(),
                    tags_changed,
                }
            }),
            Op::Deregister { service, id } => {
                self.edit_service(service, index, dirty, |entry, _| match entry.take(id) {
                    Some((_, tags_changed)) => Edit::Moved {
                        id: id.clone(),
                        tags_changed,
                    },
                    None => Edit::Done(not_found(service, id)),
                })
            }
            Op::SetHealth {
                service,
                id,
                status,
                output,
            } => self.edit_service(service, index, dirty, |entry, dirty| {
                let state = |prev: Option<&CheckState>| CheckState {
                    status: *status,
                    output: output.clone(),
                    changed_at_ms: match prev {
                        Some(c) if c.status == *status => c.changed_at_ms,
                        _ => time_ms,
                    },
                };
                self.update_instance(entry, service, id, index, dirty, |inst| {
                    let changed = inst.custom_health.as_ref().map(|c| c.status) != Some(*status);
                    inst.custom_health = Some(Box::new(state(inst.custom_health.as_deref())));
                    changed
                })
            }),
            Op::SetCheckStatus {
                service,
                id,
                check,
                status,
                output,
            } => self.edit_service(service, index, dirty, |entry, dirty| {
                let has_check = entry
                    .instances
                    .get(id)
                    .is_some_and(|i| i.spec.checks.iter().any(|c| c.id == *check));
                if entry.instances.contains_key(id) && !has_check {
                    return Edit::Done(OpResult::NotFound {
                        message: format!("instance {id:?} of {service:?} has no check {check:?}"),
                    });
                }
                self.update_instance(entry, service, id, index, dirty, |inst| {
                    let Some(pos) = inst.spec.checks.iter().position(|c| c.id == *check) else {
                        return false;
                    };
                    let Some(st) = inst.checks.get_mut(pos) else {
                        return false;
                    };
                    let changed = st.status != *status;
                    st.output = output.clone();
                    if changed {
                        st.status = *status;
                        st.changed_at_ms = time_ms;
                    }
                    changed
                })
            }),
            Op::SetMaintenance {
                service,
                id,
                reason,
            } => self.edit_service(service, index, dirty, |entry, dirty| {
                self.update_instance(entry, service, id, index, dirty, |inst| {
                    let was = inst.maintenance.is_some();
                    inst.maintenance = reason.as_ref().map(|r| {
                        Box::new(CheckState {
                            status: HealthStatus::Critical,
                            output: r.clone(),
                            changed_at_ms: inst
                                .maintenance
                                .as_ref()
                                .map_or(time_ms, |m| m.changed_at_ms),
                        })
                    });
                    was != reason.is_some()
                })
            }),
        }
    }

    /// Replaces services, settings, tokens and policies with `data`'s at log `index` (see
    /// [`Op::Restore`]). Services, instances and settings are stamped with `index`, tokens' and
    /// policies' indexes capped at it; every watcher of a service restored, changed or gone wakes
    /// with `index`, and so do the service list and the ACL state.
    fn restore(&self, index: u64, data: &RegistryData, dirty: &mut Dirty) -> OpResult {
        let mut map = HashMap::with_capacity(data.services.len());
        for s in &data.services {
            let mut entry = ServiceEntry::new(&s.name, s.create_index.min(index));
            for inst in s.instances.values() {
                let mut inst = Instance::clone(inst);
                inst.create_index = inst.create_index.min(index);
                inst.modify_index = index;
                entry.put(Arc::new(inst));
            }
            entry.modify_index = index;
            map.insert(s.name.clone(), Arc::new(entry));
        }
        let settings: HashMap<String, Arc<ServiceSettings>> = data
            .settings
            .iter()
            .map(|(name, s)| {
                let s = ServiceSettings {
                    settings: s.settings.clone(),
                    modify_index: index,
                };
                (name.clone(), Arc::new(s))
            })
            .collect();
        let mut acl = data.acl.clone();
        acl.bootstrap_index = acl.bootstrap_index.map(|i| i.min(index));
        for p in &mut acl.policies {
            p.create_index = p.create_index.min(index);
            p.modify_index = p.modify_index.min(index);
        }
        for t in &mut acl.tokens {
            t.create_index = t.create_index.min(index);
            t.modify_index = t.modify_index.min(index);
        }
        let bytes = map.values().map(|s| s.bytes).sum::<u64>()
            + settings
                .iter()
                .map(|(name, s)| settings_bytes(name, s))
                .sum::<u64>();
        self.bytes.store(bytes, Ordering::Release);
        self.checks
            .store(map.values().map(|s| s.checks).sum(), Ordering::Release);
        *self.settings.write() = settings;
        self.settings_version.store(index, Ordering::Release);
        *self.acl.write() = Arc::new(AclState::from_data(acl));
        *self.ids.write() = IdIndex::build(map.values().map(|s| &**s));
        let mut names: BTreeSet<String> = map.keys().cloned().collect();
        let mut guard = self.services.write();
        *self.checked.write() = checked_of(&map);
        let old = std::mem::replace(&mut *guard, map);
        drop(guard);
        names.extend(old.into_keys());
        self.list_index.store(index, Ordering::Release);
        for name in &names {
            self.watches
                .service_changed(name, index, self.service(name));
        }
        self.watches.list_changed(index);
        self.acl_version.store(index, Ordering::Release);
        self.acl_changes.send_replace(index);
        dirty.replaced = true;
        dirty.list_index = true;
        dirty.acl_bootstrap = true;
        OpResult::Ok
    }

    /// Runs `edit` on a copy of service `name` (a new, empty one if it has no instances), then
    /// publishes the copy. When the edit moved the service, its index moves too, watchers are
    /// woken, and the service list's index moves when the service appeared, went, or changed
    /// its set of tags.
    fn edit_service(
        &self,
        name: &str,
        index: u64,
        dirty: &mut Dirty,
        edit: impl FnOnce(&mut ServiceEntry, &mut Dirty) -> Edit,
    ) -> OpResult {
        let old = self.service(name);
        // Only apply writes the view, so nothing changes between this read and the swap below.
        let mut entry = match &old {
            Some(s) => ServiceEntry::clone(s),
            None => ServiceEntry::new(name, index),
        };
        let (changed_id, tags_changed) = match edit(&mut entry, dirty) {
            Edit::Moved { id, tags_changed } => (id, tags_changed),
            Edit::Done(result) => return result,
        };
        entry.modify_index = index;
        dirty.services.insert(name.to_owned());
        let appeared_or_gone = old.is_none() || entry.instances.is_empty();
        let list_changed = appeared_or_gone || tags_changed;
        let before = old
            .as_ref()
            .and_then(|s| s.instances.get(&changed_id))
            .cloned();
        let after = entry.instances.get(&changed_id).cloned();
        dirty.instances.insert((name.to_owned(), changed_id));
        // Added before the service is published and removed after: the index always holds at
        // least every place a reader can see.
        if let Some(after) = &after {
            self.ids.write().add(name, after);
        }
        let entry = (!entry.instances.is_empty()).then_some(entry);
        let published = self.swap(name, entry);
        if let Some(before) = &before {
            self.ids.write().remove(name, before, after.as_deref());
        }
        self.watches.service_changed(name, index, published);
        if list_changed {
            self.list_index.store(index, Ordering::Release);
            dirty.list_index = true;
            self.watches.list_changed(index);
        }
        OpResult::Ok
    }

    /// Applies `update` to instance `id` of `entry`. `update` answers whether the change moves
    /// the indexes (a change of health); a change of output alone is stored quietly, so
    /// watchers are woken by changes of health, not by chatter.
    fn update_instance(
        &self,
        entry: &mut ServiceEntry,
        name: &str,
        id: &str,
        index: u64,
        dirty: &mut Dirty,
        update: impl FnOnce(&mut Instance) -> bool,
    ) -> Edit {
        let Some(prev) = entry.instances.get(id) else {
            return Edit::Done(not_found(name, id));
        };
        let mut inst = Instance::clone(prev);
        let moved = update(&mut inst);
        if moved {
            inst.modify_index = index;
        }
        entry.put(Arc::new(inst));
        dirty.instances.insert((name.to_owned(), id.to_owned()));
        if moved {
            Edit::Moved {
                id: id.to_owned(),
                tags_changed: false,
            }
        } else {
            self.swap(name, Some(entry.clone()));
            Edit::Done(OpResult::Ok)
        }
    }

    /// Publishes service `name`'s new entry (`None`: the service is gone), and moves the
    /// registry's byte and check counts by the difference with the old one.
    fn swap(&self, name: &str, entry: Option<ServiceEntry>) -> Option<Arc<ServiceEntry>> {
        let entry = entry.map(Arc::new);
        let mut guard = self.services.write();
        let old = match &entry {
            Some(e) => guard.insert(name.to_owned(), e.clone()),
            None => guard.remove(name),
        };
        let now_checked = entry.as_ref().filter(|e| e.checked_instances() > 0);
        let was_checked = old.as_ref().is_some_and(|e| e.checked_instances() > 0);
        if now_checked.is_some() || was_checked {
            let mut checked = self.checked.write();
            match now_checked {
                Some(e) => checked.insert(name.to_owned(), e.clone()),
                None => checked.remove(name),
            };
        }
        drop(guard);
        let (new_bytes, new_checks) = entry.as_ref().map_or((0, 0), |e| (e.bytes, e.checks));
        let (old_bytes, old_checks) = old.as_ref().map_or((0, 0), |e| (e.bytes, e.checks));
        // Only apply calls this, one op at a time: add before subtracting, never below zero.
        self.bytes.fetch_add(new_bytes, Ordering::AcqRel);
        self.bytes.fetch_sub(old_bytes, Ordering::AcqRel);
        self.checks.fetch_add(new_checks, Ordering::AcqRel);
        self.checks.fetch_sub(old_checks, Ordering::AcqRel);
        entry
    }
}

/// The entries of `services` with at least one checked instance.
fn checked_of(services: &HashMap<String, Arc<ServiceEntry>>) -> HashMap<String, Arc<ServiceEntry>> {
    services
        .iter()
        .filter(|(_, s)| s.checked_instances() > 0)
        .map(|(name, s)| (name.clone(), s.clone()))
        .collect()
}

/// The instance a registration of `spec` at log `index` and leader time `time_ms` stores, over
/// `prev` (the instance it replaces, if any). A stated `health` becomes the custom health (its
/// time of change kept when the status is the one already stored); without one, `prev`'s stays.
pub(crate) fn registered_instance(
    spec: &InstanceSpec,
    health: Option<&StatedHealth>,
    prev: Option<&Instance>,
    index: u64,
    time_ms: u64,
) -> Instance {
    let checks = spec
        .checks
        .iter()
        .map(|check| {
            // A check that survives a re-registration keeps its committed result.
            prev.and_then(|p| {
                p.spec
                    .checks
                    .iter()
                    .position(|c| c.id == check.id && c.kind() == check.kind())
                    .and_then(|i| p.checks.get(i).cloned())
            })
            .unwrap_or_else(|| CheckState {
                status: check.initial_status,
                output: String::new(),
                changed_at_ms: time_ms,
            })
        })
        .collect();
    Instance {
        spec: spec.clone(),
        checks,
        custom_health: match health {
            Some(h) => Some(Box::new(CheckState {
                status: h.status,
                output: h.output.clone(),
                changed_at_ms: prev
                    .and_then(|p| p.custom_health.as_ref())
                    .filter(|c| c.status == h.status)
                    .map_or(time_ms, |c| c.changed_at_ms),
            })),
            None => prev.and_then(|p| p.custom_health.clone()),
        },
        maintenance: prev.and_then(|p| p.maintenance.clone()),
        create_index: prev.map_or(index, |p| p.create_index),
        modify_index: index,
    }
}

/// What an edit of a service did.
enum Edit {
    /// Instance `id` appeared, went or changed health: the service's indexes move.
    Moved { id: String, tags_changed: bool },
    /// Nothing that moves an index: stored quietly (a change of output alone), or refused.
    Done(OpResult),
}

fn not_found(service: &str, id: &str) -> OpResult {
    OpResult::NotFound {
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
            by: Vec::new(),
            time_ms: 1000,
            ops: vec![Op::Register {
                service: service.into(),
                instance: spec,
                health: None,
            }],
        }
    }

    fn deregister(service: &str, id: &str) -> Command {
        Command {
            by: Vec::new(),
            time_ms: 2000,
            ops: vec![Op::Deregister {
                service: service.into(),
                id: id.into(),
            }],
        }
    }

    fn set_health(service: &str, id: &str, status: HealthStatus, output: &str) -> Command {
        Command {
            by: Vec::new(),
            time_ms: 3000,
            ops: vec![Op::SetHealth {
                service: service.into(),
                id: id.into(),
                status,
                output: output.into(),
            }],
        }
    }

    #[test]
    fn register_creates_the_service_and_moves_both_indexes() {
        let r = Registry::default();
        let mut d = Dirty::default();
        assert_eq!(
            r.apply(5, &register("web", "a", &["v1"]), &mut d),
            [OpResult::Ok]
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
    fn tag_and_health_counts_follow_every_change() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &["x", "y"]), &mut d);
        r.apply(2, &register("web", "b", &["y"]), &mut d);
        let tags = |r: &Registry| r.service("web").unwrap().summary().tags;
        assert_eq!(tags(&r), ["x", "y"]);
        r.apply(3, &register("web", "a", &["y"]), &mut d);
        assert_eq!(tags(&r), ["y"]);
        assert_eq!(
            r.list_index(),
            3,
            "dropping the last x changes the service list"
        );
        r.apply(
            4,
            &set_health("web", "b", HealthStatus::Warning, ""),
            &mut d,
        );
        let s = r.service("web").unwrap().summary();
        assert_eq!((s.passing, s.warning, s.critical), (1, 1, 0));
        r.apply(5, &deregister("web", "b"), &mut d);
        let s = r.service("web").unwrap().summary();
        assert_eq!((s.instances, s.passing, s.warning), (1, 1, 0));
        assert_eq!(r.list_index(), 3, "y is still carried by a");
        // A round trip through serde rebuilds the same counts.
        let json = serde_json::to_string(&*r.service("web").unwrap()).unwrap();
        let back: ServiceEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, *r.service("web").unwrap());
    }

    /// Past FEW_TAGS distinct tags the counts move to a map; they count the same either way.
    #[test]
    fn tag_counts_are_the_same_as_a_list_and_as_a_map() {
        let mut counts = TagCounts::default();
        let mut model = BTreeMap::new();
        let tags: Vec<String> = (0..3 * FEW_TAGS).map(|i| format!("t{i:02}")).collect();
        // Up past the bound and back down, in an order that is not sorted.
        for round in 0..3u32 {
            for (i, t) in tags.iter().enumerate().rev() {
                let n = (i as u32 + round) % 3;
                counts.set(t, n);
                if n == 0 {
                    model.remove(t.as_str());
                } else {
                    model.insert(t.as_str(), n);
                }
                assert_eq!(counts.get(t), n);
            }
            let seen: Vec<(&str, u32)> = counts.counts().collect();
            let want: Vec<(&str, u32)> = model.iter().map(|(t, n)| (*t, *n)).collect();
            assert_eq!(seen, want, "round {round}");
        }
        assert!(matches!(counts, TagCounts::Many(_)));
        let mut few = TagCounts::default();
        for (t, n) in &model {
            if few.tags().count() < FEW_TAGS {
                few.set(t, *n);
            }
        }
        let mut many = counts.clone();
        for t in &tags {
            if few.get(t) == 0 {
                many.set(t, 0);
            }
        }
        assert!(matches!(
            (&few, &many),
            (TagCounts::Few(_), TagCounts::Many(_))
        ));
        assert_eq!(
            few, many,
            "equal counts are equal whichever form holds them"
        );
        many.set("zzz", 1);
        assert_ne!(few, many);
    }

    #[test]
    fn instances_with_checks_are_counted() {
        let r = Registry::default();
        let mut d = Dirty::default();
        let body = serde_json::json!({"address": "10.0.0.1", "port": 80, "checks": [{"kind": "ttl", "ttl": "5s"}]});
        let spec = validate_registration("c", &serde_json::from_value(body).unwrap()).unwrap();
        let with_check = Command {
            by: Vec::new(),
            time_ms: 0,
            ops: vec![Op::Register {
                service: "web".into(),
                instance: spec,
                health: None,
            }],
        };
        r.apply(1, &register("web", "plain", &[]), &mut d);
        assert_eq!(r.service("web").unwrap().checked_instances(), 0);
        r.apply(2, &with_check, &mut d);
        r.apply(3, &with_check, &mut d);
        assert_eq!(
            r.service("web").unwrap().checked_instances(),
            1,
            "a replace counts once"
        );
        let checked = |r: &Registry| -> Vec<(String, u64)> {
            let mut v: Vec<_> = r
                .checked_services()
                .iter()
                .map(|s| (s.name.clone(), s.modify_index))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            checked(&r),
            [("web".to_owned(), 3)],
            "the checker's list holds the current entry"
        );
        r.apply(4, &register("db", "plain", &[]), &mut d);
        assert_eq!(checked(&r), [("web".to_owned(), 3)]);
        let restarted = Registry::from_data(r.export(), 4);
        assert_eq!(checked(&restarted), [("web".to_owned(), 3)]);
        let restored = Registry::default();
        restored.apply(1, &register("cache", "x", &[]), &mut Dirty::default());
        let restore = Command::new(
            2000,
            vec![Op::Restore {
                from_index: 4,
                from_term: 1,
                data: Box::new(r.export()),
            }],
        );
        assert_eq!(
            restored.apply(9, &restore, &mut Dirty::default()),
            [OpResult::Ok]
        );
        assert_eq!(checked(&restored), [("web".to_owned(), 9)]);
        r.apply(5, &deregister("web", "c"), &mut d);
        assert_eq!(r.service("web").unwrap().checked_instances(), 0);
        assert!(checked(&r).is_empty(), "web has no checked instance left");
        r.apply(6, &with_check, &mut d);
        r.apply(7, &deregister("web", "plain"), &mut d);
        r.apply(8, &deregister("web", "c"), &mut d);
        assert!(r.service("web").is_none());
        assert!(
            checked(&r).is_empty(),
            "a service that is gone is not walked"
        );
    }

    #[test]
    fn the_service_goes_with_its_last_instance() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &[]), &mut d);
        r.apply(2, &register("web", "b", &[]), &mut d);
        assert_eq!(r.apply(3, &deregister("web", "a"), &mut d), [OpResult::Ok]);
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
            r.apply(2, &deregister("web", "zzz"), &mut d)[..],
            [OpResult::NotFound { .. }]
        ));
        assert!(matches!(
            r.apply(3, &set_health("db", "a", HealthStatus::Passing, ""), &mut d)[..],
            [OpResult::NotFound { .. }]
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

    fn register_stating(id: &str, status: HealthStatus, output: &str, time_ms: u64) -> Command {
        let mut cmd = register("db", id, &[]);
        cmd.time_ms = time_ms;
        if let Some(Op::Register { health, .. }) = cmd.ops.first_mut() {
            *health = Some(StatedHealth {
                status,
                output: output.into(),
            });
        }
        cmd
    }

    #[test]
    fn a_registration_with_stated_health_shows_it_from_its_own_index() {
        let r = Registry::default();
        let mut d = Dirty::default();
        let cmd = register_stating("a", HealthStatus::Critical, "down", 1000);
        assert_eq!(r.apply(1, &cmd, &mut d), [OpResult::Ok]);
        let s = r.service("db").unwrap();
        assert_eq!((s.create_index, s.modify_index), (1, 1));
        assert_eq!(s.instances["a"].health(), HealthStatus::Critical);
        assert_eq!(s.summary().critical, 1);
        assert_eq!(s.summary().passing, 0);

        // Stated again with the same status: its time of change stays; with another, it moves.
        let cmd = register_stating("a", HealthStatus::Critical, "still down", 5000);
        r.apply(2, &cmd, &mut d);
        let h = r.service("db").unwrap().instances["a"]
            .custom_health
            .clone();
        assert_eq!(
            h.map(|h| (h.output, h.changed_at_ms)),
            Some(("still down".into(), 1000))
        );
        let cmd = register_stating("a", HealthStatus::Passing, "", 6000);
        r.apply(3, &cmd, &mut d);
        let s = r.service("db").unwrap();
        assert_eq!(s.instances["a"].health(), HealthStatus::Passing);
        assert_eq!(
            s.instances["a"]
                .custom_health
                .as_ref()
                .unwrap()
                .changed_at_ms,
            6000
        );

        // A registration stating nothing keeps the stored custom health, as before.
        r.apply(
            4,
            &set_health("db", "a", HealthStatus::Warning, "slow"),
            &mut d,
        );
        r.apply(5, &register("db", "a", &[]), &mut d);
        let s = r.service("db").unwrap();
        assert_eq!(s.instances["a"].health(), HealthStatus::Warning);
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

    /// A restore replaces everything at its own index: restored records carry it, the service
    /// the backup lacks is gone, and watchers of both wake with it.
    #[test]
    fn a_restore_replaces_everything_at_its_own_index() {
        let old = Registry::default();
        old.apply(3, &register("web", "a", &[]), &mut Dirty::default());
        old.apply(4, &register("db", "b", &[]), &mut Dirty::default());
        let backup = old.export();
        let r = Registry::default();
        r.apply(5, &register("web", "a", &["x"]), &mut Dirty::default());
        r.apply(6, &register("cache", "c", &[]), &mut Dirty::default());
        let mut web = r.watches().subscribe_service("web", r.service_index("web"));
        let mut cache = r
            .watches()
            .subscribe_service("cache", r.service_index("cache"));
        web.borrow_and_update();
        cache.borrow_and_update();
        let mut dirty = Dirty::default();
        let cmd = Command::new(
            2000,
            vec![Op::Restore {
                from_index: 4,
                from_term: 1,
                data: Box::new(backup),
            }],
        );
        assert_eq!(r.apply(9, &cmd, &mut dirty), [OpResult::Ok]);
        assert!(dirty.replaced);
        let (list_index, services) = r.services();
        assert_eq!(list_index, 9);
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        for s in &services {
            assert_eq!(s.modify_index, 9, "{}", s.name);
            assert!(s.instances.values().all(|i| i.modify_index == 9));
        }
        assert!(r.service("web").unwrap().tags().next().is_none());
        assert!(web.has_changed().unwrap() && *web.borrow_and_update() == 9);
        assert!(cache.has_changed().unwrap() && *cache.borrow_and_update() == 9);
        assert_eq!(r.service_index("cache"), 9);
        assert_eq!(r.usage().services, 2);
    }

    #[test]
    fn a_restore_as_text_applies_as_the_structured_one_and_bad_text_changes_nothing() {
        let old = Registry::default();
        old.apply(3, &register("web", "a", &["x"]), &mut Dirty::default());
        old.apply(4, &register("db", "b", &[]), &mut Dirty::default());
        let backup = old.export();
        let structured = Registry::default();
        let text = Registry::default();
        for r in [&structured, &text] {
            r.apply(5, &register("cache", "c", &[]), &mut Dirty::default());
        }
        let restore = |op| Command::new(2000, vec![op]);
        let op = Op::Restore {
            from_index: 4,
            from_term: 1,
            data: Box::new(backup.clone()),
        };
        assert_eq!(
            structured.apply(9, &restore(op), &mut Dirty::default()),
            [OpResult::Ok]
        );
        let op = Op::RestoreText {
            from_index: 4,
            from_term: 1,
            data: crate::command::RegistryText::encode(&backup).unwrap(),
        };
        assert_eq!(
            text.apply(9, &restore(op), &mut Dirty::default()),
            [OpResult::Ok]
        );
        assert_eq!(text.export(), structured.export());
        assert_eq!(text.digest(), structured.digest());

        let bad: crate::command::RegistryText = serde_json::from_str("\"{not json\"").unwrap();
        let op = Op::RestoreText {
            from_index: 4,
            from_term: 1,
            data: bad,
        };
        let before = text.export();
        let result = text.apply(10, &restore(op), &mut Dirty::default());
        assert!(
            matches!(&result[..], [OpResult::Conflict { .. }]),
            "{result:?}"
        );
        assert_eq!(text.export(), before);
    }

    fn register_with_checks(service: &str, id: &str, checks: &[&str]) -> Command {
        let checks: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({"id": c, "kind": "ttl", "ttl": "5s"}))
            .collect();
        let body = serde_json::json!({"address": "10.0.0.1", "port": 80, "checks": checks});
        let spec = validate_registration(id, &serde_json::from_value(body).unwrap()).unwrap();
        Command::new(
            1000,
            vec![Op::Register {
                service: service.into(),
                instance: spec,
                health: None,
            }],
        )
    }

    fn found(r: &Registry, id: &str) -> Option<String> {
        r.find_instance(id).map(|(s, i)| {
            assert_eq!(i.spec.id, id);
            s.name.clone()
        })
    }

    fn found_check(r: &Registry, check: &str) -> Option<(String, String)> {
        r.find_check(check)
            .map(|(s, i)| (s.name.clone(), i.spec.id.clone()))
    }

    /// What the scan the index replaces answered: the first service by name holding `id`.
    fn scanned(r: &Registry, id: &str) -> Option<String> {
        let (_, services) = r.services();
        services
            .iter()
            .find(|s| s.instances.contains_key(id))
            .map(|s| s.name.clone())
    }

    fn scanned_check(r: &Registry, check: &str) -> Option<(String, String)> {
        let (_, services) = r.services();
        services.iter().find_map(|s| {
            s.instances
                .values()
                .find(|i| i.check(check).is_some())
                .map(|i| (s.name.clone(), i.spec.id.clone()))
        })
    }

    /// The index apply kept must be the one a rebuild from the services makes.
    fn assert_index_current(r: &Registry) {
        let (_, services) = r.services();
        let rebuilt = IdIndex::build(services.iter().map(|s| &**s));
        assert_eq!(*r.ids.read(), rebuilt);
    }

    #[test]
    fn an_instance_id_in_two_services_is_found_in_the_first_by_name() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register("web", "a", &[]), &mut d);
        assert_eq!(found(&r, "a").as_deref(), Some("web"));
        r.apply(2, &register("api", "a", &[]), &mut d);
        r.apply(3, &register("db", "b", &[]), &mut d);
        assert_eq!(found(&r, "a").as_deref(), Some("api"));
        assert_eq!(found(&r, "b").as_deref(), Some("db"));
        assert_eq!(found(&r, "zzz"), None);
        // Re-registering and changing health keep it where it is.
        r.apply(4, &register("api", "a", &["x"]), &mut d);
        r.apply(
            5,
            &set_health("api", "a", HealthStatus::Critical, ""),
            &mut d,
        );
        assert_eq!(found(&r, "a").as_deref(), Some("api"));
        r.apply(6, &deregister("api", "a"), &mut d);
        assert_eq!(found(&r, "a").as_deref(), Some("web"));
        r.apply(7, &deregister("web", "a"), &mut d);
        assert_eq!(found(&r, "a"), None);
        // A deregistration of nothing leaves the index alone.
        r.apply(8, &deregister("web", "a"), &mut d);
        assert_eq!(found(&r, "b").as_deref(), Some("db"));
        assert_index_current(&r);
    }

    #[test]
    fn check_ids_follow_registrations_and_the_first_carrier_wins() {
        let r = Registry::default();
        let mut d = Dirty::default();
        r.apply(1, &register_with_checks("web", "b", &["alive"]), &mut d);
        r.apply(
            2,
            &register_with_checks("web", "a", &["alive", "disk"]),
            &mut d,
        );
        r.apply(3, &register_with_checks("api", "z", &["mem"]), &mut d);
        assert_eq!(found_check(&r, "alive"), Some(("web".into(), "a".into())));
        assert_eq!(found_check(&r, "disk"), Some(("web".into(), "a".into())));
        assert_eq!(found_check(&r, "mem"), Some(("api".into(), "z".into())));
        // A re-registration that drops a check and adds another.
        r.apply(4, &register_with_checks("web", "a", &["disk2"]), &mut d);
        assert_eq!(found_check(&r, "alive"), Some(("web".into(), "b".into())));
        assert_eq!(found_check(&r, "disk"), None);
        assert_eq!(found_check(&r, "disk2"), Some(("web".into(), "a".into())));
        // A check status change moves nothing in the index.
        let cmd = Command::new(
            5000,
            vec![Op::SetCheckStatus {
                service: "web".into(),
                id: "b".into(),
                check: "alive".into(),
                status: HealthStatus::Passing,
                output: "ok".into(),
            }],
        );
        assert_eq!(r.apply(5, &cmd, &mut d), [OpResult::Ok]);
        assert_eq!(found_check(&r, "alive"), Some(("web".into(), "b".into())));
        r.apply(6, &deregister("web", "b"), &mut d);
        assert_eq!(found_check(&r, "alive"), None);
        assert_eq!(found_check(&r, "disk2"), Some(("web".into(), "a".into())));
        assert_index_current(&r);
    }

    /// Many writes over a few ids and services: after each one the index answers what a scan
    /// answers, and equals a rebuild.
    #[test]
    fn the_index_answers_what_a_scan_answers_after_every_write() {
        let r = Registry::default();
        let mut d = Dirty::default();
        let services = ["a", "b", "c"];
        let ids = ["i1", "i2", "i3", "i4"];
        let checks = [&["x"][..], &["x", "y"], &[], &["y", "z"]];
        // A fixed pseudo-random walk (deterministic, so a failure replays).
        let mut seed = 7u64;
        for index in 1..400u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = (seed >> 33) as usize;
            let service = services[pick % 3];
            let id = ids[(pick / 3) % 4];
            let cmd = if (pick / 12).is_multiple_of(3) {
                deregister(service, id)
            } else {
                register_with_checks(service, id, checks[(pick / 36) % 4])
            };
            r.apply(index, &cmd, &mut d);
            for id in ids {
                assert_eq!(found(&r, id), scanned(&r, id), "id {id} at {index}");
            }
            for check in ["x", "y", "z"] {
                assert_eq!(
                    found_check(&r, check),
                    scanned_check(&r, check),
                    "{check} at {index}"
                );
            }
        }
        assert_index_current(&r);
    }

    #[test]
    fn the_index_is_rebuilt_by_replace_restart_and_restore() {
        let old = Registry::default();
        let mut d = Dirty::default();
        old.apply(1, &register_with_checks("web", "a", &["alive"]), &mut d);
        old.apply(2, &register("db", "b", &[]), &mut d);
        let backup = old.export();

        // A restart (and a snapshot install) loads the data whole.
        let restarted = Registry::from_data(backup.clone(), 2);
        assert_eq!(found(&restarted, "a").as_deref(), Some("web"));
        assert_eq!(found(&restarted, "b").as_deref(), Some("db"));
        assert_eq!(
            found_check(&restarted, "alive"),
            Some(("web".into(), "a".into()))
        );
        assert_index_current(&restarted);

        // A replace over a registry that held other ids forgets them.
        let r = Registry::default();
        r.apply(1, &register_with_checks("cache", "c", &["mem"]), &mut d);
        r.replace(backup.clone(), 2);
        assert_eq!(found(&r, "c"), None);
        assert_eq!(found_check(&r, "mem"), None);
        assert_eq!(found(&r, "a").as_deref(), Some("web"));
        assert_index_current(&r);

        // A restore through the log does the same.
        let r = Registry::default();
        r.apply(1, &register_with_checks("cache", "c", &["mem"]), &mut d);
        let cmd = Command::new(
            2000,
            vec![Op::Restore {
                from_index: 2,
                from_term: 1,
                data: Box::new(backup),
            }],
        );
        assert_eq!(r.apply(5, &cmd, &mut Dirty::default()), [OpResult::Ok]);
        assert_eq!(found(&r, "c"), None);
        assert_eq!(found_check(&r, "mem"), None);
        assert_eq!(found_check(&r, "alive"), Some(("web".into(), "a".into())));
        assert_eq!(found(&r, "b").as_deref(), Some("db"));
        // And apply keeps it current afterwards.
        r.apply(6, &deregister("web", "a"), &mut Dirty::default());
        assert_eq!(found_check(&r, "alive"), None);
        assert_index_current(&r);
    }
}
