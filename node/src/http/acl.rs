//! [`Caller`]: who a request speaks for, and the one place a request's right is decided.
//!
//! Every route of every leaf takes a `Caller` (an extractor) and asks it for the access it needs
//! before it reads or writes anything. The token comes from `X-Cairn-Token`, `Authorization:
//! Bearer`, Consul's `X-Consul-Token` or `?token=`, in that order; no token means the anonymous
//! token. An unknown or expired token is refused outright (403), as Consul refuses it, rather
//! than served as anonymous.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use cairn_api::ErrorCode;
use cairn_registry::acl::{Access, AclMode, Authorizer, TokenError, ANONYMOUS};

use super::error::Failure;
use super::query::{decode, Dialect};
use super::state::AppState;

/// The header a list answers with when ACLs hid part of it.
pub(super) const FILTERED_HEADER: &str = "x-cairn-filtered";
/// Consul's spelling of [`FILTERED_HEADER`].
pub(super) const CONSUL_FILTERED_HEADER: &str = "x-consul-results-filtered-by-acls";
/// The longest token secret read; longer is refused before it is hashed.
const MAX_SECRET_LEN: usize = 256;

/// The rights of the request's token.
#[derive(Clone)]
pub struct Caller(Arc<Authorizer>);

impl Caller {
    /// A caller with every right: the node's own work, or ACLs off.
    pub fn open() -> Caller {
        Caller(Arc::new(Authorizer::open()))
    }

    /// The authorizer of `secret` (`None`: anonymous) on this node, now.
    pub fn resolve(s: &AppState, secret: Option<&str>) -> Result<Caller, Failure> {
        let registry = s.cluster.registry();
        s.rights
            .authorize(registry, secret)
            .map(Caller)
            .map_err(token_refused)
    }

    /// The authorizer of the token with accessor id `accessor`, as a node relaying a request
    /// names it (`None`: anonymous).
    pub fn resolve_accessor(s: &AppState, accessor: Option<&str>) -> Result<Caller, Failure> {
        let AclMode::On { .. } = s.acl else {
            return Ok(Caller::open());
        };
        let registry = s.cluster.registry();
        let acl = registry.acl();
        let secretless = match accessor {
            None => None,
            Some(a) => Some(
                acl.tokens
                    .get(a)
                    .ok_or_else(|| token_refused(TokenError::NotFound))?,
            ),
        };
        acl.authorize_token(s.acl, secretless.map(|t| &**t), registry.time_ms())
            .map(|z| Caller(Arc::new(z)))
            .map_err(token_refused)
    }

    /// The accessor id to record with a write (`None` when ACLs are off).
    pub fn accessor(&self) -> Option<&str> {
        self.0.accessor()
    }

    /// Whether ACLs are enforced, so lists are filtered.
    pub fn enforced(&self) -> bool {
        self.0.enforced()
    }

    /// Whether the token may read service `name` (list filtering).
    pub fn may_read(&self, name: &str) -> bool {
        self.0.service(name).allows(Access::Read)
    }

    /// Requires `need` on service `name`.
    pub fn service(&self, name: &str, need: Access) -> Result<(), Failure> {
        self.require(self.0.service(name), need, "service", Some(name))
    }

    /// Requires `need` on the cluster's operation (membership, digest, audit, metrics).
    pub fn operator(&self, need: Access) -> Result<(), Failure> {
        self.require(self.0.operator(), need, "operator", None)
    }

    /// Requires `need` on tokens and policies.
    pub fn acl(&self, need: Access) -> Result<(), Failure> {
        self.require(self.0.acl(), need, "acl", None)
    }

    fn require(
        &self,
        has: Access,
        need: Access,
        resource: &str,
        name: Option<&str>,
    ) -> Result<(), Failure> {
        if has.allows(need) {
            return Ok(());
        }
        // Consul's words (acl.PermissionDeniedError), which its clients and users know.
        let accessor = self.0.accessor().unwrap_or(ANONYMOUS);
        let who = if accessor == ANONYMOUS {
            "anonymous token".to_owned()
        } else {
            format!("token with AccessorID '{accessor}'")
        };
        let on = name.map(|n| format!(" on \"{n}\"")).unwrap_or_default();
        let hint = if accessor == ANONYMOUS {
            ". The anonymous token is used implicitly when a request does not specify a token."
        } else {
            ""
        };
        Err(Failure::new(
            ErrorCode::PermissionDenied,
            format!(
                "Permission denied: {who} lacks permission '{resource}:{}'{on}{hint}",
                need.as_str()
            ),
        ))
    }
}

fn token_refused(e: TokenError) -> Failure {
    Failure::new(ErrorCode::PermissionDenied, e.to_string())
}

/// The token secret a request carries, if any.
pub(super) fn secret_of(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, Failure> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let found = header("x-cairn-token")
        .map(str::to_owned)
        .or_else(|| {
            header("authorization").and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_owned())
            })
        })
        .or_else(|| header("x-consul-token").map(str::to_owned));
    let found = match found {
        Some(t) => Some(t),
        None => match query {
            Some(q) => q
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| decode(v, Dialect::Consul))
                .transpose()?,
            None => None,
        },
    };
    match found {
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() > MAX_SECRET_LEN => {
            Err(Failure::new(ErrorCode::PermissionDenied, "ACL not found"))
        }
        other => Ok(other),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Caller, Failure> {
        if s.acl == AclMode::Off {
            return Ok(Caller::open());
        }
        let secret = secret_of(&parts.headers, parts.uri.query())?;
        Caller::resolve(s, secret.as_deref())
    }
}
