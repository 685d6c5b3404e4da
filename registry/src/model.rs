//! The data model: validated instance and check specs, stored instances, and the rules that turn
//! an API body into them.
//!
//! Everything a user controls passes through [`validate_registration`] (or one of the smaller
//! validators) before it is proposed to Raft, so what reaches the log is always well formed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use cairn_api::{
    format_duration, parse_duration, CheckInfo, CheckKind, CheckRegistration, InstanceInfo,
    InstanceRegistration, ServiceSettingsBody,
};
use serde::{Deserialize, Serialize};

use crate::command::Op;
use crate::health::{CheckState, HealthStatus};
pub use crate::intern::{Meta, Tags};

/// Longest instance or check id: long enough for UUIDs with a prefix, short enough for keys.
pub const MAX_ID_LEN: usize = 128;
/// Tags per instance. Each is a DNS label, so tag queries stay answerable.
pub const MAX_TAGS: usize = 64;
/// Meta pairs per instance, and their sizes (Consul's limits, which tools already respect).
pub const MAX_META_PAIRS: usize = 64;
pub const MAX_META_KEY_LEN: usize = 128;
pub const MAX_META_VALUE_LEN: usize = 512;
/// Checks per instance.
pub const MAX_CHECKS: usize = 16;
/// Output kept for a check or custom health; longer output is refused from users and cut from
/// probes, so one chatty check cannot bloat the log and every snapshot.
pub const MAX_OUTPUT_LEN: usize = 4096;
/// A check URL's length.
pub const MAX_URL_LEN: usize = 2048;
/// HTTP headers per check, and their sizes.
pub const MAX_CHECK_HEADERS: usize = 16;
pub const MAX_HEADER_LEN: usize = 1024;
/// What every read shows for a check header's value: headers carry credentials (bearer tokens,
/// basic auth) that the registering program has and readers of the service need not.
pub const REDACTED: &str = "<redacted>";
/// Methods an HTTP check may use, as Consul allows: a health check reads, or at most posts.
pub const CHECK_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT"];
/// Probing faster than this is load, not health checking.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Counts in a row needed to flip a check; more is a misconfiguration.
pub const MAX_RISE_FALL: u32 = 100;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A value in a request broke a rule; `field` names it the way the API spells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `s` is a DNS label: 1-63 of `a-z`, `0-9`, `-` (any case), not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validates a service name and returns it lower-cased, the form it is stored and compared in.
pub fn validate_service_name(name: &str) -> Result<String, ValidationError> {
    if is_dns_label(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(invalid(
            "service",
            format!(
                "{:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')",
                truncate_for_message(name)
            ),
        ))
    }
}

/// Validates an instance id: 1-128 of `A-Za-z0-9_.-`.
pub fn validate_id(field: &str, id: &str) -> Result<(), ValidationError> {
    validate_id_chars(field, id, b"_.-", "id")
}

/// Validates a check id: like an instance id, and `:` is allowed too, so that Consul's
/// `service:<id>` check ids keep their form.
pub fn validate_check_id(field: &str, id: &str) -> Result<(), ValidationError> {
    validate_id_chars(field, id, b"_.-:", "check id")
}

fn validate_id_chars(
    field: &str,
    id: &str,
    extra: &[u8],
    what: &str,
) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        return Ok(());
    }
    let allowed: Vec<String> = extra.iter().map(|c| format!("'{}'", *c as char)).collect();
    Err(invalid(
        field,
        format!(
            "{:?} is not a valid {what} (1-{MAX_ID_LEN} of A-Z, a-z, 0-9, {})",
            truncate_for_message(id),
            allowed.join(", ")
        ),
    ))
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(80).collect()
}

/// What an instance's address is: an IP literal, or a host name answered in DNS as CNAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Ip(IpAddr),
    Host,
}

/// Classifies a stored (already validated) address.
pub fn address_kind(address: &str) -> AddressKind {
    address
        .parse::<IpAddr>()
        .map_or(AddressKind::Host, AddressKind::Ip)
}

fn validate_address(address: &str) -> Result<String, ValidationError> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(
                "address",
                format!("{ip} cannot be used to reach an instance"),
            ));
        }
        return Ok(ip.to_string());
    }
    let host = address.strip_suffix('.').unwrap_or(address);
    let labels_ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label);
    // "10.0.0.300" is made of valid labels but is a mistyped IP, not a host name.
    let looks_numeric = host
        .split('.')
        .next_back()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if labels_ok && !looks_numeric {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(invalid(
            "address",
            format!(
                "{:?} is neither an IPv4/IPv6 literal nor a DNS host name",
                truncate_for_message(address)
            ),
        ))
    }
}

/// A registration that passed validation: what the Register command carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Tags,
    pub meta: Meta,
    pub weight: u16,
    pub checks: Vec<CheckSpec>,
}

/// A validated check definition with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub id: String,
    pub kind: CheckKindSpec,
    /// Active checks: time between probes. Unused by TTL checks.
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub initial_status: HealthStatus,
    pub deregister_after_ms: Option<u64>,
}

/// What a check does, with only the fields its kind uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKindSpec {
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls_skip_verify: bool,
        /// Keep the response body in the output. Absent in records written before it existed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        output_body: bool,
    },
    Tcp {
        target: String,
    },
    Ttl {
        ttl_ms: u64,
    },
}

impl CheckSpec {
    pub fn kind(&self) -> CheckKind {
        match self.kind {
            CheckKindSpec::Http { .. } => CheckKind::Http,
            CheckKindSpec::Tcp { .. } => CheckKind::Tcp,
            CheckKindSpec::Ttl { .. } => CheckKind::Ttl,
        }
    }

    /// The definition as reads show it: defaults filled in, header values [`REDACTED`].
    pub fn to_public_registration(&self) -> CheckRegistration {
        let mut out = self.to_registration();
        for value in out.headers.values_mut() {
            *value = REDACTED.to_owned();
        }
        out
    }

    /// The definition as an API body, defaults filled in and header values as stored: what
    /// registering it again would store. Never shown to readers (see
    /// [`CheckSpec::to_public_registration`]).
    pub fn to_registration(&self) -> CheckRegistration {
        let ms = |v: u64| Some(format_duration(Duration::from_millis(v)));
        let mut out = CheckRegistration {
            id: Some(self.id.clone()),
            kind: self.kind(),
            url: None,
            method: None,
            headers: BTreeMap::new(),
            tls_skip_verify: false,
            output_body: false,
            target: None,
            ttl: None,
            interval: None,
            timeout: None,
            rise: Some(self.rise),
            fall: Some(self.fall),
            initial_status: Some(self.initial_status.into()),
            deregister_after: self.deregister_after_ms.and_then(ms),
        };
        match &self.kind {
            CheckKindSpec::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                output_body,
            } => {
                out.url = Some(url.clone());
                out.method = Some(method.clone());
                out.headers = headers.clone();
                out.tls_skip_verify = *tls_skip_verify;
                out.output_body = *output_body;
            }
            CheckKindSpec::Tcp { target } => out.target = Some(target.clone()),
            CheckKindSpec::Ttl { ttl_ms } => out.ttl = ms(*ttl_ms),
        }
        if !matches!(self.kind, CheckKindSpec::Ttl { .. }) {
            out.interval = ms(self.interval_ms);
            out.timeout = ms(self.timeout_ms);
        }
        out
    }
}

/// Validates a registration body for `service`/`id` and fills in defaults.
pub fn validate_registration(
    id: &str,
    body: &InstanceRegistration,
) -> Result<InstanceSpec, ValidationError> {
    validate_id("id", id)?;
    let address = validate_address(&body.address)?;
    let port = u16::try_from(body.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("port", format!("{} is not in 1-65535", body.port)))?;
    let weight = match body.weight {
        None => 1,
        Some(w) => u16::try_from(w)
            .ok()
            .filter(|w| *w != 0)
            .ok_or_else(|| invalid("weight", format!("{w} is not in 1-65535")))?,
    };
    if body.tags.len() > MAX_TAGS {
        return Err(invalid("tags", format!("more than {MAX_TAGS} tags")));
    }
    let mut tags = Vec::with_capacity(body.tags.len());
    for tag in &body.tags {
        if !is_dns_label(tag) {
            return Err(invalid(
                "tags",
                format!(
                    "{:?} is not a DNS label (1-63 of a-z, 0-9, '-')",
                    truncate_for_message(tag)
                ),
            ));
        }
        tags.push(tag.to_ascii_lowercase());
    }
    validate_meta(&body.meta)?;
    if body.checks.len() > MAX_CHECKS {
        return Err(invalid("checks", format!("more than {MAX_CHECKS} checks")));
    }
    let mut checks: Vec<CheckSpec> = Vec::with_capacity(body.checks.len());
    for (i, check) in body.checks.iter().enumerate() {
        let spec = validate_check(i, check, &address, port, &checks)?;
        checks.push(spec);
    }
    Ok(InstanceSpec {
        id: id.to_owned(),
        address,
        port,
        tags: Tags::new(tags),
        meta: Meta::from(&body.meta),
        weight,
        checks,
    })
}

fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if meta.len() > MAX_META_PAIRS {
        return Err(invalid("meta", format!("more than {MAX_META_PAIRS} pairs")));
    }
    for (k, v) in meta {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_META_KEY_LEN
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(invalid(
                "meta",
                format!(
                    "key {:?} must be 1-{MAX_META_KEY_LEN} of A-Z, a-z, 0-9, '_', '-', '.'",
                    truncate_for_message(k)
                ),
            ));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(invalid(
                format!("meta.{k}"),
                format!("value longer than {MAX_META_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

fn duration_field(
    field: &str,
    value: Option<&str>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ValidationError> {
    match value {
        None => Ok(default),
        Some(s) => parse_duration(s)
            .map(Some)
            .map_err(|e| invalid(field, e.to_string())),
    }
}

fn validate_check(
    index: usize,
    c: &CheckRegistration,
    address: &str,
    port: u16,
    earlier: &[CheckSpec],
) -> Result<CheckSpec, ValidationError> {
    let f = |name: &str| format!("checks[{index}].{name}");
    let id = match &c.id {
        Some(id) => {
            validate_check_id(&f("id"), id)?;
            id.clone()
        }
        None => {
            let base = format!("{:?}", c.kind).to_ascii_lowercase();
            let n = earlier.iter().filter(|e| e.kind() == c.kind).count();
            if n == 0 {
                base
            } else {
                format!("{base}-{}", n + 1)
            }
        }
    };
    if earlier.iter().any(|e| e.id == id) {
        return Err(invalid(f("id"), format!("{id:?} is used by another check")));
    }
    let unused = |name: &str, present: bool| {
        if present {
            Err(invalid(f(name), format!("not used by {:?} checks", c.kind)))
        } else {
            Ok(())
        }
    };
    let kind = match c.kind {
        CheckKind::Http => {
            unused("target", c.target.is_some())?;
            unused("ttl", c.ttl.is_some())?;
            let url = c
                .url
                .clone()
                .ok_or_else(|| invalid(f("url"), "required for http checks"))?;
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok
                || url.len() > MAX_URL_LEN
                || url.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(invalid(
                    f("url"),
                    format!(
                        "must be an http:// or https:// URL of at most {MAX_URL_LEN} characters"
                    ),
                ));
            }
            let method = c.method.clone().unwrap_or_else(|| "GET".into());
            if !CHECK_METHODS.contains(&method.as_str()) {
                return Err(invalid(
                    f("method"),
                    format!(
                        "{:?} is not one of {}",
                        truncate_for_message(&method),
                        CHECK_METHODS.join(", ")
                    ),
                ));
            }
            if c.headers.len() > MAX_CHECK_HEADERS {
                return Err(invalid(
                    f("headers"),
                    format!("more than {MAX_CHECK_HEADERS}"),
                ));
            }
            for (k, v) in &c.headers {
                let name_ok = !k.is_empty()
                    && k.len() <= MAX_HEADER_LEN
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                let value_ok = v.len() <= MAX_HEADER_LEN
                    && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
                if !name_ok || !value_ok {
                    return Err(invalid(
                        f("headers"),
                        format!("header {:?} is not valid", truncate_for_message(k)),
                    ));
                }
                if v == REDACTED {
                    // A definition read back and sent again: storing the placeholder would
                    // replace the real value.
                    return Err(invalid(
                        f("headers"),
                        format!(
                            "header {:?} holds {REDACTED:?}, what reads show; send its real value",
                            truncate_for_message(k)
                        ),
                    ));
                }
            }
            CheckKindSpec::Http {
                url,
                method,
                headers: c.headers.clone(),
                tls_skip_verify: c.tls_skip_verify,
                output_body: c.output_body,
            }
        }
        CheckKind::Tcp => {
            unused("url", c.url.is_some())?;
            unused("output_body", c.output_body)?;
            unused("ttl", c.ttl.is_some())?;
            let target = match &c.target {
                None => match address_kind(address) {
                    AddressKind::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
                    _ => format!("{address}:{port}"),
                },
                Some(t) => {
                    let (host, p) = t.rsplit_once(':').ok_or_else(|| {
                        invalid(f("target"), "must be host:port, e.g. 10.0.0.7:5432")
                    })?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let port_ok = p.parse::<u16>().is_ok_and(|p| p != 0);
                    if !port_ok || validate_address(host).is_err() {
                        return Err(invalid(
                            f("target"),
                            "must be host:port, e.g. 10.0.0.7:5432",
                        ));
                    }
                    t.clone()
                }
            };
            CheckKindSpec::Tcp { target }
        }
        CheckKind::Ttl => {
            unused("url", c.url.is_some())?;
            unused("output_body", c.output_body)?;
            unused("target", c.target.is_some())?;
            unused("interval", c.interval.is_some())?;
            unused("timeout", c.timeout.is_some())?;
            let ttl = duration_field(&f("ttl"), c.ttl.as_deref(), None)?
                .ok_or_else(|| invalid(f("ttl"), "required for ttl checks"))?;
            if ttl < Duration::from_secs(1) {
                return Err(invalid(f("ttl"), "must be at least 1s"));
            }
            CheckKindSpec::Ttl {
                ttl_ms: ttl.as_millis() as u64,
            }
        }
    };
    let interval = duration_field(
        &f("interval"),
        c.interval.as_deref(),
        Some(DEFAULT_INTERVAL),
    )?
    .unwrap_or(DEFAULT_INTERVAL);
    if interval < MIN_CHECK_INTERVAL {
        return Err(invalid(
            f("interval"),
            format!("must be at least {}", format_duration(MIN_CHECK_INTERVAL)),
        ));
    }
    let timeout = duration_field(
        &f("timeout"),
        c.timeout.as_deref(),
        Some(DEFAULT_TIMEOUT.min(interval)),
    )?
    .unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Err(invalid(f("timeout"), "must be greater than 0"));
    }
    if timeout > interval {
        return Err(invalid(
            f("timeout"),
            format!(
                "{} is longer than the interval {}",
                format_duration(timeout),
                format_duration(interval)
            ),
        ));
    }
    let count = |name: &str, v: Option<u32>| match v {
        None => Ok(1),
        Some(n) if (1..=MAX_RISE_FALL).contains(&n) => Ok(n),
        Some(n) => Err(invalid(f(name), format!("{n} is not in 1-{MAX_RISE_FALL}"))),
    };
    let deregister_after =
        duration_field(&f("deregister_after"), c.deregister_after.as_deref(), None)?;
    if deregister_after.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(invalid(f("deregister_after"), "must be at least 1s"));
    }
    Ok(CheckSpec {
        id,
        kind,
        interval_ms: interval.as_millis() as u64,
        timeout_ms: timeout.as_millis() as u64,
        rise: count("rise", c.rise)?,
        fall: count("fall", c.fall)?,
        initial_status: c.initial_status.map_or(HealthStatus::Critical, Into::into),
        deregister_after_ms: deregister_after.map(|d| d.as_millis() as u64),
    })
}

/// Longest DNS TTL a service may set: a day, as for any duration in the API.
pub const MAX_DNS_TTL_S: u32 = 86_400;

/// A service's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsSpec {
    /// When no instance is healthy, hand out all of them rather than none.
    pub fail_open: bool,
    /// TTL of this service's DNS answers; the agent's default when `None`.
    pub dns_ttl_s: Option<u32>,
    /// What the Cloud Map-compatible API keeps: a Cloud Map service's configuration, or (under
    /// a namespace key) a namespace. Absent in every record written before it existed. Boxed:
    /// it is large beside the other settings, and ops carry settings by value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudmap: Option<Box<crate::cloudmap::CloudMapRecord>>,
}

/// Validates a settings body.
pub fn validate_settings(body: &ServiceSettingsBody) -> Result<SettingsSpec, ValidationError> {
    let dns_ttl_s = match &body.dns_ttl {
        None => None,
        Some(s) => {
            let d = parse_duration(s).map_err(|e| invalid("dns_ttl", e.to_string()))?;
            if d.subsec_nanos() != 0 || d.as_secs() > u64::from(MAX_DNS_TTL_S) {
                return Err(invalid(
                    "dns_ttl",
                    format!("must be whole seconds, at most {MAX_DNS_TTL_S}s"),
                ));
            }
            Some(d.as_secs() as u32)
        }
    };
    Ok(SettingsSpec {
        fail_open: body.fail_open.unwrap_or(false),
        dns_ttl_s,
        cloudmap: None,
    })
}

/// Validates user-supplied check or custom-health output.
pub fn validate_output(output: &str) -> Result<(), ValidationError> {
    if output.len() > MAX_OUTPUT_LEN {
        Err(invalid(
            "output",
            format!("longer than {MAX_OUTPUT_LEN} bytes"),
        ))
    } else {
        Ok(())
    }
}

/// Checks an operation that arrived already built (forwarded by another node, not parsed here
/// from an API body) by the same rules as the HTTP layer: a registration is turned back into its
/// API body and validated again, and must come out unchanged; names, ids and outputs are checked
/// as the API checks them. So a node can propose nothing that the API would have refused.
pub fn validate_op(op: &Op) -> Result<(), ValidationError> {
    let canonical = |service: &str| -> Result<(), ValidationError> {
        if validate_service_name(service)? == service {
            Ok(())
        } else {
            Err(invalid("service", "must be lower-case"))
        }
    };
    match op {
        Op::Register {
            service,
            instance,
            health,
        } => {
            canonical(service)?;
            if let Some(h) = health {
                validate_output(&h.output)?;
            }
            let body = InstanceRegistration {
                address: instance.address.clone(),
                port: u32::from(instance.port),
                tags: instance.tags.iter().map(str::to_owned).collect(),
                meta: instance.meta.to_map(),
                weight: Some(u32::from(instance.weight)),
                checks: instance
                    .checks
                    .iter()
                    .map(CheckSpec::to_registration)
                    .collect(),
            };
            if validate_registration(&instance.id, &body)? != *instance {
                return Err(invalid(
                    "instance",
                    "is not in the form validation gives it",
                ));
            }
            Ok(())
        }
        Op::Deregister { service, id } => {
            canonical(service)?;
            validate_id("id", id)
        }
        Op::SetSettings { service, settings } => {
            if let Some(record) = &settings.cloudmap {
                crate::cloudmap::validate_record(service, record)?;
            }
            if !service.starts_with(crate::cloudmap::NAMESPACE_KEY_PREFIX) {
                canonical(service)?;
            }
            match settings.dns_ttl_s {
                Some(ttl) if ttl > MAX_DNS_TTL_S => Err(invalid(
                    "dns_ttl",
                    format!("must be at most {MAX_DNS_TTL_S}s"),
                )),
                _ => Ok(()),
            }
        }
        Op::DeleteSettings { service } => {
            match service.strip_prefix(crate::cloudmap::NAMESPACE_KEY_PREFIX) {
                Some(id) if crate::cloudmap::is_namespace_id(id) => Ok(()),
                _ => canonical(service),
            }
        }
        Op::SetCheckStatus {
            service,
            id,
            check,
            output,
            ..
        } => {
            canonical(service)?;
            validate_id("id", id)?;
            validate_check_id("check", check)?;
            validate_output(output)
        }
        Op::SetMaintenance {
            service,
            id,
            reason,
        } => {
            canonical(service)?;
            validate_id("id", id)?;
            reason.as_deref().map_or(Ok(()), validate_output)
        }
        Op::SetNodeUp { .. } | Op::AclExpireTokens => Ok(()),
        Op::AclBootstrap {
            accessor,
            secret_hash,
            ..
        } => crate::acl::validate_token(&crate::acl::TokenSpec {
            accessor: accessor.clone(),
            secret_hash: Some(secret_hash.clone()),
            description: String::new(),
            policies: BTreeSet::new(),
            ttl_ms: None,
        }),
        Op::AclSetPolicy { policy } => crate::acl::validate_policy(policy),
        Op::AclDeletePolicy { name } => crate::acl::validate_policy_name(name),
        Op::AclSetToken { token } => crate::acl::validate_token(token),
        Op::AclDeleteToken { accessor } => crate::acl::validate_accessor(accessor),
        Op::SetHealth {
            service,
            id,
            output,
            ..
        } => {
            canonical(service)?;
            validate_id("id", id)?;
            validate_output(output)
        }
        // By the rules a snapshot or a node's own records are read by.
        Op::Restore {
            from_index, data, ..
        } => {
            crate::format::validate_registry(data, *from_index).map_err(|e| invalid("snapshot", e))
        }
        Op::RestoreText {
            from_index, data, ..
        } => {
            let data = data.decode().map_err(|e| invalid("snapshot", e))?;
            crate::format::validate_registry(&data, *from_index).map_err(|e| invalid("snapshot", e))
        }
    }
}

/// An instance as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub spec: InstanceSpec,
    /// One state per `spec.checks`, same order.
    pub checks: Vec<CheckState>,
    /// Boxed, as `maintenance`: most instances have neither, and an instance is in memory once
    /// per version kept, so 8 bytes each rather than the 40 of a state.
    pub custom_health: Option<Box<CheckState>>,
    /// Set while the instance is in maintenance: it counts as critical, with the reason as output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Box<CheckState>>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Instance {
    /// The worst of the checks, the custom health and maintenance; passing when there is none.
    pub fn health(&self) -> HealthStatus {
        self.checks
            .iter()
            .chain(self.custom_health.as_deref())
            .chain(self.maintenance.as_deref())
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing)
    }

    /// The committed state of check `id`, with its spec.
    pub fn check(&self, id: &str) -> Option<(&CheckSpec, &CheckState)> {
        let i = self.spec.checks.iter().position(|c| c.id == id)?;
        Some((&self.spec.checks[i], self.checks.get(i)?))
    }

    pub fn to_info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.spec.id.clone(),
            address: self.spec.address.clone(),
            port: self.spec.port,
            tags: self.spec.tags.iter().map(str::to_owned).collect(),
            meta: self.spec.meta.to_map(),
            weight: self.spec.weight,
            health: self.health().into(),
            checks: self
                .spec
                .checks
                .iter()
                .zip(&self.checks)
                .map(|(spec, state)| CheckInfo {
                    id: spec.id.clone(),
                    definition: spec.to_public_registration(),
                    state: state.into(),
                })
                .collect(),
            custom_health: self.custom_health.as_deref().map(Into::into),
            maintenance: self.maintenance.as_deref().map(Into::into),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> InstanceRegistration {
        serde_json::from_str(json).expect("test body parses")
    }

    fn field_of(json: &str) -> String {
        validate_registration("i-1", &body(json))
            .expect_err("should be rejected")
            .field
    }

    #[test]
    fn service_names_are_dns_labels_lower_cased() {
        assert_eq!(validate_service_name("Web-API").unwrap(), "web-api");
        assert_eq!(validate_service_name(&"a".repeat(63)).unwrap().len(), 63);
        for bad in [
            "",
            "-web",
            "web-",
            "we_b",
            "web.api",
            "wéb",
            &"a".repeat(64),
        ] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_allow_dots_underscores_and_up_to_128() {
        assert!(validate_id("id", "web-1_a.b").is_ok());
        assert!(validate_id("id", &"x".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(129)] {
            assert!(validate_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_minimal_registration_gets_defaults() {
        let spec =
            validate_registration("i-1", &body(r#"{"address":"10.0.0.1","port":80}"#)).unwrap();
        assert_eq!(spec.weight, 1);
        assert!(spec.tags.is_empty() && spec.checks.is_empty());
    }

    #[test]
    fn addresses_are_ips_or_host_names() {
        let ok = |a: &str| {
            validate_registration("i", &body(&format!(r#"{{"address":"{a}","port":1}}"#)))
                .map(|s| s.address)
        };
        assert_eq!(ok("10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(ok("2001:DB8::1").unwrap(), "2001:db8::1");
        assert_eq!(ok("Db.Example.com.").unwrap(), "db.example.com");
        for bad in [
            "",
            "10.0.0.300",
            "0.0.0.0",
            "a..b",
            "-a.com",
            "a b",
            "224.0.0.1",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(field_of(r#"{"address":"10.0.0.1","port":0}"#), "port");
        assert_eq!(field_of(r#"{"address":"10.0.0.1","port":65536}"#), "port");
        assert_eq!(
            field_of(r#"{"address":"10.0.0.1","port":1,"weight":0}"#),
            "weight"
        );
        assert_eq!(
            field_of(r#"{"address":"10.0.0.1","port":1,"tags":["a_b"]}"#),
            "tags"
        );
        let big = "v".repeat(MAX_META_VALUE_LEN + 1);
        assert_eq!(
            field_of(&format!(
                r#"{{"address":"10.0.0.1","port":1,"meta":{{"k":"{big}"}}}}"#
            )),
            "meta.k"
        );
        let many: Vec<String> = (0..=MAX_META_PAIRS)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect();
        assert_eq!(
            field_of(&format!(
                r#"{{"address":"10.0.0.1","port":1,"meta":{{{}}}}}"#,
                many.join(",")
            )),
            "meta"
        );
    }

    #[test]
    fn checks_are_validated_and_defaulted() {
        let spec = validate_registration(
            "i",
            &body(
                r#"{"address":"10.0.0.1","port":8080,"checks":[
                    {"kind":"http","url":"http://10.0.0.1:8080/health"},
                    {"kind":"tcp"},
                    {"kind":"ttl","ttl":"30s"},
                    {"kind":"http","url":"https://x/h","interval":"2s","timeout":"1s","rise":3,"fall":2}
                ]}"#,
            ),
        )
        .unwrap();
        let ids: Vec<_> = spec.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["http", "tcp", "ttl", "http-2"]);
        assert_eq!(
            spec.checks[1].kind,
            CheckKindSpec::Tcp {
                target: "10.0.0.1:8080".into()
            }
        );
        assert_eq!(spec.checks[0].interval_ms, 10_000);
        assert_eq!(spec.checks[0].timeout_ms, 5_000);
        assert_eq!(spec.checks[0].initial_status, HealthStatus::Critical);
        assert_eq!((spec.checks[3].rise, spec.checks[3].fall), (3, 2));
    }

    #[test]
    fn bad_checks_are_rejected_naming_the_field() {
        let check = |c: &str| {
            field_of(&format!(
                r#"{{"address":"10.0.0.1","port":1,"checks":[{c}]}}"#
            ))
        };
        assert_eq!(check(r#"{"kind":"http"}"#), "checks[0].url");
        assert_eq!(check(r#"{"kind":"http","url":"ftp://x"}"#), "checks[0].url");
        assert_eq!(
            check(r#"{"kind":"http","url":"http://x","interval":"0s"}"#),
            "checks[0].interval"
        );
        assert_eq!(
            check(r#"{"kind":"http","url":"http://x","interval":"1s","timeout":"2s"}"#),
            "checks[0].timeout"
        );
        assert_eq!(check(r#"{"kind":"ttl"}"#), "checks[0].ttl");
        assert_eq!(
            check(r#"{"kind":"ttl","ttl":"30s","interval":"1s"}"#),
            "checks[0].interval"
        );
        assert_eq!(
            check(r#"{"kind":"tcp","target":"nope"}"#),
            "checks[0].target"
        );
        assert_eq!(check(r#"{"kind":"tcp","rise":0}"#), "checks[0].rise");
        assert_eq!(
            check(r#"{"kind":"tcp","id":"a"},{"kind":"tcp","id":"a"}"#),
            "checks[1].id"
        );
    }

    #[test]
    fn http_checks_take_four_methods_and_hide_header_values_from_reads() {
        let check = |c: &str| {
            validate_registration(
                "i",
                &body(&format!(
                    r#"{{"address":"10.0.0.1","port":1,"checks":[{c}]}}"#
                )),
            )
        };
        for m in CHECK_METHODS {
            assert!(check(&format!(
                r#"{{"kind":"http","url":"http://x/","method":"{m}"}}"#
            ))
            .is_ok());
        }
        for m in [
            "DELETE", "PATCH", "CONNECT", "OPTIONS", "TRACE", "get", "PROPFIND",
        ] {
            let err = check(&format!(
                r#"{{"kind":"http","url":"http://x/","method":"{m}"}}"#
            ))
            .unwrap_err();
            assert_eq!(err.field, "checks[0].method", "{m}");
        }
        let spec = check(
            r#"{"kind":"http","url":"http://x/","headers":{"Authorization":"Bearer s3cret"},"output_body":true}"#,
        )
        .unwrap();
        let c = &spec.checks[0];
        assert_eq!(
            c.to_registration().headers["Authorization"],
            "Bearer s3cret"
        );
        assert!(c.to_registration().output_body);
        let public = c.to_public_registration();
        assert_eq!(public.headers["Authorization"], REDACTED);
        let inst = Instance {
            spec: spec.clone(),
            checks: vec![CheckState {
                status: HealthStatus::Passing,
                output: String::new(),
                changed_at_ms: 0,
            }],
            custom_health: None,
            maintenance: None,
            create_index: 1,
            modify_index: 1,
        };
        let shown = serde_json::to_string(&inst.to_info()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(r#""Authorization":"<redacted>""#), "{shown}");
        // Sending back what a read showed would store the placeholder: refused.
        assert_eq!(
            check(r#"{"kind":"http","url":"http://x/","headers":{"Authorization":"<redacted>"}}"#)
                .unwrap_err()
                .field,
            "checks[0].headers"
        );
        // A forwarded registration keeps the real value.
        assert_eq!(
            validate_op(&Op::Register {
                service: "web".into(),
                instance: spec,
                health: None,
            }),
            Ok(())
        );
        assert_eq!(
            check(r#"{"kind":"tcp","output_body":true}"#)
                .unwrap_err()
                .field,
            "checks[0].output_body"
        );
    }

    #[test]
    fn http_check_records_without_output_body_still_read() {
        let old = r#"{"kind":"http","url":"http://x/","method":"GET","headers":{},"tls_skip_verify":false}"#;
        let kind: CheckKindSpec = serde_json::from_str(old).unwrap();
        assert!(matches!(
            kind,
            CheckKindSpec::Http {
                output_body: false,
                ..
            }
        ));
        assert_eq!(serde_json::to_string(&kind).unwrap(), old);
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_parse() {
        assert!(serde_json::from_str::<InstanceRegistration>(
            r#"{"address":"10.0.0.1","port":1,"prot":2}"#
        )
        .is_err());
        assert!(serde_json::from_str::<InstanceRegistration>(
            r#"{"address":"10.0.0.1","port":1,"checks":[{"kind":"grpc"}]}"#
        )
        .is_err());
    }

    #[test]
    fn forwarded_ops_pass_the_same_rules_as_api_bodies() {
        let spec = validate_registration(
            "i-1",
            &body(
                r#"{"address":"10.0.0.1","port":80,"tags":["v1"],"checks":[
                    {"kind":"http","url":"http://10.0.0.1/h","interval":"2s"},{"kind":"ttl","ttl":"30s"}]}"#,
            ),
        )
        .unwrap();
        let register = |service: &str, instance: InstanceSpec| Op::Register {
            service: service.into(),
            instance,
            health: None,
        };
        assert_eq!(validate_op(&register("web", spec.clone())), Ok(()));
        // What the API would never have produced, built by hand.
        let stated = |output: String| Op::Register {
            service: "web".into(),
            instance: spec.clone(),
            health: Some(crate::StatedHealth {
                status: crate::HealthStatus::Critical,
                output,
            }),
        };
        assert_eq!(validate_op(&stated("down".into())), Ok(()));
        assert_eq!(
            validate_op(&stated("x".repeat(MAX_OUTPUT_LEN + 1)))
                .unwrap_err()
                .field,
            "output"
        );
        assert!(validate_op(&register("Web", spec.clone())).is_err());
        let mut bad = spec.clone();
        bad.port = 0;
        assert_eq!(
            validate_op(&register("web", bad)).unwrap_err().field,
            "port"
        );
        let mut bad = spec.clone();
        bad.tags = bad.tags.with("not_a_label");
        assert_eq!(
            validate_op(&register("web", bad)).unwrap_err().field,
            "tags"
        );
        let mut bad = spec.clone();
        bad.checks[0].timeout_ms = 0;
        assert!(validate_op(&register("web", bad)).is_err());
        let mut bad = spec.clone();
        bad.address = "0.0.0.0".into();
        assert_eq!(
            validate_op(&register("web", bad)).unwrap_err().field,
            "address"
        );
        let mut bad = spec;
        bad.id = "a b".into();
        assert_eq!(validate_op(&register("web", bad)).unwrap_err().field, "id");
        let big = "x".repeat(MAX_OUTPUT_LEN + 1);
        assert!(validate_op(&Op::SetHealth {
            service: "web".into(),
            id: "i-1".into(),
            status: HealthStatus::Passing,
            output: big,
        })
        .is_err());
        assert!(validate_op(&Op::Deregister {
            service: "web".into(),
            id: "x/y".into(),
        })
        .is_err());
        assert!(validate_op(&Op::SetSettings {
            service: "web".into(),
            settings: SettingsSpec {
                fail_open: true,
                dns_ttl_s: Some(MAX_DNS_TTL_S + 1),
                cloudmap: None,
            },
        })
        .is_err());
    }

    #[test]
    fn health_is_the_worst_check_and_passing_without_checks() {
        let state = |status| CheckState {
            status,
            output: String::new(),
            changed_at_ms: 0,
        };
        let spec =
            validate_registration("i-1", &body(r#"{"address":"10.0.0.1","port":80}"#)).unwrap();
        let mut inst = Instance {
            spec,
            checks: vec![],
            custom_health: None,
            maintenance: None,
            create_index: 1,
            modify_index: 1,
        };
        assert_eq!(inst.health(), HealthStatus::Passing);
        inst.checks = vec![state(HealthStatus::Passing), state(HealthStatus::Warning)];
        assert_eq!(inst.health(), HealthStatus::Warning);
        inst.custom_health = Some(Box::new(state(HealthStatus::Critical)));
        assert_eq!(inst.health(), HealthStatus::Critical);
    }
}
