//! A leader that gets SIGTERM hands leadership to the most up-to-date voter before it stops, so
//! that a rolling restart pauses writes only briefly.

use std::time::{Duration, Instant};

use super::load::{longest_gap, Load};
use crate::harness::{eventually, get, Cluster};

/// The longest pause in acknowledged writes a rolling restart may cause here: far below the
/// 1 s minimum election time-out, which a restart of the leader without a handover costs at
/// least (plus the leader's lease: 3-4 s were measured). The figure measured is printed; the
/// issue's goal (300 ms) is for the container test, this bound leaves room for a busy machine.
const MAX_GAP: Duration = Duration::from_millis(900);

/// How long each node stays down in the rolling restart.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// Waits until node `id` runs, follows a leader, and has applied what the leader had committed
/// when it came back.
async fn wait_caught_up(c: &Cluster, id: u64) {
    let leader = c.leader().await;
    let (_, status) = c.get(leader, "/v1/cluster").await;
    let target = status["commit_index"].as_u64().unwrap_or(0);
    eventually(
        Duration::from_secs(30),
        "restarted node caught up",
        || async {
            let (code, body) = get(&c.http, &c.node(id).url("/v1/cluster")).await;
            code == 200
                && !body["leader"].is_null()
                && body["applied_index"].as_u64() >= Some(target)
        },
    )
    .await;
}

/// Waits for node `id` to exit without blocking the runtime (the load runs on it).
pub async fn wait_exit(
    c: &mut Cluster,
    id: u64,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = c.node_mut(id).wait_exit(Duration::ZERO) {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn t10_rolling_restart_under_load_hands_leadership_over_without_an_election_pause() {
    let _busy = crate::harness::busy().await;
    let mut c = Cluster::start(3, &[]).await;
    let first = c.leader().await;
    let urls: Vec<String> = (1..=3).map(|n| c.node(n).url("")).collect();
    let load = Load::start(urls, 4);
    eventually(Duration::from_secs(10), "load running", || async {
        load.acked() > 50
    })
    .await;

    // The leader first (a handover for sure), then the others.
    let mut order = vec![first];
    order.extend((1..=3).filter(|n| *n != first));
    let started = Instant::now();
    let (mut leaders_stopped, mut handovers) = (0, 0);
    for id in order {
        let was_leader = c.leader().await == id;
        c.node(id).signal("TERM");
        let exited = wait_exit(&mut c, id, Duration::from_secs(30)).await;
        assert!(
            exited.is_some_and(|s| s.success()),
            "node {id} exit: {exited:?}"
        );
        if was_leader {
            leaders_stopped += 1;
            if c.node(id).log_contains("handed leadership over") {
                handovers += 1;
            }
        }
        // Down for a while, as a restarted container or host is: a leader restarted at once
        // would take its leadership back by itself, with or without a handover.
        tokio::time::sleep(DOWN_FOR).await;
        c.node_mut(id).restart();
        wait_caught_up(&c, id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = load.refused.load(std::sync::atomic::Ordering::Relaxed);
    let unanswered = load.unanswered.load(std::sync::atomic::Ordering::Relaxed);
    let failures = load.failures.lock().clone();
    let acks = load.stop().await;
    eprintln!("failures:\n{}", failures.join("\n"));
    let (gap, at) = longest_gap(&acks);
    eprintln!(
        "rolling restart: {} writes acknowledged in {:?}, {handovers} handover(s) of {leaders_stopped} leader(s) stopped, longest gap \
         {gap:?} (at +{:?}), {refused} refused, {unanswered} unanswered",
        acks.len(),
        started.elapsed(),
        at.map(|a| a.saturating_duration_since(started)),
    );
    assert!(gap <= MAX_GAP, "longest pause in writes {gap:?}");
    assert!(leaders_stopped >= 1);
    assert_eq!(
        handovers, leaders_stopped,
        "a leader stopped without a handover"
    );

    // Nothing acknowledged was lost: every write is on every node.
    let want: std::collections::BTreeSet<String> = acks.into_iter().map(|(_, id)| id).collect();
    for n in 1..=3 {
        eventually(
            Duration::from_secs(10),
            "acknowledged writes everywhere",
            || async {
                let have: std::collections::BTreeSet<String> =
                    c.instance_ids(n, "load").await.into_iter().collect();
                want.is_subset(&have)
            },
        )
        .await;
    }
}
