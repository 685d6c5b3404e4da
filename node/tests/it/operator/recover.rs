//! Lost-quorum recovery: two of three servers lost for good, the third rewritten to form a new
//! cluster from its data, two fresh servers joined.

use std::collections::BTreeSet;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::Value;

use super::handover::wait_exit;
use super::load::Load;
use super::views::cli;
use crate::harness::{dns, eventually, Cluster, Node};

fn recover(data_dir: &str, node_id: u64, extra: &[&str]) -> (i32, String, String) {
    let id = node_id.to_string();
    let mut args = vec![
        "operator",
        "recover",
        "--data-dir",
        data_dir,
        "--node-id",
        &id,
    ];
    args.extend(extra);
    // `recover` reaches no node; the address is never used.
    cli("127.0.0.1:1", &args)
}

#[tokio::test]
async fn t10_two_of_three_lost_the_survivor_recovers_and_fresh_nodes_join_with_every_applied_write()
{
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    // The survivor is a follower: the harder case (it may trail the leader that dies).
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    let urls: Vec<String> = (1..=3).map(|n| c.node(n).url("")).collect();
    let load = Load::start(urls, 3);
    eventually(Duration::from_secs(10), "load running", || async {
        load.acked() > 200
    })
    .await;
    for id in (1..=3).filter(|n| *n != survivor) {
        c.node_mut(id).kill();
        std::fs::remove_dir_all(&c.node(id).data_dir).unwrap();
    }
    let acked_before: BTreeSet<String> = load.stop().await.into_iter().map(|(_, id)| id).collect();
    // What the survivor applied: its own replica, read locally.
    let applied: BTreeSet<String> = c.instance_ids(survivor, "load").await.into_iter().collect();
    assert!(applied.len() > 100, "{} applied", applied.len());
    let data_dir = c.node(survivor).data_dir.display().to_string();

    // While it runs, recovery is refused and changes nothing.
    let (code, _, err) = recover(&data_dir, survivor, &["--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("is the node still running"), "{err}");
    c.node(survivor).signal("TERM");
    assert!(wait_exit(&mut c, survivor, Duration::from_secs(30))
        .await
        .is_some());
    // Without --yes: the plan, and nothing changed (the node still finds no quorum).
    let (code, out, err) = recover(&data_dir, survivor, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("new voters:") && err.contains("--yes"),
        "{out}{err}"
    );
    let (code, out, err) = recover(&data_dir, survivor, &["--peers", "x"]);
    assert_eq!(code, 64, "{out}{err}");
    let (code, out, err) = recover(&data_dir, survivor, &["--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("new voters:      {survivor}\n")),
        "{out}"
    );

    // The survivor leads alone, with everything it had applied.
    c.node_mut(survivor).restart();
    eventually(Duration::from_secs(15), "survivor leads", || async {
        let (_, body) = c.get(survivor, "/v1/cluster").await;
        body["leader"] == survivor
    })
    .await;
    let have: BTreeSet<String> = c.instance_ids(survivor, "load").await.into_iter().collect();
    assert!(applied.is_subset(&have), "applied writes lost in recovery");

    // Two fresh nodes join it; writes go on through all three.
    let join = c.node(survivor).url("");
    for id in [4, 5] {
        let node = Node::start(id, c.dir.path(), &["--join", &join]);
        c.nodes.push(node);
    }
    c.wait_voters(3).await;
    let after: Vec<u64> = vec![survivor, 4, 5];
    for (i, n) in after.iter().enumerate() {
        c.register(*n, "load", &format!("after-{i}")).await;
    }
    let (_, view) = c.get(4, "/v1/operator/raft").await;
    let voters: BTreeSet<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, after.iter().copied().collect(), "{view}");

    // Every write the survivor had applied is on all three, their digests agree, and DNS
    // answers from each.
    for n in &after {
        eventually(
            Duration::from_secs(15),
            "replicated to the new nodes",
            || async {
                let ids: BTreeSet<String> = c.instance_ids(*n, "load").await.into_iter().collect();
                applied.is_subset(&ids) && ids.contains("after-2")
            },
        )
        .await;
    }
    eventually(Duration::from_secs(15), "digests agree", || async {
        let mut digests = Vec::new();
        for n in &after {
            let (_, d) = c.get(*n, "/v1/cluster/digest").await;
            digests.push((d["applied_index"].clone(), d["digest"].clone()));
        }
        digests
            .iter()
            .all(|d| *d == digests[0] && d.1 != Value::Null)
    })
    .await;
    for n in &after {
        let answer = dns::udp(c.node(*n).dns, "load.service.cairn.", RecordType::A).await;
        assert!(!answer.answers.is_empty(), "node {n}: {answer:?}");
    }
    eprintln!(
        "recovery: {} writes acknowledged before the loss, {} applied on the survivor and kept",
        acked_before.len(),
        applied.len()
    );
}
