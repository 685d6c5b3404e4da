//! A kill -9 of the leader: the followers find its RPC port refusing connections and elect a new
//! leader without waiting out their lease on the dead one (raft/src/cluster/failover.rs).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{self, eventually, Cluster};

/// Without the fast path no follower grants a vote before its lease on the dead leader has run
/// out, the longest election time-out (2 s) after the last heartbeat: no write through a
/// survivor can be accepted sooner (3-4 s were measured).
const LEASE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn t10_after_kill_9_of_the_leader_a_write_is_accepted_before_its_lease_could_run_out() {
    let mut c = Cluster::start(3, &[]).await;
    c.wait_voters(3).await;
    let mut took = Vec::new();
    for round in 0..3 {
        let leader = c.leader().await;
        let survivor = (1..=3).find(|n| *n != leader).unwrap();
        c.register(survivor, "web", &format!("before-{round}"))
            .await;
        // Measured while nothing that loads the machine runs (see harness::quiet).
        let quiet = harness::quiet().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = Instant::now();
        c.node_mut(leader).kill();
        let mut attempt = 0;
        loop {
            let (status, _) = c
                .put(
                    survivor,
                    &format!("/v1/services/web/instances/after-{round}-{attempt}"),
                    &json!({"address": "10.0.0.2", "port": 80}),
                )
                .await;
            if status == 200 {
                break;
            }
            attempt += 1;
            assert!(
                killed_at.elapsed() < Duration::from_secs(20),
                "no write accepted 20 s after the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(killed_at.elapsed());
        drop(quiet);
        c.node_mut(leader).restart();
        eventually(
            Duration::from_secs(20),
            "the killed node follows",
            || async {
                c.get(leader, "/v1/cluster").await.1["leader"]
                    .as_u64()
                    .is_some_and(|l| l != leader)
            },
        )
        .await;
    }
    took.sort();
    eprintln!("kill -9 of the leader to the first write accepted: {took:?}");
    let gone = (1..=3)
        .filter(|n| c.node(*n).log_contains("its process is gone"))
        .count();
    assert!(gone > 0, "no follower saw the leader's port refuse");
    assert!(
        took[1] < LEASE,
        "median failover {:?}: no faster than waiting out the lease",
        took[1]
    );
}
