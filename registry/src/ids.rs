//! Where each instance id and each check id lives.
//!
//! The Consul API names an instance (`agent/service/deregister/{id}`) or a check
//! (`agent/check/pass/{id}`) by its id alone, without its service. Instance ids are unique
//! within their service only and check ids within their instance only, so one id can live in
//! several places: the index keeps them all, sorted, and a lookup answers the first, which is
//! what a scan of the services by name (then of their instances by id) would find.
//!
//! Apply keeps the index beside the services map, one instance at a time, so a write costs a
//! few hash lookups however large its service is; a restart, a snapshot install and a restore
//! rebuild it whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::model::Instance;
use crate::registry::ServiceEntry;

/// The places one id lives. Nearly always one: kept inline then, a sorted set beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holders<T> {
    One(T),
    /// Boxed: an id in several places is rare, and the index has an entry per instance. With
    /// the set inline, the holders of every entry took 32 bytes rather than 16: at a million
    /// instances, a table of 2^21 buckets of 48 bytes rather than 32.
    #[allow(clippy::box_collection)] // the box is the point: see above
    Many(Box<BTreeSet<T>>),
}

impl<T: Ord + Clone> Holders<T> {
    fn insert(&mut self, v: T) {
        match self {
            Holders::One(x) if *x == v => {}
            Holders::One(x) => *self = Holders::Many(Box::new(BTreeSet::from([x.clone(), v]))),
            Holders::Many(set) => {
                set.insert(v);
            }
        }
    }

    /// Removes `v`; answers whether any holder is left.
    fn remove(&mut self, v: &T) -> bool {
        match self {
            Holders::One(x) => x != v,
            Holders::Many(set) => {
                set.remove(v);
                if set.len() == 1 {
                    if let Some(last) = set.pop_first() {
                        *self = Holders::One(last);
                    }
                    return true;
                }
                !set.is_empty()
            }
        }
    }

    /// Every holder, sorted.
    fn to_vec(&self) -> Vec<T> {
        match self {
            Holders::One(x) => vec![x.clone()],
            Holders::Many(set) => set.iter().cloned().collect(),
        }
    }
}

fn add<K: Ord + Clone>(map: &mut HashMap<Box<str>, Holders<K>>, key: &str, holder: K) {
    match map.get_mut(key) {
        Some(h) => h.insert(holder),
        None => {
            map.insert(key.into(), Holders::One(holder));
        }
    }
}

fn remove<K: Ord + Clone>(map: &mut HashMap<Box<str>, Holders<K>>, key: &str, holder: &K) {
    if let Some(h) = map.get_mut(key) {
        if !h.remove(holder) {
            map.remove(key);
        }
    }
}

/// Where a check lives: its instance's service and id.
type CheckPlace = (Arc<str>, Box<str>);

/// Instance id to the services holding it, and check id to the instances carrying it.
///
/// An entry per instance, so its size counts at a million instances: ids are boxed (16 bytes,
/// not a `String`'s 24) and service names shared, one copy per service rather than one per
/// instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct IdIndex {
    /// Instance id -> names of the services with an instance of that id.
    instances: HashMap<Box<str>, Holders<Arc<str>>>,
    /// Check id -> (service, instance id) of the instances with a check of that id.
    checks: HashMap<Box<str>, Holders<CheckPlace>>,
    /// The service names the holders share; a name goes with the last holder naming it.
    names: HashSet<Arc<str>>,
}

impl IdIndex {
    /// The index of every instance of `services`.
    pub(crate) fn build<'a, I>(services: I) -> Self
    where
        I: IntoIterator<Item = &'a ServiceEntry>,
        I::IntoIter: Clone,
    {
        let services = services.into_iter();
        let (mut names, mut instances, mut checks) = (0, 0, 0);
        for s in services.clone() {
            names += 1;
            instances += s.instances.len();
            checks += s.checks() as usize;
        }
        // Sized once: growing a table of a million entries step by step rehashes it ~20 times.
        let mut index = IdIndex {
            instances: HashMap::with_capacity(instances),
            checks: HashMap::with_capacity(checks),
            names: HashSet::with_capacity(names),
        };
        for s in services {
            for inst in s.instances.values() {
                index.add(&s.name, inst);
            }
        }
        index
    }

    /// The shared copy of service name `service`.
    fn name(&mut self, service: &str) -> Arc<str> {
        if let Some(name) = self.names.get(service) {
            return name.clone();
        }
        let name: Arc<str> = service.into();
        self.names.insert(name.clone());
        name
    }

    /// Forgets `service`'s name once no holder names it.
    fn release(&mut self, service: &str) {
        if self
            .names
            .get(service)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            self.names.remove(service);
        }
    }

    /// Records instance `inst` of `service` and its checks (again: a no-op).
    pub(crate) fn add(&mut self, service: &str, inst: &Instance) {
        let name = self.name(service);
        for c in &inst.spec.checks {
            add(
                &mut self.checks,
                &c.id,
                (name.clone(), inst.spec.id.as_str().into()),
            );
        }
        add(&mut self.instances, &inst.spec.id, name);
    }

    /// Forgets what `before` (an instance of `service`) held that `after` (the same id's
    /// instance now, `None` when it went) does not: the instance itself, or checks it dropped.
    pub(crate) fn remove(&mut self, service: &str, before: &Instance, after: Option<&Instance>) {
        let id = &before.spec.id;
        let kept = |check: &str| after.is_some_and(|a| a.spec.checks.iter().any(|c| c.id == check));
        let Some(name) = self.names.get(service).cloned() else {
            // Nothing of this service was ever recorded.
            return;
        };
        if after.is_none() {
            remove(&mut self.instances, id, &name);
        }
        let holder = (name, Box::<str>::from(id.as_str()));
        for c in &before.spec.checks {
            if !kept(&c.id) {
                remove(&mut self.checks, &c.id, &holder);
            }
        }
        drop(holder);
        self.release(service);
    }

    /// The services that may hold instance `id`, sorted by name.
    pub(crate) fn services_of(&self, id: &str) -> Vec<Arc<str>> {
        self.instances
            .get(id)
            .map(Holders::to_vec)
            .unwrap_or_default()
    }

    /// The (service, instance id) pairs that may carry check `id`, sorted.
    pub(crate) fn instances_of(&self, check: &str) -> Vec<CheckPlace> {
        self.checks
            .get(check)
            .map(Holders::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_stay_sorted_and_shrink_back_to_one() {
        let mut h = Holders::One("web".to_owned());
        h.insert("web".to_owned());
        assert_eq!(
            h,
            Holders::One("web".to_owned()),
            "a second insert is a no-op"
        );
        h.insert("db".to_owned());
        h.insert("api".to_owned());
        assert_eq!(h.to_vec(), ["api", "db", "web"]);
        assert!(h.remove(&"db".to_owned()));
        assert!(h.remove(&"api".to_owned()));
        assert_eq!(h, Holders::One("web".to_owned()));
        assert!(
            h.remove(&"zzz".to_owned()),
            "an absent holder changes nothing"
        );
        assert!(!h.remove(&"web".to_owned()));
    }
}
