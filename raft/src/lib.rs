//! Cairn's replicated registry.
//!
//! Services, their instances and the instances' health live in a Raft-replicated state machine
//! ([openraft]) stored in RocksDB. The pieces, from the bottom up:
//!
//! - [`model`]: the data model and the validation every user input passes before it is proposed;
//! - [`command`]: what a log entry carries ([`Command`]) and what applying it answers;
//! - [`registry`]: the in-memory read view ([`Registry`]) that apply keeps current and that every
//!   reader uses, never RocksDB;
//! - [`store`]: the RocksDB log store and state machine, with snapshots;
//! - [`transport`]: the cluster RPC between nodes over HTTP (append-entries, vote, snapshots, and
//!   writes forwarded to the leader);
//! - [`cluster`]: [`Cluster`], one node's handle: start, bootstrap or join, write through the
//!   leader from anywhere, membership changes and status.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_raft::{Cluster, ClusterOptions, Op};
//!
//! let node = Cluster::start(ClusterOptions::dev(std::path::Path::new("/tmp/cairn"), "127.0.0.1:8300")).await?;
//! let body = serde_json::from_str(r#"{"address": "10.0.0.7", "port": 8080}"#)?;
//! let instance = cairn_raft::model::validate_registration("web-1", &body)?;
//! let written = node.write(Op::Register { service: "web".into(), instance }).await?;
//! println!("committed at index {}", written.index);
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod command;
pub mod model;
pub mod registry;
pub mod store;
pub mod transport;
pub mod watch;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use cluster::{Cluster, ClusterOptions, StartError, WriteError, Written};
pub use command::{Command, Op, OpResult};
pub use registry::{Registry, ServiceEntry};

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
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft instance for Cairn.
pub type Raft = openraft::Raft<TypeConfig>;
