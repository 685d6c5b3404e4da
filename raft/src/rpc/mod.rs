//! The cluster RPC: openraft's messages, and requests forwarded to the leader, as JSON over HTTP
//! on each node's `--rpc-addr` listener.
//!
//! - [`client`]: how a node calls the others ([`client::Transport`], openraft's network); it
//!   knows nothing of [`Cluster`](crate::Cluster);
//! - [`server`]: the listener's router, with one admission layer in front of every route that
//!   decides who may call before any body is read.
//!
//! This module holds what both sides share: paths, headers, body limits and the forwarded
//! request and its answer.

pub mod client;
pub mod server;

use cairn_registry::{Op, OpResult};
use serde::{Deserialize, Serialize};

use crate::cluster::WriteError;
use crate::NodeId;

/// Header naming the cluster a request is for.
pub const CLUSTER_HEADER: &str = "x-cairn-cluster";
/// Header naming the node that sent a request.
pub const FROM_HEADER: &str = "x-cairn-from";
/// Header on every snapshot chunk with the whole snapshot's size in bytes (openraft's chunks
/// carry only their offset): the receiver refuses a snapshot over its limit before writing any
/// of it, and a chunk past the size announced.
pub const SNAPSHOT_SIZE_HEADER: &str = "x-cairn-snapshot-size";

/// Largest body of every RPC but a snapshot chunk: an append-entries request is split by the
/// sender to stay under it (a log entry is a batch of at most ~1 MiB of operations, see
/// `cluster::batch`), and a forwarded write is one validated operation.
pub const MAX_RPC_BODY: usize = 8 * 1024 * 1024;
/// Largest snapshot chunk body: openraft sends chunks of at most 3 MiB of snapshot bytes, which
/// JSON (an array of numbers) makes up to ~4 times larger. The receiver writes each chunk to a
/// file (`crate::snapshot`), so a whole snapshot is never in memory.
pub const MAX_SNAPSHOT_BODY: usize = 16 * 1024 * 1024;

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_FORWARD: &str = "/raft/forward";
pub const PATH_ALIVE: &str = "/raft/alive";
pub const PATH_READ_INDEX: &str = "/raft/read_index";
/// The leader asks a follower to stand for election now: a leadership handover.
pub const PATH_ELECT: &str = "/raft/elect";
/// A node asks the leader for its view of replication (`cairn operator raft`).
pub const PATH_REPLICATION: &str = "/raft/replication";

/// A request a node hands to the leader because only the leader can propose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    /// An op, with the accessor id of the token the forwarding node authorized it with.
    Write {
        #[serde(flatten)]
        op: Op,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// The id of the HTTP request the write was made for, so that the leader's log line of
        /// the write shows it (see [`crate::stats::with_request_id`]). Optional both ways: a
        /// node of an older version neither sends nor reads it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Join {
        id: NodeId,
        rpc_addr: String,
    },
    Remove {
        id: NodeId,
    },
}

impl Forward {
    /// Whether a leader takes this request from another node. A write's op is checked by the
    /// API's rules ([`validate_op`](cairn_registry::model::validate_op)): a member's word is not
    /// taken for what it may propose. Pure, so the fuzz target `rpc` runs exactly this.
    pub fn check(&self) -> Result<(), WriteError> {
        match self {
            // Liveness is the leader's own observation, never another node's to propose.
            Forward::Write {
                op: cairn_registry::Op::SetNodeUp { .. } | cairn_registry::Op::AclExpireTokens,
                ..
            } => Err(WriteError::Invalid(
                "forwarded write refused: only the leader marks members up or down and expires tokens".into(),
            )),
            Forward::Write { op, by, request_id } => {
                if request_id
                    .as_deref()
                    .is_some_and(|id| !crate::stats::valid_request_id(id))
                {
                    return Err(WriteError::Invalid(
                        "forwarded write refused: the request id is not 1-64 characters of A-Za-z0-9-_.:".into(),
                    ));
                }
                if let Some(by) = by {
                    cairn_registry::acl::validate_accessor(by).map_err(|e| {
                        WriteError::Invalid(format!("forwarded write refused: {e}"))
                    })?;
                }
                cairn_registry::model::validate_op(op)
                    .map_err(|e| WriteError::Invalid(format!("forwarded write refused: {e}")))
            }
            Forward::Join { id, rpc_addr } => {
                let addr_ok = rpc_addr.len() <= 300
                    && rpc_addr.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                if *id == 0 || !addr_ok {
                    return Err(WriteError::Invalid(format!(
                        "forwarded join refused: node {id} at {:?}",
                        rpc_addr.chars().take(64).collect::<String>()
                    )));
                }
                Ok(())
            }
            Forward::Remove { .. } => Ok(()),
        }
    }
}

/// The leader's answer to a [`Forward`]: the index that committed it and the apply result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    pub index: u64,
    pub result: OpResult,
}

/// The body of a refused RPC (wrong cluster, unknown sender, body too large).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_registry::Op;

    /// [`Forward`] as nodes before the request id wrote and read it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum ForwardBefore {
        Write {
            #[serde(flatten)]
            op: Op,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            by: Option<String>,
        },
    }

    fn op() -> Op {
        Op::Deregister {
            service: "web".into(),
            id: "web-1".into(),
        }
    }

    #[test]
    fn the_request_id_is_optional_both_ways_between_versions() {
        let new = Forward::Write {
            op: op(),
            by: Some("acc".into()),
            request_id: Some("r-1".into()),
        };
        let text = serde_json::to_string(&new).unwrap();
        let old: ForwardBefore = serde_json::from_str(&text).expect("an older node reads it");
        assert_eq!(
            old,
            ForwardBefore::Write {
                op: op(),
                by: Some("acc".into())
            }
        );
        let from_old = serde_json::to_string(&old).unwrap();
        let read: Forward = serde_json::from_str(&from_old).expect("a newer node reads it");
        assert_eq!(
            read,
            Forward::Write {
                op: op(),
                by: Some("acc".into()),
                request_id: None,
            }
        );
        assert!(!serde_json::to_string(&read).unwrap().contains("request_id"));
    }

    #[test]
    fn a_forwarded_request_id_must_be_plain_and_bounded() {
        let with = |id: &str| Forward::Write {
            op: op(),
            by: None,
            request_id: Some(id.into()),
        };
        assert!(with("r-1").check().is_ok());
        assert!(with("bad id\n").check().is_err());
        assert!(with(&"a".repeat(65)).check().is_err());
    }
}
