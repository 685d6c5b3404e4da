//! Fault injection with linearizability checking, Jepsen-style, against a three-node process
//! cluster whose cluster RPC runs through fault-injecting proxies.
//!
//! Each cycle runs concurrent clients (register, deregister, consistent read) on a fresh
//! service while the nemesis injects one fault and heals it. Then every node must reach the same
//! applied index with the same state digest, and the cycle's history (with each node's final
//! read) must be linearizable per instance key, with no acknowledged write missing, no index
//! going back, and writes acknowledged again soon after the fault.
//!
//! `cargo test` runs the short profile. The long one:
//!
//! ```text
//! CAIRN_FAULTS=long cargo test --release -p cairn-node --test it faults::faults_keep -- --nocapture
//! ```
//!
//! `CAIRN_FAULTS_SEED=<n>` replays a run's schedule (the report prints the seed; timing still
//! varies, so a replay is the same faults in the same order, not the same interleaving).
//!
//! The cluster RPC runs on mutual TLS, as in production; `CAIRN_FAULTS_RPC=plain` runs the
//! suite with plaintext RPC instead.

mod cluster;
mod linearizable;
mod nemesis;
mod verify;
mod workload;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness;
use crate::harness::proxy;
use cluster::FaultCluster;
use nemesis::{Fault, Profile};
use verify::FinalRead;
use workload::Recorder;

/// Instance keys per cycle, and concurrent clients.
const KEYS: usize = 6;
const CLIENTS: usize = 5;
/// After a fault heals, writes must be acknowledged again within this long...
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// ...and then at this rate.
const MIN_WRITES_PER_SEC: usize = 20;

/// Every node snapshots often, so faults keep landing on snapshot boundaries.
const NODE_ARGS: &[&str] = &["--snapshot-threshold", "200", "--snapshot-keep-logs", "20"];

/// Writes straight to stderr: the test harness captures `eprintln!`, and the report must show
/// in CI logs even when the run passes.
macro_rules! report {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(Default)]
struct Totals {
    faults: BTreeMap<&'static str, usize>,
    acked: usize,
    reads: usize,
    unknown: usize,
    failed: usize,
    lost: usize,
    violations: usize,
    passed: usize,
    failed_cycles: usize,
    recoveries: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_keep_the_registry_linearizable() {
    let _busy = crate::harness::busy().await;
    let profile = match std::env::var("CAIRN_FAULTS").as_deref() {
        Ok("long") => Profile::long(),
        Ok("short") | Err(_) => Profile::short(),
        Ok(other) => panic!("CAIRN_FAULTS={other:?}: expected short or long"),
    };
    let seed = match std::env::var("CAIRN_FAULTS_SEED") {
        Ok(s) => s.parse().expect("CAIRN_FAULTS_SEED is a number"),
        Err(_) => rand::random::<u32>() as u64,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let schedule = profile.schedule(&mut rng);
    report!(
        "faults: profile {} seed {seed}: {} cycles (CAIRN_FAULTS_SEED={seed} replays the schedule)",
        profile.name,
        schedule.len()
    );

    let mut c = FaultCluster::start(3, NODE_ARGS, |_| Vec::new()).await;
    let recorder = Recorder::new();
    let mut t = Totals::default();
    let started = Instant::now();
    for (n, &fault) in schedule.iter().enumerate() {
        let outcome = cycle(&mut c, &recorder, n, fault, &profile, &mut rng).await;
        *t.faults.entry(fault.class()).or_default() += 1;
        match outcome {
            Ok(cycle) => {
                t.acked += cycle.verdict.acked;
                t.reads += cycle.verdict.reads;
                t.unknown += cycle.verdict.unknown;
                t.failed += cycle.verdict.failed;
                t.lost += cycle.verdict.lost;
                t.violations += cycle.verdict.violations.len();
                t.recoveries.push(cycle.recovery);
                let ok = cycle.verdict.violations.is_empty();
                report!(
                    "cycle {n:>3} {:<10} {}: acked {} reads {} unknown {} failed {}, writes again after {:.2?}, {}",
                    fault.class(),
                    cycle.what,
                    cycle.verdict.acked,
                    cycle.verdict.reads,
                    cycle.verdict.unknown,
                    cycle.verdict.failed,
                    cycle.recovery,
                    if ok { "ok" } else { "VIOLATION" }
                );
                for v in &cycle.verdict.violations {
                    report!("    {v}");
                }
                if ok {
                    t.passed += 1;
                } else {
                    t.failed_cycles += 1;
                    report!("{}", c.logs());
                }
            }
            Err(e) => {
                t.violations += 1;
                t.failed_cycles += 1;
                report!("cycle {n:>3} {:<10} {fault:?}: FAILED: {e}", fault.class());
                report!("{}", c.logs());
                // The cluster may be wedged; later cycles would only repeat the failure.
                break;
            }
        }
    }
    t.recoveries.sort();
    let median = t
        .recoveries
        .get(t.recoveries.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = t.recoveries.last().copied().unwrap_or_default();
    report!(
        "faults: profile {} seed {seed}, {:.0?}: {} cycles ({}), {} writes acknowledged, {} consistent reads, {} unknown outcomes, {} refused; {} lost writes, {} violations; writes again after a fault: median {median:.2?}, max {max:.2?}",
        profile.name,
        started.elapsed(),
        t.passed + t.failed_cycles,
        t.faults.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        t.acked,
        t.reads,
        t.unknown,
        t.failed,
        t.lost,
        t.violations,
    );
    report!("{} passed, {} failed", t.passed, t.failed_cycles);
    assert_eq!(t.failed_cycles, 0, "see the report above (seed {seed})");
    assert_eq!(t.passed, schedule.len());
}

struct Cycle {
    what: String,
    recovery: Duration,
    verdict: verify::Verdict,
}

async fn cycle(
    c: &mut FaultCluster,
    recorder: &Arc<Recorder>,
    n: usize,
    fault: Fault,
    profile: &Profile,
    rng: &mut StdRng,
) -> Result<Cycle, String> {
    let service = format!("f{n:04}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(workload::run(
        recorder.clone(),
        c.reachable(),
        service.clone(),
        KEYS,
        CLIENTS,
        rng.gen(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let injected = nemesis::inject(c, fault, profile, rng).await;
    let healed = recorder.now();
    let what = match injected {
        Ok(what) => what,
        Err(e) => {
            stop.store(true, Ordering::Release);
            let _ = clients.await;
            return Err(format!("{fault:?} could not be injected: {e}"));
        }
    };

    // Progress: a write invoked after the heal is acknowledged soon, and then many more.
    let deadline = Instant::now() + RECOVERY_LIMIT;
    while recorder.acked_since(healed) == 0 {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Release);
            let _ = clients.await;
            return Err(format!(
                "{what}: no write acknowledged within {RECOVERY_LIMIT:?} of healing"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recorder.now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rate = recorder.acked_between(recovered, recovered + 1_000_000_000);
    stop.store(true, Ordering::Release);
    let _ = clients.await;

    let (index, digests) = c.converge(Duration::from_secs(60)).await?;
    let final_at = recorder.now();
    let mut finals = Vec::new();
    for (node, url) in c.reachable() {
        let res = c
            .http
            .get(format!("{url}/v1/services/{service}"))
            .send()
            .await
            .map_err(|e| format!("final read on node {node}: {e}"))?;
        let status = res.status().as_u16();
        let index = harness::header_u64(&res, "x-cairn-index")
            .ok_or(format!("final read on node {node}: no index"))?;
        let body: Value = res.json().await.map_err(|e| e.to_string())?;
        let values = match status {
            200 => workload::parse_values(&body).ok_or(format!("final read: {body}"))?,
            404 => BTreeMap::new(),
            _ => return Err(format!("final read on node {node}: {status} {body}")),
        };
        finals.push(FinalRead {
            node,
            index,
            values,
        });
    }
    let records = recorder.take();
    let mut verdict = verify::verify(&records, &finals, KEYS, final_at);
    let distinct: std::collections::BTreeSet<&String> = digests.values().collect();
    if distinct.len() != 1 {
        verdict.violations.push(format!(
            "state digests differ at applied index {index}: {digests:?}"
        ));
    }
    if rate < MIN_WRITES_PER_SEC {
        verdict.violations.push(format!(
            "only {rate} writes acknowledged in the second after recovery (minimum {MIN_WRITES_PER_SEC})"
        ));
    }
    Ok(Cycle {
        what,
        recovery: Duration::from_nanos(recovered - healed),
        verdict,
    })
}

/// TTL expiry and deregister_after decide the same on every node, whatever each node's wall
/// clock says (one runs 30 s ahead, one 30 s behind) and across a snapshot install.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_decisions_agree_across_skewed_clocks_and_snapshots() {
    let mut c = FaultCluster::start(
        3,
        &["--snapshot-threshold", "20", "--snapshot-keep-logs", "0"],
        |id| match id {
            2 => vec!["--test-clock-offset".into(), "30s".into()],
            3 => vec!["--test-clock-offset".into(), "-30s".into()],
            _ => Vec::new(),
        },
    )
    .await;
    let ttl = Duration::from_secs(3);
    let deregister_after = Duration::from_secs(3);
    // live-*: heartbeated all along; dead-*: never; gone-*: never, and deregistered after.
    let names: Vec<String> = (0..4)
        .flat_map(|i| {
            [
                format!("live-{i}"),
                format!("dead-{i}"),
                format!("gone-{i}"),
            ]
        })
        .collect();
    let url = c.reachable()[0].1.clone();
    let mut registered = BTreeMap::new();
    for name in &names {
        let mut check = json!({"kind": "ttl", "ttl": "3s", "initial_status": "passing"});
        if name.starts_with("gone") {
            check["deregister_after"] = json!("3s");
        }
        let res = c
            .http
            .put(format!("{url}/v1/services/lease/instances/{name}"))
            .json(&json!({"address": "10.7.0.1", "port": 80, "checks": [check]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        registered.insert(name.clone(), Instant::now());
    }
    let stop = Arc::new(AtomicBool::new(false));

    // Heartbeats for live-*, through every node in turn.
    let beats = {
        let (stop, http, urls) = (stop.clone(), c.http.clone(), c.reachable());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                for n in 0..4 {
                    let url = &urls[i % urls.len()].1;
                    i += 1;
                    let _ = http
                        .put(format!(
                            "{url}/v1/services/lease/instances/live-{n}/heartbeat"
                        ))
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    // Watch every node's replica: when each instance first looked critical, and first was gone.
    type Seen = BTreeMap<(u64, String, &'static str), Duration>;
    let observe = {
        let (stop, http, urls) = (stop.clone(), c.http.clone(), c.reachable());
        let registered = registered.clone();
        tokio::spawn(async move {
            let mut seen: Seen = BTreeMap::new();
            // An instance is "gone" from a replica only once that replica has had it: a
            // follower that has not yet applied the registration has nothing to lose.
            let mut had: std::collections::BTreeSet<(u64, String)> = Default::default();
            while !stop.load(Ordering::Acquire) {
                for (node, url) in &urls {
                    let Ok(res) = http
                        .get(format!("{url}/v1/services/lease"))
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let Ok(body) = res.json::<Value>().await else {
                        continue;
                    };
                    let instances = body["instances"].as_array().cloned().unwrap_or_default();
                    for (name, at) in &registered {
                        let state = match instances.iter().find(|i| i["id"] == name.as_str()) {
                            None if !had.contains(&(*node, name.clone())) => continue,
                            None => "gone",
                            Some(i) => {
                                had.insert((*node, name.clone()));
                                if i["checks"][0]["status"] != "critical" {
                                    continue;
                                }
                                "critical"
                            }
                        };
                        seen.entry((*node, name.clone(), state))
                            .or_insert(at.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };

    // Leadership moves (possibly to a skewed node) and a follower catches up by snapshot, while
    // the leases run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    c.kill(leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart(leader);
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = c.followers(leader)[0];
    c.net.isolate(follower, &c.ids());
    let leader_url = c.nodes[&leader].url("");
    for i in 0..60 {
        let _ = c
            .http
            .put(format!("{leader_url}/v1/services/filler/instances/f{i}"))
            .json(&json!({"address": "10.8.0.1", "port": 80}))
            .send()
            .await;
    }
    c.net.heal();
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop.store(true, Ordering::Release);
    beats.await.unwrap();
    let seen = observe.await.unwrap();
    let (index, digests) = c.converge(Duration::from_secs(30)).await.unwrap();

    let installed = c.nodes[&follower].log_count("installed a snapshot from the leader");
    assert!(
        installed > 0,
        "node {follower} caught up without a snapshot"
    );
    let distinct: std::collections::BTreeSet<&String> = digests.values().collect();
    assert_eq!(
        distinct.len(),
        1,
        "digests differ at index {index}: {digests:?}"
    );
    // Not early: a 30 s skew would show as expiry at once (less a little for the time from
    // apply on the owner to the acknowledgement here). Late by at most a leader change plus a
    // restarted owner's full TTL.
    let slack = Duration::from_millis(300);
    let late = Duration::from_secs(8);
    for node in c.ids() {
        for name in &names {
            let at = |state| seen.get(&(node, name.clone(), state)).copied();
            let within = |state, earliest: Duration| {
                let after =
                    at(state).unwrap_or_else(|| panic!("{name} never {state} on node {node}"));
                assert!(
                    after + slack >= earliest && after < earliest + late,
                    "{name} {state} after {after:?} on node {node}; expected from {earliest:?}"
                );
            };
            match name.split('-').next() {
                Some("live") => assert_eq!(
                    (at("critical"), at("gone")),
                    (None, None),
                    "{name} must stay passing on node {node}"
                ),
                Some("dead") => {
                    within("critical", ttl);
                    assert_eq!(at("gone"), None, "{name} has no deregister_after");
                }
                _ => {
                    within("critical", ttl);
                    within("gone", ttl + deregister_after);
                }
            }
        }
    }
    // gone-* must be gone everywhere by now.
    for (node, url) in c.reachable() {
        let body: Value = c
            .http
            .get(format!("{url}/v1/services/lease"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        assert!(
            ids.iter().all(|i| !i.starts_with("gone")),
            "node {node}: {ids:?}"
        );
        assert_eq!(ids.len(), 8, "node {node}: {ids:?}");
    }
}

/// Found by the lossy-link faults: a follower forwarded a write, the connection to the leader
/// broke after the request was sent, and the follower retried it as if it had never arrived. The
/// first copy had committed, so the write applied twice, the second time after later writes
/// (an older registration reappeared after a newer one and after a deregistration).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regression_lost_forward_reply_is_not_retried() {
    let c = FaultCluster::start(3, &[], |_| Vec::new()).await;
    let leader = c.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let follower = c.followers(leader)[0];
    let before = c.status(leader).await.unwrap().last_log_index;
    c.net.set(follower, leader, proxy::Link::DropReplies);
    let res = c
        .http
        .put(c.nodes[&follower].url("/v1/services/once/instances/i1"))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    c.net.heal();
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "the outcome is unknown, not refused: {body}"
    );
    let after = c.status(leader).await.unwrap().last_log_index;
    assert_eq!(
        after - before,
        1,
        "the write was proposed {} times",
        after - before
    );
    let (_, digests) = c.converge(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        digests
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1
    );
}
