//! The wire types of the ACL API (`/v1/acl/*`, `/v1/audit`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A policy's rules: `{"service": {"web": "write"}, "service_prefix": {"": "read"},
/// "operator": "read", "acl": "write"}`; each access is `read`, `write` or `deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AclRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::service_rules))]
    pub service: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::prefix_rules))]
    pub service_prefix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::access))]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::access))]
    pub acl: Option<String>,
}

/// `PUT /v1/acl/policies/{name}` (or `POST /v1/acl/policies` with `name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Required with `POST`; with `PUT`, the same as the path's when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::policy_name))]
    pub name: Option<String>,
    /// At most 256 bytes, no control characters.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::description))]
    pub description: String,
    pub rules: AclRules,
}

/// A policy as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyInfo {
    pub name: String,
    pub description: String,
    pub rules: AclRules,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyList {
    pub policies: Vec<PolicyInfo>,
}

/// `POST /v1/acl/tokens` (create) and `PUT /v1/acl/tokens/{accessor}` (description and policies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// At most 256 bytes, no control characters.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::description))]
    pub description: String,
    /// Policy names, at most 32.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::policy_names))]
    pub policies: Vec<String>,
    /// Creation only: the token is refused, then deleted, this long after it was made
    /// (`90s`, `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::token_ttl))]
    pub expiration_ttl: Option<String>,
}

/// A token as the API shows it. `secret` is there only in the answer that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub accessor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub description: String,
    pub policies: Vec<String>,
    /// Unix milliseconds, by the leader's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `GET /v1/acl/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// Whether ACLs are enforced on the node that answered.
    pub acl: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
}

/// One entry of `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditInfo {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditList {
    pub entries: Vec<AuditInfo>,
}
