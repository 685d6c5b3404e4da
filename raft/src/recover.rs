//! Lost-quorum recovery: rewrites the membership in a stopped node's store so that it starts as
//! a new cluster (of itself alone, or of given peers) from its data, as etcd's
//! `--force-new-cluster` and Consul's `peers.json` do. `cairn operator recover` runs it.
//!
//! What the rewrite does, in one synced RocksDB batch:
//! - keeps every log entry up to the node's committed index (and everything applied: the
//!   registry is untouched), and drops the entries after it: nothing says a quorum ever held
//!   them, and the quorum is gone;
//! - appends a membership entry naming the new voters, at the next index, in a term above every
//!   term the node has seen, and records a vote for that term.
//!
//! openraft takes the last membership in the log as the one in force, so the node starts with
//! the new voters; alone, it elects itself at once and commits the entry. Others join it as new
//! members do (`--join`). Opening the database takes RocksDB's lock, which the running agent
//! holds: a node that runs is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::store::{
    cf, log_key, read_json, to_json, CF_LOGS, CF_RAFT, CF_REGISTRY, CF_SM, KEY_APPLIED,
    KEY_COMMITTED, KEY_FORMAT, KEY_LAST_PURGED, KEY_MEMBERSHIP, KEY_VOTE,
};
use crate::{Member, NodeId, TypeConfig};

/// Why a recovery was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The folder is not there, or holds no Cairn data.
    #[error("{path} holds no Cairn data: {why}")]
    NotAStore { path: String, why: String },
    /// Another process (the agent) has the database open.
    #[error("{path} is in use: is the node still running? Stop it first ({source})")]
    InUse {
        path: String,
        source: rocksdb::Error,
    },
    /// RocksDB refused to open or write the folder for another reason.
    #[error("cannot open {path}: {source}")]
    Db {
        path: String,
        source: rocksdb::Error,
    },
    /// The stored state could not be read.
    #[error("{path} holds unreadable state: {message}")]
    Corrupt { path: String, message: String },
    /// The new membership cannot be made from what was given and what is stored.
    #[error("{0}")]
    Members(String),
}

/// What a recovery will do, shown before it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// The last applied index: the registry as it stands.
    pub applied_index: u64,
    /// Log entries up to here are kept.
    pub keep_upto: u64,
    /// The last index of the log as found; entries after `keep_upto` are dropped.
    pub last_log_index: u64,
    /// The voters and members of the last membership found (in the log or applied).
    pub old_voters: BTreeSet<NodeId>,
    /// The new cluster's members, every one a voter.
    pub new_members: BTreeMap<NodeId, Member>,
    /// The term of the membership entry and of the vote written.
    pub new_term: u64,
}

impl Plan {
    /// Entries of the log that the recovery drops.
    pub fn dropped(&self) -> u64 {
        self.last_log_index.saturating_sub(self.keep_upto)
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |s: &mut dyn Iterator<Item = &NodeId>| {
            s.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "data folder:     {}", self.data_dir.display())?;
        writeln!(f, "node:            {}", self.node_id)?;
        writeln!(
            f,
            "applied index:   {} (the registry is kept as it is)",
            self.applied_index
        )?;
        writeln!(
            f,
            "log:             entries up to {} kept; {} after it dropped (last index {})",
            self.keep_upto,
            self.dropped(),
            self.last_log_index
        )?;
        writeln!(f, "old voters:      {}", ids(&mut self.old_voters.iter()))?;
        writeln!(f, "new voters:      {}", ids(&mut self.new_members.keys()))?;
        for (id, m) in &self.new_members {
            writeln!(f, "  node {id} at {}", m.rpc_addr)?;
        }
        write!(
            f,
            "new membership:  written at index {} in term {}",
            self.keep_upto + 1,
            self.new_term
        )
    }
}

/// The store of `data_dir`, opened for the rewrite.
pub struct Recovery {
    db: DB,
    plan: Plan,
}

impl Recovery {
    /// Opens `data_dir` (refused while the agent holds it) and works out the plan: node
    /// `node_id` and `peers` (other voters of the new cluster, by id and cluster RPC address;
    /// the node's own address comes from its stored membership unless `peers` names it).
    pub fn prepare(
        data_dir: &Path,
        node_id: NodeId,
        peers: &BTreeMap<NodeId, Member>,
    ) -> Result<Recovery, RecoverError> {
        let path = data_dir.display().to_string();
        let not_a_store = |why: &str| RecoverError::NotAStore {
            path: path.clone(),
            why: why.to_owned(),
        };
        if !data_dir.join("CURRENT").is_file() {
            return Err(not_a_store("no RocksDB database in it"));
        }
        let opts = Options::default();
        let cfs = [CF_LOGS, CF_RAFT, CF_REGISTRY, CF_SM]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, data_dir, cfs).map_err(|source| {
            // RocksDB's words for a LOCK file held by another process (or this one).
            let text = source.to_string().to_ascii_lowercase();
            if text.contains("lock") {
                RecoverError::InUse {
                    path: path.clone(),
                    source,
                }
            } else {
                RecoverError::Db {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let corrupt = |e: openraft::StorageError<NodeId>| RecoverError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        if read_json::<u32>(&db, CF_SM, KEY_FORMAT)
            .map_err(corrupt)?
            .is_none()
        {
            return Err(not_a_store("no format record"));
        }
        let vote: Option<Vote<NodeId>> = read_json(&db, CF_RAFT, KEY_VOTE).map_err(corrupt)?;
        let committed: Option<LogId<NodeId>> =
            read_json(&db, CF_RAFT, KEY_COMMITTED).map_err(corrupt)?;
        let purged: Option<LogId<NodeId>> =
            read_json(&db, CF_RAFT, KEY_LAST_PURGED).map_err(corrupt)?;
        let applied: Option<LogId<NodeId>> = read_json(&db, CF_SM, KEY_APPLIED).map_err(corrupt)?;
        let applied_membership: StoredMembership<NodeId, Member> =
            read_json(&db, CF_SM, KEY_MEMBERSHIP)
                .map_err(corrupt)?
                .unwrap_or_default();

        // The log after what was applied: its last entry, and its last membership.
        let index = |l: &Option<LogId<NodeId>>| l.map_or(0, |l| l.index);
        let keep_upto = index(&committed).max(index(&applied)).max(index(&purged));
        let mut last = purged;
        let mut last_kept = purged;
        let mut membership = applied_membership.membership().clone();
        let from = log_key(index(&applied) + 1);
        let iter = db.iterator_cf(
            cf(&db, CF_LOGS),
            IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (_, value) = item.map_err(|source| RecoverError::Db {
                path: path.clone(),
                source,
            })?;
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(&value).map_err(|e| RecoverError::Corrupt {
                    path: path.clone(),
                    message: format!("a log entry: {e}"),
                })?;
            if let EntryPayload::Membership(m) = &entry.payload {
                membership = m.clone();
            }
            if entry.log_id.index <= keep_upto {
                last_kept = Some(entry.log_id);
            }
            last = Some(entry.log_id);
        }
        if last_kept.is_none() && keep_upto == index(&applied) {
            last_kept = applied;
        }
        if vote.is_none() && last.is_none() && membership.nodes().next().is_none() {
            return Err(not_a_store("it never joined a cluster"));
        }

        let mut new_members = peers.clone();
        if let std::collections::btree_map::Entry::Vacant(slot) = new_members.entry(node_id) {
            let own = membership
                .get_node(&node_id)
                .or_else(|| applied_membership.membership().get_node(&node_id))
                .cloned()
                .ok_or_else(|| {
                    RecoverError::Members(format!(
                        "node {node_id} is not in the stored membership: give its address with \
                         --peers {node_id}=HOST:PORT"
                    ))
                })?;
            slot.insert(own);
        }
        let term = |l: &Option<LogId<NodeId>>| l.map_or(0, |l| l.leader_id.term);
        let seen = vote
            .map_or(0, |v| v.leader_id().get_term())
            .max(term(&last))
            .max(term(&last_kept));
        let plan = Plan {
            data_dir: data_dir.to_owned(),
            node_id,
            applied_index: index(&applied),
            keep_upto,
            last_log_index: index(&last).max(keep_upto),
            old_voters: membership.voter_ids().collect(),
            new_members,
            new_term: seen + 1,
        };
        Ok(Recovery { db, plan })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Rewrites the store as planned, in one synced batch, and flushes it.
    pub fn apply(self) -> Result<Plan, RecoverError> {
        let Recovery { db, plan } = self;
        let path = plan.data_dir.display().to_string();
        let failed = |source: rocksdb::Error| RecoverError::Db {
            path: path.clone(),
            source,
        };
        let corrupt = |e: openraft::StorageError<NodeId>| RecoverError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        };
        let voters: BTreeSet<NodeId> = plan.new_members.keys().copied().collect();
        let membership = Membership::new(vec![voters], plan.new_members.clone());
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(
                CommittedLeaderId::new(plan.new_term, plan.node_id),
                plan.keep_upto + 1,
            ),
            payload: EntryPayload::Membership(membership),
        };
        let vote = Vote::new(plan.new_term, plan.node_id);
        let mut batch = WriteBatch::default();
        let logs = cf(&db, CF_LOGS);
        batch.delete_range_cf(logs, log_key(plan.keep_upto + 1), log_key(u64::MAX));
        batch.put_cf(
            logs,
            log_key(plan.keep_upto + 1),
            to_json(&entry).map_err(corrupt)?,
        );
        batch.put_cf(cf(&db, CF_RAFT), KEY_VOTE, to_json(&vote).map_err(corrupt)?);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync).map_err(failed)?;
        for name in [CF_LOGS, CF_RAFT] {
            db.flush_cf(cf(&db, name)).map_err(failed)?;
        }
        Ok(plan)
    }
}

/// Parses `--peers`: `id=host:port,...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("{item:?}: the id is not a positive integer"))?;
        let addr = addr.trim();
        let ok = addr.len() <= 300
            && addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("{item:?}: the address is not HOST:PORT"));
        }
        if peers
            .insert(
                id,
                Member {
                    rpc_addr: addr.to_owned(),
                },
            )
            .is_some()
        {
            return Err(format!("node {id} is named twice"));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        let p = parse_peers("1=10.0.0.1:8300, 2=node-2:8300").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2].rpc_addr, "node-2:8300");
        for bad in [
            "1",
            "x=a:1",
            "0=a:1",
            "1=a",
            "1=a:0",
            "1=:80",
            "1=a:1,1=b:2",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_folder_without_a_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let err = Recovery::prepare(dir.path(), 1, &BTreeMap::new())
            .err()
            .unwrap();
        assert!(matches!(err, RecoverError::NotAStore { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_open_store_is_refused_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _sm) = crate::store::open(dir.path()).unwrap();
        let err = Recovery::prepare(dir.path(), 1, &BTreeMap::new())
            .err()
            .unwrap();
        assert!(matches!(err, RecoverError::InUse { .. }), "{err}");
    }
}
