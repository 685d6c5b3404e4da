//! Answers built from the registry view: the naming scheme, health filtering, weighted
//! shuffling, truncation, and negative answers.
//!
//! Each (service, tag) that is asked about gets a [`RecordSet`]: its healthy instances' records,
//! fully encoded once, back to back. A query then costs a lookup, a weighted shuffle of indexes
//! and a few `memcpy`s. A set remembers the service's index and settings index it was built at
//! and is rebuilt on the first query after either moves, so an applied change shows in the very
//! next answer of that node; while nothing at all is applied, a set is used without looking at
//! the registry.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_registry::acl::{Access, AclMode, Authorizer, Secret};
use cairn_registry::model::{address_kind, AddressKind};
use cairn_registry::{HealthStatus, Registry, ServiceEntry};
use parking_lot::RwLock;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rustc_hash::{FxBuildHasher, FxHasher};

use crate::wire::{self, DomainName, Flags, NameError, Query, Response, SoaTimers};

mod namespace;

/// Record sets kept at most; past this the cache starts over (it only ever holds what was asked).
const MAX_CACHED_SETS: usize = 65_536;
/// The priority every SRV record carries: all instances are equal, weight decides.
const SRV_PRIORITY: u16 = 1;

/// Defaults of [`ZoneConfig`]; the agent's flags default to these same values.
pub const DEFAULT_DOMAIN: &str = "cairn";
pub const DEFAULT_TTL: u32 = 5;
pub const DEFAULT_NEGATIVE_TTL: u32 = 5;
pub const DEFAULT_MAX_ANSWERS: usize = 64;

/// How the zone answers.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The zone, lower-case with a trailing dot: `cairn.`.
    pub domain: String,
    /// TTL of service answers unless a service sets its own.
    pub ttl: u32,
    /// The SOA minimum: TTL of negative answers.
    pub negative_ttl: u32,
    /// Most records in one answer section (0: no limit but the message size).
    pub max_answers: usize,
    /// Whether `warning` instances are handed out with `passing` ones.
    pub allow_warning: bool,
    /// Whether names outside the zone are forwarded (sets RA).
    pub recursion: bool,
    /// Whether ACLs decide which services DNS answers for.
    pub acl: AclMode,
    /// The secret of the token whose rights DNS answers with (`--dns-token-file`); `None`: the
    /// anonymous token.
    pub token: Option<Secret>,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            domain: format!("{DEFAULT_DOMAIN}."),
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_answers: DEFAULT_MAX_ANSWERS,
            allow_warning: false,
            recursion: false,
            acl: AclMode::Off,
            token: None,
        }
    }
}

/// The cluster's nodes as name servers: id and the address to answer for `node-<id>.node.<zone>`.
pub type Nameservers = Arc<dyn Fn() -> Vec<(u64, Option<IpAddr>)> + Send + Sync>;

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the reply written into the buffer [`Zone::answer`] was given.
    Reply,
    /// The name is outside the zone and upstreams are configured: forward the query.
    Forward,
}

/// Where one record is in its set's [`RecordSet::bytes`]; empty for none.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// One instance's records, as spans of its set's bytes.
#[derive(Debug, Clone, Copy)]
struct Encoded {
    weight: u16,
    /// The type of the address record: A, AAAA or CNAME.
    address_type: u16,
    /// The A, AAAA or CNAME record owned by the question name.
    address: Span,
    srv: Span,
    /// The target's A or AAAA for the additional section (empty for host-name targets).
    glue: Span,
}

/// The encoded records of a service (or of one tag of it) at one index.
#[derive(Debug)]
struct RecordSet {
    /// The key the set is cached under, checked on every hit: the cache is indexed by the key's
    /// hash alone, and the key kept here beside the header the answer reads anyway, rather than
    /// in an allocation of its own. `None` for a set that is not cached.
    key: Option<SetKey>,
    service_index: u64,
    settings_index: u64,
    /// The registry's applied index when the set was last found current. While the registry
    /// stays at it, a query uses the set without looking the service up.
    checked_at: AtomicU64,
    /// Every record of the set, encoded, back to back: an answer reads a few cache lines
    /// rather than one allocation per record.
    bytes: Vec<u8>,
    instances: Vec<Encoded>,
    /// Whether every instance has the same weight: the weighted order is then a uniform one.
    equal_weights: bool,
}

impl RecordSet {
    fn record(&self, span: Span) -> &[u8] {
        let start = span.start as usize;
        &self.bytes[start..start + span.len as usize]
    }
}

/// The cache key of a set: the service's name, and `.` and the tag when the name asked for
/// one (neither has a dot). Both are DNS labels, so a key fits in [`SET_KEY_LEN`] bytes, kept
/// inline: made on the stack for a lookup, and in its set for the check of a hit.
#[derive(Clone, Copy)]
struct SetKey {
    len: u8,
    bytes: [u8; SET_KEY_LEN],
}
const SET_KEY_LEN: usize = 2 * wire::MAX_LABEL_LEN + 1;

impl SetKey {
    /// `service` and `tag` as a key; `None` when they are longer than DNS labels.
    fn new(service: &str, tag: Option<&str>) -> Option<SetKey> {
        let tag = tag.map_or(&[][..], str::as_bytes);
        if service.len() > wire::MAX_LABEL_LEN || tag.len() > wire::MAX_LABEL_LEN {
            return None;
        }
        let mut key = SetKey {
            len: 0,
            bytes: [0; SET_KEY_LEN],
        };
        let mut n = service.len();
        key.bytes[..n].copy_from_slice(service.as_bytes());
        if !tag.is_empty() {
            key.bytes[n] = b'.';
            key.bytes[n + 1..n + 1 + tag.len()].copy_from_slice(tag);
            n += 1 + tag.len();
        }
        // At most 2 * 63 + 1 = 127.
        key.len = n as u8;
        Some(key)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// What the cache is indexed by. Two keys with one hash share a slot: the second to be
    /// asked replaces the first, whose next query misses and builds it again (never a wrong
    /// answer: a hit is checked against the set's own key).
    fn hash(&self) -> u64 {
        let mut h = FxHasher::default();
        h.write(self.as_bytes());
        h.finish()
    }
}

impl PartialEq for SetKey {
    fn eq(&self, other: &SetKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for SetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The DNS zone of one node.
pub struct Zone {
    config: ZoneConfig,
    /// How many labels the zone's name has.
    domain_labels: usize,
    /// The zone's name in lower-cased wire form, as [`wire::Labels::wire_from`] gives names.
    domain_wire: Vec<u8>,
    /// The zone's name and the SOA's two names, checked once.
    domain: DomainName,
    soa_mname: DomainName,
    soa_rname: DomainName,
    registry: Arc<Registry>,
    nameservers: Nameservers,
    /// The record sets asked for, by [`SetKey::hash`] of their keys.
    cache: RwLock<HashMap<u64, Arc<RecordSet>, FxBuildHasher>>,
    /// The DNS token's rights, with the ACL version they were computed at (`None`: the token is
    /// unknown or expired, and DNS answers for no service). Queries only read it; the first
    /// query after a change of tokens or policies recomputes it.
    rights: RwLock<(u64, Option<Authorizer>)>,
    /// Cloud Map DNS namespaces served beside the zone, as of a settings version.
    namespaces: RwLock<Arc<namespace::Namespaces>>,
    /// Encoded records of Cloud Map services in their namespaces, by service.
    namespace_cache: RwLock<HashMap<String, Arc<namespace::NamespaceSet>>>,
}

/// The relative name inside the zone, classified.
enum Name<'a> {
    Apex,
    Service {
        service: &'a [u8],
        tag: Option<&'a [u8]>,
    },
    Addr(&'a [u8]),
    Node(&'a [u8]),
    Unknown,
}

fn classify<'a>(rel: &[&'a [u8]]) -> Name<'a> {
    match rel {
        [] => Name::Apex,
        [s, svc] if *svc == b"service" => {
            if s.starts_with(b"_") {
                Name::Unknown
            } else {
                Name::Service {
                    service: s,
                    tag: None,
                }
            }
        }
        [a, b, svc] if *svc == b"service" => {
            match (a.strip_prefix(b"_"), b.strip_prefix(b"_")) {
                // RFC 2782: _service._proto or _service._tag; _tcp asks for every instance.
                (Some(service), Some(proto)) => Name::Service {
                    service,
                    tag: (proto != b"tcp").then_some(proto),
                },
                (None, None) => Name::Service {
                    service: b,
                    tag: Some(a),
                },
                _ => Name::Unknown,
            }
        }
        [hex, addr] if *addr == b"addr" => Name::Addr(hex),
        [node, n] if *n == b"node" => Name::Node(node),
        _ => Name::Unknown,
    }
}

/// Checks that `domain` is a domain name with room under it for every name a zone makes (an
/// IPv6 SRV target, `<32 hex digits>.addr.<domain>`, is the longest). The agent's configuration
/// calls it too, so a domain that cannot work is refused before any port is bound.
pub fn check_domain(domain: &str) -> Result<DomainName, NameError> {
    let name = DomainName::new(domain)?;
    name.child(&format!("{}.addr", "f".repeat(32)))?;
    name.child(&format!("node-{}.node", u64::MAX))?;
    name.child("hostmaster")?;
    Ok(name)
}

/// `0a000001` for 10.0.0.1; 32 hex digits for IPv6. The name an SRV target carries.
pub fn addr_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn parse_addr_label(label: &[u8]) -> Option<IpAddr> {
    let hex = std::str::from_utf8(label).ok()?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    match (hex.len(), bytes?) {
        (8, b) => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        (32, b) => {
            let arr: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::from(arr))
        }
        _ => None,
    }
}

impl Zone {
    /// A zone for `config.domain`. Refused when the domain leaves no room for the names the zone
    /// makes under it (an IPv6 SRV target, `<32 hex digits>.addr.<domain>`, is the longest).
    pub fn new(
        config: ZoneConfig,
        registry: Arc<Registry>,
        nameservers: Nameservers,
    ) -> Result<Self, NameError> {
        let domain = check_domain(&config.domain)?;
        let soa_mname = domain.child("ns")?;
        let soa_rname = domain.child("hostmaster")?;
        let domain_labels: Vec<Vec<u8>> = config
            .domain
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_ascii_lowercase())
            .collect();
        let mut domain_wire = Vec::with_capacity(domain.wire().len());
        for l in &domain_labels {
            domain_wire.push(l.len() as u8);
            domain_wire.extend_from_slice(l);
        }
        domain_wire.push(0);
        let domain_labels = domain_labels.len();
        Ok(Zone {
            config,
            domain_labels,
            domain_wire,
            domain,
            soa_mname,
            soa_rname,
            registry,
            nameservers,
            cache: RwLock::new(HashMap::default()),
            rights: RwLock::new((u64::MAX, None)),
            namespaces: RwLock::new(namespace::Namespaces::unread()),
            namespace_cache: RwLock::new(HashMap::new()),
        })
    }

    /// Whether the DNS token may read `service`. Rights are computed once per change of the ACL
    /// state, not per query, and checked against the token's expiry on every query, so an
    /// expired DNS token stops answering at once, before the leader deletes it.
    fn may_answer(&self, service: &str) -> bool {
        if self.config.acl == AclMode::Off {
            return true;
        }
        let version = self.registry.acl_version();
        let allows = |z: &Option<Authorizer>| {
            z.as_ref().is_some_and(|z| {
                z.check_expiry(self.registry.time_ms()).is_ok()
                    && z.service(service).allows(Access::Read)
            })
        };
        {
            let cached = self.rights.read();
            if cached.0 == version {
                return allows(&cached.1);
            }
        }
        let mut cached = self.rights.write();
        if cached.0 != version {
            let z = self.registry.acl().authorize(
                self.config.acl,
                self.config.token.as_ref().map(Secret::expose),
                self.registry.time_ms(),
            );
            if let Err(e) = &z {
                tracing::warn!("the DNS token cannot be used ({e}): DNS answers for no service");
            }
            *cached = (version, z.ok());
        }
        allows(&cached.1)
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Answers `q` into `out`. `limit` is the largest message the transport takes (UDP) or
    /// 65535 (TCP).
    pub fn answer(&self, q: &Query<'_>, limit: usize, out: &mut Vec<u8>) -> Outcome {
        // The reply is built in `out`'s allocation: handed to `reply` through REPLY, so that
        // none of the builders below needs to pass it on.
        REPLY.set(std::mem::take(out));
        let outcome = match self.answer_owned(q, limit) {
            Some(reply) => {
                *out = reply;
                Outcome::Reply
            }
            None => {
                *out = REPLY.take();
                Outcome::Forward
            }
        };
        // A reply built in a second buffer leaves the first here: not kept for later.
        drop(REPLY.take());
        outcome
    }

    fn answer_owned(&self, q: &Query<'_>, limit: usize) -> Option<Vec<u8>> {
        let zone_labels = self.domain_labels;
        let in_zone = q.labels.len() >= zone_labels
            && q.labels.wire_from(q.labels.len() - zone_labels) == self.domain_wire;
        if !in_zone {
            // Only names outside the zone pay for the namespace lookup.
            if let Some(reply) = self.namespace_answer(q, limit) {
                return Some(reply);
            }
            return if self.config.recursion {
                None
            } else {
                Some(self.reply(q, wire::RCODE_REFUSED, false, limit).finish())
            };
        }
        if q.qclass != wire::CLASS_IN {
            return Some(self.reply(q, wire::RCODE_REFUSED, false, limit).finish());
        }
        match q.qtype {
            wire::TYPE_AXFR | wire::TYPE_IXFR => {
                return Some(self.reply(q, wire::RCODE_REFUSED, false, limit).finish())
            }
            wire::TYPE_ANY => {
                return Some(self.reply(q, wire::RCODE_NOTIMP, false, limit).finish())
            }
            _ => {}
        }
        // The labels left of the zone's; no name of the scheme has more than three.
        let name = match q.labels.len() - zone_labels {
            n @ 0..=3 => {
                let mut rel = [&[][..]; 3];
                for (i, label) in rel.iter_mut().take(n).enumerate() {
                    *label = q.labels.get(i);
                }
                classify(&rel[..n])
            }
            _ => Name::Unknown,
        };
        let out = match name {
            Name::Apex => self.apex(q, limit),
            Name::Service { service, tag } => self.service(q, service, tag, limit),
            Name::Addr(hex) => match parse_addr_label(hex) {
                Some(ip) => self.single_address(q, ip, self.config.ttl, limit),
                None => self.negative(q, wire::RCODE_NXDOMAIN, limit),
            },
            Name::Node(label) => {
                let ip = std::str::from_utf8(label)
                    .ok()
                    .and_then(|l| l.strip_prefix("node-"))
                    .and_then(|id| id.parse::<u64>().ok())
                    .and_then(|id| {
                        (self.nameservers)()
                            .into_iter()
                            .find(|(n, _)| *n == id)
                            .map(|(_, ip)| ip)
                    });
                match ip {
                    Some(Some(ip)) => self.single_address(q, ip, self.config.ttl, limit),
                    Some(None) => self.negative(q, wire::RCODE_NOERROR, limit),
                    None => self.negative(q, wire::RCODE_NXDOMAIN, limit),
                }
            }
            Name::Unknown => self.negative(q, wire::RCODE_NXDOMAIN, limit),
        };
        Some(out)
    }

    fn reply(&self, q: &Query<'_>, rcode: u8, authoritative: bool, limit: usize) -> Draft {
        let buf = REPLY.take();
        Draft {
            response: Response::in_buffer(buf, q.id, q.question, limit.min(4096)),
            flags: Flags {
                opcode: q.opcode,
                authoritative,
                truncated: false,
                recursion_desired: q.recursion_desired,
                recursion_available: self.config.recursion,
                rcode,
            },
            edns: q.edns,
            limit,
        }
    }

    /// The zone's SOA, owned by `owner` (the zone's apex, or a Cloud Map namespace's).
    fn soa_rr_at(&self, owner: &[u8]) -> Vec<u8> {
        let rdata = wire::soa_rdata(
            &self.soa_mname,
            &self.soa_rname,
            &SoaTimers {
                // Moves with every applied change, as a serial should; wraps after 2^32.
                serial: self.registry.applied_index() as u32,
                refresh: 3600,
                retry: 600,
                expire: 86_400,
                minimum: self.config.negative_ttl,
            },
        );
        wire::encode_rr(owner, wire::TYPE_SOA, self.config.negative_ttl, &rdata)
    }

    /// NXDOMAIN or NODATA, with the SOA in the authority section for negative caching.
    fn negative(&self, q: &Query<'_>, rcode: u8, limit: usize) -> Vec<u8> {
        self.negative_at(q, rcode, limit, self.domain.wire())
    }

    /// [`Zone::negative`] with the SOA of the zone whose apex is `apex`.
    fn negative_at(&self, q: &Query<'_>, rcode: u8, limit: usize, apex: &[u8]) -> Vec<u8> {
        let mut d = self.reply(q, rcode, true, limit);
        let soa = self.soa_rr_at(apex);
        let reserve = d.opt_len();
        d.response.authority(&soa, limit, reserve);
        d.finish()
    }

    fn apex(&self, q: &Query<'_>, limit: usize) -> Vec<u8> {
        self.apex_at(q, limit, self.domain.wire())
    }

    /// The SOA and NS answers of the zone whose apex is `apex`: this zone's, or a Cloud Map
    /// namespace's (served by the same nodes).
    fn apex_at(&self, q: &Query<'_>, limit: usize, apex: &[u8]) -> Vec<u8> {
        match q.qtype {
            wire::TYPE_SOA => {
                let mut d = self.reply(q, wire::RCODE_NOERROR, true, limit);
                let soa = self.soa_rr_at(apex);
                let reserve = d.opt_len();
                d.response.answer(&soa, limit, reserve);
                d.finish()
            }
            wire::TYPE_NS => {
                let mut d = self.reply(q, wire::RCODE_NOERROR, true, limit);
                let reserve = d.opt_len();
                let mut glue = Vec::new();
                for (id, ip) in (self.nameservers)() {
                    // Cannot fail: `new` checked that the largest node name fits.
                    let Ok(host) = self.domain.child(&format!("node-{id}.node")) else {
                        continue;
                    };
                    let rr = wire::encode_rr(
                        &wire::QNAME_POINTER,
                        wire::TYPE_NS,
                        self.config.ttl,
                        &wire::name_rdata(&host),
                    );
                    if !d.response.answer(&rr, limit, reserve) {
                        d.flags.truncated = true;
                        break;
                    }
                    if let Some(ip) = ip {
                        glue.push(address_rr(host.wire(), ip, self.config.ttl));
                    }
                }
                for g in glue {
                    // Glue that does not fit is left out without TC (RFC 2181 9).
                    d.response.additional(&g, limit, reserve);
                }
                d.finish()
            }
            _ => self.negative_at(q, wire::RCODE_NOERROR, limit, apex),
        }
    }

    fn single_address(&self, q: &Query<'_>, ip: IpAddr, ttl: u32, limit: usize) -> Vec<u8> {
        let wanted = match ip {
            IpAddr::V4(_) => wire::TYPE_A,
            IpAddr::V6(_) => wire::TYPE_AAAA,
        };
        if q.qtype != wanted {
            return self.negative(q, wire::RCODE_NOERROR, limit);
        }
        let mut d = self.reply(q, wire::RCODE_NOERROR, true, limit);
        let reserve = d.opt_len();
        d.response
            .answer(&address_rr(&wire::QNAME_POINTER, ip, ttl), limit, reserve);
        d.finish()
    }

    fn service(&self, q: &Query<'_>, service: &[u8], tag: Option<&[u8]>, limit: usize) -> Vec<u8> {
        let (Ok(service), Ok(tag)) = (
            std::str::from_utf8(service),
            tag.map(std::str::from_utf8).transpose(),
        ) else {
            return self.negative(q, wire::RCODE_NXDOMAIN, limit);
        };
        if !self.may_answer(service) {
            return self.negative(q, wire::RCODE_NXDOMAIN, limit);
        }
        // Read before the registry, so a set checked against what is read below is current
        // at least as of this index.
        let applied = self.registry.applied_index();
        let key = SetKey::new(service, tag);
        let cached = key.as_ref().and_then(|k| {
            let cache = self.cache.read();
            cache
                .get(&k.hash())
                .filter(|set| set.key.as_ref() == Some(k))
                .cloned()
        });
        let set = match cached {
            // Nothing was applied since the set was last found current: it still is, with no
            // look at the registry.
            Some(set) if set.checked_at.load(Ordering::Relaxed) == applied => set,
            cached => {
                let Some(entry) = self.registry.service(service) else {
                    return self.negative(q, wire::RCODE_NXDOMAIN, limit);
                };
                if let Some(t) = tag {
                    if !entry.tags().any(|x| x == t) {
                        return self.negative(q, wire::RCODE_NXDOMAIN, limit);
                    }
                }
                self.record_set(&entry, tag, key, cached, applied)
            }
        };
        let want_srv = q.qtype == wire::TYPE_SRV;
        let want_address = matches!(q.qtype, wire::TYPE_A | wire::TYPE_AAAA);
        if !want_srv && !want_address {
            return self.negative(q, wire::RCODE_NOERROR, limit);
        }
        ORDER.with_borrow_mut(|order| {
            // Candidates for this question type, in a fresh weighted-random order.
            order.clear();
            order.extend(
                (0..set.instances.len())
                    .filter(|&i| want_srv || set.instances[i].address_type == q.qtype),
            );
            let weight = |i: usize| set.instances[i].weight;
            weighted_shuffle(order, weight, set.equal_weights);
            if order.is_empty() && want_address {
                // No address of the asked family: answer a host-name instance by its CNAME.
                if let Some(i) = (0..set.instances.len())
                    .find(|&i| set.instances[i].address_type == wire::TYPE_CNAME)
                {
                    order.push(i);
                }
            }
            if order.is_empty() {
                return self.negative(q, wire::RCODE_NOERROR, limit);
            }
            if self.config.max_answers > 0 {
                order.truncate(self.config.max_answers);
            }
            let mut d = self.reply(q, wire::RCODE_NOERROR, true, limit);
            let reserve = d.opt_len();
            // The answers written are the first `included` of `order`.
            let mut included = 0;
            for &i in order.iter() {
                let e = set.instances[i];
                let rr = set.record(if want_srv { e.srv } else { e.address });
                if !d.response.answer(rr, limit, reserve) {
                    d.flags.truncated = true;
                    break;
                }
                included += 1;
                if !want_srv && e.address_type == wire::TYPE_CNAME {
                    // One CNAME owns the name alone.
                    break;
                }
            }
            if want_srv {
                for &i in &order[..included] {
                    let glue = set.instances[i].glue;
                    if glue.len > 0 {
                        d.response.additional(set.record(glue), limit, reserve);
                    }
                }
            }
            d.finish()
        })
    }

    /// Whether an instance of this health is handed out.
    fn healthy(&self, h: HealthStatus) -> bool {
        h == HealthStatus::Passing || (self.config.allow_warning && h == HealthStatus::Warning)
    }

    /// The set of `entry` (or of its `tag`), `cached` when it is still current, else built and
    /// kept under `key`; either way marked current as of the registry's `applied` index.
    fn record_set(
        &self,
        entry: &ServiceEntry,
        tag: Option<&str>,
        key: Option<SetKey>,
        cached: Option<Arc<RecordSet>>,
        applied: u64,
    ) -> Arc<RecordSet> {
        let settings = self.registry.settings(&entry.name);
        let settings_index = settings.as_ref().map_or(0, |s| s.modify_index);
        if let Some(set) = cached {
            if set.service_index == entry.modify_index && set.settings_index == settings_index {
                set.checked_at.store(applied, Ordering::Relaxed);
                return set;
            }
        }
        let ttl = settings
            .as_ref()
            .and_then(|s| s.settings.dns_ttl_s)
            .unwrap_or(self.config.ttl);
        let fail_open = settings.as_ref().is_some_and(|s| s.settings.fail_open);
        let tagged =
            |i: &&Arc<cairn_registry::model::Instance>| tag.is_none_or(|t| i.spec.tags.contains(t));
        let mut chosen: Vec<_> = entry
            .instances
            .values()
            .filter(tagged)
            .filter(|i| self.healthy(i.health()))
            .collect();
        if chosen.is_empty() && fail_open {
            chosen = entry.instances.values().filter(tagged).collect();
        }
        let mut bytes = Vec::new();
        let mut push = |rr: &[u8]| {
            let span = Span {
                start: bytes.len() as u32,
                len: rr.len() as u32,
            };
            bytes.extend_from_slice(rr);
            span
        };
        let mut instances = Vec::with_capacity(chosen.len());
        for inst in chosen {
            let spec = &inst.spec;
            // Neither fails: `new` checked that the longest target fits under the domain, and
            // registration only accepts host names that are domain names.
            let (target, address_type, address, glue) = match address_kind(&spec.address) {
                AddressKind::Ip(ip) => {
                    let Ok(target) = self.domain.child(&format!("{}.addr", addr_label(ip))) else {
                        continue;
                    };
                    let rtype = match ip {
                        IpAddr::V4(_) => wire::TYPE_A,
                        IpAddr::V6(_) => wire::TYPE_AAAA,
                    };
                    let address = push(&address_rr(&wire::QNAME_POINTER, ip, ttl));
                    let glue = push(&address_rr(target.wire(), ip, ttl));
                    (target, rtype, address, glue)
                }
                AddressKind::Host => {
                    let Ok(host) = DomainName::new(&spec.address) else {
                        continue;
                    };
                    let cname = wire::encode_rr(
                        &wire::QNAME_POINTER,
                        wire::TYPE_CNAME,
                        ttl,
                        &wire::name_rdata(&host),
                    );
                    (host, wire::TYPE_CNAME, push(&cname), Span::default())
                }
            };
            let srv = push(&wire::encode_rr(
                &wire::QNAME_POINTER,
                wire::TYPE_SRV,
                ttl,
                &wire::srv_rdata(SRV_PRIORITY, spec.weight, spec.port, &target),
            ));
            instances.push(Encoded {
                weight: spec.weight,
                address_type,
                address,
                srv,
                glue,
            });
        }
        let equal_weights = instances.windows(2).all(|w| w[0].weight == w[1].weight);
        let set = Arc::new(RecordSet {
            key,
            service_index: entry.modify_index,
            settings_index,
            checked_at: AtomicU64::new(applied),
            bytes,
            instances,
            equal_weights,
        });
        // A name too long to be a key is answered without keeping its set (the registry takes
        // no such service or tag; this only keeps the bound explicit).
        if let Some(key) = key {
            let mut cache = self.cache.write();
            if cache.len() >= MAX_CACHED_SETS {
                cache.clear();
            }
            cache.insert(key.hash(), set.clone());
        }
        set
    }
}

fn address_rr(owner: &[u8], ip: IpAddr, ttl: u32) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => wire::encode_rr(owner, wire::TYPE_A, ttl, &wire::a_rdata(v4)),
        IpAddr::V6(v6) => wire::encode_rr(owner, wire::TYPE_AAAA, ttl, &wire::aaaa_rdata(v6)),
    }
}

thread_local! {
    /// The buffer of the reply [`Zone::answer`] is building: its caller's, so that a listener
    /// that keeps its buffers (UDP) allocates no reply. [`Zone::reply`] takes it.
    static REPLY: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// Each thread's scratch for the order of an answer's records, so that answering allocates
    /// nothing once it has grown to the largest set the thread answered from.
    static ORDER: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// [`weighted_shuffle`]'s sort keys, kept the same way.
    static KEYS: RefCell<Vec<(f64, usize)>> = const { RefCell::new(Vec::new()) };
    /// The randomness of answer orders: a small, fast generator per thread, seeded from the
    /// operating system. An order is load spreading, not a secret, so it needs no cryptographic
    /// generator (`thread_rng`'s ChaCha cost a fifth of an answer's instructions).
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// A random order of `items` in which each is ahead with odds proportional to its weight.
fn weighted_order(items: &[usize], weight: impl Fn(usize) -> u16) -> Vec<usize> {
    let mut order = items.to_vec();
    let equal = items.windows(2).all(|w| weight(w[0]) == weight(w[1]));
    weighted_shuffle(&mut order, weight, equal);
    order
}

/// Puts `items` in a random order in which each is ahead with odds proportional to its weight
/// (Efraimidis-Spirakis: descending `u^(1/w)`, `u` uniform in (0, 1]). With `equal` weights that
/// is a uniform random order, drawn as such (Fisher-Yates), without floating point.
fn weighted_shuffle(items: &mut [usize], weight: impl Fn(usize) -> u16, equal: bool) {
    RNG.with_borrow_mut(|rng| {
        if equal {
            // Fisher-Yates.
            for i in (1..items.len()).rev() {
                items.swap(i, below(rng, i + 1));
            }
            return;
        }
        KEYS.with_borrow_mut(|keyed| {
            keyed.clear();
            keyed.extend(items.iter().map(|&i| (sort_key(rng, weight(i)), i)));
            keyed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            for (slot, &(_, i)) in items.iter_mut().zip(keyed.iter()) {
                *slot = i;
            }
        });
    });
}

/// A uniform random index below `n` (Lemire's multiply-shift, with the rejection that makes it
/// exact): a multiplication per draw, where rand's `gen_range` also divides.
fn below(rng: &mut SmallRng, n: usize) -> usize {
    let n = n as u64;
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as usize
}

/// The sort key of [`weighted_shuffle`]: `ln(u) / weight`, which orders as `u^(1/weight)` does
/// (the logarithm keeps order) for a logarithm instead of a power. One out-of-line function for
/// every caller, so the compiler keeps rand's float sampling inlined here with its constant
/// range folded (shared by two inlined copies, it was called out of line, which cost `cairn.`
/// answers about 30 instructions per record under callgrind).
#[inline(never)]
fn sort_key(rng: &mut SmallRng, weight: u16) -> f64 {
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..=1.0);
    u.ln() / f64::from(weight.max(1))
}

/// A response being assembled, with the EDNS and size context of its query.
struct Draft {
    response: Response,
    flags: Flags,
    edns: Option<wire::Edns>,
    limit: usize,
}

impl Draft {
    /// Bytes to keep free for the OPT record.
    fn opt_len(&self) -> usize {
        if self.edns.is_some() {
            11
        } else {
            0
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if let Some(e) = self.edns {
            let opt = wire::opt_rr(e.dnssec_ok, 0);
            self.response.additional(&opt, self.limit, 0);
        }
        self.response.finish(self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_token_stops_answering_at_its_expiry_and_follows_acl_changes() {
        use cairn_registry::acl::{hash_secret, AclData, Policy, PolicySpec, Token};
        use cairn_registry::RegistryData;
        let policy = Policy {
            spec: PolicySpec {
                name: "dns".into(),
                description: String::new(),
                rules: serde_json::from_value(serde_json::json!({"service": {"web": "read"}}))
                    .unwrap(),
            },
            create_index: 2,
            modify_index: 2,
        };
        let token = Token {
            accessor: "dns-1".into(),
            secret_hash: Some(hash_secret("dns-secret")),
            description: String::new(),
            policies: ["dns".to_owned()].into(),
            expires_at_ms: Some(10_000),
            create_time_ms: 0,
            create_index: 3,
            modify_index: 3,
        };
        let data = |tokens: Vec<Token>| RegistryData {
            acl: AclData {
                bootstrap_index: Some(1),
                policies: vec![policy.clone()],
                tokens,
            },
            ..RegistryData::default()
        };
        let registry = Arc::new(Registry::default());
        registry.replace(data(vec![token.clone()]), 5);
        registry.set_time_ms(9_999);
        let zone = Zone::new(
            ZoneConfig {
                acl: AclMode::On {
                    default: Access::Deny,
                },
                token: Some(Secret::new("dns-secret".into())),
                ..ZoneConfig::default()
            },
            registry.clone(),
            Arc::new(Vec::new),
        )
        .unwrap();
        assert!(zone.may_answer("web"));
        assert!(!zone.may_answer("db"), "no rule for db: default deny");
        // Leader time reaches the expiry before any ACL change: refused at once.
        registry.set_time_ms(10_000);
        assert!(
            !zone.may_answer("web"),
            "an expired DNS token still answers"
        );
        // A change of the ACL state is seen by the next query: the token renewed, then deleted.
        registry.replace(
            data(vec![Token {
                expires_at_ms: None,
                ..token
            }]),
            6,
        );
        assert!(zone.may_answer("web"));
        registry.replace(data(Vec::new()), 7);
        assert!(!zone.may_answer("web"), "a deleted DNS token still answers");
    }

    fn register(registry: &Registry, n: u8) {
        use cairn_registry::model::validate_registration;
        use cairn_registry::{Command, Dirty, Op};
        let body = serde_json::json!({"address": format!("10.0.0.{n}"), "port": 80});
        let spec = validate_registration(&format!("i{n}"), &serde_json::from_value(body).unwrap())
            .unwrap();
        let op = Op::Register {
            service: "web".into(),
            instance: spec,
            health: None,
        };
        let cmd = Command {
            by: Vec::new(),
            time_ms: 1,
            ops: vec![op],
        };
        registry.apply(u64::from(n), &cmd, &mut Dirty::default());
    }

    /// An answer is written into the caller's buffer, reusing its allocation (the UDP workers
    /// keep theirs), and reads back as the records of the set; a registration applied after
    /// the set was kept shows in the next answer.
    #[test]
    fn answers_are_built_in_the_callers_buffer_and_follow_the_registry() {
        let registry = Arc::new(Registry::default());
        for n in 1..=3 {
            register(&registry, n);
        }
        let zone = Zone::new(ZoneConfig::default(), registry.clone(), Arc::new(Vec::new)).unwrap();
        let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        wire::push_name(&mut q, &DomainName::new("web.service.cairn.").unwrap());
        q.extend_from_slice(&[0, 33, 0, 1]); // SRV, IN
        let q = wire::parse_query(&q).unwrap();
        let mut out = Vec::with_capacity(4096);
        let buffer = out.as_ptr();
        for _ in 0..3 {
            assert_eq!(zone.answer(&q, 1232, &mut out), Outcome::Reply);
            assert_eq!(
                out.as_ptr(),
                buffer,
                "the reply reuses the caller's allocation"
            );
            let (rcode, truncated, records) = wire::read_response(&out).unwrap();
            assert_eq!((rcode, truncated), (wire::RCODE_NOERROR, false));
            let srv: Vec<_> = records
                .iter()
                .filter(|r| r.rtype == wire::TYPE_SRV)
                .collect();
            let glue: Vec<_> = records.iter().filter(|r| r.rtype == wire::TYPE_A).collect();
            assert_eq!((srv.len(), glue.len()), (3, 3));
            // Each SRV target's address follows, in the same order.
            for (s, g) in srv.iter().zip(&glue) {
                assert!(s.data.ends_with(&g.name), "{s:?} {g:?}");
            }
        }
        register(&registry, 4);
        assert_eq!(zone.answer(&q, 1232, &mut out), Outcome::Reply);
        let (_, _, records) = wire::read_response(&out).unwrap();
        let srv = records.iter().filter(|r| r.rtype == wire::TYPE_SRV).count();
        assert_eq!(srv, 4, "the fourth instance is answered at once");
    }

    /// The cache is indexed by a hash of the key alone: a set found in the slot of another
    /// key's hash (two keys with one hash) is never answered for that key; the key's own set is
    /// built and takes the slot.
    #[test]
    fn a_set_under_another_keys_hash_is_not_answered_for_it() {
        use cairn_registry::model::validate_registration;
        use cairn_registry::{Command, Dirty, Op};
        let registry = Arc::new(Registry::default());
        for n in 1..=3 {
            register(&registry, n);
        }
        let body = serde_json::json!({"address": "10.0.9.9", "port": 80});
        let spec = validate_registration("d1", &serde_json::from_value(body).unwrap()).unwrap();
        let cmd = Command {
            by: Vec::new(),
            time_ms: 1,
            ops: vec![Op::Register {
                service: "db".into(),
                instance: spec,
                health: None,
            }],
        };
        registry.apply(4, &cmd, &mut Dirty::default());
        let zone = Zone::new(ZoneConfig::default(), registry, Arc::new(Vec::new)).unwrap();
        let ask = |name: &str| {
            let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            wire::push_name(&mut q, &DomainName::new(name).unwrap());
            q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
            let q = wire::parse_query(&q).unwrap();
            let mut out = Vec::new();
            assert_eq!(zone.answer(&q, 1232, &mut out), Outcome::Reply);
            let (rcode, _, records) = wire::read_response(&out).unwrap();
            assert_eq!(rcode, wire::RCODE_NOERROR, "{name}");
            let mut ips: Vec<String> = records
                .into_iter()
                .filter(|r| r.rtype == wire::TYPE_A)
                .map(|r| r.data)
                .collect();
            ips.sort();
            ips
        };
        let web = ask("web.service.cairn.");
        assert_eq!(web.len(), 3);
        let key = |service| SetKey::new(service, None).unwrap();
        let web_set = zone.cache.read()[&key("web").hash()].clone();
        zone.cache.write().insert(key("db").hash(), web_set);
        assert_eq!(ask("db.service.cairn."), ["10.0.9.9"]);
        let db_set = zone.cache.read()[&key("db").hash()].clone();
        assert_eq!(db_set.key, Some(key("db")), "db's own set took the slot");
        assert_eq!(ask("web.service.cairn."), web);
    }

    #[test]
    fn addr_labels_round_trip() {
        for ip in ["10.0.0.1", "192.168.255.7", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_addr_label(addr_label(ip).as_bytes()), Some(ip));
        }
        assert_eq!(addr_label("10.0.0.1".parse().unwrap()), "0a000001");
        for bad in ["", "0a00000", "zz000001", "0a0000010"] {
            assert_eq!(parse_addr_label(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn weighted_shuffle_draws_first_places_in_proportion_to_weight() {
        // Unequal weights: the logarithmic keys. First place odds are w / sum: 1/6, 2/6, 3/6.
        let weights = [1u16, 2, 3];
        let mut first = [0u32; 3];
        for _ in 0..60_000 {
            let mut items = [0, 1, 2];
            weighted_shuffle(&mut items, |i| weights[i], false);
            let mut sorted = items;
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "a permutation of the items");
            first[items[0]] += 1;
        }
        // Expected 10,000 / 20,000 / 30,000; each bound is at least 7 standard deviations.
        for (got, want) in first.iter().zip([10_000u32, 20_000, 30_000]) {
            assert!(got.abs_diff(want) < 900, "{first:?}");
        }
        // Equal weights: a uniform shuffle. Each of the 6 orders of 3 items about 10,000 times.
        let mut orders = HashMap::new();
        for _ in 0..60_000 {
            let mut items = [0, 1, 2];
            weighted_shuffle(&mut items, |_| 7, true);
            *orders.entry(items).or_insert(0u32) += 1;
        }
        assert_eq!(orders.len(), 6, "{orders:?}");
        assert!(
            orders.values().all(|&n| n.abs_diff(10_000) < 900),
            "{orders:?}"
        );
    }

    #[test]
    fn weighted_order_favours_heavy_instances() {
        let weights = [1u16, 9];
        let mut first_heavy = 0;
        for _ in 0..10_000 {
            if weighted_order(&[0, 1], |i| weights[i])[0] == 1 {
                first_heavy += 1;
            }
        }
        // Expected 9,000; the bound is many standard deviations (30) wide.
        assert!((8_700..=9_300).contains(&first_heavy), "{first_heavy}");
    }

    #[test]
    fn names_are_classified() {
        let l = |s: &'static str| -> Vec<&'static [u8]> {
            s.split('.')
                .filter(|x| !x.is_empty())
                .map(str::as_bytes)
                .collect()
        };
        let is_service = |s: &'static str, svc: &str, tag: Option<&str>| match classify(&l(s)) {
            Name::Service { service, tag: t } => {
                service == svc.as_bytes() && t == tag.map(str::as_bytes)
            }
            _ => false,
        };
        assert!(is_service("web.service", "web", None));
        assert!(is_service("v1.web.service", "web", Some("v1")));
        assert!(is_service("_web._tcp.service", "web", None));
        assert!(is_service("_web._v1.service", "web", Some("v1")));
        assert!(matches!(classify(&l("")), Name::Apex));
        assert!(matches!(classify(&l("0a000001.addr")), Name::Addr(_)));
        assert!(matches!(classify(&l("node-1.node")), Name::Node(_)));
        for unknown in [
            "web",
            "_web.service",
            "_web.v1.service",
            "a.b.c.service",
            "x.web.services",
        ] {
            assert!(matches!(classify(&l(unknown)), Name::Unknown), "{unknown}");
        }
    }
}
