//! The leader's view of replication: for each member, how much of the log it holds, how far it
//! trails and when it last answered: what `cairn operator raft` shows. Only the leader knows
//! it, so another node asks the leader ([`PATH_REPLICATION`]).

use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::write::NOT_LEADER;
use super::{Cluster, WriteError};
use crate::rpc::PATH_REPLICATION;
use crate::NodeId;

/// A member that trails the leader's log by more than this many entries is lagging (Consul's
/// autopilot default for "max trailing logs").
pub const MAX_TRAILING: u64 = 250;
/// A member that has not answered the leader for this long is lagging: a few heartbeats
/// (150 ms each) went unanswered.
pub const LAGGING_AFTER: Duration = Duration::from_millis(500);
/// A member that has not answered the leader for this long (or never) is unreachable: about
/// an election time-out.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);
/// How long a node waits for the leader's answer.
const ASK_LEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Replication as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    pub leader: NodeId,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub members: Vec<Replica>,
}

/// One member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: NodeId,
    pub rpc_addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    pub voter: bool,
    /// The last log index the leader knows the member holds (`None`: not known yet).
    pub match_index: Option<u64>,
    /// Entries of the leader's log the member does not hold yet.
    pub lag: Option<u64>,
    /// Milliseconds since the member last answered the leader (0 for the leader itself).
    pub last_contact_ms: Option<u64>,
    pub health: ReplicaHealth,
}

/// A member's health in the leader's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaHealth {
    /// It answers and holds (nearly) all of the log.
    Healthy,
    /// It answers, but trails the log by more than [`MAX_TRAILING`] entries or answered last
    /// more than [`LAGGING_AFTER`] ago.
    Lagging,
    /// It has not answered for [`UNREACHABLE_AFTER`], or never.
    Unreachable,
}

impl ReplicaHealth {
    /// The health of a member that trails by `lag` entries and answered `since` ago.
    pub fn judge(lag: Option<u64>, since: Option<Duration>) -> ReplicaHealth {
        match since {
            None => ReplicaHealth::Unreachable,
            Some(s) if s >= UNREACHABLE_AFTER => ReplicaHealth::Unreachable,
            Some(s) if s >= LAGGING_AFTER => ReplicaHealth::Lagging,
            Some(_) if lag.is_none_or(|l| l > MAX_TRAILING) => ReplicaHealth::Lagging,
            Some(_) => ReplicaHealth::Healthy,
        }
    }
}

impl Cluster {
    /// The leader's view of replication: built here on the leader, asked of the leader
    /// elsewhere. `NoLeader` when there is none (or it changed while asked).
    pub async fn replication(&self) -> Result<Replication, WriteError> {
        match self.leader() {
            None => Err(WriteError::NoLeader("no leader is known".into())),
            Some(l) if l == self.id => self
                .local_replication()
                .map_err(|e| WriteError::NoLeader(e.to_owned())),
            Some(l) => {
                let answer: Result<Result<Replication, String>, String> = self
                    .call_member(l, PATH_REPLICATION, &(), ASK_LEADER_TIMEOUT)
                    .await;
                match answer {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(WriteError::NoLeader(format!("leader {l}: {e}"))),
                    Err(e) => Err(WriteError::Unavailable(format!("leader {l}: {e}"))),
                }
            }
        }
    }

    /// The view of replication if this node leads.
    pub(crate) fn local_replication(&self) -> Result<Replication, &'static str> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(NOT_LEADER);
        }
        let last = m.last_log_index.unwrap_or(0);
        let now = Instant::now();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                if *id == self.id {
                    return Replica {
                        id: *id,
                        rpc_addr: node.rpc_addr.clone(),
                        role: "leader".into(),
                        voter,
                        match_index: Some(last),
                        lag: Some(0),
                        last_contact_ms: Some(0),
                        health: ReplicaHealth::Healthy,
                    };
                }
                let match_index = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index);
                let lag = match_index.map(|i| last.saturating_sub(i));
                let since = self
                    .transport
                    .last_answer(*id)
                    .map(|t| now.saturating_duration_since(t));
                Replica {
                    id: *id,
                    rpc_addr: node.rpc_addr.clone(),
                    role: if voter { "follower" } else { "learner" }.into(),
                    voter,
                    match_index,
                    lag,
                    last_contact_ms: since.map(|s| s.as_millis() as u64),
                    health: ReplicaHealth::judge(lag, since),
                }
            })
            .collect();
        Ok(Replication {
            leader: self.id,
            term: m.current_term,
            last_log_index: last,
            commit_index: self.committed.load(std::sync::atomic::Ordering::Acquire),
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_lag_and_last_contact() {
        let ms = Duration::from_millis;
        assert_eq!(
            ReplicaHealth::judge(Some(0), Some(ms(100))),
            ReplicaHealth::Healthy
        );
        assert_eq!(
            ReplicaHealth::judge(Some(MAX_TRAILING), Some(ms(100))),
            ReplicaHealth::Healthy
        );
        assert_eq!(
            ReplicaHealth::judge(Some(MAX_TRAILING + 1), Some(ms(100))),
            ReplicaHealth::Lagging
        );
        assert_eq!(
            ReplicaHealth::judge(None, Some(ms(100))),
            ReplicaHealth::Lagging
        );
        assert_eq!(
            ReplicaHealth::judge(Some(0), Some(LAGGING_AFTER)),
            ReplicaHealth::Lagging
        );
        assert_eq!(
            ReplicaHealth::judge(Some(0), Some(UNREACHABLE_AFTER)),
            ReplicaHealth::Unreachable
        );
        assert_eq!(
            ReplicaHealth::judge(Some(0), None),
            ReplicaHealth::Unreachable
        );
    }
}
