//! `cairn operator`: the leader's view of replication (`raft`), and lost-quorum recovery of a
//! stopped node's store (`recover`, which reaches no node: it works on files).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_client::{Client, RaftReplication};
use cairn_raft::recover::{parse_peers, Recovery};
use clap::{Args, Subcommand};

use super::{print_json, table, usage, Failed, Target};

#[derive(Debug, Subcommand)]
pub enum OperatorAction {
    /// Replication as the leader sees it: each member's role, match index, lag, last contact
    /// and health.
    Raft,
    /// Lost quorum: rewrite a STOPPED node's membership so that it starts as a new cluster
    /// (of itself, or of --peers) from its data. Prints the plan; --yes does it.
    Recover(RecoverArgs),
}

/// `cairn operator recover` flags.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The stopped node's data folder.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The node's id (its --node-id).
    #[arg(long)]
    pub node_id: u64,
    /// The voters of the new cluster besides this node, `id=host:port,...` (cluster RPC
    /// addresses); none: this node alone.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: Option<String>,
    /// Do it (without: print what would be done, change nothing).
    #[arg(long)]
    pub yes: bool,
}

pub(super) async fn run(
    client: &Client,
    target: &Target,
    action: OperatorAction,
) -> Result<(), Failed> {
    match action {
        OperatorAction::Raft => {
            let r = client.operator_raft().await?;
            if target.json {
                print_json(&r);
            } else {
                println!("{}", raft_table(&r));
            }
            Ok(())
        }
        OperatorAction::Recover(args) => recover(target, args),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn raft_table(r: &RaftReplication) -> String {
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.rpc_addr.clone(),
                m.role.clone(),
                if m.voter { "yes" } else { "no" }.into(),
                opt(m.match_index),
                opt(m.lag),
                m.last_contact_ms
                    .map_or_else(|| "never".into(), |ms| format!("{ms}ms")),
                m.health.clone(),
            ]
        })
        .collect();
    format!(
        "leader {}, term {}, last log index {}, commit index {}\n{}",
        r.leader,
        r.term,
        r.last_log_index,
        r.commit_index,
        table(
            &[
                "ID",
                "RPC ADDRESS",
                "ROLE",
                "VOTER",
                "MATCH",
                "LAG",
                "LAST CONTACT",
                "HEALTH"
            ],
            &rows
        )
    )
}

/// Each member's health by id, from the leader's view; empty when it cannot be had (no leader,
/// no right): `cairn members` then says `unknown`.
pub(super) async fn health_by_id(client: &Client) -> BTreeMap<u64, String> {
    match client.operator_raft().await {
        Ok(r) => r.members.into_iter().map(|m| (m.id, m.health)).collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// `cairn operator recover`: works on the data folder; no node is reached.
pub(super) fn recover(target: &Target, args: RecoverArgs) -> Result<(), Failed> {
    if args.node_id == 0 {
        return Err(usage("--node-id: must be a positive integer"));
    }
    let peers = match &args.peers {
        Some(p) => parse_peers(p).map_err(|e| usage(format!("--peers: {e}")))?,
        None => BTreeMap::new(),
    };
    let recovery = Recovery::prepare(&args.data_dir, args.node_id, &peers).map_err(|e| Failed {
        code: 1,
        message: e.to_string(),
    })?;
    if target.json {
        let p = recovery.plan();
        print_json(&serde_json::json!({
            "data_dir": p.data_dir,
            "node_id": p.node_id,
            "applied_index": p.applied_index,
            "keep_upto": p.keep_upto,
            "dropped_entries": p.dropped(),
            "old_voters": p.old_voters,
            "new_voters": p.new_members.iter()
                .map(|(id, m)| (id.to_string(), m.rpc_addr.clone()))
                .collect::<BTreeMap<_, _>>(),
            "new_term": p.new_term,
            "done": args.yes,
        }));
    } else {
        println!("{}", recovery.plan());
    }
    if !args.yes {
        return Err(Failed {
            code: 1,
            message: "nothing changed: run again with --yes to rewrite the membership".into(),
        });
    }
    let plan = recovery.apply().map_err(|e| Failed {
        code: 1,
        message: e.to_string(),
    })?;
    if !target.json {
        println!(
            "done: start node {} as before; it forms a cluster of {} voter(s), which new nodes \
             join with --join",
            plan.node_id,
            plan.new_members.len()
        );
    }
    Ok(())
}
