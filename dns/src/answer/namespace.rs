//! Cloud Map DNS namespaces: a private (or public, served alike) DNS namespace made through the
//! Cloud Map-compatible API, `example.internal`, is a zone beside `cairn.`, answered as Route 53
//! answers the records Cloud Map creates for it:
//!
//! - `<service>.<namespace>` A, AAAA, SRV (or CNAME): only the record types of the service's
//!   `DnsConfig`, each with its own TTL; one record per instance, from its `AWS_INSTANCE_*`
//!   attributes (or its Cairn address);
//! - healthy instances only, and every instance when none is healthy (Route 53 answers "as if
//!   all the instances were healthy" then);
//! - `MULTIVALUE`: up to [`MULTIVALUE_ANSWERS`] records, a random choice of the healthy ones;
//!   `WEIGHTED`: one record, chosen at random, weighted by the instances' Cairn weights (1 for
//!   every instance registered through Cloud Map, so all alike, as in Route 53);
//! - SRV `1 <weight> <port> <instance-id>.<service>.<namespace>`, and that target name's A/AAAA
//!   (Cloud Map creates them beside SRV records);
//! - the namespace's apex has the zone's SOA and NS; any other name in it is NXDOMAIN.
//!
//! Names are looked up in the `cairn.` zone first, so a namespace changes nothing for `cairn.`
//! queries; only names outside it pay for the namespace lookup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use cairn_registry::cloudmap::{CloudMapRecord, DnsConfigRecord, NAMESPACE_KEY_PREFIX};
use cairn_registry::model::{address_kind, AddressKind, Instance};
use cairn_registry::ServiceEntry;

use super::{address_rr, weighted_order, Zone};
use crate::wire::{self, DomainName, Query};

/// Route 53 answers a multivalue query with at most eight healthy records.
pub(super) const MULTIVALUE_ANSWERS: usize = 8;
/// Cloud Map's SRV records all have priority 1.
const SRV_PRIORITY: u16 = 1;

/// The DNS namespaces at one settings version.
pub(super) struct Namespaces {
    version: u64,
    /// Each namespace by its name in lower-cased wire form (as [`wire::Labels::wire_from`]
    /// gives names).
    by_name: HashMap<Vec<u8>, Arc<NamespaceZone>>,
}

impl Namespaces {
    /// None yet: the first query reads the registry.
    pub(super) fn unread() -> Arc<Self> {
        Arc::new(Namespaces {
            version: u64::MAX,
            by_name: HashMap::new(),
        })
    }
}

/// One namespace's zone.
struct NamespaceZone {
    id: String,
    apex: DomainName,
}

/// The encoded records of one Cloud Map service in its namespace.
pub(super) struct NamespaceSet {
    service_index: u64,
    settings_index: u64,
    namespace: String,
    weighted: bool,
    instances: Vec<NamespaceRecords>,
}

/// One instance's records, each present when the service's `DnsConfig` names its type and the
/// instance has a value for it.
struct NamespaceRecords {
    weight: u16,
    a: Option<Vec<u8>>,
    aaaa: Option<Vec<u8>>,
    cname: Option<Vec<u8>>,
    srv: Option<Vec<u8>>,
    /// The SRV target's A/AAAA, owned by the target name, for the additional section.
    glue: Vec<Vec<u8>>,
}

/// The instance's IPv4 and IPv6 addresses and host name: its `AWS_INSTANCE_*` attributes
/// (a Cloud Map registration keeps all of them in meta), else its Cairn address.
fn addresses(inst: &Instance) -> (Option<IpAddr>, Option<IpAddr>, Option<String>) {
    let meta = |k: &str| inst.spec.meta.get(k);
    let parsed = |k: &str| meta(k).and_then(|v| v.parse::<IpAddr>().ok());
    let (mut v4, mut v6, mut host) = (
        parsed("AWS_INSTANCE_IPV4").filter(IpAddr::is_ipv4),
        parsed("AWS_INSTANCE_IPV6").filter(IpAddr::is_ipv6),
        meta("AWS_INSTANCE_CNAME").map(str::to_owned),
    );
    match address_kind(&inst.spec.address) {
        AddressKind::Ip(ip @ IpAddr::V4(_)) => v4 = v4.or(Some(ip)),
        AddressKind::Ip(ip @ IpAddr::V6(_)) => v6 = v6.or(Some(ip)),
        AddressKind::Host => host = host.or_else(|| Some(inst.spec.address.clone())),
    }
    (v4, v6, host)
}

/// The record of `r` that answers `qtype`; with `cname`, its CNAME, which owns its name alone
/// and answers every type.
fn answer_record(r: &NamespaceRecords, qtype: u16, cname: bool) -> Option<&[u8]> {
    if cname {
        return r.cname.as_deref();
    }
    match qtype {
        wire::TYPE_A => r.a.as_deref(),
        wire::TYPE_AAAA => r.aaaa.as_deref(),
        wire::TYPE_SRV => r.srv.as_deref(),
        _ => None,
    }
}

/// The TTL `dns` gives records of `kind`, if it names that type.
fn ttl_of(dns: &DnsConfigRecord, kind: &str) -> Option<u32> {
    dns.records.iter().find(|r| r.kind == kind).map(|r| r.ttl_s)
}

impl Zone {
    /// The DNS namespaces as of the registry's current settings; rebuilt on the first query
    /// after any settings record changed.
    fn namespaces(&self) -> Arc<Namespaces> {
        let version = self.registry.settings_version();
        {
            let cached = self.namespaces.read();
            if cached.version == version {
                return cached.clone();
            }
        }
        let mut by_name = HashMap::new();
        for (_, settings) in self.registry.settings_list(NAMESPACE_KEY_PREFIX) {
            let Some(CloudMapRecord::Namespace(n)) = settings.settings.cloudmap.as_deref() else {
                continue;
            };
            if n.kind == "HTTP" {
                continue;
            }
            // The API only stores DNS names here; one that is not a domain name is skipped.
            let Ok(apex) = DomainName::new(&n.name.to_ascii_lowercase()) else {
                continue;
            };
            let zone = NamespaceZone {
                id: n.id.clone(),
                apex,
            };
            by_name.insert(zone.apex.wire().to_vec(), Arc::new(zone));
        }
        let fresh = Arc::new(Namespaces { version, by_name });
        *self.namespaces.write() = fresh.clone();
        fresh
    }

    /// The answer for `q` when its name is in a DNS namespace; `None` when it is in none.
    pub(super) fn namespace_answer(&self, q: &Query<'_>, limit: usize) -> Option<Vec<u8>> {
        let namespaces = self.namespaces();
        if namespaces.by_name.is_empty() {
            return None;
        }
        // The longest namespace the name is in (namespaces may nest).
        let (split, zone) = (0..q.labels.len()).find_map(|k| {
            namespaces
                .by_name
                .get(q.labels.wire_from(k))
                .map(|z| (k, z))
        })?;
        if q.qclass != wire::CLASS_IN || matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR) {
            return Some(self.reply(q, wire::RCODE_REFUSED, false, limit).finish());
        }
        if q.qtype == wire::TYPE_ANY {
            return Some(self.reply(q, wire::RCODE_NOTIMP, false, limit).finish());
        }
        let apex = zone.apex.wire();
        let nxdomain = || self.negative_at(q, wire::RCODE_NXDOMAIN, limit, apex);
        let rel: Vec<&[u8]> = q.labels.iter().take(split).collect();
        let Some((service, host)) = rel.split_last() else {
            return Some(self.apex_at(q, limit, apex));
        };
        let Ok(service) = std::str::from_utf8(service) else {
            return Some(nxdomain());
        };
        let Some((entry, set)) = self.namespace_service(zone, service) else {
            return Some(nxdomain());
        };
        if host.is_empty() {
            return Some(self.namespace_service_answer(q, &set, apex, limit));
        }
        Some(self.namespace_host_answer(q, &entry, &set, host, apex, limit))
    }

    /// Service `name` when it is a Cloud Map service of `zone` with DNS records that DNS may
    /// answer for, with its encoded records.
    fn namespace_service(
        &self,
        zone: &NamespaceZone,
        name: &str,
    ) -> Option<(Arc<ServiceEntry>, Arc<NamespaceSet>)> {
        let settings = self.registry.settings(name)?;
        let Some(CloudMapRecord::Service(record)) = settings.settings.cloudmap.as_deref() else {
            return None;
        };
        let dns = record.dns.as_ref()?;
        if record.namespace_id != zone.id || !self.may_answer(name) {
            return None;
        }
        let entry = self.registry.service(name)?;
        if let Some(set) = self.namespace_cache.read().get(name) {
            if set.service_index == entry.modify_index
                && set.settings_index == settings.modify_index
                && set.namespace == zone.id
            {
                return Some((entry, set.clone()));
            }
        }
        let set = Arc::new(self.namespace_set(&entry, settings.modify_index, zone, dns));
        let mut cache = self.namespace_cache.write();
        if cache.len() >= super::MAX_CACHED_SETS {
            cache.clear();
        }
        cache.insert(name.to_owned(), set.clone());
        Some((entry, set))
    }

    fn namespace_set(
        &self,
        entry: &ServiceEntry,
        settings_index: u64,
        zone: &NamespaceZone,
        dns: &DnsConfigRecord,
    ) -> NamespaceSet {
        let (a_ttl, aaaa_ttl, srv_ttl, cname_ttl) = (
            ttl_of(dns, "A"),
            ttl_of(dns, "AAAA"),
            ttl_of(dns, "SRV"),
            ttl_of(dns, "CNAME"),
        );
        let mut chosen: Vec<_> = entry
            .instances
            .values()
            .filter(|i| self.healthy(i.health()))
            .collect();
        if chosen.is_empty() {
            // Route 53: "If no instances are healthy, Route 53 responds to DNS queries as if
            // all the instances were healthy" (WEIGHTED), and "When all records are unhealthy,
            // Route 53 responds to DNS queries with up to eight unhealthy records" (multivalue).
            chosen = entry.instances.values().collect();
        }
        let instances = chosen
            .into_iter()
            .map(|inst| {
                let (v4, v6, host) = addresses(inst);
                let a = a_ttl
                    .zip(v4)
                    .map(|(t, ip)| address_rr(&wire::QNAME_POINTER, ip, t));
                let aaaa = aaaa_ttl
                    .zip(v6)
                    .map(|(t, ip)| address_rr(&wire::QNAME_POINTER, ip, t));
                let cname = cname_ttl
                    .zip(host.and_then(|h| DomainName::new(&h).ok()))
                    .map(|(t, h)| {
                        let rdata = wire::name_rdata(&h);
                        wire::encode_rr(&wire::QNAME_POINTER, wire::TYPE_CNAME, t, &rdata)
                    });
                let mut glue = Vec::new();
                let srv = srv_ttl.and_then(|t| {
                    // An instance id that is not a run of DNS labels names no target.
                    let target = zone
                        .apex
                        .child(&format!("{}.{}", inst.spec.id, entry.name))
                        .ok()?;
                    glue.extend(
                        v4.into_iter()
                            .chain(v6)
                            .map(|ip| address_rr(target.wire(), ip, t)),
                    );
                    let rdata =
                        wire::srv_rdata(SRV_PRIORITY, inst.spec.weight, inst.spec.port, &target);
                    Some(wire::encode_rr(
                        &wire::QNAME_POINTER,
                        wire::TYPE_SRV,
                        t,
                        &rdata,
                    ))
                });
                NamespaceRecords {
                    weight: inst.spec.weight,
                    a,
                    aaaa,
                    cname,
                    srv,
                    glue,
                }
            })
            .filter(|r| r.a.is_some() || r.aaaa.is_some() || r.cname.is_some() || r.srv.is_some())
            .collect();
        NamespaceSet {
            service_index: entry.modify_index,
            settings_index,
            namespace: zone.id.clone(),
            weighted: dns.routing_policy == "WEIGHTED",
            instances,
        }
    }

    /// `<service>.<namespace>`: the records of the asked type, by the routing policy.
    fn namespace_service_answer(
        &self,
        q: &Query<'_>,
        set: &NamespaceSet,
        apex: &[u8],
        limit: usize,
    ) -> Vec<u8> {
        if set.instances.is_empty() {
            // No record at all carries this name: it does not exist.
            return self.negative_at(q, wire::RCODE_NXDOMAIN, limit, apex);
        }
        let cname = set.instances.iter().any(|r| r.cname.is_some());
        let qtype = q.qtype;
        let pick = |r| answer_record(r, qtype, cname);
        let candidates: Vec<usize> = (0..set.instances.len())
            .filter(|&i| pick(&set.instances[i]).is_some())
            .collect();
        let mut order = weighted_order(&candidates, |i| set.instances[i].weight);
        let most = if set.weighted || cname {
            1
        } else {
            MULTIVALUE_ANSWERS
        };
        order.truncate(match self.config.max_answers {
            0 => most,
            m => most.min(m),
        });
        if order.is_empty() {
            return self.negative_at(q, wire::RCODE_NOERROR, limit, apex);
        }
        let mut d = self.reply(q, wire::RCODE_NOERROR, true, limit);
        let reserve = d.opt_len();
        let mut included = Vec::with_capacity(order.len());
        for &i in &order {
            let Some(rr) = pick(&set.instances[i]) else {
                continue;
            };
            if !d.response.answer(rr, limit, reserve) {
                d.flags.truncated = true;
                break;
            }
            included.push(i);
        }
        if q.qtype == wire::TYPE_SRV && !cname {
            for i in included {
                for g in &set.instances[i].glue {
                    d.response.additional(g, limit, reserve);
                }
            }
        }
        d.finish()
    }

    /// `<instance-id>.<service>.<namespace>`: the SRV target's address, whatever the
    /// instance's health (Cloud Map creates these records without health checks).
    fn namespace_host_answer(
        &self,
        q: &Query<'_>,
        entry: &ServiceEntry,
        set: &NamespaceSet,
        host: &[&[u8]],
        apex: &[u8],
        limit: usize,
    ) -> Vec<u8> {
        let has_srv = set.instances.iter().any(|r| r.srv.is_some());
        let id = host
            .iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>()
            .join(".");
        let inst = entry
            .instances
            .get(&id)
            .or_else(|| {
                entry
                    .instances
                    .values()
                    .find(|i| i.spec.id.eq_ignore_ascii_case(&id))
            })
            .filter(|_| has_srv);
        let Some(inst) = inst else {
            return self.negative_at(q, wire::RCODE_NXDOMAIN, limit, apex);
        };
        let Some(ttl) = self.srv_ttl(entry) else {
            return self.negative_at(q, wire::RCODE_NXDOMAIN, limit, apex);
        };
        let (v4, v6, _) = addresses(inst);
        let ip = match q.qtype {
            wire::TYPE_A => v4,
            wire::TYPE_AAAA => v6,
            _ => None,
        };
        match ip {
            Some(ip) => self.single_address(q, ip, ttl, limit),
            None => self.negative_at(q, wire::RCODE_NOERROR, limit, apex),
        }
    }

    /// The TTL of the SRV records of `entry`'s Cloud Map service.
    fn srv_ttl(&self, entry: &ServiceEntry) -> Option<u32> {
        let settings = self.registry.settings(&entry.name)?;
        match settings.settings.cloudmap.as_deref() {
            Some(CloudMapRecord::Service(r)) => ttl_of(r.dns.as_ref()?, "SRV"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_registry::cloudmap::{
        namespace_key, service_id, DnsRecordSpec, NamespaceRecord, ServiceRecord,
    };
    use cairn_registry::model::{validate_registration, SettingsSpec};
    use cairn_registry::{Command, Dirty, Op, Registry};
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::answer::{Outcome, ZoneConfig};

    const NS: &str = "ns-0123456789abcdef";

    fn apply(registry: &Registry, index: u64, op: Op) {
        let cmd = Command {
            by: Vec::new(),
            time_ms: 1000,
            ops: vec![op],
        };
        registry.apply(index, &cmd, &mut Dirty::default());
    }

    fn settings(record: CloudMapRecord) -> SettingsSpec {
        SettingsSpec {
            fail_open: false,
            dns_ttl_s: None,
            cloudmap: Some(Box::new(record)),
        }
    }

    fn service(name: &str, policy: &str) -> Op {
        Op::SetSettings {
            service: name.into(),
            settings: settings(CloudMapRecord::Service(ServiceRecord {
                id: service_id(name),
                namespace_id: NS.into(),
                description: String::new(),
                creator_request_id: None,
                create_ms: 1,
                kind: "DNS_HTTP".into(),
                dns: Some(DnsConfigRecord {
                    routing_policy: policy.into(),
                    records: vec![DnsRecordSpec {
                        kind: "A".into(),
                        ttl_s: 15,
                    }],
                }),
                health_check: None,
                custom_health: true,
                attributes: BTreeMap::new(),
                tags: BTreeMap::new(),
            })),
        }
    }

    fn register(service: &str, n: u32) -> Op {
        let body = serde_json::json!({"address": format!("10.0.0.{n}"), "port": 80});
        let spec = validate_registration(&format!("i{n}"), &serde_json::from_value(body).unwrap())
            .unwrap();
        Op::Register {
            service: service.into(),
            instance: spec,
            health: None,
        }
    }

    fn ask(zone: &Zone, name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            std::str::FromStr::from_str(name).unwrap(),
            rtype,
        ));
        let bytes = m.to_vec().unwrap();
        let q = crate::wire::parse_query(&bytes).unwrap();
        let mut bytes = Vec::new();
        match zone.answer(&q, 4096, &mut bytes) {
            Outcome::Reply => Message::from_vec(&bytes).unwrap(),
            Outcome::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn a_namespace_is_a_zone_until_it_is_deleted() {
        let registry = Arc::new(Registry::default());
        let namespace = NamespaceRecord {
            id: NS.into(),
            name: "Corp.Internal".into(),
            kind: "DNS_PRIVATE".into(),
            description: String::new(),
            creator_request_id: None,
            create_ms: 1,
            tags: BTreeMap::new(),
        };
        apply(
            &registry,
            1,
            Op::SetSettings {
                service: namespace_key(NS),
                settings: settings(CloudMapRecord::Namespace(namespace)),
            },
        );
        apply(&registry, 2, service("api", "MULTIVALUE"));
        apply(&registry, 3, service("pay", "WEIGHTED"));
        for n in 1..=10 {
            apply(&registry, 3 + u64::from(n), register("api", n));
            apply(&registry, 20 + u64::from(n), register("pay", n));
        }
        let zone = Zone::new(ZoneConfig::default(), registry.clone(), Arc::new(Vec::new)).unwrap();

        let m = ask(&zone, "api.corp.internal.", RecordType::A);
        assert_eq!(m.answers.len(), MULTIVALUE_ANSWERS, "{m:?}");
        assert!(m.answers.iter().all(|r| r.ttl == 15), "{m:?}");
        let m = ask(&zone, "pay.corp.internal.", RecordType::A);
        assert_eq!(m.answers.len(), 1, "WEIGHTED answers one record: {m:?}");
        // The cairn. zone still answers every healthy instance.
        let m = ask(&zone, "api.service.cairn.", RecordType::A);
        assert_eq!(m.answers.len(), 10, "{m:?}");

        apply(
            &registry,
            40,
            Op::DeleteSettings {
                service: namespace_key(NS),
            },
        );
        let m = ask(&zone, "api.corp.internal.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m:?}");
    }
}
