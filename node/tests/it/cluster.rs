//! Three-node clusters of real `cairn` processes: replication, failover, restart, catch-up by
//! snapshot, membership, and bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::harness;
use crate::harness::{eventually, Cluster, Node};

#[tokio::test]
async fn t10_registration_sent_to_a_follower_is_readable_on_all_nodes() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();

    let index = c.register(follower, "web", "web-1").await;
    assert!(index > 0);
    for n in 1..=3 {
        eventually(
            Duration::from_secs(5),
            "replicated to every node",
            || async { c.instance_ids(n, "web").await == ["web-1"] },
        )
        .await;
    }
    // Every node reports the same service index: the one the write committed at.
    for n in 1..=3 {
        let (_, body) = c.get(n, "/v1/services/web").await;
        assert_eq!(body["index"], index, "node {n}");
        assert_eq!(body["instances"][0]["modify_index"], index);
    }
    let (status, body) = c.get(follower, "/v1/services").await;
    assert_eq!(status, 200);
    assert_eq!(body["services"][0]["name"], "web");
    assert_eq!(body["services"][0]["passing"], 1);

    // Service settings are written through any node and read back from every replica.
    let (status, _) = c
        .put(
            follower,
            "/v1/services/web/settings",
            &json!({"fail_open": true, "dns_ttl": "30s"}),
        )
        .await;
    assert_eq!(status, 200);
    for n in 1..=3 {
        eventually(Duration::from_secs(5), "settings replicated", || async {
            let (_, body) = c.get(n, "/v1/services/web/settings").await;
            body["fail_open"] == true && body["dns_ttl"] == "30s"
        })
        .await;
    }
    let (status, _) = c
        .put(
            leader,
            "/v1/services/web/settings",
            &json!({"dns_ttl": "2d"}),
        )
        .await;
    assert_eq!(status, 400);

    // Deregistration through another follower, then 404 for what is gone.
    let other = (1..=3).find(|n| *n != leader && *n != follower).unwrap();
    let (status, _) = c.delete(other, "/v1/services/web/instances/web-1").await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(5),
        "deregistration replicated",
        || async { c.get(leader, "/v1/services/web").await.0 == 404 },
    )
    .await;
    let (status, body) = c.delete(follower, "/v1/services/web/instances/web-1").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn t15_concurrent_writes_are_batched_and_each_gets_its_own_result() {
    let c = Cluster::start(3, &[]).await;
    let mut writes = Vec::new();
    for i in 0..200u64 {
        let node = c.node(1 + i % 3);
        let req = c
            .http
            .put(node.url(&format!("/v1/services/burst/instances/b-{i}")))
            .json(&json!({"address": "10.0.0.9", "port": 9000}))
            .send();
        writes.push(tokio::spawn(async move {
            let res = req.await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["index"].as_u64())
        }));
    }
    // An op that fails inside a batch fails alone.
    let (status, body) = c.delete(2, "/v1/services/burst/instances/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let mut indexes = BTreeSet::new();
    for w in writes {
        let (status, index) = w.await.unwrap();
        assert_eq!(status, 200);
        indexes.insert(index.unwrap());
    }
    assert!(
        indexes.len() < 200,
        "200 concurrent writes should share log entries, got {} entries",
        indexes.len()
    );
    for n in 1..=3 {
        eventually(Duration::from_secs(5), "all 200 on every node", || async {
            c.instance_ids(n, "burst").await.len() == 200
        })
        .await;
    }
}

#[tokio::test]
async fn t20_leader_kill_then_writes_go_on_and_the_old_leader_catches_up() {
    let mut c = Cluster::start(3, &[]).await;
    let mut acknowledged = BTreeSet::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        c.register(1 + i % 3, "api", &id).await;
        acknowledged.insert(id);
    }

    let old_leader = c.leader().await;
    c.node_mut(old_leader).kill();
    let new_leader = c.leader().await;
    assert_ne!(new_leader, old_leader);

    let survivors: Vec<u64> = (1..=3).filter(|n| *n != old_leader).collect();
    for i in 0..20 {
        let id = format!("during-{i}");
        c.register(survivors[i % 2], "api", &id).await;
        acknowledged.insert(id);
    }

    c.node_mut(old_leader).restart();
    for i in 0..10 {
        let id = format!("after-{i}");
        c.register(1 + (i as u64) % 3, "api", &id).await;
        acknowledged.insert(id);
    }
    let expected: Vec<String> = acknowledged.into_iter().collect();
    for n in 1..=3 {
        eventually(
            Duration::from_secs(15),
            "every acknowledged write on every node",
            || async { c.instance_ids(n, "api").await == expected },
        )
        .await;
    }
}

#[tokio::test]
async fn t30_a_node_kept_down_past_a_log_purge_catches_up_by_snapshot() {
    let extra = ["--snapshot-threshold", "20", "--snapshot-keep-logs", "5"];
    let mut c = Cluster::start(3, &extra).await;
    let leader = c.leader().await;
    let down = (1..=3).find(|n| *n != leader).unwrap();
    c.node_mut(down).kill();

    let mut expected = Vec::new();
    for i in 0..80 {
        let id = format!("i-{i:03}");
        c.register(leader, "db", &id).await;
        expected.push(id);
    }
    let (_, status) = c.get(leader, "/v1/cluster").await;
    assert!(
        status["snapshot_index"].as_u64().unwrap() > 20,
        "the leader snapshotted and purged: {status}"
    );

    c.node_mut(down).restart();
    eventually(
        Duration::from_secs(20),
        "the restarted node has every instance",
        || async { c.instance_ids(down, "db").await == expected },
    )
    .await;
    let (_, status) = c.get(down, "/v1/cluster").await;
    assert!(
        status["snapshot_index"].as_u64().unwrap() > 0,
        "it caught up through a snapshot: {status}"
    );
}

#[tokio::test]
async fn t40_without_quorum_writes_fail_with_503_and_retry_after() {
    let mut c = Cluster::start(3, &[]).await;
    c.register(1, "web", "a").await;
    let survivor = c.leader().await;
    for n in (1..=3).filter(|n| *n != survivor) {
        c.node_mut(n).kill();
    }
    let res = c
        .http
        .put(c.node(survivor).url("/v1/services/web/instances/b"))
        .json(&json!({"address": "10.0.0.2", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        matches!(body["code"].as_str(), Some("unavailable" | "no_leader")),
        "{body}"
    );
    // Reads keep being served from the local replica.
    assert_eq!(c.instance_ids(survivor, "web").await, ["a"]);
}

#[tokio::test]
async fn t50_malformed_input_gets_4xx_and_changes_nothing() {
    let c = Cluster::start(1, &["--max-body-bytes", "4096"]).await;
    c.register(1, "web", "good").await;
    let (_, before) = c.get(1, "/v1/services").await;
    // The node's Raft figures come from openraft's metrics, published after the fact: wait until
    // they have caught up with the registration (log, commit and applied index agree), or the
    // comparison below would count the registration's own entries as the bad requests'.
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "the Raft metrics to settle",
        || async {
            let (_, s) = c.get(1, "/v1/cluster").await;
            s["applied_index"] == s["last_log_index"] && s["applied_index"] == s["commit_index"]
        },
    )
    .await;
    let (_, status_before) = c.get(1, "/v1/cluster").await;

    let put_raw = |path: &str, body: Vec<u8>| {
        let req = c.http.put(c.node(1).url(path)).body(body);
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    let bad: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/services/web/instances/x",
            b"{not json".to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            b"".to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            br#"{"address":"10.0.0.1","port":0}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            br#"{"address":"10.0.0.1","port":70000}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            br#"{"address":"not an ip!","port":80}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            br#"{"address":"10.0.0.1","port":80,"extra":1}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            br#"{"address":"10.0.0.1","port":80,"tags":["no spaces"]}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web_bad/instances/x",
            br#"{"address":"10.0.0.1","port":80}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/-web/instances/x",
            br#"{"address":"10.0.0.1","port":80}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/a%20b",
            br#"{"address":"10.0.0.1","port":80}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            format!(
                r#"{{"address":"10.0.0.1","port":80,"meta":{{"k":"{}"}}}}"#,
                "v".repeat(600)
            )
            .into_bytes(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/x",
            format!(
                r#"{{"address":"10.0.0.1","port":80,"meta":{{"k":"{}"}}}}"#,
                "v".repeat(5000)
            )
            .into_bytes(),
            413,
            "body_too_large",
        ),
        (
            "/v1/services/web/instances/good/health",
            br#"{"status":"sick"}"#.to_vec(),
            400,
            "invalid_argument",
        ),
        (
            "/v1/services/web/instances/missing/health",
            br#"{"status":"critical"}"#.to_vec(),
            404,
            "not_found",
        ),
    ];
    for (path, body, status, code) in bad {
        let got = put_raw(path, body.clone()).await;
        assert_eq!(
            got,
            (status, code.to_owned()),
            "PUT {path} {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(80)
                .collect::<String>()
        );
    }
    let (status, _) = c.get(1, "/v1/services/web?health=sometimes").await;
    assert_eq!(status, 400);
    let (status, body) = c.get(1, "/v1/services/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let (_, after) = c.get(1, "/v1/services").await;
    assert_eq!(before, after, "no bad request changed the registry");
    let (_, status_after) = c.get(1, "/v1/cluster").await;
    // The 404 health write is a committed no-op; nothing else may have reached the log.
    assert!(
        status_after["last_log_index"].as_u64().unwrap()
            <= status_before["last_log_index"].as_u64().unwrap() + 1,
        "{status_before} -> {status_after}"
    );
}

#[tokio::test]
async fn t60_peers_bootstrap_once_and_restart_never_reinitialises() {
    let dir = tempfile::tempdir().unwrap();
    // --peers needs the RPC ports up front: reserve three, then hand them to the nodes.
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let rpc = format!("127.0.0.1:{}", ports[(id - 1) as usize]);
            Node::start(id, dir.path(), &["--peers", &peers, "--rpc-addr", &rpc])
        })
        .collect();
    let c = Cluster {
        nodes: std::mem::take(&mut nodes),
        dir,
        http: harness::client(),
    };
    c.wait_voters(3).await;
    let index = c.register(2, "cache", "c1").await;
    let (_, before) = c.get(1, "/v1/cluster").await;

    let mut c = c;
    for n in 1..=3 {
        c.node_mut(n).kill();
    }
    for n in 1..=3 {
        c.node_mut(n).restart();
    }
    c.wait_voters(3).await;
    let (_, after) = c.get(1, "/v1/cluster").await;
    assert_eq!(after["members"], before["members"], "same membership");
    // Logs span both runs: one node initialised the cluster, once, and nobody since.
    let inits: usize = (1..=3)
        .map(|n| c.node(n).log_count("initialised a new cluster"))
        .sum();
    assert_eq!(
        inits, 1,
        "exactly one initialisation across first start and restart"
    );
    let next = c.register(1, "cache", "c2").await;
    assert!(next > index, "the log goes on: {next} > {index}");
    eventually(Duration::from_secs(5), "both writes on node 3", || async {
        c.instance_ids(3, "cache").await == ["c1", "c2"]
    })
    .await;
}

#[tokio::test]
async fn t70_a_member_can_be_removed_and_the_rest_keep_a_quorum() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let victim = (1..=3).find(|n| *n != leader).unwrap();
    let res = c
        .http
        .delete(c.node(leader).url(&format!("/v1/cluster/members/{victim}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    c.node_mut(victim).kill();
    c.wait_voters(2).await;
    c.register(leader, "web", "after-removal").await;

    let (status, body) = c.delete(leader, "/v1/cluster/members/42").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn t80_sigterm_stops_the_agent_cleanly_and_its_data_survives() {
    let mut c = Cluster::start(1, &[]).await;
    c.register(1, "web", "a").await;
    c.node(1).signal("TERM");
    let status = c
        .node_mut(1)
        .wait_exit(Duration::from_secs(15))
        .expect("exited after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    c.node_mut(1).restart();
    eventually(
        Duration::from_secs(10),
        "restarted node serves its data",
        || async { c.instance_ids(1, "web").await == ["a"] },
    )
    .await;
}

#[tokio::test]
async fn t90_cluster_rpc_refuses_other_clusters_and_non_members() {
    let c = Cluster::start(3, &[]).await;
    let rpc = c.node(2).rpc;
    let vote = json!({"vote": {"leader_id": {"term": 99, "node_id": 7}, "committed": false}, "last_log_id": null});
    let send = |cluster: &'static str, from: &'static str| {
        let req = c
            .http
            .post(format!("http://{rpc}/raft/vote"))
            .header("x-cairn-cluster", cluster)
            .header("x-cairn-from", from)
            .json(&vote);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("other", "1").await, 403, "another cluster's request");
    assert_eq!(
        send("cairn", "7").await,
        403,
        "a node outside the membership"
    );
    assert_eq!(send("cairn", "x").await, 403, "no sender id");
    // A member's request is admitted (and answered by Raft: a vote for an unknown candidate).
    assert_eq!(send("cairn", "1").await, 200);
    // The refused vote changed nothing: the leader is the same everywhere.
    let before = c.leader().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.leader().await, before);
}

/// Sends request headers announcing a `content_length`-byte body but only the first bytes of it,
/// and returns the status of the answer (`None` when none came within two seconds). A server
/// that reads the body before deciding has nothing to answer yet.
async fn status_before_body(
    rpc: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    content_length: usize,
) -> Option<u16> {
    status_of_raw_post(rpc, path, headers, content_length, false).await
}

/// The same, sending the whole body (`x` bytes after the opening `{"`) from another task.
async fn status_of_raw_post(
    rpc: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    content_length: usize,
    send_body: bool,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(rpc).await.unwrap();
    let (mut rd, mut s) = s.into_split();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {rpc}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n{\"");
    s.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        if send_body {
            // The server may stop reading at its limit: a failed write is expected then.
            let rest = vec![b'x'; content_length - 2];
            let _ = s.write_all(&rest).await;
        }
        s
    });
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await;
    writer.abort();
    let n = read.ok()?.ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn t90_rpc_admission_runs_before_any_body_is_read_on_every_route() {
    let c = Cluster::start(3, &[]).await;
    let rpc = c.node(2).rpc;
    // 32 MiB announced: more than any RPC body limit, so a route that read (or limited) the body
    // before admission would wait for it or answer 413, not refuse at once.
    let huge = 32 * 1024 * 1024;
    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/raft/forward",
        "/raft/alive",
        "/raft/read_index",
        "/raft/elect",
        "/raft/replication",
        "/raft/heartbeat",
    ] {
        assert_eq!(
            status_before_body(rpc, path, &[], huge).await,
            Some(403),
            "{path}: a request without a cluster and sender"
        );
        assert_eq!(
            status_before_body(
                rpc,
                path,
                &[("x-cairn-cluster", "cairn"), ("x-cairn-from", "7")],
                huge
            )
            .await,
            Some(403),
            "{path}: a non-member"
        );
    }
    // A member's oversized request is refused by the body limit: 8 MiB for every RPC but
    // snapshot chunks (64 MiB before the limit was cut).
    let member = [("x-cairn-cluster", "cairn"), ("x-cairn-from", "1")];
    assert_eq!(
        status_of_raw_post(rpc, "/raft/forward", &member, 9 * 1024 * 1024, true).await,
        Some(413),
        "a member's forward of 9 MiB"
    );
    // Nothing was changed, and the cluster still works.
    let leader = c.leader().await;
    let index = c.register(leader, "web", "after").await;
    assert!(index > 0);
}

#[tokio::test]
async fn t90_a_forwarded_write_is_validated_by_the_leader_as_the_api_would() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.register(leader, "web", "ok").await;
    let (_, before) = c.get(leader, "/v1/cluster/digest").await;
    let rpc = c.node(leader).rpc;
    let instance = json!({"id": "evil", "address": "0.0.0.0", "port": 0, "tags": ["Not A Label"],
        "meta": {}, "weight": 65535, "checks": []});
    let forged = [
        json!({"write": {"op": "register", "service": "web", "instance": instance}}),
        json!({"write": {"op": "register", "service": "WEB!", "instance": instance}}),
        json!({"write": {"op": "set_health", "service": "web", "id": "ok", "status": "critical",
            "output": "x".repeat(10_000)}}),
        json!({"join": {"id": 0, "rpc_addr": "nowhere"}}),
        // Only the leader marks members down: a member may not take another's checks away.
        json!({"write": {"op": "set_node_up", "node": 3, "up": false}}),
    ];
    for body in forged {
        // Sent as member 2 would send it (the cluster runs without certificates here, so the
        // headers are the identity): admitted, then refused by validation.
        let res = c
            .http
            .post(format!("http://{rpc}/raft/forward"))
            .header("x-cairn-cluster", "cairn")
            .header("x-cairn-from", "2")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let reply: serde_json::Value = res.json().await.unwrap();
        assert_eq!(reply["Err"]["error"], "invalid", "{body}: {reply}");
    }
    let (_, after) = c.get(leader, "/v1/cluster/digest").await;
    assert_eq!(before, after, "nothing refused was applied");
}

#[tokio::test]
async fn t90_a_snapshot_chunk_at_a_far_offset_is_refused_before_it_is_written() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let rpc = c.node(follower).rpc;
    // The leader's current vote, so that the follower takes the chunks as the leader's.
    let (_, status) = c.get(follower, "/v1/cluster").await;
    let term = status["term"].as_u64().unwrap();
    let chunk = |id: &str, offset: u64| {
        json!({
            "vote": {"leader_id": {"term": term, "node_id": leader}, "committed": true},
            "meta": {
                "last_log_id": null,
                "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                "snapshot_id": id
            },
            "offset": offset,
            "data": [1, 2, 3],
            "done": false
        })
    };
    let send = |body: serde_json::Value, size: Option<u64>| {
        let mut req = c
            .http
            .post(format!("http://{rpc}/raft/snapshot"))
            .header("x-cairn-cluster", "cairn")
            .header("x-cairn-from", leader.to_string())
            .json(&body);
        if let Some(size) = size {
            req = req.header("x-cairn-snapshot-size", size.to_string());
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    // Written at 1 TiB into an in-memory buffer, this chunk would make the node allocate 1 TiB.
    let (status, body) = send(chunk("forged-1", 1 << 40), Some(1 << 41)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("over the limit"), "{body}");
    let (status, body) = send(chunk("forged-1", 1 << 40), Some(1 << 20)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("past the announced"), "{body}");
    // A new snapshot must start at 0; a chunk may not leave a hole.
    let (status, body) = send(chunk("forged-2", 4096), Some(1 << 20)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("must start at offset 0"), "{body}");
    // A good start leaves a download in progress; a chunk leaving a hole then ends it.
    let (status, body) = send(chunk("forged-4", 0), Some(1 << 20)).await;
    assert_eq!(status, 200, "{body}");
    let incoming = || {
        std::fs::read_dir(c.node(follower).data_dir.join("snapshots"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(incoming(), 1, "the first chunk went to a file");
    let (status, body) = send(chunk("forged-4", 4096), Some(1 << 20)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("leaves a hole"), "{body}");
    assert_eq!(incoming(), 0, "the refused download's file is gone");
    // Every chunk announces the whole snapshot's size.
    let (status, body) = send(chunk("forged-3", 0), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("x-cairn-snapshot-size"), "{body}");
    assert_eq!(incoming(), 0, "nothing refused stays on disk");
    // The node is fine and still in the cluster.
    let index = c.register(follower, "web", "after").await;
    assert!(index > 0);
}
