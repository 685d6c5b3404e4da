//! Fast failover when the leader's process is gone.
//!
//! With openraft 0.9 alone, a kill -9 of the leader costs 3-4 s before a new one is elected: a
//! follower stands after its election time-out (1-2 s), but the other followers refuse their
//! vote until their lease on the dead leader (the longest election time-out, 2 s) has run out,
//! and the one that stood first then waits out another time-out before it stands again. Nothing
//! in the time-outs can tell a dead leader from a slow one.
//!
//! A follower can, for one kind of death. When it has not heard from its leader for
//! [`SILENT_FOR`], it opens a TCP connection to the leader's RPC address: when the leader's host
//! answers with a refusal, the process that listened there is gone (crashed, killed,
//! OOM-killed). A slow or paused leader still accepts connections (the kernel completes them),
//! and an unreachable host refuses nothing, so neither takes this path: they cost the election
//! time-out, as before. On a refusal the follower stands for election at once. Standing gives up
//! its lease (a candidate's vote is not committed), so the followers that have noticed grant
//! each other's votes. When two stood in the same term and split the vote, one must stand again
//! in a higher term, and it must be the one with the longer log (the other's vote goes only to
//! a log at least as long as its own): a node that has seen a vote request from a candidate
//! whose log is longer than its own (or as long, from a lower id) stands back for a while, and
//! the others stand again after [`RESTAND_AFTER`] times their rank. Without that, two candidates
//! standing again in turn raised their terms past each other for seconds (a kill in
//! `bench/failover.sh` took 5.6 s).
//!
//! An election is always safe in Raft; this only moves when one starts. Measured with
//! `bench/failover.sh` (BENCHMARKS.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::Cluster;
use crate::NodeId;

/// How long a follower hears nothing from its leader before it checks whether the leader's
/// process is still there: two heartbeats missed.
const SILENT_FOR: Duration = Duration::from_millis(300);
/// How long a connection attempt to the leader may take. A refusal from a live host takes a
/// round trip; anything slower is not a refusal.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// After standing because the leader was gone: how long the first-ranked candidate waits for
/// the election to end before it stands again; each later rank waits this much more.
const RESTAND_AFTER: Duration = Duration::from_millis(120);
/// How long a node stands back after it saw a better candidate: a few rounds of standing again.
const DEFER_FOR: Duration = Duration::from_millis(600);
/// How long after a refusal this node keeps standing again on its own; then openraft's election
/// time-outs alone decide, as after any other loss of the leader.
const FAST_WINDOW: Duration = Duration::from_secs(3);

/// Watches the leader from a follower; see the module's docs.
pub(super) async fn watch_leader(cluster: std::sync::Weak<Cluster>) {
    let Some(c) = cluster.upgrade() else { return };
    let tick = c.options.heartbeat;
    drop(c);
    // When this node last stood because its leader's process was gone, and when it last stood.
    let mut gone_at: Option<Instant> = None;
    let mut stood_at = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(c) = cluster.upgrade() else { return };
        if *c.shut_down.lock() {
            return;
        }
        if !c.is_voter() {
            gone_at = None;
            continue;
        }
        let (state, leader) = {
            let m = c.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader)
        };
        match (state, leader) {
            (ServerState::Follower, Some(leader)) if leader != c.id => {
                gone_at = None;
                let silent = c
                    .last_contact_ms()
                    .is_some_and(|ms| ms >= SILENT_FOR.as_millis() as u64);
                if !silent || !c.leader_process_gone(leader).await {
                    continue;
                }
                tracing::info!(
                    leader,
                    "the leader's RPC port refuses connections: its process is gone; standing for election"
                );
                gone_at = Some(Instant::now());
            }
            (ServerState::Candidate | ServerState::Follower, _) => {
                // Still no leader after standing: stand again when this node's turn comes.
                let Some(at) = gone_at else { continue };
                if at.elapsed() > FAST_WINDOW {
                    gone_at = None;
                    continue;
                }
                if leader.is_some() || stood_at.elapsed() < c.restand_after() || c.deferring() {
                    continue;
                }
            }
            _ => {
                gone_at = None;
                continue;
            }
        }
        stood_at = Instant::now();
        if let Err(e) = c.raft.trigger().elect().await {
            tracing::warn!("cannot stand for election: {e}");
        }
    }
}

impl Cluster {
    /// Called with every vote request this node receives: a candidate with a longer log than
    /// ours (or as long, and a lower id) is the one to elect, so this node does not stand again
    /// for a while (see the module's docs). Only the last log index is compared: both logs come
    /// from the same leader's term in the case this serves; when they do not, the worst outcome
    /// is that both or neither stand again, and openraft's time-outs decide as they would anyway.
    pub(crate) fn saw_candidate(&self, req: &openraft::raft::VoteRequest<NodeId>) {
        let Some(candidate) = req.vote.leader_id().voted_for() else {
            return;
        };
        let ours = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let theirs = req.last_log_id.map_or(0, |l| l.index);
        if theirs > ours || (theirs == ours && candidate < self.id) {
            *self.failover_defer.lock() = Some(Instant::now() + DEFER_FOR);
        }
    }

    /// Whether a better candidate was seen lately (see [`Cluster::saw_candidate`]).
    fn deferring(&self) -> bool {
        self.failover_defer
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether every address of `leader`'s RPC listener refuses a TCP connection.
    async fn leader_process_gone(&self, leader: NodeId) -> bool {
        let Some(addr) = self.member_addr(leader) else {
            return false;
        };
        let Ok(Ok(addrs)) = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host(&addr))
            .await
            .map(|r| r.map(Iterator::collect::<Vec<SocketAddr>>))
        else {
            return false;
        };
        if addrs.is_empty() {
            return false;
        }
        for addr in addrs {
            if !self.refuses(addr).await {
                return false;
            }
        }
        true
    }

    /// Whether a TCP connection to `addr` is refused (not: timed out, unreachable, accepted).
    async fn refuses(&self, addr: SocketAddr) -> bool {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let Ok(socket) = socket else { return false };
        // From the address the cluster RPC leaves from, so that the probe takes its path.
        if let Some(source) = self.options.rpc_source_addr {
            if source.is_ipv4() == addr.is_ipv4()
                && socket.bind(SocketAddr::new(source, 0)).is_err()
            {
                return false;
            }
        }
        match tokio::time::timeout(PROBE_TIMEOUT, socket.connect(addr)).await {
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            _ => false,
        }
    }

    /// How long this node waits, after standing, before it stands again: by its rank among the
    /// voters, so that two candidates of one term do not keep splitting the vote.
    fn restand_after(&self) -> Duration {
        let rank = self.with_membership(|m| m.voter_ids().filter(|v| *v < self.id).count());
        RESTAND_AFTER * (rank as u32 + 1)
    }
}
