//! Handing leadership over before a leader stops (SIGTERM), so that a rolling restart pauses
//! writes for a round trip or two instead of an election time-out.
//!
//! openraft 0.9 has no leadership transfer, but it has what one needs: a follower can be told
//! to start an election at once (`trigger().elect()`), and a voter grants its vote to a
//! candidate whose log is at least as long as its own once the lease of the leader it follows
//! has run out. The leader's own lease runs from the moment it was elected, so past that moment
//! the leader votes for such a candidate and steps down, and the candidate wins with the
//! leader's vote and its own. The other followers' leases still run (they heard the leader a
//! heartbeat ago), which is what keeps a third node from starting elections of its own.
//!
//! The steps, on the leader:
//! 1. wait out its own lease, if it was elected only just now (writes still flow);
//! 2. stop proposing: the batcher answers new writes "no leader" (not proposed, so the writer
//!    retries on the next leader), and the proposals already sent to Raft are the last;
//! 3. pick the voter whose replicated log is the longest, wait until it holds all of ours;
//! 4. tell it to stand ([`PATH_ELECT`]) and wait for it to lead.
//!
//! Writes proposed before step 2 are committed by the new leader (its log has them) and
//! answered here once this node applies them, as a follower; the agent stops Raft only after
//! its HTTP requests have drained.

use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use super::Cluster;
use crate::rpc::PATH_ELECT;
use crate::NodeId;

/// How long the leader waits for its successor to hold every entry of its log.
const CATCH_UP: Duration = Duration::from_secs(2);
/// How long the successor's election may take before the leader gives up and stops anyway
/// (the others then elect a leader after an election time-out, as after a crash).
const ELECTED_WITHIN: Duration = Duration::from_secs(2);
/// Raft publishes its metrics at the top of each turn of its loop: at once when idle.
const METRICS_FLUSH: Duration = Duration::from_millis(200);

/// The gate between writes and Raft during a handover: the batcher proposes under the read
/// lock when the flag is down, the handover raises the flag under the write lock, so once it
/// holds the lock every proposal has reached Raft and none follows.
#[derive(Default)]
pub(super) struct HandoverGate(RwLock<bool>);

impl HandoverGate {
    /// Runs `propose` unless a handover has begun; `None` when it has.
    pub(super) async fn propose<T>(
        &self,
        propose: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let handing_over = self.0.read().await;
        if *handing_over {
            return None;
        }
        Some(propose.await)
    }

    async fn set(&self, on: bool) {
        *self.0.write().await = on;
    }
}

/// How a handover ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// This node did not lead, or led alone: nothing to hand over.
    NotLeader,
    /// `to` leads now.
    Done { to: NodeId, took: Duration },
    /// No handover; the node stops as after a crash, and the others elect a leader.
    Failed(String),
}

impl Cluster {
    /// Hands leadership to the most up-to-date voter (see the module's docs), if this node
    /// leads a cluster of more than one voter. Bounded by a few seconds.
    pub async fn hand_over_leadership(&self) -> Handover {
        let started = Instant::now();
        if self.leader() != Some(self.id) {
            return Handover::NotLeader;
        }
        let voters: Vec<NodeId> =
            self.with_membership(|m| m.voter_ids().filter(|v| *v != self.id).collect());
        if voters.is_empty() {
            return Handover::NotLeader;
        }
        match self.try_hand_over(&voters, started).await {
            Ok(to) => Handover::Done {
                to,
                took: started.elapsed(),
            },
            Err(why) => {
                // Still the leader, perhaps: let writes through again while the node drains.
                self.handover.set(false).await;
                Handover::Failed(why)
            }
        }
    }

    async fn try_hand_over(&self, voters: &[NodeId], started: Instant) -> Result<NodeId, String> {
        // 1. The leader's lease: the leader refuses to vote until it has run out.
        let lease = self.options.election_timeout.1;
        let elected_at = self
            .raft
            .with_raft_state(|s| s.vote_last_modified())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(at) = elected_at {
            // A little past the lease: the comparison is `now <= elected + lease`.
            let until = at + lease + Duration::from_millis(10);
            tokio::time::sleep_until(until).await;
        }
        // 2. Stop proposing. The proposals that reached Raft before are ahead of a no-op
        // request in its queue; the metrics published after that request include them all.
        self.handover.set(true).await;
        let mut metrics = self.raft.metrics();
        self.raft
            .with_raft_state(|_| ())
            .await
            .map_err(|e| e.to_string())?;
        metrics.borrow_and_update();
        let _ = tokio::time::timeout(METRICS_FLUSH, metrics.changed()).await;
        if self.leader() != Some(self.id) {
            return Err("this node stopped leading on its own".into());
        }
        // 3. The successor: the voter with the longest replicated log, once it holds ours.
        let deadline = Instant::now() + CATCH_UP;
        let (to, last) = loop {
            let (best, last) = {
                let m = metrics.borrow_and_update();
                let last = m.last_log_index.unwrap_or(0);
                let replication = m.replication.as_ref();
                let best = voters
                    .iter()
                    .map(|v| {
                        let matched = replication
                            .and_then(|r| r.get(v).cloned().flatten())
                            .map_or(0, |l| l.index);
                        (matched, *v)
                    })
                    .max();
                (best, last)
            };
            match best {
                Some((matched, v)) if matched >= last => break (v, last),
                _ => {}
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("no voter caught up with index {last} in {CATCH_UP:?}"))?;
            if tokio::time::timeout(left, metrics.changed()).await.is_err() {
                return Err(format!(
                    "no voter caught up with index {last} in {CATCH_UP:?}"
                ));
            }
        };
        tracing::info!(
            to,
            index = last,
            waited_ms = started.elapsed().as_millis() as u64,
            "handing leadership over"
        );
        // 4. Tell it to stand, and wait for a leader other than us.
        let answer: Result<(), String> = self
            .call_member(to, PATH_ELECT, &(), ELECTED_WITHIN)
            .await
            .and_then(|r: Result<(), String>| r);
        answer.map_err(|e| format!("node {to} did not stand for election: {e}"))?;
        let deadline = Instant::now() + ELECTED_WITHIN;
        loop {
            if let Some(l) = metrics.borrow_and_update().current_leader {
                if l != self.id {
                    return Ok(l);
                }
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("node {to} was not elected in {ELECTED_WITHIN:?}"))?;
            if tokio::time::timeout(left, metrics.changed()).await.is_err() {
                return Err(format!("node {to} was not elected in {ELECTED_WITHIN:?}"));
            }
        }
    }

    /// The successor's side: `from`, our leader, asks us to stand for election now.
    pub(crate) async fn stand_for_election(&self, from: NodeId) -> Result<(), String> {
        if self.leader() != Some(from) {
            return Err(format!("node {from} is not the leader this node follows"));
        }
        if !self.is_voter() {
            return Err("this node is not a voter".into());
        }
        self.raft.trigger().elect().await.map_err(|e| e.to_string())
    }
}
