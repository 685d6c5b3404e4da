//! One node's handle on the cluster ([`Cluster`]): start, bootstrap, membership queries and
//! status here; the rest by concern in the submodules:
//!
//! - [`write`]: writes from any node, run on the leader or forwarded to it, and their errors;
//! - [`batch`]: group commit on the leader (many writes, one log entry);
//! - [`membership`]: joining and removing members;
//! - [`liveness`]: members reporting to the leader, down/up entries, and check placement;
//! - [`barrier`]: the linearizable read barrier;
//! - [`handover`]: handing leadership to another voter before the leader stops;
//! - [`failover`]: standing for election at once when the leader's process is gone;
//! - [`replication`]: the leader's view of each member's replication and health;
//! - [`snapshot`]: receiving a snapshot from the leader.

mod barrier;
mod batch;
mod failover;
mod handover;
mod liveness;
mod membership;
mod quota;
mod replication;
mod snapshot;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_registry::quota::Quotas;
use cairn_registry::Registry;
use openraft::error::Fatal;
use openraft::error::{InitializeError, RaftError};
use openraft::{Config, Membership, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::rpc::client::{ClientTls, Transport};
use crate::snapshot::Receiver;
use crate::stats::RaftStats;
use crate::store::{self, OpenError};
use crate::{Member, NodeId, Raft};

use batch::{run_batcher, Proposal, PROPOSAL_QUEUE};
use handover::HandoverGate;
use liveness::{report_alive, watch_liveness};

pub use handover::Handover;
pub use quota::QuotaStatus;
pub use replication::{Replica, ReplicaHealth, Replication};
pub use snapshot::SnapshotRefused;
pub use write::{WriteError, Written};

/// Defaults of [`ClusterOptions`]; the agent's flags default to these same values.
pub const DEFAULT_CLUSTER_NAME: &str = "cairn";
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 100_000;
pub const DEFAULT_KEEP_LOGS: u64 = 5_000;
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Free space the data folder's file system keeps: room for RocksDB to flush and compact and
/// for a snapshot, so the node stops on its own terms, not on a failed write half-way.
pub const DEFAULT_MIN_FREE_DISK: u64 = 128 * 1024 * 1024;

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: NodeId,
    /// Nodes refuse RPCs naming another cluster.
    pub cluster_name: String,
    pub data_dir: PathBuf,
    /// The voters of a new cluster (`--peers`, or this node alone in dev mode). Used once: a node
    /// whose data folder already holds a cluster never initialises again.
    pub bootstrap: Option<BTreeMap<NodeId, Member>>,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot, so briefly lagging followers need no snapshot.
    pub keep_logs: u64,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// How long a write may wait for a leader and a quorum before it fails with 503.
    pub write_timeout: Duration,
    /// Mutual TLS for the cluster RPC: the client side (the server side is the agent's
    /// listener). With it, RPCs are admitted only from callers whose certificate carries the
    /// member name they claim; without it, the headers are taken at their word.
    pub tls: Option<ClientTls>,
    /// Added to the wall clock this node stamps on the entries it proposes. Tests only: apply
    /// never reads a clock, so replicas agree whatever the offset (see the fault tests).
    pub clock_offset_ms: i64,
    /// The local address this node's RPC connections leave from; `None` lets the system pick.
    /// Tests only: the fault tests' proxy tells senders apart by it, since under mutual TLS it
    /// can read nothing else.
    pub rpc_source_addr: Option<IpAddr>,
    /// An append to the log fails (and Raft stops) when the data folder's file system has less
    /// free space than this; 0 for no check.
    pub min_free_disk: u64,
    /// The limits this node admits writes against while it leads (see `quota`).
    pub quotas: Quotas,
}

impl ClusterOptions {
    /// A single-node cluster with default timings.
    pub fn dev(data_dir: &Path, rpc_addr: &str) -> Self {
        let mut peers = BTreeMap::new();
        peers.insert(
            1,
            Member {
                rpc_addr: rpc_addr.to_owned(),
            },
        );
        ClusterOptions {
            node_id: 1,
            cluster_name: DEFAULT_CLUSTER_NAME.into(),
            data_dir: data_dir.to_owned(),
            bootstrap: Some(peers),
            ..ClusterOptions::default()
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            node_id: 1,
            cluster_name: DEFAULT_CLUSTER_NAME.into(),
            data_dir: PathBuf::from("cairn-data"),
            bootstrap: None,
            snapshot_threshold: DEFAULT_SNAPSHOT_THRESHOLD,
            keep_logs: DEFAULT_KEEP_LOGS,
            heartbeat: Duration::from_millis(150),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tls: None,
            clock_offset_ms: 0,
            rpc_source_addr: None,
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            quotas: Quotas::default(),
        }
    }
}

/// Starting the node failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The Raft timings or sizes were rejected.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot create the RPC client: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A node's view of the cluster: its role, the leader, the indexes and the members. The HTTP
/// layer turns it into the API's `ClusterStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub cluster: String,
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Milliseconds since this node last heard from the leader (0 on the leader itself, `None`
    /// when it never has).
    pub last_contact_ms: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// A member as the membership this node knows lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub rpc_addr: String,
    /// Voters make the quorum; learners only replicate.
    pub voter: bool,
    /// On the leader: the last log index known to be on this member (the leader's own last
    /// index for itself), so its lag is the leader's last index minus this. `None` elsewhere,
    /// and for a member nothing was confirmed on yet.
    pub matched_index: Option<u64>,
}

/// How long a `--peers` node other than the lowest id waits for that one to initialise the
/// cluster before doing it itself.
const BOOTSTRAP_GRACE: Duration = Duration::from_secs(3);

/// One node of the cluster.
pub struct Cluster {
    id: NodeId,
    name: String,
    raft: Raft,
    registry: Arc<Registry>,
    transport: Transport,
    committed: Arc<AtomicU64>,
    options: ClusterOptions,
    started: Instant,
    /// Milliseconds after `started` when the leader last reached us; `u64::MAX` for never.
    leader_contact_ms: AtomicU64,
    /// Serialises membership changes from this node: openraft allows one at a time anyway.
    membership_lock: tokio::sync::Mutex<()>,
    proposals: mpsc::Sender<Proposal>,
    /// Admits writes against the quotas before they are proposed.
    gate: Arc<quota::Gate>,
    /// Closed while leadership is being handed over: nothing more is proposed.
    handover: Arc<HandoverGate>,
    /// Leader only: when each member last said it was alive.
    alive: Mutex<std::collections::HashMap<NodeId, Instant>>,
    shut_down: Mutex<bool>,
    /// The snapshot being received from the leader (see [`snapshot`]).
    snapshot_in: tokio::sync::Mutex<Receiver>,
    /// The database under the log and the state machine, to flush at shutdown.
    store: store::Flusher,
    /// Set when this node led before it was restarted: see [`RestoredLeadership`].
    restored: Option<RestoredLeadership>,
    /// Until when this node leaves standing again to a better candidate (see [`failover`]).
    failover_defer: Mutex<Option<Instant>>,
    /// Replication's metrics (see [`crate::stats`]).
    stats: Arc<RaftStats>,
}

/// openraft 0.9 lets a node that led before a restart lead again at once, in the same term,
/// without an election and so without a new no-op entry. Its commit index is then the one it had
/// persisted, which can be behind what the cluster committed and the followers applied before the
/// crash, and openraft's read index (the larger of the term's first entry and the commit index)
/// would let a read miss acknowledged writes. The node's log holds every committed entry (it
/// led the term that committed them), so the end of the log it started with bounds them all: in
/// that term, no read index is lower. Found by the long fault profile (a stale `?consistent`
/// read after `kill -9` of the leader); openraft's issue #1511 describes the same hazard.
#[derive(Debug, Clone, Copy)]
struct RestoredLeadership {
    term: u64,
    last_log_index: u64,
}

impl Cluster {
    /// Opens the store in `options.data_dir` and starts Raft. Does not bootstrap: see
    /// [`Cluster::bootstrap`].
    pub async fn start(options: ClusterOptions) -> Result<Arc<Cluster>, StartError> {
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            StartError::Raft(format!(
                "cannot create the data folder {}: {e}",
                options.data_dir.display()
            ))
        })?;
        let (log, sm) = store::open(&options.data_dir)?;
        let mut log = log.with_free_space_reserve(options.min_free_disk);
        let restored = restored_leadership(&mut log, options.node_id).await?;
        let registry = sm.registry();
        let stats = sm.stats();
        let snapshot_in = tokio::sync::Mutex::new(Receiver::new(sm.snapshot_dir()));
        let committed = log.committed_index();
        let flusher = log.flusher();
        let config = Config {
            cluster_name: options.cluster_name.clone(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_timeout.0.as_millis() as u64,
            election_timeout_max: options.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_threshold),
            max_in_snapshot_log_to_keep: options.keep_logs,
            // Entries are batches of up to ~1 MiB; this keeps an append-entries RPC bounded.
            max_payload_entries: 64,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let transport = Transport::new(
            &options.cluster_name,
            options.node_id,
            options.tls.clone(),
            options.rpc_source_addr,
        )?;
        let raft = Raft::new(
            options.node_id,
            Arc::new(config),
            transport.clone(),
            log,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        let gate = Arc::new(quota::Gate::new(registry.clone(), options.quotas));
        let handover = Arc::new(HandoverGate::default());
        tokio::spawn(run_batcher(
            raft.clone(),
            queue,
            options.clock_offset_ms,
            gate.clone(),
            handover.clone(),
            stats.clone(),
        ));
        let cluster = Arc::new(Cluster {
            id: options.node_id,
            name: options.cluster_name.clone(),
            raft,
            registry,
            transport,
            committed,
            options,
            started: Instant::now(),
            leader_contact_ms: AtomicU64::new(u64::MAX),
            membership_lock: tokio::sync::Mutex::new(()),
            proposals,
            gate,
            handover,
            alive: Mutex::new(std::collections::HashMap::new()),
            shut_down: Mutex::new(false),
            snapshot_in,
            store: flusher,
            restored,
            failover_defer: Mutex::new(None),
            stats,
        });
        tokio::spawn(report_alive(Arc::downgrade(&cluster)));
        tokio::spawn(watch_liveness(Arc::downgrade(&cluster)));
        tokio::spawn(failover::watch_leader(Arc::downgrade(&cluster)));
        tokio::spawn(count_leader_changes(
            cluster.raft.metrics(),
            cluster.stats.clone(),
        ));
        Ok(cluster)
    }

    /// Initialises a new cluster with `options.bootstrap` as its voters, unless this node already
    /// holds cluster state (a restart) or has no bootstrap list (it waits to be added).
    /// Returns whether it initialised.
    pub async fn bootstrap(&self) -> Result<bool, StartError> {
        let Some(members) = self.options.bootstrap.clone() else {
            return Ok(false);
        };
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        // The lowest id initialises at once; the others give it a moment. Then a normal start
        // has a single initialiser (openraft logs an error for every redundant one), and a
        // cluster still forms when that node is down.
        if members.keys().next() != Some(&self.id) {
            let until = Instant::now() + BOOTSTRAP_GRACE;
            while Instant::now() < until {
                if self.has_membership() {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            // Another peer's initialisation reached us first: the cluster exists, which is the goal.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Replication's metrics, for `/metrics`.
    pub fn stats(&self) -> &Arc<RaftStats> {
        &self.stats
    }

    /// The read view of the registry on this node.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether cluster RPCs must come over mutual TLS with a member's certificate.
    pub fn requires_certificates(&self) -> bool {
        self.options.tls.is_some()
    }

    /// Whether this node holds any cluster membership yet.
    pub fn has_membership(&self) -> bool {
        self.with_membership(|m| m.nodes().next().is_some())
    }

    /// Runs `f` on the membership this node knows (the metrics' copy; held only during `f`).
    fn with_membership<T>(&self, f: impl FnOnce(&Membership<NodeId, Member>) -> T) -> T {
        let m = self.raft.metrics();
        let m = m.borrow();
        f(m.membership_config.membership())
    }

    /// Member `id`'s cluster RPC address.
    fn member_addr(&self, id: NodeId) -> Option<String> {
        self.with_membership(|m| m.get_node(&id).map(|n| n.rpc_addr.clone()))
    }

    /// Every member's id, voters and learners.
    fn member_ids(&self) -> Vec<NodeId> {
        self.with_membership(|m| m.nodes().map(|(id, _)| *id).collect())
    }

    /// Whether this node is a voter in the membership it knows.
    pub fn is_voter(&self) -> bool {
        self.with_membership(|m| m.voter_ids().any(|v| v == self.id))
    }

    /// Whether an RPC from `from` is admitted: it is a member, or we have no membership yet
    /// (a node waiting to be added accepts the leader that adds it).
    pub fn admits(&self, from: NodeId) -> bool {
        self.with_membership(|m| m.nodes().next().is_none() || m.nodes().any(|(id, _)| *id == from))
    }

    /// POSTs `body` to `path` on member `node`'s RPC listener.
    pub async fn call_member<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        node: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let addr = self
            .member_addr(node)
            .ok_or_else(|| format!("node {node} is not a member"))?;
        self.transport
            .post(node, &addr, path, body, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// Each quota's limit and what this node refused for it while leading.
    pub fn quotas(&self) -> Vec<QuotaStatus> {
        self.gate.status()
    }

    /// The current leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Milliseconds since this node last heard from the leader; 0 on the leader.
    pub fn last_contact_ms(&self) -> Option<u64> {
        if self.leader() == Some(self.id) {
            return Some(0);
        }
        match self.leader_contact_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            at => Some((self.started.elapsed().as_millis() as u64).saturating_sub(at)),
        }
    }

    /// Members, roles and indexes as this node sees them.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
            ServerState::Learner => "learner",
            ServerState::Follower if voters.contains(&self.id) => "follower",
            ServerState::Follower => "learner",
        };
        let last_log_index = m.last_log_index.unwrap_or(0);
        let matched = |id: &NodeId| -> Option<u64> {
            let replication = m.replication.as_ref()?;
            if *id == self.id {
                return Some(last_log_index);
            }
            replication.get(id)?.map(|l| l.index)
        };
        Status {
            cluster: self.name.clone(),
            node_id: self.id,
            role,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index,
            commit_index: self.committed.load(Ordering::Acquire),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            last_contact_ms: self.last_contact_ms(),
            members: membership
                .nodes()
                .map(|(id, node)| MemberStatus {
                    id: *id,
                    rpc_addr: node.rpc_addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched(id),
                })
                .collect(),
        }
    }

    /// Only on the leader: each member's matched index, the last log index known to be on it
    /// (the leader's own last index for itself), so a member's lag is the leader's last log index
    /// minus it. A member nothing was confirmed on yet is absent; empty on other nodes.
    pub fn matched(&self) -> BTreeMap<NodeId, u64> {
        let m = self.raft.metrics().borrow().clone();
        let Some(replication) = m.replication else {
            return BTreeMap::new();
        };
        replication
            .iter()
            .filter_map(|(id, log)| Some((*id, log.as_ref()?.index)))
            .chain([(self.id, m.last_log_index.unwrap_or(0))])
            .collect()
    }

    /// Resolves once Raft has stopped by itself: a storage error (a full disk, an I/O error,
    /// unreadable state) or a panic of its task. A node in that state still answers HTTP and DNS
    /// from a view that no longer changes, so the agent treats this as the end of the process,
    /// and a supervisor (systemd, Kubernetes) restarts it. Never resolves after
    /// [`Cluster::shutdown`]. Answers the error's description.
    pub async fn stopped_by_error(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            match &metrics.borrow_and_update().running_state {
                Ok(()) | Err(Fatal::Stopped) => {}
                Err(e) => return e.to_string(),
            }
            if metrics.changed().await.is_err() {
                // The core's task ended without a word: a panic, unless we stopped it.
                if *self.shut_down.lock() {
                    std::future::pending::<()>().await;
                }
                return "the Raft task ended unexpectedly".into();
            }
        }
    }

    /// Stops Raft and flushes the store's memory tables to disk (the write-ahead log already
    /// holds everything; a flush makes the next start quicker). Idempotent.
    pub async fn shutdown(&self) {
        {
            let mut done = self.shut_down.lock();
            if *done {
                return;
            }
            *done = true;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!("cannot flush the store at shutdown: {e}");
        }
    }
}

/// Counts each change of the leader this node knows (to another node or to none) until Raft
/// stops. openraft's metrics change on every apply; the leader rarely, so this compares.
async fn count_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    stats: Arc<RaftStats>,
) {
    let mut leader = metrics.borrow_and_update().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow_and_update().current_leader;
        if now != leader {
            stats.leader_changes.inc();
            leader = now;
        }
    }
}

/// What [`RestoredLeadership`] needs, read from the log before Raft starts: `Some` when the
/// stored vote is a committed vote for this node (openraft then restores it as the leader).
async fn restored_leadership(
    log: &mut store::LogStore,
    id: NodeId,
) -> Result<Option<RestoredLeadership>, StartError> {
    use openraft::storage::RaftLogStorage;
    let failed = |e: openraft::StorageError<NodeId>| StartError::Raft(e.to_string());
    let Some(vote) = log.read_vote().await.map_err(failed)? else {
        return Ok(None);
    };
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(id) {
        return Ok(None);
    }
    let last = log.get_log_state().await.map_err(failed)?.last_log_id;
    Ok(Some(RestoredLeadership {
        term: vote.leader_id().get_term(),
        last_log_index: last.map_or(0, |l| l.index),
    }))
}
