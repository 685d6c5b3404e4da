//! The faults, one at a time, on a schedule drawn from the run's seed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use super::cluster::FaultCluster;
use crate::harness::proxy::Link;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    /// The leader cut off from both others: it is the minority.
    IsolateLeader,
    /// Nobody reaches one node's RPC port; its own requests get through.
    CutInbound,
    /// One node's requests are lost; the others reach it.
    CutOutbound,
    Delay,
    Lossy,
    /// A follower cut off until the leader's log was purged past it, so it needs a snapshot.
    SnapshotCatchUp,
    RemoveReadd,
    ReplaceWiped,
}

impl Fault {
    pub fn class(self) -> &'static str {
        match self {
            Fault::KillLeader | Fault::KillFollower => "kill",
            Fault::PauseLeader | Fault::PauseFollower => "pause",
            Fault::RemoveReadd | Fault::ReplaceWiped => "membership",
            _ => "partition",
        }
    }
}

const PARTITIONS: [Fault; 6] = [
    Fault::IsolateLeader,
    Fault::CutInbound,
    Fault::CutOutbound,
    Fault::Delay,
    Fault::Lossy,
    Fault::SnapshotCatchUp,
];

/// How many faults of each class a run injects, and how long they last.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub kills: usize,
    pub partitions: usize,
    pub pauses: usize,
    pub memberships: usize,
    /// Seconds a pause lasts (the issue asks for 2-10 s).
    pub pause_secs: (f64, f64),
    /// Seconds a partition lasts.
    pub hold_secs: (f64, f64),
}

impl Profile {
    pub fn short() -> Self {
        Profile {
            name: "short",
            kills: 10,
            partitions: 8,
            pauses: 3,
            memberships: 2,
            pause_secs: (2.0, 4.0),
            hold_secs: (2.0, 4.0),
        }
    }

    pub fn long() -> Self {
        Profile {
            name: "long",
            kills: 200,
            partitions: 60,
            pauses: 20,
            memberships: 10,
            pause_secs: (2.0, 10.0),
            hold_secs: (3.0, 6.0),
        }
    }

    /// Every kind of fault at least once (when the counts allow), in a seeded order.
    pub fn schedule(&self, rng: &mut StdRng) -> Vec<Fault> {
        let mut faults = Vec::new();
        faults.extend((0..self.kills).map(|i| [Fault::KillLeader, Fault::KillFollower][i % 2]));
        faults.extend((0..self.pauses).map(|i| [Fault::PauseLeader, Fault::PauseFollower][i % 2]));
        faults.extend((0..self.partitions).map(|i| PARTITIONS[i % PARTITIONS.len()]));
        faults.extend(
            (0..self.memberships).map(|i| [Fault::RemoveReadd, Fault::ReplaceWiped][i % 2]),
        );
        faults.shuffle(rng);
        faults
    }
}

fn secs(rng: &mut StdRng, (lo, hi): (f64, f64)) -> Duration {
    Duration::from_secs_f64(rng.gen_range(lo..=hi))
}

/// Injects `fault`, holds it, and heals. Returns what was done, for the report.
pub async fn inject(
    c: &mut FaultCluster,
    fault: Fault,
    profile: &Profile,
    rng: &mut StdRng,
) -> Result<String, String> {
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let followers = c.followers(leader);
    let follower = *followers.choose(rng).expect("a follower");
    let ids = c.ids();
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let victim = if fault == Fault::KillLeader {
                leader
            } else {
                follower
            };
            let down = Duration::from_millis(rng.gen_range(100..1500));
            c.kill(victim);
            tokio::time::sleep(down).await;
            c.restart(victim);
            Ok(format!("kill -9 node {victim}, restarted after {down:.1?}"))
        }
        Fault::PauseLeader | Fault::PauseFollower => {
            let victim = if fault == Fault::PauseLeader {
                leader
            } else {
                follower
            };
            let d = secs(rng, profile.pause_secs);
            c.pause(victim);
            tokio::time::sleep(d).await;
            c.resume(victim);
            Ok(format!("SIGSTOP node {victim} for {d:.1?}"))
        }
        Fault::IsolateLeader => {
            let d = secs(rng, profile.hold_secs);
            c.net.isolate(leader, &ids);
            tokio::time::sleep(d).await;
            c.net.heal();
            Ok(format!(
                "leader {leader} isolated in the minority for {d:.1?}"
            ))
        }
        Fault::CutInbound | Fault::CutOutbound => {
            let victim = *ids.choose(rng).expect("a node");
            let d = secs(rng, profile.hold_secs);
            for &o in ids.iter().filter(|&&o| o != victim) {
                if fault == Fault::CutInbound {
                    c.net.set(o, victim, Link::Cut);
                } else {
                    c.net.set(victim, o, Link::Cut);
                }
            }
            tokio::time::sleep(d).await;
            c.net.heal();
            let dir = if fault == Fault::CutInbound {
                "to"
            } else {
                "from"
            };
            Ok(format!(
                "one-way cut of every link {dir} node {victim} for {d:.1?}"
            ))
        }
        Fault::Delay => {
            let delay = Duration::from_millis(rng.gen_range(20..250));
            let d = secs(rng, profile.hold_secs);
            c.net.set_all(&ids, Link::Delay(delay));
            tokio::time::sleep(d).await;
            c.net.heal();
            Ok(format!("{delay:?} delay on every link for {d:.1?}"))
        }
        Fault::Lossy => {
            let p = rng.gen_range(0.02..0.2);
            let d = secs(rng, profile.hold_secs);
            c.net.set_all(&ids, Link::Lossy(p));
            tokio::time::sleep(d).await;
            c.net.heal();
            Ok(format!(
                "connections reset with p={p:.2} per packet for {d:.1?}"
            ))
        }
        Fault::SnapshotCatchUp => snapshot_catch_up(c, leader, follower).await,
        Fault::RemoveReadd => {
            c.remove(follower).await?;
            tokio::time::sleep(secs(rng, profile.hold_secs)).await;
            c.add(follower).await?;
            c.wait_healthy(Duration::from_secs(60)).await?;
            Ok(format!("node {follower} removed and added back"))
        }
        Fault::ReplaceWiped => {
            let new = c.replace_wiped(follower).await?;
            c.wait_healthy(Duration::from_secs(60)).await?;
            Ok(format!(
                "node {follower} removed, wiped and replaced by node {new}"
            ))
        }
    }
}

/// What a node logs when it installs a snapshot sent by the leader.
const INSTALLED: &str = "installed a snapshot from the leader";

/// Cuts `follower` off, writes until the leader's log is purged past the follower's last
/// entry, heals, and checks that the follower caught up through a snapshot.
async fn snapshot_catch_up(c: &FaultCluster, leader: u64, follower: u64) -> Result<String, String> {
    let before = c.status(follower).await.ok_or("follower status")?;
    let installs = c.nodes[&follower].log_count(INSTALLED);
    c.net.isolate(follower, &c.ids());
    let leader_url = c.nodes[&leader].url("");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut filler = 0u64;
    loop {
        let s = c.status(leader).await.ok_or("leader status")?;
        // The log kept behind a snapshot must also be past the follower's end.
        if s.snapshot_index > before.last_log_index + 100 {
            break;
        }
        if Instant::now() > deadline {
            c.net.heal();
            return Err(format!(
                "leader did not snapshot past {}: {s:?}",
                before.last_log_index
            ));
        }
        for _ in 0..20 {
            filler += 1;
            let _ = c
                .http
                .put(format!(
                    "{leader_url}/v1/services/filler/instances/f{}",
                    filler % 50
                ))
                .json(&json!({"address": "10.8.0.1", "port": 1000 + filler % 50}))
                .send()
                .await;
        }
    }
    c.net.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.status(follower).await;
        if let Some(s) = &s {
            if c.nodes[&follower].log_count(INSTALLED) > installs {
                return Ok(format!(
                    "node {follower} cut off at index {}, caught up by snapshot at {}",
                    before.last_log_index, s.snapshot_index
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("node {follower} did not install a snapshot: {s:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
