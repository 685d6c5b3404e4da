//! The linearizable read barrier behind `?consistent`.

use std::time::Instant;

use openraft::error::RaftError;

use super::write::{WriteError, NOT_LEADER, RETRY_PAUSE};
use super::Cluster;
use crate::rpc::PATH_READ_INDEX;

impl Cluster {
    /// A linearizable read barrier: once it returns, this node's view includes every write
    /// acknowledged before the call. The leader confirms its leadership with a quorum and names
    /// the index to reach (a follower asks it over the cluster RPC); then this node waits until it
    /// has applied that far. Returns the index.
    pub async fn read_barrier(&self) -> Result<u64, WriteError> {
        let deadline = Instant::now() + self.options.write_timeout;
        loop {
            let Some(leader) = self.wait_for_leader(deadline).await else {
                return Err(WriteError::NoLeader("no leader is known".into()));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let index = if leader == self.id {
                self.local_read_index().await
            } else {
                match self
                    .call_member::<_, Result<u64, WriteError>>(leader, PATH_READ_INDEX, &(), left)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => Err(WriteError::NoLeader(format!("leader {leader}: {e}"))),
                }
            };
            match index {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index), "read barrier")
                        .await
                        .map_err(|e| {
                            WriteError::Unavailable(format!(
                                "catching up for a consistent read: {e}"
                            ))
                        })?;
                    return Ok(index);
                }
                Err(WriteError::NoLeader(m)) => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(WriteError::NoLeader(m));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    pub(crate) async fn local_read_index(&self) -> Result<u64, WriteError> {
        // Taken before the quorum check: a read granted in a later term has that term's no-op
        // entry to wait for, and the floor then only costs a wait.
        let floor = match self.restored {
            Some(r) if self.raft.metrics().borrow().current_term == r.term => r.last_log_index,
            _ => 0,
        };
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index).max(floor)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(WriteError::NoLeader(NOT_LEADER.into()))
            }
            Err(RaftError::APIError(e)) => Err(WriteError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(WriteError::Internal(e.to_string())),
        }
    }
}
