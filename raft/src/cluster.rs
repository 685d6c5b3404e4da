//! One node's handle on the cluster: start, bootstrap, writes through the leader from any node,
//! membership changes, and status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_client::{ApiError, ClusterStatus, ErrorCode, MemberInfo};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, Membership, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Command, Op, OpResult};
use crate::registry::Registry;
use crate::store::{self, OpenError};
use crate::transport::{Forward, ForwardReply, SendError, Transport};
use crate::{Member, NodeId, Raft};

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
    /// Added to the wall clock this node stamps on the entries it proposes. Tests only: apply
    /// never reads a clock, so replicas agree whatever the offset (see the fault tests).
    pub clock_offset_ms: i64,
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
            cluster_name: "cairn".into(),
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
            cluster_name: "cairn".into(),
            data_dir: PathBuf::from("cairn-data"),
            bootstrap: None,
            snapshot_threshold: 100_000,
            keep_logs: 5_000,
            heartbeat: Duration::from_millis(150),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            write_timeout: Duration::from_secs(5),
            clock_offset_ms: 0,
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

/// A write that committed: the log index it was applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub index: u64,
}

/// Why a write did not commit. [`ErrorCode`] (through `ApiError::from`) tells callers which of
/// these are worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// No leader is known, or the one we know has stepped down, and none appeared in time.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader was known but the write's outcome is unknown (time-out, lost quorum).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change is not allowed in the cluster's current state.
    #[error("{0}")]
    Conflict(String),
    /// The leader refused the request as malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let code = match &e {
            WriteError::NoLeader(_) => ErrorCode::NoLeader,
            WriteError::Unavailable(_) => ErrorCode::Unavailable,
            WriteError::NotFound(_) => ErrorCode::NotFound,
            WriteError::Conflict(_) => ErrorCode::Conflict,
            WriteError::Invalid(_) => ErrorCode::InvalidArgument,
            WriteError::Internal(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<ApiError> for WriteError {
    fn from(e: ApiError) -> Self {
        match e.code {
            ErrorCode::NoLeader => WriteError::NoLeader(e.message),
            ErrorCode::Unavailable => WriteError::Unavailable(e.message),
            ErrorCode::NotFound => WriteError::NotFound(e.message),
            ErrorCode::Conflict => WriteError::Conflict(e.message),
            ErrorCode::InvalidArgument | ErrorCode::BodyTooLarge => WriteError::Invalid(e.message),
            _ => WriteError::Internal(e.message),
        }
    }
}

/// The message a leader answers with when it is no longer the leader: the sender retries.
const NOT_LEADER: &str = "this node is not the leader";

/// How long a `--peers` node other than the lowest id waits for that one to initialise the
/// cluster before doing it itself.
const BOOTSTRAP_GRACE: Duration = Duration::from_secs(3);

/// Pause between attempts while a leader is being elected.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Group commit on the leader: writes that arrive while earlier batches are being committed go
/// into one log entry together. openraft's core handles each entry on one task, so one entry per
/// write would cap throughput at that task's speed; batching spreads its cost over the batch.
/// At most this many operations in one entry...
const MAX_BATCH_OPS: usize = 256;
/// ...and about this many bytes of them (a larger single operation still goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries proposed and not yet applied. While all are busy, new writes queue up into the next
/// batch; a lone write on an idle cluster is proposed at once.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Writes waiting for a batch; beyond this, writers wait (back-pressure, not memory growth).
const PROPOSAL_QUEUE: usize = 16 * 1024;

/// How often every node tells the leader it is alive.
const ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A member the leader has not heard from for this long is marked down (a committed entry), and
/// its checks move to the others. Long enough to ride out a GC pause or a slow disk, short
/// enough that a dead node's instances are noticed within seconds.
const DOWN_AFTER: Duration = Duration::from_secs(5);

/// One write waiting to be batched on the leader.
struct Proposal {
    op: Op,
    reply: oneshot::Sender<Result<ForwardReply, WriteError>>,
}

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
    /// Leader only: when each member last said it was alive.
    alive: Mutex<std::collections::HashMap<NodeId, Instant>>,
    shut_down: Mutex<bool>,
}

/// The wall clock in Unix milliseconds, shifted by `offset_ms`.
fn now_ms(offset_ms: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(offset_ms)
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
        let registry = sm.registry();
        let committed = log.committed_index();
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
        let transport = Transport::new(&options.cluster_name, options.node_id)?;
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
        tokio::spawn(run_batcher(raft.clone(), queue, options.clock_offset_ms));
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
            alive: Mutex::new(std::collections::HashMap::new()),
            shut_down: Mutex::new(false),
        });
        tokio::spawn(report_alive(Arc::downgrade(&cluster)));
        tokio::spawn(watch_liveness(Arc::downgrade(&cluster)));
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

    /// The read view of the registry on this node.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
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

    pub(crate) fn heard_from_leader(&self, _leader: NodeId) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.leader_contact_ms.store(ms, Ordering::Relaxed);
    }

    /// Records that `from` is alive (the leader's side of liveness).
    pub(crate) fn mark_alive(&self, from: NodeId) {
        self.alive.lock().insert(from, Instant::now());
    }

    /// Members that are up: every voter and learner the leader has not marked down. The same
    /// on every node once applied, because it comes from the log.
    pub fn up_members(&self) -> Vec<NodeId> {
        let down = self.registry.down_nodes();
        let mut up = self.member_ids();
        up.retain(|id| !down.contains(id));
        up
    }

    /// The member that runs check `key`: rendezvous hashing over the members that are up, so a
    /// member's going down moves only its own checks.
    pub fn owner_of(&self, key: &str) -> Option<NodeId> {
        rendezvous_owner(key, &self.up_members())
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
            .post(&addr, path, body, timeout)
            .await
            .map_err(|e| e.to_string())
    }

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
                    .call_member::<_, Result<u64, ApiError>>(leader, "/raft/read_index", &(), left)
                    .await
                {
                    Ok(r) => r.map_err(WriteError::from),
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
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(WriteError::NoLeader(NOT_LEADER.into()))
            }
            Err(RaftError::APIError(e)) => Err(WriteError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(WriteError::Internal(e.to_string())),
        }
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

    /// Registers, deregisters or sets health: proposed on the leader, wherever it is called.
    pub async fn write(&self, op: Op) -> Result<Written, WriteError> {
        self.submit(Forward::Write(op)).await
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
            // Catching a learner up may take a while on a large registry.
            Forward::Join { .. } => self.options.write_timeout * 12,
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
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Option<NodeId> {
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
        match self
            .transport
            .post::<_, Result<ForwardReply, ApiError>>(&addr, "/raft/forward", req, left)
            .await
        {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(api)) => Err(api.into()),
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
            Err(SendError::Protocol(m)) => Err(WriteError::Unavailable(m)),
        }
    }

    /// Runs a forwarded request here; refuses with "not the leader" when this node is not.
    pub(crate) async fn execute_forwarded(&self, req: Forward) -> Result<ForwardReply, WriteError> {
        let deadline = Instant::now() + self.options.write_timeout * 12;
        self.execute(req, deadline).await
    }

    async fn execute(&self, req: Forward, deadline: Instant) -> Result<ForwardReply, WriteError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let work = async {
            match req {
                Forward::Write(op) => {
                    if self.leader() != Some(self.id) {
                        return Err(WriteError::NoLeader(NOT_LEADER.into()));
                    }
                    let (reply, answer) = oneshot::channel();
                    self.proposals
                        .send(Proposal { op, reply })
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

    async fn execute_join(&self, id: NodeId, rpc_addr: String) -> Result<ForwardReply, WriteError> {
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

    async fn execute_remove(&self, id: NodeId) -> Result<ForwardReply, WriteError> {
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

    /// Members, roles and indexes as this node sees them.
    pub fn status(&self) -> ClusterStatus {
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
        ClusterStatus {
            cluster: self.name.clone(),
            node_id: self.id,
            role: role.into(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.committed.load(Ordering::Acquire),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            last_contact_ms: self.last_contact_ms(),
            members: membership
                .nodes()
                .map(|(id, node)| MemberInfo {
                    id: *id,
                    rpc_addr: node.rpc_addr.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
        }
    }

    /// Stops Raft. Idempotent.
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
    }
}

/// FNV-1a over the parts, each ended by 0xff: the same on every node and every build, as
/// rendezvous needs.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut fnv = crate::registry::Fnv1a::default();
    for part in parts {
        fnv.feed(part);
        fnv.feed(&[0xff]);
    }
    let mut h = fnv.0;
    // FNV's low bits mix poorly for short keys; finish with a 64-bit avalanche (splitmix64).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member with the highest hash of (member, key).
pub fn rendezvous_owner(key: &str, members: &[NodeId]) -> Option<NodeId> {
    members
        .iter()
        .copied()
        .max_by_key(|m| (stable_hash(&[&m.to_be_bytes(), key.as_bytes()]), *m))
}

/// Every node tells the leader, once a second, that it is alive.
async fn report_alive(cluster: std::sync::Weak<Cluster>) {
    let mut tick = tokio::time::interval(ALIVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        if *c.shut_down.lock() {
            return;
        }
        let Some(leader) = c.leader() else { continue };
        if leader == c.id {
            c.mark_alive(c.id);
            continue;
        }
        let res: Result<(), String> = c
            .call_member(leader, "/raft/alive", &(), ALIVE_INTERVAL)
            .await;
        if let Err(e) = res {
            tracing::debug!("cannot report to leader {leader}: {e}");
        }
    }
}

/// On the leader: marks members down when they stop reporting, and up when they come back,
/// through the log so that every node agrees on who runs which check.
async fn watch_liveness(cluster: std::sync::Weak<Cluster>) {
    let mut tick = tokio::time::interval(ALIVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this node last became leader: members get DOWN_AFTER from then to report in.
    let mut leading_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        if *c.shut_down.lock() {
            return;
        }
        if c.leader() != Some(c.id) {
            leading_since = None;
            c.alive.lock().clear();
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let members = c.member_ids();
        let down = c.registry.down_nodes();
        let now = Instant::now();
        let alive = c.alive.lock().clone();
        let mut changes = Vec::new();
        for id in &members {
            let last = alive.get(id).copied().unwrap_or(since).max(since);
            let is_down = *id != c.id && now.duration_since(last) > DOWN_AFTER;
            if is_down != down.contains(id) {
                changes.push(Op::SetNodeUp {
                    node: *id,
                    up: !is_down,
                });
            }
        }
        // Forget removed members.
        for id in down.iter().filter(|id| !members.contains(id)) {
            changes.push(Op::SetNodeUp {
                node: *id,
                up: true,
            });
        }
        for op in changes {
            tracing::info!(?op, "member liveness changed");
            if let Err(e) = c.write(op).await {
                tracing::warn!("cannot record member liveness: {e}");
            }
        }
    }
}

/// Proposes queued writes in batches (see [`MAX_BATCH_OPS`]), each as one log entry.
async fn run_batcher(raft: Raft, mut queue: mpsc::Receiver<Proposal>, clock_offset_ms: i64) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        // Wait for a free slot first: while every slot is busy, writes gather in the queue.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = first.op.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += p.op.approx_size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (ops, replies): (Vec<Op>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let cmd = Command {
                time_ms: now_ms(clock_offset_ms),
                ops,
            };
            match raft.client_write(cmd).await {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    for (reply, result) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(ForwardReply { index, result }));
                    }
                }
                Err(e) => {
                    let e = client_write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

fn reply_to_written(reply: ForwardReply) -> Result<Written, WriteError> {
    match reply.result {
        OpResult::Ok => Ok(Written { index: reply.index }),
        OpResult::NotFound { message } => Err(WriteError::NotFound(message)),
    }
}

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> WriteError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_the_lost_members_keys() {
        let all = [1, 2, 3];
        let keys: Vec<String> = (0..3000).map(|i| format!("svc/inst-{i}/http")).collect();
        let owners: Vec<NodeId> = keys
            .iter()
            .map(|k| rendezvous_owner(k, &all).unwrap())
            .collect();
        for m in all {
            let n = owners.iter().filter(|o| **o == m).count();
            assert!((850..=1150).contains(&n), "member {m} owns {n} of 3000");
        }
        let without_2 = [1, 3];
        for (k, before) in keys.iter().zip(&owners) {
            let after = rendezvous_owner(k, &without_2).unwrap();
            if *before != 2 {
                assert_eq!(after, *before, "a key not owned by 2 must stay put");
            }
        }
        assert_eq!(rendezvous_owner("x", &[]), None);
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Nodes of different builds must agree on owners: the hash is part of the protocol.
        assert_eq!(stable_hash(&[b"a"]), 1_819_190_507_042_467_253);
        assert_eq!(rendezvous_owner("web/web-1/http", &[1, 2, 3]), Some(1));
    }
}
