//! JSON Schema pieces the derives cannot say alone (feature `openapi`): the patterns of names and
//! ids, and the schemas of fields whose rules are on their items (tags) or keys (meta).
//!
//! The rules are the server's (crate `cairn-registry`, `model.rs` and `acl.rs`); where JSON Schema
//! cannot say a rule exactly, the schema says a little less than the server accepts, never more,
//! so a request that matches the document is one the server takes.

use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{KnownFormat, RefOr, Schema};

/// A DNS label: a service name or a tag (stored lower-case).
pub const DNS_LABEL: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// An instance id.
pub const INSTANCE_ID: &str = "^[A-Za-z0-9_.-]{1,128}$";
/// A check id: an instance id's characters and `:` (Consul's `service:<id>`).
pub const CHECK_ID: &str = "^[A-Za-z0-9_.:-]{1,128}$";
/// A policy name.
pub const POLICY_NAME: &str = "^[A-Za-z0-9_.-]{1,128}$";
/// A duration, in the forms the document promises: one number and a unit, at most a day (the
/// server also reads sums such as `1m30s` and fractions such as `1.5s`).
pub const DURATION: &str =
    "^([0-9]{1,4}|[0-9]{1,4}(ns|us|ms|s)|[0-9]{1,3}m|([0-9]|1[0-9]|2[0-4])h)$";
/// An access in a rule.
pub const ACCESS: &str = "^(read|write|deny)$";
/// Text with no control characters.
pub const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// A DNS TTL: whole seconds, at most a day.
pub const DNS_TTL: &str = "^([0-9]{1,4}s?|[0-9]{1,3}m|([0-9]|1[0-9]|2[0-4])h)$";
/// A meta key.
const META_KEY: &str = "^[A-Za-z0-9_.-]{1,128}$";
/// A host name (no all-numeric last label: that is a mistyped IPv4 address) or an IPv4 address
/// that can reach an instance (not 0.0.0.0, not multicast).
const HOST_OR_IPV4: &str = "^(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.?|([1-9]|[1-9][0-9]|1[0-9][0-9]|2[01][0-9]|22[0-3])(\\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])){3})$";

/// With format `ipv6`: some digit that is not 0 (not `::`), and no leading `ff` (multicast).
const IPV6_USABLE: &str =
    "^([0-9A-Ea-e:]|[Ff][0-9A-Ea-e:])[0-9A-Fa-f:.]*[1-9A-Fa-f][0-9A-Fa-f:.]*$";

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// A string or `null`: an `Option` field (`null` reads as absent).
fn opt_string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(pattern))
}

/// `tags`: at most 64 DNS labels.
pub fn tags() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(string(DNS_LABEL))
        .max_items(Some(64))
        .description(Some(
            "DNS labels (1-63 of a-z, 0-9, '-'), at most 64; stored lower-case, duplicates folded",
        ))
}

/// `meta`: at most 64 pairs, keys of 1-128 of `A-Za-z0-9_.-`, values of at most 512 bytes.
pub fn meta() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string(META_KEY)))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(512))
                .description(Some("at most 512 bytes of UTF-8")),
        ))
        .max_properties(Some(64))
        .description(Some(
            "string pairs: at most 64, keys 1-128 of A-Z, a-z, 0-9, '_', '-', '.', values at most 512 bytes",
        ))
}

/// `address`: an IPv4 or IPv6 literal or a host name.
pub fn address() -> impl Into<RefOr<Schema>> {
    AnyOfBuilder::new()
        .item(string(HOST_OR_IPV4).max_length(Some(254)))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6)))
                // Some digit that is not 0 (so not `::`, unspecified), and not `ff..` (multicast).
                .pattern(Some(IPV6_USABLE)),
        )
        .description(Some(
            "an IPv4 or IPv6 literal (not unspecified, not multicast), or a DNS host name (answered as CNAME)",
        ))
}

/// A duration field (`ttl`, `interval`, ...).
pub fn duration() -> impl Into<RefOr<Schema>> {
    opt_string(DURATION).description(Some(
        "a duration: a number and a unit (ns, us, ms, s, m, h), e.g. 500ms, 10s, 5m; a bare number is seconds",
    ))
}

/// `headers` of an HTTP check: at most 16, names of 1-1024 of `A-Za-z0-9-`, values of at most
/// 1024 printable ASCII characters or tabs.
pub fn check_headers() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string("^[A-Za-z0-9-]{1,1024}$")))
        .additional_properties(Some(string("^[\\t -~]{0,1024}$")))
        .max_properties(Some(16))
        .description(Some(
            "extra request headers (http checks), at most 16; reads show every value as \"<redacted>\", which a registration may not send back",
        ))
}

/// `target` of a TCP check: `host:port`, `ipv4:port` or `[ipv6]:port`.
pub fn tcp_target() -> impl Into<RefOr<Schema>> {
    opt_string(
        "^(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|([1-9]|[1-9][0-9]|1[0-9][0-9]|2[01][0-9]|22[0-3])(\\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])){3}|\\[[0-9A-Ea-e:][0-9A-Fa-f:]*[1-9A-Fa-f][0-9A-Fa-f:]*\\]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
    )
    .max_length(Some(260))
    .description(Some("tcp checks: host:port to connect to; the instance's address and port when absent"))
}

/// `rules.service`: lower-case service names to accesses, at most 256 rules with the prefixes.
pub fn service_rules() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")))
        .additional_properties(Some(string(ACCESS)))
        .max_properties(Some(128))
        .description(Some("service name to access (read, write or deny)"))
}

/// `rules.service_prefix`: starts of lower-case service names to accesses.
pub fn prefix_rules() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string("^[a-z0-9-]{0,63}$")))
        .additional_properties(Some(string(ACCESS)))
        .max_properties(Some(128))
        .description(Some(
            "start of a service name to access (read, write or deny); the longest matching prefix decides",
        ))
}

/// `policies` of a token.
pub fn policy_names() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(string(POLICY_NAME))
        .max_items(Some(32))
}

/// `expiration_ttl` of a token: 1 second to a day in the forms of [`DURATION`].
pub fn token_ttl() -> impl Into<RefOr<Schema>> {
    opt_string("^([1-9][0-9]{0,3}|[1-9][0-9]{0,3}s|[1-9][0-9]{3,6}ms|[1-9][0-9]{0,2}m|([1-9]|1[0-9]|2[0-4])h)$")
        .description(Some("the token is refused, then deleted, this long after it was made (1s to a day)"))
}

/// A service name or a tag.
pub fn dns_label() -> impl Into<RefOr<Schema>> {
    string(DNS_LABEL)
}

/// An instance id.
pub fn instance_id() -> impl Into<RefOr<Schema>> {
    string(INSTANCE_ID)
}

/// A check id.
pub fn check_id() -> impl Into<RefOr<Schema>> {
    opt_string(CHECK_ID)
}

/// A policy name.
pub fn policy_name() -> impl Into<RefOr<Schema>> {
    opt_string(POLICY_NAME)
}

/// An access in a rule: `read`, `write` or `deny`.
pub fn access() -> impl Into<RefOr<Schema>> {
    opt_string(ACCESS)
}

/// A description: at most 256 bytes, no control characters.
pub fn description() -> impl Into<RefOr<Schema>> {
    string(NO_CONTROL).max_length(Some(256))
}

/// A service's DNS TTL.
pub fn dns_ttl() -> impl Into<RefOr<Schema>> {
    opt_string(DNS_TTL)
}

/// A registry index, as `?index=` takes it: any `u64`.
pub fn index() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0u64))
        .maximum(Some(u64::MAX))
        .description(Some(
            "block until the resource's index differs from this one (or `wait` ends)",
        ))
}
