//! Backup and restore: `GET /v1/snapshot` streams a backup of the registry
//! ([`cairn_registry::backup`]); `PUT /v1/snapshot` restores one through Raft, as one log entry
//! ([`Op::Restore`]) that every node applies alike.
//!
//! Why a log entry rather than openraft's snapshot install: openraft installs snapshots on
//! followers only, from the leader's own state; a restore must replace the leader's state too,
//! at a new index that orders it after every write before it. As an entry it is ordered,
//! replicated, durable and replayed like any write: every node ends with the same registry, the
//! indexes move forward, and watchers wake through the usual path. The price is its size: one
//! entry travels in one cluster RPC, so a backup is at most [`cairn_raft::MAX_RESTORE_BYTES`].

use std::io::{self, Cursor, Write};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{ErrorCode, RestoreResult};
use cairn_registry::acl::{Access, AclMode, AclState};
use cairn_registry::backup::{self, BackupError, BackupHeader};
use cairn_registry::command::RegistryText;
use cairn_registry::Op;
use futures::StreamExt;

use crate::http::acl::Caller;
use crate::http::error::Failure;
use crate::http::headers::set_index;
use crate::http::query::ReadQuery;
use crate::http::state::AppState;

/// Bytes handed to the response at a time while a backup is encoded.
const CHUNK: usize = 64 * 1024;
/// Chunks encoded ahead of the client: the encoder waits for a slow reader, so a backup costs
/// this much memory beyond the registry itself, whatever its size.
const CHUNKS_AHEAD: usize = 4;
/// The media type of a backup: three lines of JSON.
const BACKUP_TYPE: &str = "application/x-ndjson";

/// A writer that hands what it is given to the response, waiting while the client is behind.
struct ToResponse(tokio::sync::mpsc::Sender<io::Result<Bytes>>);

impl Write for ToResponse {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[utoipa::path(get, path = "/v1/snapshot", tag = "cluster",
    summary = "A backup of the registry, streamed (needs operator:write)",
    description = "Three lines of JSON: a header (cluster, index, term, format, counts), the registry, and the size and SHA-256 of the first two. Taken after a read barrier, at an applied index: every write acknowledged before the request is in it. Tokens (secret hashes) and policies are included.",
    security(("token" = [])),
    responses((status = 200, description = "The backup; its index also in `X-Cairn-Index`.", content_type = "application/x-ndjson", body = String),
        (status = 400), (status = 403), (status = 503)))]
pub(in crate::http) async fn save(
    State(s): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    caller.operator(Access::Write)?;
    ReadQuery::native(raw.as_deref(), &[])?;
    s.cluster.read_barrier().await?;
    let registry = s.cluster.registry().clone();
    let (index, data) = registry.export_at();
    let metrics = s.cluster.raft().metrics().borrow().clone();
    let term = match metrics.last_applied {
        Some(l) if l.index == index => l.leader_id.term,
        _ => metrics.current_term,
    };
    let header = BackupHeader::new(s.cluster.name(), index, term, registry.time_ms(), &data);
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let errors = tx.clone();
        let mut out = io::BufWriter::with_capacity(CHUNK, ToResponse(tx));
        if let Err(e) = backup::write_backup(&header, data, &mut out) {
            // The response breaks off without its trailer: the client sees a truncated file.
            if e.kind() != io::ErrorKind::BrokenPipe {
                tracing::warn!("backup at index {index} failed while streaming: {e}");
            }
            let _ = errors.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut res = Body::from_stream(stream).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(BACKUP_TYPE));
    set_index(headers, index);
    Ok(res)
}

#[utoipa::path(put, path = "/v1/snapshot", tag = "cluster",
    summary = "Restore a backup through Raft (needs operator:write)",
    description = "Replaces services, settings, tokens and policies with the backup's, as one log entry: every node applies it, every restored record gets the entry's (new, higher) index, and watchers wake. Refused, changing nothing, when the backup is corrupt or truncated, of another cluster or a newer format, larger than `--max-restore-bytes`, over a quota, or (with ACLs) when the caller's token would not hold operator:write afterwards, unless `allow_lockout` is given.",
    params(("allow_lockout" = Option<bool>, Query, description = "Restore even if the caller's token loses operator:write by it.")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A backup file's bytes, as `GET /v1/snapshot` gives them (its lines are JSON, but it is checked as a file: header, registry, checksum trailer)."),
    security(("token" = [])),
    responses((status = 200, description = "Committed at this Raft index (also in `X-Cairn-Index`).", body = RestoreResult),
        (status = 400), (status = 403), (status = 409), (status = 413), (status = 503), (status = 507)))]
pub(in crate::http) async fn restore(
    State(s): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, Failure> {
    caller.operator(Access::Write)?;
    let q = ReadQuery::native(raw.as_deref(), &["allow_lockout"])?;
    let allow_lockout = match q.param("allow_lockout") {
        None => false,
        Some("" | "1" | "true") => true,
        Some("0" | "false") => false,
        Some(other) => {
            return Err(Failure::invalid(format!(
                "allow_lockout: {other:?} is not a flag value"
            )))
        }
    };
    let bytes = read_limited(body, s.max_restore_bytes).await?;
    let backup = tokio::task::spawn_blocking(move || backup::read_backup(Cursor::new(bytes)))
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| match e {
            BackupError::Io(e) => Failure::new(ErrorCode::Internal, e.to_string()),
            e => Failure::invalid(e.to_string()),
        })?;
    let h = &backup.header;
    if h.cluster != s.cluster.name() {
        return Err(Failure::invalid(format!(
            "the backup is of cluster {:?}, this is cluster {:?}: a backup is restored into the \
             cluster it was taken of (--cluster)",
            h.cluster,
            s.cluster.name()
        )));
    }
    if let AclMode::On { .. } = s.acl {
        if !allow_lockout {
            keeps_operator(
                &caller,
                &backup.data.acl,
                s.acl,
                s.cluster.registry().time_ms(),
            )?;
        }
    }
    let result = RestoreResult {
        index: 0,
        backup_index: h.index,
        backup_term: h.term,
        services: h.services,
        instances: h.instances,
        tokens: h.tokens,
        policies: h.policies,
    };
    let data = RegistryText::encode(&backup.data).map_err(|e| {
        Failure::new(
            ErrorCode::Internal,
            format!("cannot encode the backup's registry: {e}"),
        )
    })?;
    let op = Op::RestoreText {
        from_index: h.index,
        from_term: h.term,
        data,
    };
    let w = s.cluster.write_as(op, caller.accessor()).await?;
    tracing::warn!(
        index = w.index,
        backup_index = result.backup_index,
        "the registry was replaced by a backup ({} services, {} instances)",
        result.services,
        result.instances
    );
    let mut res = Json(RestoreResult {
        index: w.index,
        ..result
    })
    .into_response();
    set_index(res.headers_mut(), w.index);
    Ok(res)
}

/// The request body, refused with 413 past `limit` bytes, before more is read.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure::invalid(format!("the body broke off: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Failure::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the backup is larger than this node restores: {limit} bytes \
                     (--max-restore-bytes)"
                ),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Refuses (409) a restore after which the caller's token would not hold operator:write: the
/// backup's tokens replace the cluster's, and an operator who restores with a token the backup
/// lacks would be locked out of the cluster it just restored.
fn keeps_operator(
    caller: &Caller,
    acl: &cairn_registry::acl::AclData,
    mode: AclMode,
    now_ms: u64,
) -> Result<(), Failure> {
    let state = AclState::from_data(acl.clone());
    let token = match caller.accessor() {
        Some(a) if a != cairn_registry::acl::ANONYMOUS => match state.tokens.get(a) {
            Some(t) => Some(t.clone()),
            None => {
                return Err(lockout(format!(
                    "the backup does not hold your token (accessor {a})"
                )))
            }
        },
        _ => None,
    };
    let keeps = state
        .authorize_token(mode, token.as_deref(), now_ms)
        .is_ok_and(|z| z.operator().allows(Access::Write));
    if keeps {
        Ok(())
    } else {
        Err(lockout(
            "your token would not hold operator:write in the backup's ACL state".into(),
        ))
    }
}

fn lockout(why: String) -> Failure {
    Failure::new(
        ErrorCode::Conflict,
        format!(
            "restore refused: {why}, and a restore replaces the cluster's tokens and policies with \
             the backup's. Restore with a token the backup holds (one with operator:write), or \
             pass allow_lockout (cairn snapshot restore --allow-lockout) and use a token of the \
             backup afterwards"
        ),
    )
}
