//! Cairn's replication: the registry of `cairn-registry`, kept on every node by Raft
//! ([openraft]) and stored in RocksDB.
//!
//! - [`store`]: the RocksDB log store and state machine;
//! - [`snapshot`]: snapshots as files beside it, and receiving one from the leader chunk by chunk;
//! - [`rpc`]: the cluster RPC between nodes over HTTP, its calling side ([`rpc::client`]) and
//!   its serving side ([`rpc::server`], with the one admission layer);
//! - [`stats`]: replication's metrics, and the request id a forwarded write carries;
//! - [`recover`]: lost-quorum recovery, rewriting a stopped node's membership;
//! - [`cluster`]: [`Cluster`], one node's handle: start, bootstrap or join, write through the
//!   leader from anywhere (group-committed there), membership, liveness, placement of checks,
//!   the read barrier and status.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_raft::{Cluster, ClusterOptions};
//! use cairn_registry::Op;
//!
//! let node = Cluster::start(ClusterOptions::dev(std::path::Path::new("/tmp/cairn"), "127.0.0.1:8300")).await?;
//! let body = serde_json::from_str(r#"{"address": "10.0.0.7", "port": 8080}"#)?;
//! let instance = cairn_registry::model::validate_registration("web-1", &body)?;
//! let written = node.write(Op::Register { service: "web".into(), instance, health: None }).await?;
//! println!("committed at index {}", written.index);
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod recover;
pub mod rpc;
pub mod snapshot;
pub mod stats;
pub mod store;

use std::fmt;

use cairn_registry::{Command, OpResult};
use serde::{Deserialize, Serialize};

pub use cluster::{
    Cluster, ClusterOptions, Handover, MemberStatus, QuotaStatus, Replica, ReplicaHealth,
    Replication, StartError, Status, WriteError, Written,
};

/// Largest backup a restore may carry. A restore is one log entry ([`cairn_registry::Op::Restore`]),
/// sent whole to every follower in one append-entries request (and, from a follower, forwarded
/// whole to the leader), so it must fit [`rpc::MAX_RPC_BODY`] with room for the envelope.
pub const MAX_RESTORE_BYTES: usize = rpc::MAX_RPC_BODY - 1024 * 1024;

/// A node's id in the cluster, as given by `--node-id`.
pub type NodeId = u64;

/// What the cluster knows about a member: where its cluster RPC listener is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub rpc_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = Command,
        R = Vec<OpResult>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft instance for Cairn.
pub type Raft = openraft::Raft<TypeConfig>;
