//! `cairn operator raft` and the health column of `cairn members`: the leader's view of each
//! member, from any node.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Cluster};

/// Runs the CLI against `http`; answers (exit code, stdout, stderr).
pub fn cli(http: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .args(["--http-addr", http])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn member(view: &Value, id: u64) -> &Value {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("member {id} in {view}"))
}

#[tokio::test]
async fn t10_operator_raft_shows_the_leaders_view_from_any_node_and_health_follows_a_kill() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    for i in 0..20 {
        c.register(followers[0], "web", &format!("web-{i}")).await;
    }
    // Asked of a follower, answered by the leader: everyone caught up and healthy.
    let http = c.node(followers[0]).http.to_string();
    eventually(Duration::from_secs(10), "all healthy, no lag", || async {
        let (code, out, _) = cli(&http, &["operator", "raft", "--json"]);
        let Ok(view) = serde_json::from_str::<Value>(&out) else {
            return false;
        };
        code == 0
            && view["leader"] == leader
            && (1..=3).all(|id| {
                let m = member(&view, id);
                m["health"] == "healthy"
                    && m["lag"] == 0
                    && m["match_index"] == view["last_log_index"]
                    && m["voter"] == true
            })
    })
    .await;
    let (code, out, err) = cli(&http, &["operator", "raft"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("leader {leader}")), "{out}");
    for col in ["ROLE", "MATCH", "LAG", "LAST CONTACT", "HEALTH"] {
        assert!(out.contains(col), "{col} in {out}");
    }
    assert_eq!(out.matches("healthy").count(), 3, "{out}");
    let (code, out, _) = cli(&http, &["members"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("HEALTH") && out.matches("healthy").count() == 3,
        "{out}"
    );

    // A follower killed: the leader stops hearing from it, and says so everywhere.
    let gone = followers[1];
    c.node_mut(gone).kill();
    eventually(
        Duration::from_secs(10),
        "killed follower unreachable",
        || async {
            let (_, out, _) = cli(&http, &["operator", "raft", "--json"]);
            serde_json::from_str::<Value>(&out)
                .is_ok_and(|v| member(&v, gone)["health"] == "unreachable")
        },
    )
    .await;
    let (code, out, _) = cli(&http, &["members", "--json"]);
    assert_eq!(code, 0);
    let members: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        members["health"][gone.to_string()],
        "unreachable",
        "{members}"
    );
    assert_eq!(
        members["health"][leader.to_string()],
        "healthy",
        "{members}"
    );
    assert_eq!(
        members["leader"], leader,
        "the status fields stay: {members}"
    );
    let (_, body) = c.get(leader, "/v1/operator/raft").await;
    assert!(
        member(&body, gone)["last_contact_ms"].as_u64() >= Some(2000),
        "{body}"
    );
}

#[tokio::test]
async fn t20_without_a_leader_operator_raft_is_a_503_and_members_still_answers() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    for id in (1..=3).filter(|n| *n != survivor) {
        c.node_mut(id).kill();
    }
    eventually(
        Duration::from_secs(15),
        "no leader on the survivor",
        || async {
            let (status, _) = c.get(survivor, "/v1/operator/raft").await;
            status == 503
        },
    )
    .await;
    // `cairn members` is the container's health check: it answers, health unknown.
    let http = c.node(survivor).http.to_string();
    let (code, out, err) = cli(&http, &["members"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unknown"), "{out}");
}
