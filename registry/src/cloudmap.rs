//! What the AWS Cloud Map-compatible API keeps beside the registry: namespaces, and the Cloud
//! Map settings of a service (its namespace, DNS and health-check configuration).
//!
//! Both ride on the service-settings records that already exist ([`crate::ServiceSettings`]),
//! so they replicate, persist and snapshot as settings do, and no new command or storage key
//! is needed:
//! - a Cloud Map service is a Cairn service; its record is the `cloudmap` field of that
//!   service's settings, so it outlives the service's instances as Cloud Map services do;
//! - a namespace is a settings record under the key [`NAMESPACE_KEY_PREFIX`]`<id>`, which no
//!   service name can take (service names are DNS labels, without `_` or `.`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{is_dns_label, ValidationError};

/// Settings keys of namespaces start with this; no service name can.
pub const NAMESPACE_KEY_PREFIX: &str = "_ns.";
/// Longest name, id, description, path or creator request id kept (Cloud Map's own bound on a
/// description is 1024 characters; its other strings are shorter).
pub const MAX_TEXT_LEN: usize = 1024;
/// Most tags or service attributes on one resource (Cloud Map allows 50 tags).
pub const MAX_PAIRS: usize = 50;
/// Most DNS records a service's DNS configuration names (one per type: A, AAAA, SRV, CNAME).
pub const MAX_DNS_RECORDS: usize = 4;

/// The Cloud Map part of a settings record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloudMapRecord {
    Namespace(NamespaceRecord),
    Service(ServiceRecord),
}

/// A namespace: a name that groups services (`HTTP`, `DNS_PRIVATE` or `DNS_PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub id: String,
    pub name: String,
    /// `HTTP`, `DNS_PRIVATE` or `DNS_PUBLIC`, as Cloud Map names them.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub creator_request_id: Option<String>,
    /// The leader's time when the API created it.
    pub create_ms: u64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A Cloud Map service's configuration; its instances are the Cairn service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub namespace_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub creator_request_id: Option<String>,
    pub create_ms: u64,
    /// `HTTP`, `DNS_HTTP` or `DNS`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub dns: Option<DnsConfigRecord>,
    /// A Route 53-style active check, run as a Cairn check on each instance.
    #[serde(default)]
    pub health_check: Option<HealthCheckRecord>,
    /// `HealthCheckCustomConfig` was given: instances' health is set through the API.
    #[serde(default)]
    pub custom_health: bool,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `DnsConfig`: routing policy and the record types with their TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfigRecord {
    /// `MULTIVALUE` or `WEIGHTED`.
    pub routing_policy: String,
    pub records: Vec<DnsRecordSpec>,
}

/// One `DnsRecords` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecordSpec {
    /// `A`, `AAAA`, `SRV` or `CNAME`.
    #[serde(rename = "type")]
    pub kind: String,
    pub ttl_s: u32,
}

/// `HealthCheckConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckRecord {
    /// `HTTP`, `HTTPS` or `TCP`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub resource_path: Option<String>,
    /// Probes in a row that change the health (Route 53's 1-10).
    pub failure_threshold: u32,
}

impl CloudMapRecord {
    /// The id the record is known by.
    pub fn id(&self) -> &str {
        match self {
            CloudMapRecord::Namespace(n) => &n.id,
            CloudMapRecord::Service(s) => &s.id,
        }
    }
}

/// The settings key of namespace `id`.
pub fn namespace_key(id: &str) -> String {
    format!("{NAMESPACE_KEY_PREFIX}{id}")
}

fn invalid(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

fn text(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.len() > MAX_TEXT_LEN {
        Err(invalid(field, format!("longer than {MAX_TEXT_LEN} bytes")))
    } else {
        Ok(())
    }
}

fn pairs(field: &str, m: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if m.len() > MAX_PAIRS {
        return Err(invalid(field, format!("more than {MAX_PAIRS} entries")));
    }
    m.iter().try_for_each(|(k, v)| {
        text(field, k)?;
        text(field, v)
    })
}

/// Whether `id` is a namespace id as the API makes them: `ns-` and 16 lower-case hex digits.
pub fn is_namespace_id(id: &str) -> bool {
    id.strip_prefix("ns-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Checks a Cloud Map record stored under settings key `key` (a service name or a namespace
/// key): the bounds every string and map keeps, and that the record belongs under that key.
pub fn validate_record(key: &str, record: &CloudMapRecord) -> Result<(), ValidationError> {
    match record {
        CloudMapRecord::Namespace(n) => {
            if key != namespace_key(&n.id) || !is_namespace_id(&n.id) {
                return Err(invalid("namespace", "is not stored under its own key"));
            }
            text("Name", &n.name)?;
            text("Description", &n.description)?;
            text(
                "CreatorRequestId",
                n.creator_request_id.as_deref().unwrap_or(""),
            )?;
            if !["HTTP", "DNS_PRIVATE", "DNS_PUBLIC"].contains(&n.kind.as_str()) {
                return Err(invalid("Type", "must be HTTP, DNS_PRIVATE or DNS_PUBLIC"));
            }
            pairs("Tags", &n.tags)
        }
        CloudMapRecord::Service(s) => {
            if !is_dns_label(key) || s.id != service_id(key) {
                return Err(invalid("service", "is not stored under its own name"));
            }
            if !is_namespace_id(&s.namespace_id) {
                return Err(invalid("NamespaceId", "is not a namespace id"));
            }
            text("Description", &s.description)?;
            text(
                "CreatorRequestId",
                s.creator_request_id.as_deref().unwrap_or(""),
            )?;
            if !["HTTP", "DNS_HTTP", "DNS"].contains(&s.kind.as_str()) {
                return Err(invalid("Type", "must be HTTP, DNS_HTTP or DNS"));
            }
            if let Some(dns) = &s.dns {
                if !["MULTIVALUE", "WEIGHTED"].contains(&dns.routing_policy.as_str()) {
                    return Err(invalid(
                        "DnsConfig.RoutingPolicy",
                        "must be MULTIVALUE or WEIGHTED",
                    ));
                }
                if dns.records.len() > MAX_DNS_RECORDS {
                    return Err(invalid(
                        "DnsConfig.DnsRecords",
                        format!("more than {MAX_DNS_RECORDS} records"),
                    ));
                }
                for r in &dns.records {
                    if !["A", "AAAA", "SRV", "CNAME"].contains(&r.kind.as_str()) {
                        return Err(invalid(
                            "DnsConfig.DnsRecords.Type",
                            "must be A, AAAA, SRV or CNAME",
                        ));
                    }
                    if r.ttl_s > crate::model::MAX_DNS_TTL_S {
                        return Err(invalid("DnsConfig.DnsRecords.TTL", "longer than a day"));
                    }
                }
            }
            if let Some(h) = &s.health_check {
                if !["HTTP", "HTTPS", "TCP"].contains(&h.kind.as_str()) {
                    return Err(invalid(
                        "HealthCheckConfig.Type",
                        "must be HTTP, HTTPS or TCP",
                    ));
                }
                if !(1..=10).contains(&h.failure_threshold) {
                    return Err(invalid(
                        "HealthCheckConfig.FailureThreshold",
                        "must be 1-10",
                    ));
                }
                text(
                    "HealthCheckConfig.ResourcePath",
                    h.resource_path.as_deref().unwrap_or(""),
                )?;
            }
            pairs("Attributes", &s.attributes)?;
            pairs("Tags", &s.tags)
        }
    }
}

/// The Cloud Map id of Cairn service `name`: `srv-<name>`, so a service's id never needs a
/// lookup table.
pub fn service_id(name: &str) -> String {
    format!("srv-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> NamespaceRecord {
        NamespaceRecord {
            id: "ns-0123456789abcdef".into(),
            name: "example.internal".into(),
            kind: "DNS_PRIVATE".into(),
            description: String::new(),
            creator_request_id: None,
            create_ms: 1,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn a_namespace_belongs_under_its_own_key_only() {
        let n = CloudMapRecord::Namespace(namespace());
        assert!(validate_record("_ns.ns-0123456789abcdef", &n).is_ok());
        assert!(validate_record("_ns.ns-0000000000000000", &n).is_err());
        assert!(validate_record("web", &n).is_err());
    }

    #[test]
    fn unbounded_strings_are_refused() {
        let mut n = namespace();
        n.description = "x".repeat(MAX_TEXT_LEN + 1);
        let e = validate_record("_ns.ns-0123456789abcdef", &CloudMapRecord::Namespace(n));
        assert_eq!(e.map_err(|e| e.field), Err("Description".to_owned()));
    }
}
