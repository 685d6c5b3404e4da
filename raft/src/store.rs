//! RocksDB storage: the Raft log and vote ([`LogStore`]) and the registry state machine with its
//! snapshots ([`StateMachine`]), in one database so they share one write-ahead log.
//!
//! Column families:
//! - `logs`: entries keyed by big-endian index;
//! - `raft`: the vote, the committed log id, the last purged log id;
//! - `registry`: `s\0<service>` service records and `i\0<service>\0<id>` instances;
//! - `sm`: the applied log id, the membership, the service-list index and the current snapshot's
//!   metadata.
//!
//! Snapshot bytes live beside the database, not in it ([`crate::snapshot`]): a registry of
//! hundreds of thousands of instances makes a snapshot of tens of MB, and writing that through
//! RocksDB's WAL would stall every log append queued behind it.
//!
//! Durability: an append returns (and its [`LogFlushed`] callback fires) only after a synced
//! write, so nothing is acknowledged before it is on disk. The leader batches concurrent client
//! writes into one entry (see `cluster`), and RocksDB merges concurrent synced writes into one WAL
//! sync, so an fsync is shared by many registrations. The vote is a synced write too.
//! State-machine writes are not synced on their own: they sit in the same WAL behind the log
//! entries they came from, so the next sync makes them durable, and after a crash openraft
//! re-applies the log from the applied index that did survive.

// openraft's storage traits fix `StorageError` as the error type; it is large, and not ours to box.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use cairn_registry::acl::{AclData, AuditEntry, Policy, Token, AUDIT_LEN};
use cairn_registry::format::{ServiceRecord, FORMAT_VERSION};
use cairn_registry::model::Instance;
use cairn_registry::{Dirty, OpResult, Registry, RegistryData, ServiceEntry, ServiceSettings};

use crate::snapshot::{DecodeError, FileSum, SnapshotData, SnapshotDir};
use crate::stats::{seconds, RaftStats};
use crate::{NodeId, TypeConfig};

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_REGISTRY: &str = "registry";
pub(crate) const CF_SM: &str = "sm";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_LIST_INDEX: &[u8] = b"list_index";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The current snapshot file's size and SHA-256 ([`FileSum`]), written with `KEY_SNAPSHOT`.
const KEY_SNAPSHOT_SUM: &[u8] = b"snapshot_sum";
const KEY_DOWN_NODES: &[u8] = b"down_nodes";
const KEY_ACL_BOOTSTRAP: &[u8] = b"acl_bootstrap";
/// The leader's time in the last applied entry (token expiry is judged by it).
const KEY_TIME: &[u8] = b"time_ms";
/// Audit entries are `audit\0<seq, big-endian>`: this node's, never part of a snapshot.
const AUDIT_PREFIX: &[u8] = b"audit\0";
/// The persisted format version the data folder was written in (`cairn_registry::format`).
pub(crate) const KEY_FORMAT: &[u8] = b"format";

/// What RocksDB's memory tables may hold, all families together (see [`open`]).
const MEMTABLES_BYTES: usize = 32 << 20;
/// The write-ahead log's size beyond which the families holding its oldest entries are flushed,
/// so a restart replays at most about this much (see [`open`]).
const MAX_WAL_BYTES: u64 = 64 << 20;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Opening the database failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// RocksDB refused to open the folder (missing permissions, a lock held by another process, ...).
    #[error("cannot open the data folder {path}: {source}")]
    Db {
        path: String,
        source: rocksdb::Error,
    },
    /// The folder was written by a build with another persisted format.
    #[error("the data folder {path} holds format {found}; this build reads format {supported}")]
    Format {
        path: String,
        found: u32,
        supported: u32,
    },
    /// The stored state could not be read back.
    #[error("the data folder {path} holds unreadable state: {message}")]
    Corrupt { path: String, message: String },
    /// The current snapshot's file is missing, damaged or unreadable.
    #[error("the snapshot file {path} {message}")]
    Snapshot { path: String, message: String },
}

/// Opens (or creates) the store in `dir`, loading the registry from it.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    let path = dir.display().to_string();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Memory tables of all families together, flushed beyond this. RocksDB's default is 64 MiB
    // per family, and two of them while one is flushed: after 100,000 registrations the log's
    // and the registry's tables held 72 MB, more than the registry's view. Nothing on a request
    // path reads RocksDB, so tables on disk serve as well.
    opts.set_db_write_buffer_size(MEMTABLES_BYTES);
    // A log file goes once every family with entries in it has flushed them. The small families
    // (vote, applied index) rarely fill a memory table, so without a bound the log of a million
    // registrations stayed whole (590 MB), and a restart replayed all of it into memory tables
    // before serving: over a third of its time.
    opts.set_max_total_wal_size(MAX_WAL_BYTES);
    // Log files are reused once their entries are flushed, overwriting the old bytes: an append's
    // fdatasync then changes no file size, so it writes no file-system journal entry.
    opts.set_recycle_log_file_num(4);
    let cfs = [CF_LOGS, CF_RAFT, CF_REGISTRY, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| OpenError::Db {
        path: path.clone(),
        source,
    })?;
    let db = Arc::new(db);
    let corrupt = |e: StorageError<NodeId>| OpenError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    };
    match read_json::<u32>(&db, CF_SM, KEY_FORMAT).map_err(corrupt)? {
        Some(FORMAT_VERSION) => {}
        Some(found) => {
            return Err(OpenError::Format {
                path,
                found,
                supported: FORMAT_VERSION,
            })
        }
        // A new folder, or one written before the version was recorded (which was version 1).
        None => db
            .put_cf(
                cf(&db, CF_SM),
                KEY_FORMAT,
                to_json(&FORMAT_VERSION).map_err(corrupt)?,
            )
            .map_err(|source| OpenError::Db {
                path: path.clone(),
                source,
            })?,
    }
    let committed = read_json::<LogId<NodeId>>(&db, CF_RAFT, KEY_COMMITTED)
        .map_err(corrupt)?
        .map_or(0, |l| l.index);
    let committed = Arc::new(AtomicU64::new(committed));
    let log = LogStore::new(db.clone(), committed.clone(), dir.to_owned());
    let current: Option<SnapshotMeta<NodeId, crate::Member>> =
        read_json(&db, CF_SM, KEY_SNAPSHOT).map_err(corrupt)?;
    let snapshots = SnapshotDir::new(dir.join("snapshots"));
    // What a crash left half-written (a download, a build) goes; the current snapshot stays.
    snapshots
        .clean(current.as_ref().map(|m| m.snapshot_id.as_str()))
        .map_err(|e| OpenError::Corrupt {
            path: path.clone(),
            message: format!("cannot prepare the snapshot folder: {e}"),
        })?;
    if let Some(meta) = &current {
        verify_snapshot(&db, &snapshots, meta).map_err(|message| OpenError::Snapshot {
            path: snapshots.path_of(&meta.snapshot_id).display().to_string(),
            message,
        })?;
    }
    let sm = StateMachine::load(db, snapshots).map_err(corrupt)?;
    Ok((log, sm))
}

/// Checks the current snapshot's file against the size and SHA-256 recorded with it, so that a
/// damaged file stops the node here, naming it, rather than reaching a follower. A folder from
/// before sums were recorded has its file decoded and checked instead, and its sum recorded.
fn verify_snapshot(
    db: &DB,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta<NodeId, crate::Member>,
) -> Result<(), String> {
    let id = meta.snapshot_id.as_str();
    let index = meta.last_log_id.map_or(0, |l| l.index);
    let recorded: Option<FileSum> = read_json(db, CF_SM, KEY_SNAPSHOT_SUM)
        .map_err(|e| format!("has an unreadable sum: {e}"))?;
    let found = match snapshots.sum(id) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "is missing: the metadata names it the current snapshot (index {index})"
            ))
        }
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    match recorded {
        Some(sum) if sum.id == id => {
            if sum != found {
                return Err(format!(
                    "is damaged: {} bytes with SHA-256 {}, but {} bytes with SHA-256 {} were written",
                    found.bytes, found.sha256, sum.bytes, sum.sha256
                ));
            }
            Ok(())
        }
        _ => {
            let file = std::fs::File::open(snapshots.path_of(id))
                .map_err(|e| format!("cannot be read: {e}"))?;
            cairn_registry::format::read_snapshot(std::io::BufReader::new(file), index)
                .map_err(|e| format!("is not a valid snapshot: {e}"))?;
            let bytes = serde_json::to_vec(&found).map_err(|e| e.to_string())?;
            db.put_cf(cf(db, CF_SM), KEY_SNAPSHOT_SUM, bytes)
                .map_err(|e| format!("is valid, but its sum cannot be recorded: {e}"))
        }
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // The four families are created by `open`, so their absence is a programming error.
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is created at open"))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    db: &DB,
    family: &str,
    key: &[u8],
) -> StorageResult<Option<T>> {
    let bytes = db
        .get_cf(cf(db, family), key)
        .map_err(|e| StorageIOError::read(&e))?;
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| StorageIOError::read(&e).into()))
        .transpose()
}

/// Adds to `batch` what replaces the registry family with `data`: every record removed, then
/// `data`'s services, instances, settings, tokens and policies written under their keys. A
/// restore (applied as a log entry) and an installed snapshot both rewrite it this way.
fn rewrite_registry(
    batch: &mut WriteBatch,
    reg: &rocksdb::ColumnFamily,
    data: &RegistryData,
) -> StorageResult<()> {
    batch.delete_range_cf(reg, [0u8].as_slice(), [0xffu8; 4].as_slice());
    for s in &data.services {
        let rec = ServiceRecord {
            create_index: s.create_index,
            modify_index: s.modify_index,
        };
        batch.put_cf(reg, service_key(&s.name), to_json(&rec)?);
        for (id, inst) in &s.instances {
            batch.put_cf(reg, instance_key(&s.name, id), to_json(&**inst)?);
        }
    }
    for (name, s) in &data.settings {
        batch.put_cf(reg, settings_key(name), to_json(&**s)?);
    }
    for t in &data.acl.tokens {
        batch.put_cf(reg, token_key(&t.accessor), to_json(t)?);
    }
    for p in &data.acl.policies {
        batch.put_cf(reg, policy_key(&p.spec.name), to_json(p)?);
    }
    Ok(())
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e).into())
}

pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn service_key(service: &str) -> Vec<u8> {
    [b"s\0", service.as_bytes()].concat()
}

fn settings_key(service: &str) -> Vec<u8> {
    [b"c\0", service.as_bytes()].concat()
}

fn token_key(accessor: &str) -> Vec<u8> {
    [b"t\0", accessor.as_bytes()].concat()
}

fn policy_key(name: &str) -> Vec<u8> {
    [b"p\0", name.as_bytes()].concat()
}

fn audit_key(seq: u64) -> Vec<u8> {
    [AUDIT_PREFIX, &seq.to_be_bytes()].concat()
}

fn instance_key(service: &str, id: &str) -> Vec<u8> {
    [b"i\0", service.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    committed: Arc<AtomicU64>,
    /// The data folder, and the free space its file system must keep for an append.
    dir: PathBuf,
    reserve: u64,
}

/// Flushes the database's memory tables into table files.
#[derive(Clone)]
pub struct Flusher(Arc<DB>);

impl Flusher {
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        for name in [CF_LOGS, CF_RAFT, CF_REGISTRY, CF_SM] {
            self.0.flush_cf(cf(&self.0, name))?;
        }
        Ok(())
    }
}

/// Puts the calling thread at the lowest priority (nice 19). Only for threads of their own: an
/// unprivileged process cannot raise it back. Linux only, where a nice value is a thread's own
/// (elsewhere it would be the whole process's).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!("cannot lower the snapshot thread's priority: {e}");
    }
}

/// Runs a blocking disk write without stalling the other tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl LogStore {
    fn new(db: Arc<DB>, committed: Arc<AtomicU64>, dir: PathBuf) -> Self {
        LogStore {
            db,
            committed,
            dir,
            reserve: 0,
        }
    }

    /// Appends fail once the data folder's file system has less than `bytes` free. RocksDB
    /// itself handles a full disk badly (some builds abort on the write after a failed one), so
    /// the log stops first, with a message that says why, while there is room to restart.
    pub fn with_free_space_reserve(mut self, bytes: u64) -> Self {
        self.reserve = bytes;
        self
    }

    fn check_free_space(&self) -> StorageResult<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        match rustix::fs::statvfs(&self.dir) {
            Ok(fs) => {
                let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                if free < self.reserve {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "no space left for the log: {free} bytes free on the file system of {}, \
                             under the reserve of {} (--min-free-disk-bytes)",
                            self.dir.display(),
                            self.reserve
                        ),
                    );
                    return Err(StorageIOError::write_logs(&e).into());
                }
                Ok(())
            }
            // Cannot tell: the write itself will say.
            Err(e) => {
                tracing::debug!("cannot read the free space of {}: {e}", self.dir.display());
                Ok(())
            }
        }
    }

    /// A handle that flushes the database, usable after the store was handed to Raft.
    pub fn flusher(&self) -> Flusher {
        Flusher(self.db.clone())
    }

    /// The last committed index this node knows of.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn logs(&self) -> &rocksdb::ColumnFamily {
        cf(&self.db, CF_LOGS)
    }

    fn last_purged(&self) -> StorageResult<Option<LogId<NodeId>>> {
        read_json(&self.db, CF_RAFT, KEY_LAST_PURGED)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> StorageResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.logs(),
            IteratorMode::From(&log_key(start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index =
                u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                    StorageIOError::read_logs(&std::io::Error::other("bad log key"))
                })?);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = serde_json::from_slice(&value)
                .map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged = self.last_purged()?;
        let mut iter = self.db.iterator_cf(self.logs(), IteratorMode::End);
        let last = match iter.next() {
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_VOTE, to_json(vote)?);
        // A vote must survive a crash, or this node could vote twice in one term.
        self.write(batch, true).map_err(|_| {
            StorageIOError::write_vote(&std::io::Error::other("vote write failed")).into()
        })
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_json(&self.db, CF_RAFT, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        if let Some(c) = committed {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, to_json(&c)?);
            self.write(batch, false)?;
            self.committed.store(c.index, Ordering::Release);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        read_json(&self.db, CF_RAFT, KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.check_free_space()?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(self.logs(), log_key(entry.log_id.index), to_json(&entry)?);
        }
        // Acknowledged only once synced. Blocking here is deliberate: appends must reach disk in
        // order, and measured against a separate sync thread this is faster at every load.
        blocking(|| self.write(batch, true))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.logs(), log_key(log_id.index), log_key(u64::MAX));
        blocking(|| self.write(batch, true))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_LAST_PURGED, to_json(&log_id)?);
        batch.delete_range_cf(self.logs(), log_key(0), log_key(log_id.index + 1));
        self.write(batch, false)
    }
}

/// The registry state machine: applies committed entries to the [`Registry`] view and persists
/// what changed, in one batch with the applied log id and membership.
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotDir,
    registry: Arc<Registry>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, crate::Member>,
    snapshot_seq: u64,
    /// Counts snapshot builds and installs, with their durations.
    stats: Arc<RaftStats>,
}

impl StateMachine {
    fn load(db: Arc<DB>, snapshots: SnapshotDir) -> StorageResult<Self> {
        let applied: Option<LogId<NodeId>> = read_json(&db, CF_SM, KEY_APPLIED)?;
        let membership = read_json(&db, CF_SM, KEY_MEMBERSHIP)?.unwrap_or_default();
        let list_index = read_json(&db, CF_SM, KEY_LIST_INDEX)?.unwrap_or(0);
        let mut data = load_registry(&db, list_index)?;
        // Records written by this build's apply are well formed; these checks are for what a
        // disk or a hand changed since: refused here, not a panic on the first request.
        cairn_registry::format::validate_registry(&data, applied.map_or(0, |l| l.index)).map_err(
            |e| {
                StorageIOError::read_state_machine(&std::io::Error::other(format!(
                    "the registry records are inconsistent: {e}"
                )))
            },
        )?;
        data.down_nodes = read_json(&db, CF_SM, KEY_DOWN_NODES)?.unwrap_or_default();
        data.acl.bootstrap_index = read_json(&db, CF_SM, KEY_ACL_BOOTSTRAP)?.flatten();
        let registry = Arc::new(Registry::from_data(data, applied.map_or(0, |l| l.index)));
        registry.set_time_ms(read_json(&db, CF_SM, KEY_TIME)?.unwrap_or(0));
        registry.load_audit(load_audit(&db)?);
        Ok(StateMachine {
            db,
            snapshots,
            registry,
            applied,
            membership,
            snapshot_seq: 0,
            stats: Arc::default(),
        })
    }

    /// The read view this state machine keeps current.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The metrics this state machine and its snapshot builders count into.
    pub fn stats(&self) -> Arc<RaftStats> {
        self.stats.clone()
    }

    /// The folder of this state machine's snapshots, where received ones are written too.
    pub fn snapshot_dir(&self) -> SnapshotDir {
        self.snapshots.clone()
    }

    fn persist(&self, dirty: &Dirty) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        let reg = cf(&self.db, CF_REGISTRY);
        if dirty.replaced {
            // A restore: the registry family is rewritten from the view, in this same batch.
            rewrite_registry(&mut batch, reg, &self.registry.export())?;
        }
        for name in &dirty.services {
            match self.registry.service(name) {
                Some(s) => batch.put_cf(
                    reg,
                    service_key(name),
                    to_json(&ServiceRecord {
                        create_index: s.create_index,
                        modify_index: s.modify_index,
                    })?,
                ),
                None => batch.delete_cf(reg, service_key(name)),
            }
        }
        for (service, id) in &dirty.instances {
            match self
                .registry
                .service(service)
                .and_then(|s| s.instances.get(id).cloned())
            {
                Some(inst) => batch.put_cf(reg, instance_key(service, id), to_json(&*inst)?),
                None => batch.delete_cf(reg, instance_key(service, id)),
            }
        }
        for name in &dirty.settings {
            match self.registry.settings(name) {
                Some(s) => batch.put_cf(reg, settings_key(name), to_json(&*s)?),
                None => batch.delete_cf(reg, settings_key(name)),
            }
        }
        let sm = cf(&self.db, CF_SM);
        if !(dirty.acl_tokens.is_empty() && dirty.acl_policies.is_empty()) || dirty.acl_bootstrap {
            let acl = self.registry.acl();
            for a in &dirty.acl_tokens {
                match acl.tokens.get(a) {
                    Some(t) => batch.put_cf(reg, token_key(a), to_json(&**t)?),
                    None => batch.delete_cf(reg, token_key(a)),
                }
            }
            for name in &dirty.acl_policies {
                match acl.policies.get(name) {
                    Some(p) => batch.put_cf(reg, policy_key(name), to_json(&**p)?),
                    None => batch.delete_cf(reg, policy_key(name)),
                }
            }
            if dirty.acl_bootstrap {
                batch.put_cf(sm, KEY_ACL_BOOTSTRAP, to_json(&acl.bootstrap_index)?);
            }
        }
        // Each new entry pushes out the one AUDIT_LEN before it: a point delete, never a range
        // delete (one range tombstone per batch piles up in the memtable and slows every read and
        // write of the family until a flush: a leader stalled for seconds a minute into a
        // registration benchmark).
        for e in &dirty.audit {
            batch.put_cf(sm, audit_key(e.seq), to_json(e)?);
            if let Some(evicted) = e.seq.checked_sub(AUDIT_LEN as u64) {
                batch.delete_cf(sm, audit_key(evicted));
            }
        }
        batch.put_cf(sm, KEY_TIME, to_json(&self.registry.time_ms())?);
        if dirty.down_nodes {
            batch.put_cf(sm, KEY_DOWN_NODES, to_json(&self.registry.down_nodes())?);
        }
        if dirty.list_index {
            batch.put_cf(sm, KEY_LIST_INDEX, to_json(&self.registry.list_index())?);
        }
        batch.put_cf(sm, KEY_APPLIED, to_json(&self.applied)?);
        batch.put_cf(sm, KEY_MEMBERSHIP, to_json(&self.membership)?);
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }
}

/// Instance records handed to the decoding thread at a time (see [`load_registry`]).
const DECODE_BATCH: usize = 4096;

/// A batch of instance records as read: key and value.
type RawBatch = Vec<(Box<[u8]>, Box<[u8]>)>;
/// The same batch decoded: each instance with its service's name.
type DecodedBatch = Result<Vec<(String, Instance)>, String>;

/// Reads the registry family back into memory.
///
/// Instance records are nearly all of it, and decoding their JSON was the largest part of a
/// restart once the write-ahead log was bounded: a second thread decodes them while this one
/// reads RocksDB and puts them into their services, so the two overlap. The result does not
/// depend on the order the batches come back in (a service is a map of its instances).
fn load_registry(db: &DB, list_index: u64) -> StorageResult<RegistryData> {
    let bad = |what: String| StorageIOError::read_state_machine(&std::io::Error::other(what));
    let mut services: BTreeMap<String, ServiceEntry> = BTreeMap::new();
    let mut settings = BTreeMap::new();
    let mut acl = AclData::default();
    let put = |services: &mut BTreeMap<String, ServiceEntry>, decoded: DecodedBatch| {
        for (name, inst) in decoded.map_err(bad)? {
            services
                .entry(name)
                .or_insert_with_key(|name| ServiceEntry::new(name, 0))
                .put(Arc::new(inst));
        }
        StorageResult::Ok(())
    };
    std::thread::scope(|scope| -> StorageResult<()> {
        // Bounded, so reading never runs far ahead of decoding.
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<RawBatch>(4);
        let (decoded_tx, decoded_rx) = std::sync::mpsc::channel::<DecodedBatch>();
        scope.spawn(move || {
            for batch in raw_rx {
                let decoded = batch.iter().map(|(k, v)| decode_instance(k, v)).collect();
                if decoded_tx.send(decoded).is_err() {
                    return;
                }
            }
        });
        let mut batch = Vec::with_capacity(DECODE_BATCH);
        for item in db.iterator_cf(cf(db, CF_REGISTRY), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
            let mut parts = key.split(|b| *b == 0);
            let kind = parts.next().unwrap_or_default();
            if kind == b"i" {
                batch.push((key, value));
                if batch.len() == DECODE_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(DECODE_BATCH));
                    // The decoder only stops when this sender goes.
                    let _ = raw_tx.send(full);
                    while let Ok(decoded) = decoded_rx.try_recv() {
                        put(&mut services, decoded)?;
                    }
                }
                continue;
            }
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            match kind {
                b"c" => {
                    let s: ServiceSettings = serde_json::from_slice(&value)
                        .map_err(|e| bad(format!("settings of {name}: {e}")))?;
                    settings.insert(name, Arc::new(s));
                }
                b"t" => {
                    let t: Token = serde_json::from_slice(&value)
                        .map_err(|e| bad(format!("token {name}: {e}")))?;
                    acl.tokens.push(t);
                }
                b"p" => {
                    let p: Policy = serde_json::from_slice(&value)
                        .map_err(|e| bad(format!("policy {name}: {e}")))?;
                    acl.policies.push(p);
                }
                b"s" => {
                    let rec: ServiceRecord = serde_json::from_slice(&value)
                        .map_err(|e| bad(format!("service {name}: {e}")))?;
                    let entry = services
                        .entry(name.clone())
                        .or_insert_with(|| ServiceEntry::new(&name, 0));
                    entry.create_index = rec.create_index;
                    entry.modify_index = rec.modify_index;
                }
                _ => return Err(bad(format!("unknown registry key {key:?}")).into()),
            }
        }
        let _ = raw_tx.send(batch);
        drop(raw_tx);
        for decoded in decoded_rx {
            put(&mut services, decoded)?;
        }
        Ok(())
    })?;
    Ok(RegistryData {
        list_index,
        services: services.into_values().map(Arc::new).collect(),
        settings,
        down_nodes: Default::default(),
        acl,
    })
}

/// Decodes the instance record `value` under `key` (`i\0<service>\0<id>`): its service's name and
/// the instance, which must be the one its key names.
fn decode_instance(key: &[u8], value: &[u8]) -> Result<(String, Instance), String> {
    let mut parts = key.split(|b| *b == 0).skip(1);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let inst: Instance =
        serde_json::from_slice(value).map_err(|e| format!("instance in {name}: {e}"))?;
    if parts.next() != Some(inst.spec.id.as_bytes()) {
        return Err(format!(
            "the record under {:?} holds instance {:?}",
            String::from_utf8_lossy(key),
            inst.spec.id
        ));
    }
    Ok((name, inst))
}

/// Reads this node's audit list back, oldest first.
fn load_audit(db: &DB) -> StorageResult<Vec<AuditEntry>> {
    let mut out = Vec::new();
    let iter = db.iterator_cf(
        cf(db, CF_SM),
        IteratorMode::From(AUDIT_PREFIX, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (key, value) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
        if !key.starts_with(AUDIT_PREFIX) {
            break;
        }
        let e: AuditEntry = serde_json::from_slice(&value).map_err(|e| {
            StorageIOError::read_state_machine(&std::io::Error::other(format!("audit entry: {e}")))
        })?;
        out.push(e);
    }
    Ok(out)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, crate::Member>,
    )> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<OpResult>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut dirty = Dirty::default();
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let result = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => self.registry.apply(index, cmd, &mut dirty),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
            };
            self.applied = Some(entry.log_id);
            self.registry.set_applied(index);
            results.push(result);
        }
        self.persist(&dirty)?;
        self.registry.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            data: self.registry.export(),
            applied: self.applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
            stats: self.stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotData>> {
        let data = self
            .snapshots
            .create_incoming()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, crate::Member>,
        mut snapshot: Box<SnapshotData>,
    ) -> StorageResult<()> {
        let started = Instant::now();
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        let data = snapshot.decode(last_index).await.map_err(|e| {
            let e = match e {
                DecodeError::Disk(e) => e,
                DecodeError::Invalid(e) => std::io::Error::other(e.to_string()),
            };
            StorageIOError::read_snapshot(Some(meta.signature()), &e)
        })?;

        // Replace the whole state machine in one batch: registry, applied, membership, snapshot.
        let mut batch = WriteBatch::default();
        let reg = cf(&self.db, CF_REGISTRY);
        rewrite_registry(&mut batch, reg, &data)?;
        let sm = cf(&self.db, CF_SM);
        batch.put_cf(sm, KEY_ACL_BOOTSTRAP, to_json(&data.acl.bootstrap_index)?);
        batch.put_cf(sm, KEY_LIST_INDEX, to_json(&data.list_index)?);
        batch.put_cf(sm, KEY_DOWN_NODES, to_json(&data.down_nodes)?);
        batch.put_cf(sm, KEY_APPLIED, to_json(&meta.last_log_id)?);
        batch.put_cf(sm, KEY_MEMBERSHIP, to_json(&meta.last_membership)?);
        batch.put_cf(sm, KEY_SNAPSHOT, to_json(meta)?);
        let mut opts = WriteOptions::default();
        // The log behind this snapshot may be purged next: the snapshot must be durable first.
        opts.set_sync(true);
        // No snapshot is built while this one replaces the current one (see `snapshot`).
        let snapshots = self.snapshots.clone();
        let _replacing = snapshots.lock().await;
        let written = match snapshots.adopt(&mut snapshot, &meta.snapshot_id).await {
            Ok(()) => blocking(|| {
                let sum = snapshots.sum(&meta.snapshot_id)?;
                batch.put_cf(
                    cf(&self.db, CF_SM),
                    KEY_SNAPSHOT_SUM,
                    serde_json::to_vec(&sum)?,
                );
                self.db
                    .write_opt(batch, &opts)
                    .map_err(std::io::Error::other)
            }),
            Err(e) => Err(e),
        };
        written.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        snapshots.prune(&meta.snapshot_id);

        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.registry.replace(data, last_index);
        self.stats
            .snapshot_install_seconds
            .observe(seconds(started.elapsed()));
        tracing::info!(index = last_index, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        // Once open, the file outlives a prune; between reading the record and opening it, no
        // build or install may replace it.
        let _current = self.snapshots.lock().await;
        let meta: Option<SnapshotMeta<NodeId, crate::Member>> =
            read_json(&self.db, CF_SM, KEY_SNAPSHOT)?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let data = self
            .snapshots
            .open(&meta.snapshot_id)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

/// Serializes a point-in-time copy of the registry, off the apply path.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshots: SnapshotDir,
    data: RegistryData,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, crate::Member>,
    seq: u64,
    stats: Arc<RaftStats>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = Instant::now();
        let built = self.build().await;
        if built.is_ok() {
            self.stats
                .snapshot_build_seconds
                .observe(seconds(started.elapsed()));
        }
        built
    }
}

impl SnapshotBuilder {
    async fn build(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let registry = std::mem::take(&mut self.data);
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let snapshots = self.snapshots.clone();
        // One replacement of the current snapshot at a time: an install from the leader cannot
        // prune this file, nor this build prune the installed one. The snapshot's thread holds
        // it until the file and the metadata are written, even if this task is dropped.
        let replacing = snapshots.lock_owned().await;
        let current: Option<SnapshotMeta<NodeId, crate::Member>> =
            read_json(&self.db, CF_SM, KEY_SNAPSHOT)?;
        if let Some(current) = current.filter(|c| c.last_log_id >= meta.last_log_id) {
            // A snapshot installed while this one waited covers as much or more: it stays
            // current, and the metadata never goes back to an older one.
            let data = snapshots
                .open(&current.snapshot_id)
                .await
                .map_err(|e| StorageIOError::read_snapshot(Some(current.signature()), &e))?;
            return Ok(Snapshot {
                meta: current,
                snapshot: Box::new(data),
            });
        }
        let sm = cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        batch.put_cf(sm, KEY_SNAPSHOT, to_json(&meta)?);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        // 218 MB for a million instances: encoded straight to the file, on a thread of its
        // own at the lowest priority, so that on a busy machine the writes being served keep
        // the CPU and the snapshot takes what is left.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let work = {
            let (db, snapshots, id) =
                (self.db.clone(), snapshots.clone(), meta.snapshot_id.clone());
            move || -> std::io::Result<()> {
                lowest_priority();
                let sum = snapshots.write(&id, registry)?;
                batch.put_cf(cf(&db, CF_SM), KEY_SNAPSHOT_SUM, serde_json::to_vec(&sum)?);
                db.write_opt(batch, &opts).map_err(std::io::Error::other)
            }
        };
        std::thread::Builder::new()
            .name("cairn-snapshot".into())
            .spawn(move || {
                let done = work();
                // Nobody waits any more if the build was abandoned.
                let _ = done_tx.send((done, replacing));
            })
            .map(drop)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let (done, _replacing) = done_rx
            .await
            .map_err(|_| std::io::Error::other("the snapshot thread ended early"))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        done.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        snapshots.prune(&meta.snapshot_id);
        let data = snapshots
            .open(&meta.snapshot_id)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}
