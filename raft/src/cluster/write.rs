//! Writes from any node: proposed on the leader (here, or forwarded to it over the cluster
//! RPC), with one rule for retries: a request is retried only when it surely did not reach a
//! leader; one whose fate is unknown is answered as such, never sent again.

use std::time::Instant;

use cairn_registry::{Op, OpResult};
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::batch::Proposal;
use super::Cluster;
use crate::rpc::client::SendError;
use crate::rpc::{Forward, ForwardReply, PATH_FORWARD};
use crate::stats::request_id;
use crate::{Member, NodeId};

/// A write that committed: the log index it was applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub index: u64,
}

/// Why a write did not commit. It travels between nodes as it is (a forwarded write's answer),
/// and the HTTP layer maps each variant to an error code in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum WriteError {
    /// No leader is known, or the one we know has stepped down, and none appeared in time. The
    /// write surely did not commit: safe to retry.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader was known but the write's outcome is unknown (time-out, lost quorum, lost
    /// connection): it may or may not have committed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change is not allowed in the cluster's current state.
    #[error("{0}")]
    Conflict(String),
    /// The change is not permitted (a second ACL bootstrap).
    #[error("{0}")]
    Denied(String),
    /// The write would take the registry past a quota; it was not proposed. Writes that do not
    /// grow the registry (deletes, health) are still taken.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The leader refused the request as malformed.
    #[error("{0}")]
    Invalid(String),
    /// A fault on the leader (its Raft stopped, a task died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl WriteError {
    /// The variant's name, as a metric label and in log lines.
    pub fn outcome(&self) -> &'static str {
        match self {
            WriteError::NoLeader(_) => "no_leader",
            WriteError::Unavailable(_) => "unavailable",
            WriteError::NotFound(_) => "not_found",
            WriteError::Conflict(_) => "conflict",
            WriteError::Denied(_) => "denied",
            WriteError::QuotaExceeded(_) => "quota_exceeded",
            WriteError::Invalid(_) => "invalid",
            WriteError::Internal(_) => "internal",
        }
    }
}

/// The message a leader answers with when it is no longer the leader: the sender retries.
pub(super) const NOT_LEADER: &str = "this node is not the leader";

/// The answer to a write that reached the leader while it hands leadership over: not proposed.
pub(super) const HANDING_OVER: &str = "this node is handing leadership over";

/// Pause between attempts while a leader is being elected.
pub(super) const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Cluster {
    /// Registers, deregisters or sets health: proposed on the leader, wherever it is called.
    /// A node's own write (a check result, liveness).
    pub async fn write(&self, op: Op) -> Result<Written, WriteError> {
        self.submit(Forward::Write {
            op,
            by: None,
            request_id: request_id(),
        })
        .await
    }

    /// A write made for a client whose token has the accessor id `by` (`None`: ACLs are off):
    /// the log entry records it for the audit list.
    pub async fn write_as(&self, op: Op, by: Option<&str>) -> Result<Written, WriteError> {
        let by = by.map(str::to_owned);
        let request_id = request_id();
        self.submit(Forward::Write { op, by, request_id }).await
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    pub async fn join(&self, id: NodeId, rpc_addr: String) -> Result<Written, WriteError> {
        self.submit(Forward::Join { id, rpc_addr }).await
    }

    /// Removes a node from the cluster.
    pub async fn remove(&self, id: NodeId) -> Result<Written, WriteError> {
        self.submit(Forward::Remove { id }).await
    }

    /// Runs `req` on the leader: here, or forwarded. Retries while no leader is known or the
    /// leader changes, until the write time-out; never retries a request whose fate is unknown.
    async fn submit(&self, req: Forward) -> Result<Written, WriteError> {
        let timeout = match req {
            // Catching a learner up may take a while on a large registry; so may replicating,
            // decoding and applying a restore of megabytes on every node.
            Forward::Join { .. }
            | Forward::Write {
                op: Op::Restore { .. } | Op::RestoreText { .. },
                ..
            } => self.options.write_timeout * 12,
            _ => self.options.write_timeout,
        };
        let deadline = Instant::now() + timeout;
        let mut last_err = WriteError::NoLeader("no leader is known".into());
        loop {
            let leader = match self.wait_for_leader(deadline).await {
                Some(l) => l,
                None => return Err(last_err),
            };
            let res = if leader == self.id {
                self.execute(req.clone(), deadline).await
            } else {
                self.forward(leader, &req, deadline).await
            };
            match res {
                Ok(reply) => return reply_to_written(reply),
                Err(e @ WriteError::NoLeader(_)) => {
                    last_err = e;
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(last_err);
                    }
                    // At once when another leader is known (a handover), else after a pause.
                    self.leader_changed(leader, RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn wait_for_leader(&self, deadline: Instant) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Some(l);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Waits until this node knows a leader other than `from`, or `pause` has passed.
    async fn leader_changed(&self, from: NodeId, pause: std::time::Duration) {
        let mut rx = self.raft.metrics();
        let changed = async {
            loop {
                if rx.borrow_and_update().current_leader != Some(from) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let _ = tokio::time::timeout(pause, changed).await;
    }

    async fn forward(
        &self,
        leader: NodeId,
        req: &Forward,
        deadline: Instant,
    ) -> Result<ForwardReply, WriteError> {
        let Some(addr) = self.member_addr(leader) else {
            return Err(WriteError::NoLeader(format!(
                "leader {leader} is not in this node's membership yet"
            )));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // The request's id is added to the line by the agent's log format.
        tracing::debug!(leader, "forwarding a write to the leader");
        let sent = self
            .transport
            .post::<_, Result<ForwardReply, WriteError>>(leader, &addr, PATH_FORWARD, req, left)
            .await;
        self.stats.count_forwarded(match &sent {
            Ok(Ok(ForwardReply {
                result: OpResult::Ok,
                ..
            })) => "ok",
            Ok(Ok(_)) => "rejected",
            Ok(Err(e)) => e.outcome(),
            Err(SendError::Unreachable(_)) => "unreachable",
            Err(SendError::Lost(_)) => "lost",
            Err(SendError::Timeout) => "timeout",
            Err(SendError::Refused { .. } | SendError::Protocol(_)) => "refused",
        });
        match sent {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e),
            // Never reached the leader: safe to retry once a leader is known again.
            Err(SendError::Unreachable(e)) => Err(WriteError::NoLeader(format!(
                "leader {leader} at {addr} is unreachable: {e}"
            ))),
            // The request may have reached the leader and committed: retrying could apply it
            // twice, after later writes (found by the fault tests: see
            // `regression_lost_forward_reply_is_not_retried`).
            Err(SendError::Lost(e)) => Err(WriteError::Unavailable(format!(
                "lost the connection to leader {leader}; the write may or may not have committed: {e}"
            ))),
            Err(SendError::Timeout) => Err(WriteError::Unavailable(format!(
                "leader {leader} did not answer in time; the write may or may not have committed"
            ))),
            // The leader answered, but not with a result: it refused the request (it was not
            // run), or something else answered there.
            Err(SendError::Refused { status: 413, message }) => Err(WriteError::Invalid(message)),
            Err(SendError::Refused { message, .. }) => Err(WriteError::Internal(message)),
            Err(SendError::Protocol(m)) => Err(WriteError::Unavailable(m)),
        }
    }

    /// Runs a request another node forwarded (refused with "not the leader" when this node is
    /// not), once [`Forward::check`] takes it.
    pub(crate) async fn execute_forwarded(&self, req: Forward) -> Result<ForwardReply, WriteError> {
        req.check()?;
        let deadline = Instant::now() + self.options.write_timeout * 12;
        let request_id = match &req {
            Forward::Write { request_id, .. } => request_id.clone(),
            _ => None,
        };
        let reply = self.execute(req, deadline).await;
        tracing::debug!(
            request_id = request_id.as_deref().unwrap_or("-"),
            index = reply.as_ref().map_or(0, |r| r.index),
            outcome = match &reply {
                Ok(r) if r.result == OpResult::Ok => "ok",
                Ok(_) => "rejected",
                Err(e) => e.outcome(),
            },
            "forwarded write"
        );
        reply
    }

    pub(super) async fn execute(
        &self,
        req: Forward,
        deadline: Instant,
    ) -> Result<ForwardReply, WriteError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let work = async {
            match req {
                Forward::Write { op, by, .. } => {
                    if self.leader() != Some(self.id) {
                        return Err(WriteError::NoLeader(NOT_LEADER.into()));
                    }
                    let (reply, answer) = oneshot::channel();
                    self.proposals
                        .send(Proposal { op, by, reply })
                        .await
                        .map_err(|_| WriteError::Internal("the write batcher stopped".into()))?;
                    answer.await.map_err(|_| {
                        WriteError::Internal("the write batcher dropped a write".into())
                    })?
                }
                Forward::Join { id, rpc_addr } => self.execute_join(id, rpc_addr).await,
                Forward::Remove { id } => self.execute_remove(id).await,
            }
        };
        match tokio::time::timeout(left, work).await {
            Ok(r) => r,
            Err(_) => Err(WriteError::Unavailable(
                "no quorum answered in time; the write may or may not have committed".into(),
            )),
        }
    }
}

pub(super) fn reply_to_written(reply: ForwardReply) -> Result<Written, WriteError> {
    match reply.result {
        OpResult::Ok => Ok(Written { index: reply.index }),
        OpResult::NotFound { message } => Err(WriteError::NotFound(message)),
        OpResult::Denied { message } => Err(WriteError::Denied(message)),
        OpResult::Conflict { message } => Err(WriteError::Conflict(message)),
    }
}

pub(super) fn client_write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            WriteError::NoLeader(NOT_LEADER.into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            WriteError::Conflict(e.to_string())
        }
        RaftError::Fatal(e) => WriteError::Internal(e.to_string()),
    }
}
