//! Liveness: every node tells the leader once a second that it is alive; the leader commits a
//! rare entry when a member stops (or starts again) reporting, so that every node agrees on who
//! is up, and with it on who runs which health check (rendezvous placement over the members that
//! are up).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_registry::hash::rendezvous_owner;
use cairn_registry::Op;

use super::Cluster;
use crate::rpc::PATH_ALIVE;
use crate::NodeId;

/// How often every node tells the leader it is alive.
const ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A member the leader has not heard from for this long is marked down (a committed entry), and
/// its checks move to the others. Long enough to ride out a GC pause or a slow disk, short
/// enough that a dead node's instances are noticed within seconds.
const DOWN_AFTER: Duration = Duration::from_secs(5);

impl Cluster {
    pub(crate) fn heard_from_leader(&self) {
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
}

/// Every node tells the leader, once a second, that it is alive.
pub(super) async fn report_alive(cluster: std::sync::Weak<Cluster>) {
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
        let res: Result<(), String> = c.call_member(leader, PATH_ALIVE, &(), ALIVE_INTERVAL).await;
        if let Err(e) = res {
            tracing::debug!("cannot report to leader {leader}: {e}");
        }
    }
}

/// On the leader: marks members down when they stop reporting, and up when they come back,
/// through the log so that every node agrees on who runs which check.
pub(super) async fn watch_liveness(cluster: std::sync::Weak<Cluster>) {
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
        // Tokens expire by the leader's clock: once one is due, an entry stamped with the
        // leader's time deletes it on every node alike.
        let due = c.registry.acl().next_expiry();
        if due.is_some_and(|t| t <= super::batch::now_ms(c.options.clock_offset_ms)) {
            if let Err(e) = c.write(Op::AclExpireTokens).await {
                tracing::warn!("cannot expire tokens: {e}");
            }
        }
    }
}
