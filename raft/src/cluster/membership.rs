//! Membership changes, run on the leader: a joining node is added as a learner, caught up, then
//! made a voter; a removal refuses to remove the last voter.

use std::collections::BTreeSet;

use cairn_registry::OpResult;
use openraft::ChangeMembers;

use super::write::{client_write_error, WriteError};
use super::Cluster;
use crate::rpc::ForwardReply;
use crate::{Member, NodeId};

impl Cluster {
    pub(super) async fn execute_join(
        &self,
        id: NodeId,
        rpc_addr: String,
    ) -> Result<ForwardReply, WriteError> {
        let _guard = self.membership_lock.lock().await;
        let voter = self.with_membership(|m| m.voter_ids().any(|v| v == id));
        let known_addr = self.member_addr(id);
        if let Some(known) = &known_addr {
            if *known != rpc_addr {
                return Err(WriteError::Conflict(format!(
                    "node {id} is already a member at {known}; remove it before adding it at {rpc_addr}"
                )));
            }
        }
        if voter {
            let index = self
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |l| l.index);
            return Ok(ForwardReply {
                index,
                result: OpResult::Ok,
            });
        }
        tracing::info!(node = id, %rpc_addr, "adding node as a learner");
        self.raft
            .add_learner(id, Member { rpc_addr }, true)
            .await
            .map_err(client_write_error)?;
        tracing::info!(node = id, "learner caught up; promoting it to voter");
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(client_write_error)?;
        Ok(ForwardReply {
            index: resp.log_id.index,
            result: OpResult::Ok,
        })
    }

    pub(super) async fn execute_remove(&self, id: NodeId) -> Result<ForwardReply, WriteError> {
        let _guard = self.membership_lock.lock().await;
        let voters: BTreeSet<NodeId> = self.with_membership(|m| m.voter_ids().collect());
        let known = self.member_addr(id).is_some();
        if !known {
            return Err(WriteError::NotFound(format!("node {id} is not a member")));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(WriteError::Conflict(format!(
                "node {id} is the last voter; a cluster cannot remove its last voter"
            )));
        }
        tracing::info!(node = id, "removing node from the cluster");
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(client_write_error)?;
        Ok(ForwardReply {
            index: resp.log_id.index,
            result: OpResult::Ok,
        })
    }
}
