//! Access control: policies, tokens, and the [`Authorizer`] a request is judged by.
//!
//! The ACL state is part of the replicated registry: it changes only by applying [`Op`]s, travels
//! in snapshots and is persisted beside services, so a revoked token is refused on a node as soon
//! as that node applies the revocation. Only a SHA-256 hash of a token's secret is ever stored or
//! replicated; the secret is shown once, to whoever created the token.
//!
//! A policy's rules name resources (`service`, `service_prefix`, `operator`, `acl`) and an
//! [`Access`]. A request needs one access on one resource; across the token's policies the most
//! specific rule decides (an exact `service` rule beats any prefix, a longer prefix beats a
//! shorter one), and at equal specificity `deny` wins, then the widest access.
//!
//! [`Op`]: crate::Op

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use crate::model::{is_dns_label, ValidationError};

/// The accessor id of the anonymous token, whose policies apply to requests without a token.
pub const ANONYMOUS: &str = "anonymous";
/// The built-in policy that grants everything. It cannot be changed or deleted.
pub const MANAGEMENT_POLICY: &str = "global-management";
/// Bounds on what a policy or token may hold.
pub const MAX_RULES: usize = 256;
pub const MAX_POLICIES_PER_TOKEN: usize = 32;
pub const MAX_DESCRIPTION_LEN: usize = 256;
pub const MAX_POLICY_NAME_LEN: usize = 128;
/// A token's time to live: at least a second, at most ten years.
pub const MIN_TOKEN_TTL_MS: u64 = 1_000;
pub const MAX_TOKEN_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Entries the audit list keeps on each node.
pub const AUDIT_LEN: usize = 1000;

/// What a rule grants on a resource. `Write` implies `Read`; `Deny` grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Deny,
    Read,
    Write,
}

impl Access {
    /// Whether this access is enough for `need` (`Read` or `Write`).
    pub fn allows(self, need: Access) -> bool {
        self != Access::Deny && self >= need
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Two rules at the same specificity: `deny` wins, then the wider access.
    fn merge(self, other: Access) -> Access {
        if self == Access::Deny || other == Access::Deny {
            Access::Deny
        } else {
            self.max(other)
        }
    }
}

/// A policy's rules, in a JSON shape close to Consul's:
/// `{"service": {"web": "write"}, "service_prefix": {"": "read"}, "operator": "read"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service: BTreeMap<String, Access>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_prefix: BTreeMap<String, Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Access>,
}

impl Rules {
    /// The rules of [`MANAGEMENT_POLICY`].
    pub fn management() -> Rules {
        Rules {
            service: BTreeMap::new(),
            service_prefix: BTreeMap::from([(String::new(), Access::Write)]),
            operator: Some(Access::Write),
            acl: Some(Access::Write),
        }
    }
}

/// A policy as it is proposed: name, description and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Rules,
}

/// A policy as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(flatten)]
    pub spec: PolicySpec,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A token as it is proposed. A new token carries its secret's hash and may carry a time to
/// live (counted from the leader's time when the entry is applied); an update of an existing
/// token changes only its description and policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    pub accessor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    #[serde(default)]
    pub description: String,
    pub policies: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A token as the registry holds it. The anonymous token has no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub accessor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    #[serde(default)]
    pub description: String,
    pub policies: BTreeSet<String>,
    /// Leader time after which the token is refused (and then deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub create_time_ms: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The ACL state as plain data, for snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclData {
    /// Index of the bootstrap, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<Token>,
}

impl AclData {
    pub fn is_empty(&self) -> bool {
        self.bootstrap_index.is_none() && self.policies.is_empty() && self.tokens.is_empty()
    }
}

/// One committed change, as the audit list keeps it: who (the token's accessor, never its
/// secret), what and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// This node's running count of audited changes: the entry's key in storage.
    pub seq: u64,
    pub index: u64,
    pub time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessor: Option<String>,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A token secret held by a node (its DNS token, a client's token): shown as `<redacted>` by
/// `Debug`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    /// The secret itself, to hash or send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The hex SHA-256 of a secret: the only form of it the registry keeps.
pub fn hash_secret(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// How ACLs are enforced on this node: off (everything allowed), or on with a default for what no
/// rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclMode {
    Off,
    On { default: Access },
}

/// A token that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("ACL not found")]
    NotFound,
    /// Consul treats an expired token as one that does not exist, and its clients look for
    /// "ACL not found".
    #[error("ACL not found: token {0} has expired")]
    Expired(String),
}

/// What one token may do: its policies' rules merged, with the mode's default for the rest.
#[derive(Debug, Clone)]
pub struct Authorizer {
    /// The token's accessor; `None` when ACLs are off.
    accessor: Option<String>,
    enabled: bool,
    default: Access,
    exact: HashMap<String, Access>,
    /// Longest first, so the first match is the most specific.
    prefixes: Vec<(String, Access)>,
    operator: Option<Access>,
    acl: Option<Access>,
    /// The token's expiry (leader time), so a kept authorizer can tell when it no longer holds.
    expires_at_ms: Option<u64>,
}

impl Authorizer {
    /// ACLs off: everything is allowed.
    pub fn open() -> Authorizer {
        Authorizer {
            accessor: None,
            enabled: false,
            default: Access::Write,
            exact: HashMap::new(),
            prefixes: Vec::new(),
            operator: None,
            acl: None,
            expires_at_ms: None,
        }
    }

    fn new<'a>(
        accessor: &str,
        expires_at_ms: Option<u64>,
        default: Access,
        rules: impl Iterator<Item = &'a Rules>,
    ) -> Self {
        let mut exact: HashMap<String, Access> = HashMap::new();
        let mut prefixes: HashMap<String, Access> = HashMap::new();
        let (mut operator, mut acl) = (None::<Access>, None::<Access>);
        let merge_into = |slot: &mut Option<Access>, a: Access| {
            *slot = Some(slot.map_or(a, |s| s.merge(a)));
        };
        for r in rules {
            for (name, a) in &r.service {
                exact
                    .entry(name.clone())
                    .and_modify(|s| *s = s.merge(*a))
                    .or_insert(*a);
            }
            for (p, a) in &r.service_prefix {
                prefixes
                    .entry(p.clone())
                    .and_modify(|s| *s = s.merge(*a))
                    .or_insert(*a);
            }
            if let Some(a) = r.operator {
                merge_into(&mut operator, a);
            }
            if let Some(a) = r.acl {
                merge_into(&mut acl, a);
            }
        }
        let mut prefixes: Vec<_> = prefixes.into_iter().collect();
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Authorizer {
            accessor: Some(accessor.to_owned()),
            enabled: true,
            default,
            exact,
            prefixes,
            operator,
            acl,
            expires_at_ms,
        }
    }

    /// Refuses the token once leader time `now_ms` has reached its expiry, as
    /// [`AclState::authorize`] does: for an authorizer kept beyond the request it was made for.
    pub fn check_expiry(&self, now_ms: u64) -> Result<(), TokenError> {
        match (&self.accessor, self.expires_at_ms) {
            (Some(accessor), Some(t)) if t <= now_ms => Err(TokenError::Expired(accessor.clone())),
            _ => Ok(()),
        }
    }

    /// Whether ACLs are enforced (lists are then filtered, and say so).
    pub fn enforced(&self) -> bool {
        self.enabled
    }

    /// The accessor id of the token, for the audit list; `None` when ACLs are off.
    pub fn accessor(&self) -> Option<&str> {
        self.accessor.as_deref()
    }

    /// Access to service `name`.
    pub fn service(&self, name: &str) -> Access {
        if !self.enabled {
            return Access::Write;
        }
        if let Some(a) = self.exact.get(name) {
            return *a;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map_or(self.default, |(_, a)| *a)
    }

    /// Access to membership, snapshots, the digest and the audit list.
    pub fn operator(&self) -> Access {
        if !self.enabled {
            return Access::Write;
        }
        self.operator.unwrap_or(self.default)
    }

    /// Access to tokens and policies. An `allow` default does not extend to it: granting rights
    /// always needs a rule that says so.
    pub fn acl(&self) -> Access {
        if !self.enabled {
            return Access::Write;
        }
        self.acl.unwrap_or(Access::Deny)
    }
}

/// The ACL state a node holds, kept current by apply. The maps are persistent (`imbl`): apply
/// changes a copy in O(log n) whatever the number of tokens, and readers keep the version they
/// took.
#[derive(Debug, Default, Clone)]
pub struct AclState {
    pub bootstrap_index: Option<u64>,
    pub policies: imbl::HashMap<String, Arc<Policy>>,
    pub tokens: imbl::HashMap<String, Arc<Token>>,
    /// Secret hash → accessor.
    by_secret: imbl::HashMap<String, String>,
    /// (expiry, accessor) of every token that expires: the reaper's next due token is the first.
    expiries: imbl::OrdSet<(u64, String)>,
}

impl AclState {
    pub fn from_data(data: AclData) -> AclState {
        let mut s = AclState {
            bootstrap_index: data.bootstrap_index,
            ..AclState::default()
        };
        for p in data.policies {
            s.policies.insert(p.spec.name.clone(), Arc::new(p));
        }
        for t in data.tokens {
            s.put_token(t);
        }
        s
    }

    pub fn export(&self) -> AclData {
        let mut policies: Vec<Policy> = self.policies.values().map(|p| (**p).clone()).collect();
        policies.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let mut tokens: Vec<Token> = self.tokens.values().map(|t| (**t).clone()).collect();
        tokens.sort_by(|a, b| a.accessor.cmp(&b.accessor));
        AclData {
            bootstrap_index: self.bootstrap_index,
            policies,
            tokens,
        }
    }

    pub(crate) fn put_token(&mut self, t: Token) {
        self.remove_token(&t.accessor);
        if let Some(h) = &t.secret_hash {
            self.by_secret.insert(h.clone(), t.accessor.clone());
        }
        if let Some(e) = t.expires_at_ms {
            self.expiries.insert((e, t.accessor.clone()));
        }
        self.tokens.insert(t.accessor.clone(), Arc::new(t));
    }

    pub(crate) fn remove_token(&mut self, accessor: &str) -> Option<Arc<Token>> {
        let t = self.tokens.remove(accessor)?;
        if let Some(h) = &t.secret_hash {
            self.by_secret.remove(h);
        }
        if let Some(e) = t.expires_at_ms {
            self.expiries.remove(&(e, t.accessor.clone()));
        }
        Some(t)
    }

    /// Accessors of the tokens whose expiry is at or before `time_ms`.
    pub fn expired_by(&self, time_ms: u64) -> Vec<String> {
        self.expiries
            .iter()
            .take_while(|(e, _)| *e <= time_ms)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// The token a secret belongs to.
    pub fn token_by_secret(&self, secret: &str) -> Option<&Arc<Token>> {
        self.tokens.get(self.by_secret.get(&hash_secret(secret))?)
    }

    /// The authorizer of `secret` (`None`: the anonymous token) at leader time `now_ms`.
    pub fn authorize(
        &self,
        mode: AclMode,
        secret: Option<&str>,
        now_ms: u64,
    ) -> Result<Authorizer, TokenError> {
        if mode == AclMode::Off {
            return Ok(Authorizer::open());
        }
        let token = match secret {
            Some(s) => Some(&**self.token_by_secret(s).ok_or(TokenError::NotFound)?),
            None => None,
        };
        self.authorize_token(mode, token, now_ms)
    }

    /// The authorizer of `token` (`None`: the anonymous token) at leader time `now_ms`.
    pub fn authorize_token(
        &self,
        mode: AclMode,
        token: Option<&Token>,
        now_ms: u64,
    ) -> Result<Authorizer, TokenError> {
        let AclMode::On { default } = mode else {
            return Ok(Authorizer::open());
        };
        let token = token.or_else(|| self.tokens.get(ANONYMOUS).map(|t| &**t));
        let Some(token) = token else {
            // No anonymous token stored yet: it has no policies.
            return Ok(Authorizer::new(
                ANONYMOUS,
                None,
                default,
                std::iter::empty(),
            ));
        };
        if token.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return Err(TokenError::Expired(token.accessor.clone()));
        }
        static MANAGEMENT: LazyLock<Rules> = LazyLock::new(Rules::management);
        let rules = token.policies.iter().filter_map(|name| {
            if name == MANAGEMENT_POLICY {
                Some(&*MANAGEMENT)
            } else {
                self.policies.get(name).map(|p| &p.spec.rules)
            }
        });
        Ok(Authorizer::new(
            &token.accessor,
            token.expires_at_ms,
            default,
            rules,
        ))
    }

    /// The earliest expiry of any token, for the leader's reaper.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.get_min().map(|(e, _)| *e)
    }
}

/// Authorizers of the secrets recently used on this node, so that a request with a known token
/// costs a map lookup instead of a SHA-256 and a merge of the token's policies.
///
/// What it answers is what [`AclState::authorize`] answers: entries are tagged with the ACL
/// version ([`Registry::acl_version`]) they were computed at and served only while it stays the
/// same (a change to any token or policy moves it, and the first request that sees the new one
/// empties the cache), and the token's expiry is checked against the leader time on every hit.
/// Only tokens that exist are kept, never an unknown secret, and at most `capacity` of them: a
/// full cache is emptied before it takes one more. Entries are found by a keyed hash of the
/// secret (random keys per process) and the secret is then compared in constant time, so a
/// lookup tells a caller nothing about other secrets.
///
/// [`Registry::acl_version`]: crate::Registry::acl_version
pub struct RightsCache {
    mode: AclMode,
    capacity: usize,
    keys: RandomState,
    /// ACLs off: the one authorizer every request gets.
    open: Arc<Authorizer>,
    inner: parking_lot::RwLock<CachedRights>,
}

/// The entries computed at one ACL version.
#[derive(Default)]
struct CachedRights {
    /// `None` before the first entry.
    version: Option<u64>,
    anonymous: Option<Arc<Authorizer>>,
    /// Keyed hash of the secret → the secret and its authorizer.
    by_secret: HashMap<u64, CachedToken, BuildHasherDefault<KeyedHash>>,
}

/// A secret, and the authorizer of its token.
type CachedToken = (Box<[u8]>, Arc<Authorizer>);

/// The map's hasher: its keys are already keyed hashes, so it passes them through.
#[derive(Default)]
struct KeyedHash(u64);

impl Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Whether two secrets are equal, in a time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y))) == 0
}

impl std::fmt::Debug for RightsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("RightsCache")
            .field("mode", &self.mode)
            .field("capacity", &self.capacity)
            .field("cached", &self.len())
            .finish()
    }
}

impl RightsCache {
    /// A cache for a node in `mode`, keeping at most `capacity` tokens (0: none).
    pub fn new(mode: AclMode, capacity: usize) -> RightsCache {
        RightsCache {
            mode,
            capacity,
            keys: RandomState::new(),
            open: Arc::new(Authorizer::open()),
            inner: parking_lot::RwLock::default(),
        }
    }

    /// The authorizer of `secret` (`None`: the anonymous token) on this node now: what
    /// [`AclState::authorize`] answers for the registry's current ACL state and leader time.
    pub fn authorize(
        &self,
        registry: &crate::Registry,
        secret: Option<&str>,
    ) -> Result<Arc<Authorizer>, TokenError> {
        // The version first: rights computed from the state read after it are at least as new.
        self.authorize_at(
            registry.acl_version(),
            || registry.acl(),
            secret,
            registry.time_ms(),
        )
    }

    /// [`RightsCache::authorize`] with the ACL version, the state read at (or after) it, and
    /// the leader time given.
    fn authorize_at(
        &self,
        version: u64,
        state: impl FnOnce() -> Arc<AclState>,
        secret: Option<&str>,
        now_ms: u64,
    ) -> Result<Arc<Authorizer>, TokenError> {
        if self.mode == AclMode::Off {
            return Ok(self.open.clone());
        }
        let key = secret.map(|s| self.keys.hash_one(s.as_bytes()));
        {
            let cached = self.inner.read();
            if cached.version == Some(version) {
                let hit = match (secret, key) {
                    (Some(s), Some(k)) => cached
                        .by_secret
                        .get(&k)
                        .filter(|(kept, _)| same_secret(kept, s.as_bytes()))
                        .map(|(_, z)| z),
                    _ => cached.anonymous.as_ref(),
                };
                if let Some(z) = hit {
                    z.check_expiry(now_ms)?;
                    return Ok(z.clone());
                }
            }
        }
        let z = Arc::new(state().authorize(self.mode, secret, now_ms)?);
        if self.capacity > 0 {
            let mut cached = self.inner.write();
            if cached.version != Some(version) {
                *cached = CachedRights {
                    version: Some(version),
                    ..CachedRights::default()
                };
            }
            match (secret, key) {
                (Some(s), Some(k)) => {
                    if cached.by_secret.len() >= self.capacity {
                        cached.by_secret.clear();
                    }
                    cached.by_secret.insert(k, (s.as_bytes().into(), z.clone()));
                }
                _ => cached.anonymous = Some(z.clone()),
            }
        }
        Ok(z)
    }

    /// How many tokens' authorizers are kept.
    pub fn len(&self) -> usize {
        self.inner.read().by_secret.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Validates a policy name: 1-128 of `a-z A-Z 0-9 - _ .`.
pub fn validate_policy_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POLICY_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("a policy name is 1-{MAX_POLICY_NAME_LEN} of a-z, A-Z, 0-9, '-', '_', '.'"),
        ))
    }
}

fn validate_description(d: &str) -> Result<(), ValidationError> {
    if d.len() > MAX_DESCRIPTION_LEN || d.chars().any(char::is_control) {
        return Err(invalid(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} bytes, no control characters"),
        ));
    }
    Ok(())
}

/// Validates a policy before it is proposed.
pub fn validate_policy(p: &PolicySpec) -> Result<(), ValidationError> {
    validate_policy_name(&p.name)?;
    if p.name == MANAGEMENT_POLICY {
        return Err(invalid(
            "name",
            format!("{MANAGEMENT_POLICY} is built in and cannot be changed"),
        ));
    }
    validate_description(&p.description)?;
    let r = &p.rules;
    if r.service.len() + r.service_prefix.len() > MAX_RULES {
        return Err(invalid(
            "rules",
            format!("at most {MAX_RULES} service rules"),
        ));
    }
    for name in r.service.keys() {
        if !is_dns_label(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                "rules.service",
                format!("{name:?} is not a lower-case service name"),
            ));
        }
    }
    for prefix in r.service_prefix.keys() {
        let ok = prefix.len() <= 63
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(invalid(
                "rules.service_prefix",
                format!("{prefix:?} is not the start of a lower-case service name"),
            ));
        }
    }
    Ok(())
}

/// Validates an accessor id: 1-64 of `a-z 0-9 -`, or the anonymous token's.
pub fn validate_accessor(a: &str) -> Result<(), ValidationError> {
    let ok = !a.is_empty()
        && a.len() <= 64
        && a.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid("accessor", "1-64 of a-z, 0-9, '-'"))
    }
}

/// Validates a token before it is proposed.
pub fn validate_token(t: &TokenSpec) -> Result<(), ValidationError> {
    validate_accessor(&t.accessor)?;
    validate_description(&t.description)?;
    if let Some(h) = &t.secret_hash {
        if t.accessor == ANONYMOUS {
            return Err(invalid("secret", "the anonymous token has no secret"));
        }
        if h.len() != 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid("secret_hash", "must be 64 lower-case hex digits"));
        }
    }
    if t.policies.len() > MAX_POLICIES_PER_TOKEN {
        return Err(invalid(
            "policies",
            format!("at most {MAX_POLICIES_PER_TOKEN}"),
        ));
    }
    for p in &t.policies {
        validate_policy_name(p).map_err(|e| invalid("policies", e.message))?;
    }
    if let Some(ttl) = t.ttl_ms {
        if !(MIN_TOKEN_TTL_MS..=MAX_TOKEN_TTL_MS).contains(&ttl) {
            return Err(invalid("expiration_ttl", "must be between 1s and 10 years"));
        }
        if t.accessor == ANONYMOUS {
            return Err(invalid(
                "expiration_ttl",
                "the anonymous token does not expire",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Rules {
        serde_json::from_str(json).unwrap()
    }

    fn state_with(policies: &[(&str, &str)], token_policies: &[&str]) -> AclState {
        let mut s = AclState::default();
        for (name, json) in policies {
            s.policies.insert(
                (*name).into(),
                Arc::new(Policy {
                    spec: PolicySpec {
                        name: (*name).into(),
                        description: String::new(),
                        rules: rules(json),
                    },
                    create_index: 1,
                    modify_index: 1,
                }),
            );
        }
        s.put_token(Token {
            accessor: "t1".into(),
            secret_hash: Some(hash_secret("s1")),
            description: String::new(),
            policies: token_policies.iter().map(|p| (*p).to_string()).collect(),
            expires_at_ms: Some(1_000),
            create_time_ms: 0,
            create_index: 1,
            modify_index: 1,
        });
        s
    }

    const DENY: AclMode = AclMode::On {
        default: Access::Deny,
    };

    #[test]
    fn the_most_specific_rule_wins_and_deny_wins_ties() {
        let s = state_with(
            &[
                (
                    "a",
                    r#"{"service_prefix": {"": "read", "web": "write"}, "service": {"web-admin": "deny"}}"#,
                ),
                (
                    "b",
                    r#"{"service_prefix": {"web": "deny"}, "service": {"web-api": "write"}}"#,
                ),
            ],
            &["a", "b"],
        );
        let z = s.authorize(DENY, Some("s1"), 0).unwrap();
        assert_eq!(z.service("db"), Access::Read);
        assert_eq!(
            z.service("web"),
            Access::Deny,
            "deny wins the tie at prefix 'web'"
        );
        assert_eq!(
            z.service("web-api"),
            Access::Write,
            "an exact rule beats a prefix"
        );
        assert_eq!(z.service("web-admin"), Access::Deny);
        assert_eq!(z.operator(), Access::Deny);
        assert_eq!(z.acl(), Access::Deny);
        assert_eq!(z.accessor(), Some("t1"));
    }

    #[test]
    fn unknown_expired_and_anonymous_tokens() {
        let s = state_with(&[], &[]);
        assert_eq!(
            s.authorize(DENY, Some("nope"), 0).unwrap_err(),
            TokenError::NotFound
        );
        assert!(s.authorize(DENY, Some("s1"), 999).is_ok());
        assert_eq!(
            s.authorize(DENY, Some("s1"), 1_000).unwrap_err(),
            TokenError::Expired("t1".into())
        );
        let anon = s.authorize(DENY, None, 0).unwrap();
        assert_eq!(anon.service("web"), Access::Deny);
        let allow = AclMode::On {
            default: Access::Write,
        };
        let anon = s.authorize(allow, None, 0).unwrap();
        assert_eq!(anon.service("web"), Access::Write);
        assert_eq!(anon.acl(), Access::Deny, "allow never extends to ACLs");
        assert_eq!(
            s.authorize(AclMode::Off, Some("nope"), 0).unwrap().acl(),
            Access::Write
        );
        // The reaper's index follows the tokens.
        let mut s = s;
        assert_eq!(s.next_expiry(), Some(1_000));
        assert_eq!(s.expired_by(999), Vec::<String>::new());
        assert_eq!(s.expired_by(1_000), ["t1"]);
        s.remove_token("t1");
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn management_grants_everything_and_dangling_policies_grant_nothing() {
        let s = state_with(&[], &[MANAGEMENT_POLICY, "deleted"]);
        let z = s.authorize(DENY, Some("s1"), 0).unwrap();
        assert_eq!(z.service("anything"), Access::Write);
        assert_eq!(z.operator(), Access::Write);
        assert_eq!(z.acl(), Access::Write);
        let s = state_with(&[], &["deleted"]);
        assert_eq!(
            s.authorize(DENY, Some("s1"), 0).unwrap().service("x"),
            Access::Deny
        );
    }

    fn token(accessor: &str, secret: &str, policies: &[&str], expires: Option<u64>) -> Token {
        Token {
            accessor: accessor.into(),
            secret_hash: Some(hash_secret(secret)),
            description: String::new(),
            policies: policies.iter().map(|p| (*p).to_string()).collect(),
            expires_at_ms: expires,
            create_time_ms: 0,
            create_index: 2,
            modify_index: 2,
        }
    }

    #[test]
    fn hash_secret_is_the_hex_sha256() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_rights_cache_answers_what_the_state_answers() {
        let s = Arc::new(state_with(
            &[("web", r#"{"service_prefix": {"web": "read"}}"#)],
            &["web"],
        ));
        let cache = RightsCache::new(DENY, 8);
        let a = cache.authorize_at(1, || s.clone(), Some("s1"), 0).unwrap();
        let b = cache.authorize_at(1, || s.clone(), Some("s1"), 0).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second request is served from the cache"
        );
        assert_eq!(b.service("web"), Access::Read);
        assert_eq!(cache.len(), 1);

        // An unknown secret is refused and never kept; one that differs in a byte is not the
        // cached one.
        for bad in ["nope", "s2", "s", "s1 "] {
            assert_eq!(
                cache
                    .authorize_at(1, || s.clone(), Some(bad), 0)
                    .unwrap_err(),
                TokenError::NotFound
            );
        }
        assert_eq!(cache.len(), 1);

        // Expiry is judged on every hit, by the leader time given.
        assert_eq!(
            cache
                .authorize_at(1, || s.clone(), Some("s1"), 1_000)
                .unwrap_err(),
            TokenError::Expired("t1".into())
        );

        // The anonymous token is cached too, and follows the state like the others.
        let anon = cache.authorize_at(1, || s.clone(), None, 0).unwrap();
        assert!(Arc::ptr_eq(
            &anon,
            &cache.authorize_at(1, || s.clone(), None, 0).unwrap()
        ));
        assert_eq!(anon.service("web"), Access::Deny);

        // A changed policy and a deleted token are seen by the first request on the new state.
        let mut changed = (*s).clone();
        changed.policies.insert(
            "web".into(),
            Arc::new(Policy {
                spec: PolicySpec {
                    name: "web".into(),
                    description: String::new(),
                    rules: rules(r#"{"service_prefix": {"web": "write"}}"#),
                },
                create_index: 1,
                modify_index: 3,
            }),
        );
        changed.put_token(Token {
            secret_hash: None,
            ..token(ANONYMOUS, "", &["web"], None)
        });
        let changed = Arc::new(changed);
        let c = cache
            .authorize_at(2, || changed.clone(), Some("s1"), 0)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.service("web"), Access::Write);
        assert_eq!(
            cache
                .authorize_at(2, || changed.clone(), None, 0)
                .unwrap()
                .service("web"),
            Access::Write
        );
        let mut deleted = (*changed).clone();
        deleted.remove_token("t1");
        let deleted = Arc::new(deleted);
        assert_eq!(
            cache
                .authorize_at(3, || deleted.clone(), Some("s1"), 0)
                .unwrap_err(),
            TokenError::NotFound
        );
    }

    #[test]
    fn the_rights_cache_keeps_at_most_its_capacity() {
        let mut s = state_with(&[], &[]);
        for i in 0..10 {
            s.put_token(token(&format!("a{i}"), &format!("secret-{i}"), &[], None));
        }
        let s = Arc::new(s);
        let cache = RightsCache::new(DENY, 3);
        for round in 0..2 {
            for i in 0..10 {
                let z = cache
                    .authorize_at(1, || s.clone(), Some(&format!("secret-{i}")), 0)
                    .unwrap();
                assert_eq!(
                    z.accessor(),
                    Some(format!("a{i}").as_str()),
                    "round {round}"
                );
                assert!(cache.len() <= 3);
            }
        }
        let none = RightsCache::new(DENY, 0);
        let a = none
            .authorize_at(1, || s.clone(), Some("secret-1"), 0)
            .unwrap();
        let b = none
            .authorize_at(1, || s.clone(), Some("secret-1"), 0)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "capacity 0 keeps nothing");
        assert!(none.is_empty());
        let open = RightsCache::new(AclMode::Off, 3);
        assert_eq!(
            open.authorize_at(1, || s.clone(), Some("nope"), 0)
                .unwrap()
                .acl(),
            Access::Write
        );
    }

    #[test]
    fn validation_refuses_what_could_not_be_a_rule() {
        let p = |json: &str| PolicySpec {
            name: "p".into(),
            description: String::new(),
            rules: rules(json),
        };
        assert!(validate_policy(&p(r#"{"service": {"web": "read"}}"#)).is_ok());
        assert!(validate_policy(&p(r#"{"service": {"Web": "read"}}"#)).is_err());
        assert!(validate_policy(&p(r#"{"service_prefix": {"a.b": "read"}}"#)).is_err());
        assert!(serde_json::from_str::<Rules>(r#"{"key": {"x": "read"}}"#).is_err());
        assert!(serde_json::from_str::<Rules>(r#"{"operator": "admin"}"#).is_err());
        let mut mgmt = p("{}");
        mgmt.name = MANAGEMENT_POLICY.into();
        assert!(validate_policy(&mgmt).is_err());
        let t = TokenSpec {
            accessor: "a1".into(),
            secret_hash: Some("zz".into()),
            description: String::new(),
            policies: BTreeSet::new(),
            ttl_ms: None,
        };
        assert!(validate_token(&t).is_err());
        let t = TokenSpec {
            secret_hash: Some(hash_secret("x")),
            ttl_ms: Some(10),
            ..t
        };
        assert!(validate_token(&t).is_err());
    }
}
