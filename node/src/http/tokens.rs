//! Leaf: the ACL API (`/v1/acl/*`) and the audit list (`/v1/audit`).
//!
//! Tokens and policies change only through Raft, like services: a route validates, proposes an
//! op, and answers once it is applied. A token's secret is made here, on the node that took the
//! request, from the system's random source; only its hash goes into the log, and the secret is
//! in exactly one answer: the one that created the token.

use std::collections::BTreeSet;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use cairn_api::{
    parse_duration, AclRules, AuditInfo, AuditList, ErrorCode, PolicyInfo, PolicyList,
    PolicyRequest, TokenInfo, TokenList, TokenRequest, WhoAmI, WriteResult,
};
use cairn_raft::Written;
use cairn_registry::acl::{
    self, hash_secret, Access, AclMode, Policy, PolicySpec, Rules, Token, TokenSpec, ANONYMOUS,
};
use cairn_registry::Op;
use ring::rand::{SecureRandom, SystemRandom};

use super::acl::Caller;
use super::body::Body;
use super::error::Failure;
use super::headers::{read_response, set_index};
use super::path::Path;
use super::query::{Dialect, ReadQuery};
use super::state::AppState;

/// The file whose content (a bootstrap index) allows bootstrapping ACLs again.
pub const BOOTSTRAP_RESET_FILE: &str = "acl-bootstrap-reset";
/// Most audit entries one read returns.
const MAX_AUDIT_READ: usize = acl::AUDIT_LEN;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/acl/bootstrap", put(bootstrap).post(bootstrap_post))
        .route("/v1/acl/whoami", get(whoami))
        .route("/v1/acl/tokens", get(list_tokens).post(create_token))
        .route(
            "/v1/acl/tokens/{accessor}",
            get(read_token).put(update_token).delete(delete_token),
        )
        .route("/v1/acl/policies", get(list_policies).post(create_policy))
        .route(
            "/v1/acl/policies/{name}",
            get(read_policy).put(put_policy).delete(delete_policy),
        )
        .route("/v1/audit", get(audit))
}

/// The routes above, as the OpenAPI document describes them (composed in `http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    bootstrap,
    bootstrap_post,
    whoami,
    list_tokens,
    create_token,
    read_token,
    update_token,
    delete_token,
    list_policies,
    create_policy,
    read_policy,
    put_policy,
    delete_policy,
    audit
))]
pub(super) struct Doc;

/// A random id in UUID form (version 4): accessors and secrets alike.
fn random_id() -> Result<String, Failure> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Failure::new(ErrorCode::Internal, "the system's random source failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn acl_enabled(s: &AppState) -> Result<(), Failure> {
    match s.acl {
        AclMode::On { .. } => Ok(()),
        AclMode::Off => Err(Failure::invalid(
            "ACLs are not enabled on this node (start every server with --acl)",
        )),
    }
}

fn written(w: Written, body: impl serde::Serialize) -> Response {
    let mut res = Json(body).into_response();
    set_index(res.headers_mut(), w.index);
    res
}

fn token_info(t: &Token, secret: Option<String>) -> TokenInfo {
    TokenInfo {
        accessor: t.accessor.clone(),
        secret,
        description: t.description.clone(),
        policies: t.policies.iter().cloned().collect(),
        expires_at_ms: t.expires_at_ms,
        create_index: t.create_index,
        modify_index: t.modify_index,
    }
}

fn rules_info(r: &Rules) -> AclRules {
    let s = |m: &std::collections::BTreeMap<String, Access>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
            .collect()
    };
    AclRules {
        service: s(&r.service),
        service_prefix: s(&r.service_prefix),
        operator: r.operator.map(|a| a.as_str().to_owned()),
        acl: r.acl.map(|a| a.as_str().to_owned()),
    }
}

fn policy_info(p: &Policy) -> PolicyInfo {
    PolicyInfo {
        name: p.spec.name.clone(),
        description: p.spec.description.clone(),
        rules: rules_info(&p.spec.rules),
        create_index: p.create_index,
        modify_index: p.modify_index,
    }
}

/// `PUT /v1/acl/bootstrap`: the first management token, once. Needs no token. A second call is
/// refused unless the file [`BOOTSTRAP_RESET_FILE`] in this node's data folder holds the index
/// of the bootstrap to undo (the file is removed once the new bootstrap is applied).
#[utoipa::path(put, path = "/v1/acl/bootstrap", tag = "acl",
    summary = "Make the first management token (once; needs no token)",
    description = "`POST` works as well. Refused (403) once done, unless this node's data folder holds `acl-bootstrap-reset` with the index of the bootstrap to undo.",
    responses((status = 200, description = "The management token, with its secret (shown only here).", body = TokenInfo),
        (status = 400), (status = 403), (status = 503)))]
async fn bootstrap(State(s): State<AppState>) -> Result<Response, Failure> {
    acl_enabled(&s)?;
    let reset_path = s.data_dir.join(BOOTSTRAP_RESET_FILE);
    let reset_index = match std::fs::read_to_string(&reset_path) {
        Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            Failure::invalid(format!(
                "{} must hold the reset index (a number)",
                reset_path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::new(
                ErrorCode::Internal,
                format!("cannot read {}: {e}", reset_path.display()),
            ))
        }
    };
    let (accessor, secret) = (random_id()?, random_id()?);
    let op = Op::AclBootstrap {
        accessor: accessor.clone(),
        secret_hash: hash_secret(&secret),
        reset_index,
    };
    let w = s.cluster.write_as(op, Some(&accessor)).await?;
    if reset_index.is_some() {
        if let Err(e) = std::fs::remove_file(&reset_path) {
            tracing::warn!("cannot remove {}: {e}", reset_path.display());
        }
    }
    tracing::info!(%accessor, index = w.index, "ACLs bootstrapped");
    let registry = s.cluster.registry();
    let token = registry.acl().tokens.get(&accessor).cloned();
    let info = match token {
        Some(t) => token_info(&t, Some(secret)),
        // Applied on the leader, not yet here: answer from what was proposed.
        None => TokenInfo {
            accessor,
            secret: Some(secret),
            description: "bootstrap token (global management)".into(),
            policies: vec![acl::MANAGEMENT_POLICY.into()],
            expires_at_ms: None,
            create_index: w.index,
            modify_index: w.index,
        },
    };
    Ok(written(w, info))
}

/// `POST /v1/acl/bootstrap`: the same as `PUT`, as Consul takes it.
#[utoipa::path(post, path = "/v1/acl/bootstrap", tag = "acl",
    summary = "Make the first management token (as PUT)",
    responses((status = 200, description = "The management token, with its secret (shown only here).", body = TokenInfo),
        (status = 400), (status = 403), (status = 503)))]
async fn bootstrap_post(state: State<AppState>) -> Result<Response, Failure> {
    bootstrap(state).await
}

#[utoipa::path(get, path = "/v1/acl/whoami", tag = "acl",
    summary = "The request's token (none when anonymous), and whether ACLs are enforced",
    security((), ("token" = [])),
    responses((status = 200, description = "The caller.", body = WhoAmI), (status = 403)))]
async fn whoami(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    let registry = s.cluster.registry();
    let acl = registry.acl();
    let token = caller.accessor().map(|a| match acl.tokens.get(a) {
        Some(t) => token_info(t, None),
        None => TokenInfo {
            accessor: a.to_owned(),
            secret: None,
            description: "anonymous token".into(),
            policies: Vec::new(),
            expires_at_ms: None,
            create_index: 0,
            modify_index: 0,
        },
    });
    let body = WhoAmI {
        acl: caller.enforced(),
        token,
    };
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        registry.acl_version(),
        body,
    ))
}

#[utoipa::path(get, path = "/v1/acl/tokens", tag = "acl",
    summary = "Every token, without secrets", security(("token" = [])),
    responses((status = 200, description = "The tokens.", body = TokenList), (status = 403)))]
async fn list_tokens(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.acl(Access::Read)?;
    let registry = s.cluster.registry();
    let acl = registry.acl();
    let mut tokens: Vec<TokenInfo> = acl.tokens.values().map(|t| token_info(t, None)).collect();
    tokens.sort_by(|a, b| a.accessor.cmp(&b.accessor));
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        registry.acl_version(),
        TokenList { tokens },
    ))
}

#[utoipa::path(get, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    summary = "One token, without its secret",
    params(("accessor" = String, Path, description = "The token's accessor id.")),
    security(("token" = [])),
    responses((status = 200, description = "The token.", body = TokenInfo),
        (status = 403), (status = 404), (status = 503)))]
async fn read_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(accessor): Path<String>,
) -> Result<Response, Failure> {
    caller.acl(Access::Read)?;
    let registry = s.cluster.registry();
    let found = s
        .lookup_fresh(|| registry.acl().tokens.get(&accessor).cloned())
        .await?
        .ok_or_else(|| Failure::not_found(format!("no token {accessor:?}")))?;
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        found.modify_index,
        token_info(&found, None),
    ))
}

/// The policies a request names, checked to be names.
fn policy_names(names: &[String]) -> Result<BTreeSet<String>, Failure> {
    let set: BTreeSet<String> = names.iter().cloned().collect();
    if set.len() > acl::MAX_POLICIES_PER_TOKEN {
        return Err(Failure::invalid(format!(
            "policies: at most {}",
            acl::MAX_POLICIES_PER_TOKEN
        )));
    }
    for n in &set {
        acl::validate_policy_name(n)
            .map_err(|e| Failure::invalid(format!("policies: {}", e.message)))?;
    }
    Ok(set)
}

#[utoipa::path(post, path = "/v1/acl/tokens", tag = "acl",
    summary = "Make a token",
    request_body = TokenRequest, security(("token" = [])),
    responses((status = 201, description = "The token, with its secret (shown only here).", body = TokenInfo),
        (status = 400), (status = 403), (status = 404), (status = 413), (status = 503), (status = 507)))]
async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    Body(body): Body<TokenRequest>,
) -> Result<Response, Failure> {
    acl_enabled(&s)?;
    caller.acl(Access::Write)?;
    let ttl_ms = match &body.expiration_ttl {
        None => None,
        Some(t) => Some(
            parse_duration(t)
                .map_err(|e| Failure::invalid(format!("expiration_ttl: {e}")))?
                .as_millis() as u64,
        ),
    };
    let (accessor, secret) = (random_id()?, random_id()?);
    let spec = TokenSpec {
        accessor: accessor.clone(),
        secret_hash: Some(hash_secret(&secret)),
        description: body.description,
        policies: policy_names(&body.policies)?,
        ttl_ms,
    };
    acl::validate_token(&spec)?;
    let w = s
        .cluster
        .write_as(
            Op::AclSetToken {
                token: spec.clone(),
            },
            caller.accessor(),
        )
        .await?;
    let registry = s.cluster.registry();
    let stored = registry.acl().tokens.get(&accessor).cloned();
    let info = match stored {
        Some(t) => token_info(&t, Some(secret)),
        None => TokenInfo {
            accessor,
            secret: Some(secret),
            description: spec.description,
            policies: spec.policies.into_iter().collect(),
            expires_at_ms: None,
            create_index: w.index,
            modify_index: w.index,
        },
    };
    let mut res = written(w, info);
    *res.status_mut() = StatusCode::CREATED;
    Ok(res)
}

#[utoipa::path(put, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    summary = "Change a token's description and policies",
    params(("accessor" = String, Path, pattern = "^[a-z0-9-]{1,64}$", description = "The token's accessor id.")),
    request_body = TokenRequest, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 413), (status = 503), (status = 507)))]
async fn update_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(accessor): Path<String>,
    Body(body): Body<TokenRequest>,
) -> Result<Response, Failure> {
    acl_enabled(&s)?;
    caller.acl(Access::Write)?;
    if body.expiration_ttl.is_some() {
        return Err(Failure::invalid(
            "expiration_ttl: set only when a token is created",
        ));
    }
    let spec = TokenSpec {
        accessor: accessor.clone(),
        secret_hash: None,
        description: body.description,
        policies: policy_names(&body.policies)?,
        ttl_ms: None,
    };
    acl::validate_token(&spec)?;
    let w = s
        .cluster
        .write_as(Op::AclSetToken { token: spec }, caller.accessor())
        .await?;
    Ok(written(w, WriteResult { index: w.index }))
}

#[utoipa::path(delete, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    summary = "Delete a token (not the anonymous one)",
    params(("accessor" = String, Path, pattern = "^[a-z0-9-]{1,64}$", description = "The token's accessor id.")),
    security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404), (status = 503)))]
async fn delete_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(accessor): Path<String>,
) -> Result<Response, Failure> {
    acl_enabled(&s)?;
    caller.acl(Access::Write)?;
    if accessor == ANONYMOUS {
        return Err(Failure::invalid(
            "the anonymous token cannot be deleted; set its policies to none instead",
        ));
    }
    acl::validate_accessor(&accessor)?;
    let w = s
        .cluster
        .write_as(Op::AclDeleteToken { accessor }, caller.accessor())
        .await?;
    Ok(written(w, WriteResult { index: w.index }))
}

#[utoipa::path(get, path = "/v1/acl/policies", tag = "acl",
    summary = "Every policy, the built-in global-management included", security(("token" = [])),
    responses((status = 200, description = "The policies.", body = PolicyList), (status = 403)))]
async fn list_policies(State(s): State<AppState>, caller: Caller) -> Result<Response, Failure> {
    caller.acl(Access::Read)?;
    let registry = s.cluster.registry();
    let acl = registry.acl();
    let mut policies: Vec<PolicyInfo> = acl.policies.values().map(|p| policy_info(p)).collect();
    policies.push(PolicyInfo {
        name: acl::MANAGEMENT_POLICY.into(),
        description: "built in: every right".into(),
        rules: rules_info(&Rules::management()),
        create_index: 0,
        modify_index: 0,
    });
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        registry.acl_version(),
        PolicyList { policies },
    ))
}

#[utoipa::path(get, path = "/v1/acl/policies/{name}", tag = "acl",
    summary = "One policy",
    params(("name" = String, Path, description = "The policy's name.")),
    security(("token" = [])),
    responses((status = 200, description = "The policy.", body = PolicyInfo),
        (status = 403), (status = 404), (status = 503)))]
async fn read_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    caller.acl(Access::Read)?;
    let registry = s.cluster.registry();
    let found = s
        .lookup_fresh(|| registry.acl().policies.get(&name).cloned())
        .await?
        .ok_or_else(|| Failure::not_found(format!("no policy {name:?}")))?;
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        found.modify_index,
        policy_info(&found),
    ))
}

/// The rules of a request, in the registry's form (each access checked).
fn rules_from(r: AclRules) -> Result<Rules, Failure> {
    let value = serde_json::to_value(r).map_err(|e| Failure::invalid(e.to_string()))?;
    serde_json::from_value(value)
        .map_err(|e| Failure::invalid(format!("rules: {e} (an access is read, write or deny)")))
}

async fn set_policy(s: &AppState, caller: &Caller, spec: PolicySpec) -> Result<Response, Failure> {
    acl_enabled(s)?;
    caller.acl(Access::Write)?;
    acl::validate_policy(&spec)?;
    let w = s
        .cluster
        .write_as(Op::AclSetPolicy { policy: spec }, caller.accessor())
        .await?;
    Ok(written(w, WriteResult { index: w.index }))
}

#[utoipa::path(post, path = "/v1/acl/policies", tag = "acl",
    summary = "Make or replace a policy (named in the body)",
    request_body = PolicyRequest, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 413), (status = 503), (status = 507)))]
async fn create_policy(
    State(s): State<AppState>,
    caller: Caller,
    Body(body): Body<PolicyRequest>,
) -> Result<Response, Failure> {
    let name = body
        .name
        .ok_or_else(|| Failure::invalid("name: required"))?;
    let spec = PolicySpec {
        name,
        description: body.description,
        rules: rules_from(body.rules)?,
    };
    set_policy(&s, &caller, spec).await
}

#[utoipa::path(put, path = "/v1/acl/policies/{name}", tag = "acl",
    summary = "Make or replace a policy",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,128}$", description = "The policy's name.")),
    request_body = PolicyRequest, security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 413), (status = 503), (status = 507)))]
async fn put_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<PolicyRequest>,
) -> Result<Response, Failure> {
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(Failure::invalid("name: differs from the path"));
    }
    let spec = PolicySpec {
        name,
        description: body.description,
        rules: rules_from(body.rules)?,
    };
    set_policy(&s, &caller, spec).await
}

#[utoipa::path(delete, path = "/v1/acl/policies/{name}", tag = "acl",
    summary = "Delete a policy (not global-management)",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,128}$", description = "The policy's name.")),
    security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = WriteResult), (status = 400), (status = 403), (status = 404),
        (status = 409, description = "`conflict`: a token still names the policy."), (status = 503)))]
async fn delete_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    acl_enabled(&s)?;
    caller.acl(Access::Write)?;
    acl::validate_policy_name(&name)?;
    if name == acl::MANAGEMENT_POLICY {
        return Err(Failure::invalid(format!(
            "{name} is built in and cannot be deleted"
        )));
    }
    let w = s
        .cluster
        .write_as(Op::AclDeletePolicy { name }, caller.accessor())
        .await?;
    Ok(written(w, WriteResult { index: w.index }))
}

/// `GET /v1/audit[?limit=N]`: the most recent changes made through the API on this node's
/// replica, oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "acl",
    summary = "The most recent changes made through the API on this node's replica, oldest first",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Only the last N entries (default and most 1000).")),
    security(("token" = [])),
    responses((status = 200, description = "The entries.", body = AuditList), (status = 400), (status = 403)))]
async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    caller.operator(Access::Read)?;
    let q = ReadQuery::native(raw.as_deref(), &["limit"])?;
    let limit = match q.param("limit") {
        None => MAX_AUDIT_READ,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT_READ).contains(n))
            .ok_or_else(|| Failure::invalid(format!("limit: {v:?} is not 1-{MAX_AUDIT_READ}")))?,
    };
    let registry = s.cluster.registry();
    let all = registry.audit();
    let entries = all[all.len().saturating_sub(limit)..]
        .iter()
        .map(|e| AuditInfo {
            index: e.index,
            time_ms: e.time_ms,
            accessor: e.accessor.clone(),
            op: e.op.clone(),
            service: e.service.clone(),
            id: e.id.clone(),
        })
        .collect();
    Ok(read_response(
        &s.cluster,
        Dialect::Native,
        registry.applied_index(),
        AuditList { entries },
    ))
}
