//! Instances' tags and meta, stored once however many instances carry the same ones.
//!
//! Instances of a service nearly always share their tag set and much of their meta, and a
//! registry of a million instances held each as its own `BTreeSet` and `BTreeMap`: a B-tree leaf
//! of eleven slots for even one entry, about 280 and 540 bytes, more than the rest of the
//! instance. [`Tags`] and [`Meta`] are sorted slices, each distinct one kept once in a
//! process-wide table and shared by pointer, so an instance pays 16 bytes for either.
//!
//! Both encode exactly as the `BTreeSet<String>` and `BTreeMap<String, String>` they replace (a
//! sorted array; an object sorted by key), and decode the same way (a repeated tag counts once;
//! of repeated keys, the last wins), so the stored format does not change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Values kept before the first sweep of values nobody holds any more; after a sweep, the next
/// comes when the table has doubled, so sweeping costs O(1) per value interned.
const FIRST_SWEEP: usize = 1024;

/// One table of shared values of type `T`.
struct Interner<T: ?Sized> {
    table: Mutex<Table<T>>,
}

struct Table<T: ?Sized> {
    values: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    fn new() -> Self {
        Interner {
            table: Mutex::new(Table {
                values: HashSet::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// The shared copy of `value`, made from it (`make`) when there is none yet.
    fn intern(&self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut table = self.table.lock();
        if let Some(shared) = table.values.get(value) {
            return shared.clone();
        }
        if table.values.len() >= table.sweep_at {
            // Held by the table alone: no instance carries it, and none can get it without this
            // lock, so it can go.
            table.values.retain(|v| Arc::strong_count(v) > 1);
            table.sweep_at = (table.values.len() * 2).max(FIRST_SWEEP);
        }
        let shared = make();
        table.values.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().values.len()
    }
}

static TAGS: LazyLock<Interner<[Box<str>]>> = LazyLock::new(Interner::new);
/// Meta's pairs, sorted by key.
type Pairs = [(Box<str>, Box<str>)];

static META: LazyLock<Interner<Pairs>> = LazyLock::new(Interner::new);

/// An instance's tags: a sorted set of labels, shared with every instance carrying the same set.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tags(Arc<[Box<str>]>);

impl Tags {
    /// The set of `tags`, sorted, each once.
    pub fn new<S: AsRef<str>>(tags: impl IntoIterator<Item = S>) -> Tags {
        let owned: Vec<S> = tags.into_iter().collect();
        let mut sorted: Vec<&str> = owned.iter().map(AsRef::as_ref).collect();
        sorted.sort_unstable();
        sorted.dedup();
        Tags::from_sorted(&sorted)
    }

    fn from_sorted(sorted: &[&str]) -> Tags {
        let boxed: Vec<Box<str>> = sorted.iter().map(|t| Box::from(*t)).collect();
        Tags(TAGS.intern(&boxed, || boxed.clone().into()))
    }

    /// The tags in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        self.0.iter().map(|t| &**t)
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.0.binary_search_by(|t| (**t).cmp(tag)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set with `tag` added.
    pub fn with(&self, tag: &str) -> Tags {
        Tags::new(self.iter().chain([tag]))
    }
}

impl Default for Tags {
    fn default() -> Self {
        Tags::from_sorted(&[])
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> FromIterator<S> for Tags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Tags::new(iter)
    }
}

impl From<BTreeSet<String>> for Tags {
    fn from(set: BTreeSet<String>) -> Self {
        Tags::new(set)
    }
}

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Tags::new(Vec::<String>::deserialize(d)?))
    }
}

/// An instance's meta: pairs sorted by key, shared with every instance carrying the same ones.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Meta(Arc<Pairs>);

impl Meta {
    /// The map of `pairs`; of pairs with the same key, the last wins (as in a `BTreeMap`).
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Meta {
        let owned: Vec<(K, V)> = pairs.into_iter().collect();
        let map: BTreeMap<&str, &str> = owned
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        let boxed: Vec<(Box<str>, Box<str>)> =
            map.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Meta(META.intern(&boxed, || boxed.clone().into()))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&*self.0[i].1)
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs as a map of their own, for an API body.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new(std::iter::empty::<(&str, &str)>())
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(map: BTreeMap<String, String>) -> Self {
        Meta::new(map)
    }
}

impl From<&BTreeMap<String, String>> for Meta {
    fn from(map: &BTreeMap<String, String>) -> Self {
        Meta::new(map)
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Meta::new(BTreeMap::<String, String>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_a_sorted_set_shared_between_equal_sets() {
        let a = Tags::new(["v2", "canary", "v2"]);
        assert_eq!(a.iter().collect::<Vec<_>>(), ["canary", "v2"]);
        assert!(a.contains("v2") && a.contains("canary") && !a.contains("v1"));
        let b: Tags = ["canary", "v2"].into_iter().collect();
        assert!(
            Arc::ptr_eq(&a.0, &b.0),
            "one copy of a set however many hold it"
        );
        assert_eq!(
            a.with("v1").iter().collect::<Vec<_>>(),
            ["canary", "v1", "v2"]
        );
        assert!(Tags::default().is_empty());
    }

    #[test]
    fn tags_and_meta_encode_as_the_btree_collections_they_replace() {
        let set = BTreeSet::from(["v2".to_owned(), "canary".to_owned()]);
        let tags = Tags::from(set.clone());
        assert_eq!(
            serde_json::to_string(&tags).unwrap(),
            serde_json::to_string(&set).unwrap()
        );
        let back: Tags = serde_json::from_str(r#"["v2","canary","v2"]"#).unwrap();
        assert_eq!(back, tags);

        let map = BTreeMap::from([
            ("zone".to_owned(), "a".to_owned()),
            ("version".to_owned(), "1.4.2".to_owned()),
        ]);
        let meta = Meta::from(&map);
        assert_eq!(
            serde_json::to_string(&meta).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(meta.get("zone"), Some("a"));
        assert_eq!(meta.get("nope"), None);
        assert_eq!(meta.to_map(), map);
        // Repeated keys: the last wins, as a BTreeMap decodes them.
        let json = r#"{"zone":"a","zone":"b"}"#;
        let as_map: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        let as_meta: Meta = serde_json::from_str(json).unwrap();
        assert_eq!(as_meta.to_map(), as_map);
    }

    /// Values nobody holds leave the table at the next sweep, so it does not grow with every set
    /// ever registered.
    #[test]
    fn sets_nobody_holds_are_swept() {
        let table: Interner<[Box<str>]> = Interner::new();
        let make = |i: usize| -> Vec<Box<str>> { vec![format!("t{i}").into()] };
        let kept: Vec<Arc<[Box<str>]>> = (0..10)
            .map(|i| table.intern(&make(i), || make(i).into()))
            .collect();
        for i in 10..10 * FIRST_SWEEP {
            table.intern(&make(i), || make(i).into());
        }
        assert!(
            table.len() <= 2 * FIRST_SWEEP,
            "{} values kept for 10 held",
            table.len()
        );
        for (i, k) in kept.iter().enumerate() {
            assert!(Arc::ptr_eq(k, &table.intern(&make(i), || make(i).into())));
        }
    }
}
