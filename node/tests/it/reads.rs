//! Blocking queries, consistency modes and watch streams against running agents.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness;
use crate::harness::{eventually, Cluster};

async fn register(c: &Cluster, node: u64, service: &str, id: &str) -> u64 {
    c.register(node, service, id).await
}

/// The instance ids of a `GET /v1/services/{s}` answer, in its order.
fn ids_of(body: &Value) -> Vec<&str> {
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

/// Starts a (blocking) GET; it yields how long it took, the index header and the body.
fn spawn_blocking_read(
    c: &Cluster,
    url: String,
) -> tokio::task::JoinHandle<(Duration, u64, Value)> {
    let http = c.http.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let res = http.get(url).send().await.unwrap();
        let idx = harness::header_u64(&res, "x-cairn-index").unwrap();
        (t.elapsed(), idx, res.json().await.unwrap_or(Value::Null))
    })
}

/// GET with the index header parsed.
async fn get_indexed(c: &Cluster, node: u64, path: &str) -> (u16, u64, Value) {
    let res = c
        .http
        .get(c.node(node).url(path))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let index = harness::header_u64(&res, "x-cairn-index").unwrap_or(0);
    (status, index, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn t10_a_blocking_read_wakes_on_its_service_only_and_times_out_unchanged() {
    let c = Cluster::start(1, &[]).await;
    register(&c, 1, "web", "a").await;
    register(&c, 1, "db", "x").await;
    let (_, index, _) = get_indexed(&c, 1, "/v1/services/web").await;
    assert!(index >= 1);

    // A change to another service does not wake it: it returns at the end of its wait.
    let url = c
        .node(1)
        .url(&format!("/v1/services/web?index={index}&wait=1s"));
    let waiter = spawn_blocking_read(&c, url);
    tokio::time::sleep(Duration::from_millis(200)).await;
    register(&c, 1, "db", "y").await;
    let (elapsed, same, _) = waiter.await.unwrap();
    assert_eq!(same, index);
    assert!(
        elapsed >= Duration::from_millis(1000),
        "woken early after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1000 + 1000 / 16 + 500),
        "{elapsed:?}"
    );

    // A change to its own service wakes it within 100 ms.
    let url = c
        .node(1)
        .url(&format!("/v1/services/web?index={index}&wait=30s"));
    let waiter = tokio::spawn({
        let http = c.http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            (Instant::now(), res.json::<Value>().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written_at = Instant::now();
    let new_index = register(&c, 1, "web", "b").await;
    let (woke_at, body) = waiter.await.unwrap();
    let latency = woke_at.duration_since(written_at);
    assert!(
        latency < Duration::from_millis(100),
        "woke {latency:?} after the write returned"
    );
    assert_eq!(body["index"], new_index);
    assert_eq!(body["instances"].as_array().unwrap().len(), 2);

    // Bad parameters are refused.
    assert_eq!(c.get(1, "/v1/services/web?index=x").await.0, 400);
    assert_eq!(c.get(1, "/v1/services/web?wait=forever").await.0, 400);
    assert_eq!(c.get(1, "/v1/services/web?bogus=1").await.0, 400);
}

#[tokio::test]
async fn t20_a_health_flip_does_not_wake_a_service_list_watcher() {
    let c = Cluster::start(1, &[]).await;
    register(&c, 1, "web", "a").await;
    let (_, list_index, _) = get_indexed(&c, 1, "/v1/services").await;
    let url = c
        .node(1)
        .url(&format!("/v1/services?index={list_index}&wait=1s"));
    let waiter = spawn_blocking_read(&c, url);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _) = c
        .put(
            1,
            "/v1/services/web/instances/a/health",
            &json!({"status": "critical"}),
        )
        .await;
    assert_eq!(s, 200);
    let (elapsed, idx, _) = waiter.await.unwrap();
    assert_eq!(idx, list_index, "the service list did not change");
    assert!(
        elapsed >= Duration::from_millis(1000),
        "woken by a health flip after {elapsed:?}"
    );

    // A new service does wake it.
    let url = c
        .node(1)
        .url(&format!("/v1/services?index={list_index}&wait=30s"));
    let waiter = tokio::spawn({
        let http = c.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    register(&c, 1, "db", "x").await;
    let body = waiter.await.unwrap();
    assert_eq!(body["services"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn t30_a_consistent_read_on_a_follower_sees_the_write_just_made_on_the_leader() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    for i in 0..20 {
        let id = format!("c{i}");
        register(&c, leader, "web", &id).await;
        let f = followers[i % 2];
        let (status, body) = c.get(f, "/v1/services/web?consistent").await;
        assert_eq!(status, 200, "{body}");
        let ids = ids_of(&body);
        assert!(
            ids.contains(&id.as_str()),
            "follower {f} missed {id}: {ids:?}"
        );
    }
}

#[tokio::test]
async fn t40_max_stale_refuses_on_a_node_cut_off_from_the_leader() {
    let mut c = Cluster::start(3, &[]).await;
    register(&c, 1, "web", "a").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    eventually(Duration::from_secs(5), "fresh follower read", || async {
        c.get(follower, "/v1/services/web?max_stale=2s").await.0 == 200
    })
    .await;
    for n in (1..=3).filter(|n| *n != follower) {
        c.node_mut(n).kill();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = c.get(follower, "/v1/services/web?max_stale=2s").await;
    assert_eq!(status, 503, "{body}");
    // A plain read still answers from the local replica.
    assert_eq!(c.get(follower, "/v1/services/web").await.0, 200);
    assert_eq!(c.get(follower, "/v1/services/web?consistent").await.0, 503);
}

/// Reads Server-Sent Events from a response until `n` events came or `timeout` passed.
pub(crate) async fn read_events(
    res: &mut reqwest::Response,
    n: usize,
    timeout: Duration,
) -> Vec<(String, u64, Value)> {
    let deadline = Instant::now() + timeout;
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(left, res.chunk()).await else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut kind, mut id, mut data) = (String::new(), 0, Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                }
            }
            if !kind.is_empty() {
                events.push((kind, id, data));
            }
        }
    }
    events
}

async fn open_watch(c: &Cluster, node: u64, last: Option<u64>) -> reqwest::Response {
    let mut req = c
        .http
        .get(c.node(node).url("/v1/services/web/watch"))
        .timeout(Duration::from_secs(60));
    if let Some(l) = last {
        req = req.header("last-event-id", l.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res
}

#[tokio::test]
async fn t50_a_watch_stream_resumes_without_losing_a_change_across_reconnects_and_leader_death() {
    let mut c = Cluster::start(3, &[]).await;
    register(&c, 1, "web", "w0").await;
    let leader = c.leader().await;
    let watched = (1..=3).find(|n| *n != leader).unwrap();
    let other = (1..=3).find(|n| *n != leader && *n != watched).unwrap();

    let mut res = open_watch(&c, watched, None).await;
    let first = read_events(&mut res, 1, Duration::from_secs(5)).await;
    assert_eq!(first[0].0, "state");
    let mut last = first[0].1;

    let mut expected = Vec::new();
    for i in 1..=3 {
        expected.push(register(&c, leader, "web", &format!("w{i}")).await);
    }
    let got = read_events(&mut res, 3, Duration::from_secs(5)).await;
    assert_eq!(got.iter().map(|e| e.1).collect::<Vec<_>>(), expected);
    assert!(got.iter().all(|e| e.0 == "change"));
    last = got.last().map_or(last, |e| e.1);
    drop(res);

    // Changes while disconnected are replayed one by one after a reconnect.
    let mut missed = Vec::new();
    for i in 4..=6 {
        missed.push(register(&c, other, "web", &format!("w{i}")).await);
    }
    let mut res = open_watch(&c, watched, Some(last)).await;
    let replay = read_events(&mut res, 3, Duration::from_secs(5)).await;
    assert_eq!(replay.iter().map(|e| e.1).collect::<Vec<_>>(), missed);
    assert_eq!(replay[2].2["instances"].as_array().unwrap().len(), 7);
    last = replay[2].1;

    // The leader dies; writes go on through the survivors and the stream keeps flowing.
    c.node_mut(leader).kill();
    c.leader().await;
    let w7 = register(&c, other, "web", "w7").await;
    let after = read_events(&mut res, 1, Duration::from_secs(10)).await;
    assert_eq!(after[0].1, w7);
    assert!(after[0].1 > last);

    // An index too old to replay gets the full state instead.
    drop(res);
    for i in 8..60 {
        register(&c, other, "web", &format!("w{i}")).await;
    }
    let mut res = open_watch(&c, watched, Some(w7)).await;
    let state = read_events(&mut res, 1, Duration::from_secs(5)).await;
    assert_eq!(
        state[0].0, "state",
        "52 changes later, w7 is beyond the 32 kept"
    );
    assert_eq!(state[0].2["instances"].as_array().unwrap().len(), 60);
}

#[tokio::test]
async fn t60_too_many_waiting_requests_from_one_client_get_429() {
    let c = Cluster::start(1, &["--max-waiting-per-client", "2"]).await;
    register(&c, 1, "web", "a").await;
    let (_, index, _) = get_indexed(&c, 1, "/v1/services/web").await;
    let url = c
        .node(1)
        .url(&format!("/v1/services/web?index={index}&wait=5s"));
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (c.http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = c.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    for h in holders {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Slots are released: a new blocking read is accepted.
    let (status, _) = c
        .get(1, &format!("/v1/services/web?index={index}&wait=100ms"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn t70_shutdown_ends_open_blocking_reads_and_streams() {
    let mut c = Cluster::start(1, &[]).await;
    register(&c, 1, "web", "a").await;
    let (_, index, _) = get_indexed(&c, 1, "/v1/services/web").await;
    let url = c
        .node(1)
        .url(&format!("/v1/services/web?index={index}&wait=60s"));
    let blocked = tokio::spawn({
        let http = c.http.clone();
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let mut stream = open_watch(&c, 1, None).await;
    read_events(&mut stream, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    c.node(1).signal("TERM");
    let status = c
        .node_mut(1)
        .wait_exit(Duration::from_secs(8))
        .expect("exited");
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert_eq!(
        blocked.await.unwrap().unwrap(),
        200,
        "the blocking read was answered"
    );
    let end = tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "the stream ended");
}

/// The index of a service whose last instance was deregistered came from the in-memory watch
/// history, which a restart forgets: the same read answered the removal index, then 1 after a
/// restart, so a blocking client went back in time. Found while writing the fault tests' index
/// check.
#[tokio::test]
async fn regression_emptied_service_index_survives_a_restart() {
    let mut c = Cluster::start(1, &[]).await;
    register(&c, 1, "gone", "g1").await;
    let (status, body) = c.delete(1, "/v1/services/gone/instances/g1").await;
    assert_eq!(status, 200, "{body}");
    let removed = body["index"].as_u64().unwrap();
    let (status, before, _) = get_indexed(&c, 1, "/v1/services/gone").await;
    assert_eq!((status, before), (404, removed));
    c.node_mut(1).kill();
    c.node_mut(1).restart();
    c.wait_voters(1).await;
    let (status, after, _) = get_indexed(&c, 1, "/v1/services/gone").await;
    assert_eq!(status, 404);
    assert!(after >= before, "index went back from {before} to {after}");
}

/// A leader killed and restarted before another node stands leads again in the same term
/// (openraft 0.9 restores it without an election), with the commit index it had stored. That can
/// be behind a write the cluster committed and a follower already served: the commit reached the
/// follower, the crash came before the leader recorded it. Found by the long fault profile: a
/// `?consistent` read after such a restart missed that write. This recreates the crash's data:
/// the leader's log holds the write (appends are synced before anything is acknowledged), its
/// commit index and state machine are from before it.
#[tokio::test(flavor = "multi_thread")]
async fn t80_a_leader_restored_after_a_crash_serves_consistent_reads_with_every_committed_write() {
    let mut c = Cluster::start(3, &[]).await;
    c.wait_voters(3).await;
    let leader = c.leader().await;
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let (keeps, lags) = (others[0], others[1]);
    register(&c, leader, "web", "a").await;
    for n in 1..=3 {
        eventually(Duration::from_secs(10), "every node applied a", || async {
            c.instance_ids(n, "web").await == ["a"]
        })
        .await;
    }
    // The leader's data as of "a".
    for n in 1..=3 {
        c.node_mut(n).kill();
    }
    let data = c.node(leader).data_dir.clone();
    let as_of_a = c.dir.path().join("as-of-a");
    harness::copy_dir(&data, &as_of_a);
    // The leader first: it leads again at once, in its term, and the others follow it.
    c.node_mut(leader).restart();
    for n in &others {
        c.node_mut(*n).restart();
    }
    assert_eq!(c.leader().await, leader, "the restarted leader leads again");
    // "b" is committed by the leader and `keeps`; `lags` is down and never gets it.
    c.node_mut(lags).kill();
    register(&c, leader, "web", "b").await;
    eventually(
        Duration::from_secs(10),
        "the follower applied b",
        || async { c.instance_ids(keeps, "web").await == ["a", "b"] },
    )
    .await;
    c.node_mut(leader).kill();
    c.node_mut(keeps).kill();
    let spliced = splice_log(&data, &as_of_a);
    assert!(spliced > 0, "the leader's log had entries after a");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&as_of_a, &data).unwrap();

    // The leader comes back leading with "b" in its log only; `lags` answers its heartbeats.
    c.node_mut(leader).restart();
    c.node_mut(lags).restart();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while Instant::now() < deadline {
        for n in [leader, lags] {
            let (status, body) = c.get(n, "/v1/services/web?consistent").await;
            if status != 200 {
                continue;
            }
            answered += 1;
            let ids = ids_of(&body);
            assert_eq!(
                ids,
                ["a", "b"],
                "a consistent read on node {n} missed b, acknowledged before the crash"
            );
        }
    }
    assert!(answered > 0, "no consistent read was answered");
}

/// Copies the log entries (and the vote) of the data folder `from` that `into` lacks into it,
/// leaving `into`'s commit index and state machine as they were. Answers how many entries.
fn splice_log(from: &std::path::Path, into: &std::path::Path) -> usize {
    let cfs = ["logs", "raft", "registry", "sm"];
    let opts = rocksdb::Options::default();
    let src = rocksdb::DB::open_cf(&opts, from, cfs).unwrap();
    let dst = rocksdb::DB::open_cf(&opts, into, cfs).unwrap();
    let (src_logs, dst_logs) = (
        src.cf_handle("logs").unwrap(),
        dst.cf_handle("logs").unwrap(),
    );
    let last = dst
        .iterator_cf(dst_logs, rocksdb::IteratorMode::End)
        .next()
        .map(|e| u64::from_be_bytes(e.unwrap().0.as_ref().try_into().unwrap()))
        .unwrap_or(0);
    let mut spliced = 0;
    let start = (last + 1).to_be_bytes();
    let from_next = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
    for entry in src.iterator_cf(src_logs, from_next) {
        let (key, value) = entry.unwrap();
        dst.put_cf(dst_logs, key, value).unwrap();
        spliced += 1;
    }
    let vote = src
        .get_cf(src.cf_handle("raft").unwrap(), b"vote")
        .unwrap()
        .unwrap();
    dst.put_cf(dst.cf_handle("raft").unwrap(), b"vote", vote)
        .unwrap();
    dst.flush_wal(true).unwrap();
    spliced
}
