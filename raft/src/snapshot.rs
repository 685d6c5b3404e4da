//! Snapshots as files in `<data-dir>/snapshots/`, never whole in memory:
//!
//! - `<id>.snap`: the node's current snapshot, built here or installed from the leader;
//! - `<id>.snap.tmp`: one being built (renamed into place once synced);
//! - `incoming-<n>.part`: one being received from the leader.
//!
//! openraft reads and writes a snapshot through [`SnapshotData`], an open file. Receiving is
//! ours, not openraft's (which writes each chunk wherever the sender says): [`Receiver`] admits
//! a chunk only if it continues the snapshot in progress and stays within the size the leader
//! announced, which itself is at most [`MAX_SNAPSHOT_BYTES`], and it writes the chunk straight to
//! the file. A refused chunk ends the snapshot in progress and removes its file; so does a new
//! snapshot id, and so does the node's start for whatever a crash left behind.
//!
//! Building a snapshot and installing one from the leader both replace the current snapshot's
//! file and metadata, and openraft runs them on different tasks: they take
//! [`SnapshotDir::lock`] for the whole replacement, so neither prunes the other's file and an
//! older snapshot never replaces a newer one. The current snapshot's size and SHA-256
//! ([`FileSum`]) are recorded with its metadata and checked at start, so a damaged or missing
//! file stops the node with its path rather than being sent to a follower.

use std::io::{self, BufReader, BufWriter, Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_registry::format::{self, SnapshotError};
use cairn_registry::RegistryData;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest snapshot a node accepts from the leader, checked against the size the leader
/// announces before anything is written. A registry of a million instances is a few hundred MB.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
const INCOMING_PREFIX: &str = "incoming-";

/// A snapshot's bytes as openraft sees them: an open file.
///
/// A file being received is removed when its handle is dropped, unless it was installed
/// ([`SnapshotDir::adopt`]): openraft may drop a received snapshot it no longer needs, and
/// an abandoned download must not stay behind.
#[derive(Debug)]
pub struct SnapshotData {
    file: tokio::fs::File,
    path: PathBuf,
    incoming: bool,
    /// The registry decoded from this file and checked against the given last index, so the
    /// state machine need not read the file a second time.
    decoded: Option<(u64, RegistryData)>,
}

impl SnapshotData {
    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry these bytes hold, checked for a snapshot taken at `last_index`. Reads the
    /// file as it goes (never whole), unless it was decoded already.
    pub async fn decode(&mut self, last_index: u64) -> Result<RegistryData, DecodeError> {
        if let Some((index, data)) = self.decoded.take() {
            if index == last_index {
                return Ok(data);
            }
        }
        // Writes still queued in tokio's file must land before the file is read by path.
        self.file.flush().await.map_err(DecodeError::Disk)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(DecodeError::Disk)?;
            format::read_snapshot(BufReader::new(file), last_index).map_err(DecodeError::Invalid)
        })
        .await
        .map_err(|e| DecodeError::Disk(io::Error::other(e)))?
    }

    /// Decodes now (see [`SnapshotData::decode`]) and keeps the result for the state machine.
    pub(crate) async fn check(&mut self, last_index: u64) -> Result<(), DecodeError> {
        let data = self.decode(last_index).await?;
        self.decoded = Some((last_index, data));
        Ok(())
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if self.incoming {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// A snapshot's bytes could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("cannot read the snapshot file: {0}")]
    Disk(io::Error),
    /// The bytes are not a snapshot this build takes.
    #[error(transparent)]
    Invalid(SnapshotError),
}

/// A snapshot file's size and SHA-256, recorded beside its metadata when it becomes current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// The snapshot id the file belongs to.
    pub id: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A running size and SHA-256.
struct Sum {
    ctx: ring::digest::Context,
    bytes: u64,
}

impl Default for Sum {
    fn default() -> Self {
        Sum {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }
}

impl Sum {
    fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    fn finish(self, id: &str) -> FileSum {
        let sha256 = self
            .ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        FileSum {
            id: id.to_owned(),
            bytes: self.bytes,
            sha256,
        }
    }
}

/// Buffer between the snapshot encoder and its file: serde_json writes a few bytes at a time.
const WRITE_BUFFER: usize = 64 * 1024;

/// How much of a snapshot being built may wait in the page cache before it is synced. Synced
/// only at the end, the file of a million instances (218 MB) went to the disk all at once,
/// and the Raft log's fdatasyncs queued behind it; in slices, each of those waits for a few MB
/// at most.
const SYNC_EVERY: u64 = 8 << 20;

/// A snapshot file being built: the bytes go to the file and into its [`Sum`] as they are
/// written, so the finished file need not be read back for its checksum, and are synced every
/// [`SYNC_EVERY`] bytes.
struct SumWriter {
    file: std::fs::File,
    sum: Sum,
    unsynced: u64,
}

impl SumWriter {
    fn new(file: std::fs::File) -> Self {
        SumWriter {
            file,
            sum: Sum::default(),
            unsynced: 0,
        }
    }

    fn finish(self, id: &str) -> FileSum {
        self.sum.finish(id)
    }
}

impl io::Write for SumWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sum.update(&buf[..n]);
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The snapshot folder.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
    /// Numbers the incoming files, so two are never one.
    incoming: Arc<AtomicU64>,
    /// Held while the current snapshot is replaced (file, metadata, pruning); shared by every
    /// clone, so by the snapshot builder and the state machine.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotDir {
    pub(crate) fn new(dir: PathBuf) -> Self {
        SnapshotDir {
            dir,
            incoming: Arc::new(AtomicU64::new(0)),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Taken for the whole of replacing the current snapshot: build and install never
    /// interleave.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// [`Self::lock`] as a guard that can move to another thread: held until that thread is
    /// done, even if the task that took it is dropped.
    pub(crate) async fn lock_owned(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    /// Where snapshot `id`'s file is.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(Self::file_name(id))
    }

    /// Size and SHA-256 of snapshot `id`'s file. Blocking; reads the whole file.
    pub(crate) fn sum(&self, id: &str) -> io::Result<FileSum> {
        let mut file = std::fs::File::open(self.path_of(id))?;
        let mut sum = Sum::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
        }
        Ok(sum.finish(id))
    }

    fn file_name(id: &str) -> String {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        format!("{safe}{SNAPSHOT_SUFFIX}")
    }

    /// Makes the folder and removes everything in it but snapshot `keep`'s file: the downloads
    /// and builds a crash interrupted, and snapshots no longer current. Run at start.
    pub(crate) fn clean(&self, keep: Option<&str>) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let keep = keep.map(Self::file_name);
        self.remove_where(|name| Some(name) != keep.as_deref());
        Ok(())
    }

    /// Removes every finished snapshot but `keep`'s, once the metadata points at `keep`. A
    /// download or build in progress is left alone.
    pub(crate) fn prune(&self, keep: &str) {
        let keep = Self::file_name(keep);
        self.remove_where(|name| name.ends_with(SNAPSHOT_SUFFIX) && name != keep);
    }

    fn remove_where(&self, remove: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if remove(&e.file_name().to_string_lossy()) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!("cannot remove {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Encodes `data` as snapshot `id`, durably: into a temporary file, synced, renamed into
    /// place, and the folder synced. Answers the file's size and SHA-256, taken from the bytes
    /// as they were written (no second pass over the file). Blocking.
    pub(crate) fn write(&self, id: &str, data: RegistryData) -> io::Result<FileSum> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_of(id);
        let tmp = self
            .dir
            .join(format!("{}{TEMP_SUFFIX}", Self::file_name(id)));
        let result = (|| {
            let mut out = BufWriter::with_capacity(
                WRITE_BUFFER,
                SumWriter::new(std::fs::File::create(&tmp)?),
            );
            format::write_snapshot(data, &mut out)?;
            let writer = out.into_inner().map_err(|e| e.into_error())?;
            writer.file.sync_all()?;
            Ok(writer.finish(id))
        })();
        let sum = match result {
            Ok(sum) => sum,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path)?;
        self.sync()?;
        Ok(sum)
    }

    fn sync(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Opens snapshot `id` for reading.
    pub(crate) async fn open(&self, id: &str) -> io::Result<SnapshotData> {
        let path = self.path_of(id);
        Ok(SnapshotData {
            file: tokio::fs::File::open(&path).await?,
            path,
            incoming: false,
            decoded: None,
        })
    }

    /// A new, empty file to receive a snapshot into.
    pub(crate) async fn create_incoming(&self) -> io::Result<SnapshotData> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{INCOMING_PREFIX}{n}.part"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(SnapshotData {
            file,
            path,
            incoming: true,
            decoded: None,
        })
    }

    /// Makes a received file snapshot `id`, durably: synced, renamed into place, the folder
    /// synced. From then on dropping its handle no longer removes it. A snapshot that is not a
    /// download (another store's) is copied, not moved.
    pub(crate) async fn adopt(&self, data: &mut SnapshotData, id: &str) -> io::Result<()> {
        data.file.flush().await?;
        data.file.sync_all().await?;
        let path = self.path_of(id);
        if data.incoming {
            tokio::fs::rename(&data.path, &path).await?;
            data.path = path;
            data.incoming = false;
        } else if data.path != path {
            let tmp = self
                .dir
                .join(format!("{}{TEMP_SUFFIX}", Self::file_name(id)));
            tokio::fs::copy(&data.path, &tmp).await?;
            tokio::fs::File::open(&tmp).await?.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await?;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync())
            .await
            .map_err(io::Error::other)?
    }
}

/// Why a snapshot chunk was refused. The snapshot in progress, if any, is dropped with it.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The announced size is over [`MAX_SNAPSHOT_BYTES`].
    #[error("a snapshot of {size} bytes is over the limit of {MAX_SNAPSHOT_BYTES}")]
    TooLarge { size: u64 },
    /// The chunk ends past the size the leader announced.
    #[error("snapshot chunk at {offset} of {len} bytes goes past the announced {size} bytes")]
    PastEnd { offset: u64, len: u64, size: u64 },
    /// The first chunk of a snapshot is not at offset 0.
    #[error("a new snapshot must start at offset 0, not {offset}")]
    NotAtStart { offset: u64 },
    /// The chunk leaves a hole after the bytes received so far.
    #[error("snapshot chunk at {offset} leaves a hole after {received} bytes")]
    Hole { offset: u64, received: u64 },
    /// A later chunk announces another size than the first.
    #[error("snapshot size changed from {was} to {now} bytes mid-way")]
    SizeChanged { was: u64, now: u64 },
    /// The last chunk came before the announced size was reached.
    #[error("snapshot ended at {received} of the announced {size} bytes")]
    Short { received: u64, size: u64 },
    /// Writing the chunk failed.
    #[error("cannot write the snapshot chunk: {0}")]
    Disk(#[from] io::Error),
}

/// One chunk as the leader sent it.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub snapshot_id: &'a str,
    /// The whole snapshot's size, as the leader announces it.
    pub size: u64,
    pub offset: u64,
    pub bytes: &'a [u8],
    pub done: bool,
}

/// Whether an admitted chunk starts a new snapshot or continues the one in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    New,
    Continues,
}

/// What a written chunk leaves: more to come, or the whole snapshot, synced.
#[derive(Debug)]
pub enum Progress {
    More,
    Done(Box<SnapshotData>),
}

struct Incoming {
    id: String,
    size: u64,
    received: u64,
    data: SnapshotData,
}

/// The snapshot being received from the leader: at most one, as a file.
pub struct Receiver {
    dir: SnapshotDir,
    current: Option<Incoming>,
}

impl Receiver {
    pub fn new(dir: SnapshotDir) -> Self {
        Receiver { dir, current: None }
    }

    /// Checks `chunk` against the snapshot in progress, changing nothing. Resending an earlier
    /// part of the snapshot in progress is allowed (the leader retries a chunk whose answer it
    /// lost); skipping ahead is not.
    pub fn admit(&self, chunk: &Chunk<'_>) -> Result<Admitted, ChunkError> {
        let Chunk {
            size,
            offset,
            bytes,
            ..
        } = *chunk;
        if size > MAX_SNAPSHOT_BYTES {
            return Err(ChunkError::TooLarge { size });
        }
        let len = bytes.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ChunkError::PastEnd { offset, len, size });
        }
        match &self.current {
            Some(c) if c.id == chunk.snapshot_id => {
                if c.size != size {
                    Err(ChunkError::SizeChanged {
                        was: c.size,
                        now: size,
                    })
                } else if offset > c.received {
                    Err(ChunkError::Hole {
                        offset,
                        received: c.received,
                    })
                } else {
                    Ok(Admitted::Continues)
                }
            }
            _ if offset != 0 => Err(ChunkError::NotAtStart { offset }),
            _ => Ok(Admitted::New),
        }
    }

    /// Admits and writes `chunk`. On a refusal or a disk error the snapshot in progress is
    /// dropped and its file removed; after the last chunk the file is synced and handed over.
    pub async fn receive(&mut self, chunk: &Chunk<'_>) -> Result<Progress, ChunkError> {
        let result = self.write(chunk).await;
        if result.is_err() {
            self.abandon();
        }
        result
    }

    async fn write(&mut self, chunk: &Chunk<'_>) -> Result<Progress, ChunkError> {
        if self.admit(chunk)? == Admitted::New {
            // Dropping the previous download removes its file.
            self.current = None;
            self.current = Some(Incoming {
                id: chunk.snapshot_id.to_owned(),
                size: chunk.size,
                received: 0,
                data: self.dir.create_incoming().await?,
            });
        }
        let Some(c) = self.current.as_mut() else {
            return Err(ChunkError::Disk(io::Error::other(
                "no snapshot in progress",
            )));
        };
        if chunk.offset != c.received {
            // A resend: what follows it is written again.
            c.data.flush().await?;
            c.data.file.set_len(chunk.offset).await?;
            c.data.seek(SeekFrom::Start(chunk.offset)).await?;
        }
        c.data.write_all(chunk.bytes).await?;
        c.received = chunk.offset + chunk.bytes.len() as u64;
        if !chunk.done {
            return Ok(Progress::More);
        }
        if c.received != c.size {
            return Err(ChunkError::Short {
                received: c.received,
                size: c.size,
            });
        }
        let Some(mut done) = self.current.take() else {
            return Err(ChunkError::Disk(io::Error::other(
                "no snapshot in progress",
            )));
        };
        done.data.flush().await?;
        done.data.file.sync_all().await?;
        done.data.seek(SeekFrom::Start(0)).await?;
        Ok(Progress::Done(Box::new(done.data)))
    }

    /// Drops the snapshot in progress, removing its file.
    pub fn abandon(&mut self) {
        self.current = None;
    }

    /// The id of the snapshot in progress and the bytes received of it.
    pub fn in_progress(&self) -> Option<(&str, u64)> {
        self.current.as_ref().map(|c| (c.id.as_str(), c.received))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use cairn_registry::model::validate_registration;
    use cairn_registry::{Command, Dirty, Op, Registry};

    use super::*;

    /// A registry of `n` instances at index `n`, and its snapshot's bytes.
    fn registry(n: u64) -> (RegistryData, Vec<u8>) {
        let registry = Registry::default();
        let mut dirty = Dirty::default();
        for i in 1..=n {
            let body = serde_json::json!({"address": "10.0.0.1", "port": 80});
            let instance =
                validate_registration(&format!("i{i}"), &serde_json::from_value(body).unwrap())
                    .unwrap();
            let cmd = Command {
                by: Vec::new(),
                time_ms: 1_700_000_000_000,
                ops: vec![Op::Register {
                    service: "web".into(),
                    instance,
                    health: None,
                }],
            };
            registry.apply(i, &cmd, &mut dirty);
        }
        let bytes = format::encode_snapshot(registry.export()).unwrap();
        (registry.export(), bytes)
    }

    fn chunk<'a>(id: &'a str, size: u64, offset: u64, bytes: &'a [u8], done: bool) -> Chunk<'a> {
        Chunk {
            snapshot_id: id,
            size,
            offset,
            bytes,
            done,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn receiver() -> (tempfile::TempDir, PathBuf, Receiver) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snapshots");
        (tmp, dir.clone(), Receiver::new(SnapshotDir::new(dir)))
    }

    /// Sends `bytes` as snapshot `id` in chunks of `size` bytes, the last one marked done.
    async fn send(receiver: &mut Receiver, id: &str, bytes: &[u8], size: usize) -> Progress {
        let total = bytes.len() as u64;
        let mut offset = 0;
        loop {
            let end = (offset + size).min(bytes.len());
            let done = end == bytes.len();
            let c = chunk(id, total, offset as u64, &bytes[offset..end], done);
            let progress = receiver.receive(&c).await.unwrap();
            if done {
                return progress;
            }
            offset = end;
        }
    }

    #[tokio::test]
    async fn a_snapshot_received_in_chunks_decodes_from_its_file() {
        let (_tmp, dir, mut receiver) = receiver();
        let (data, bytes) = registry(50);
        let Progress::Done(mut received) = send(&mut receiver, "1-50-1", &bytes, 1000).await else {
            panic!("the last chunk completes the snapshot");
        };
        assert_eq!(std::fs::read(received.path()).unwrap(), bytes);
        assert_eq!(received.decode(50).await.unwrap(), data);
        assert!(receiver.in_progress().is_none());
        drop(received);
        assert!(
            files(&dir).is_empty(),
            "a download nobody installed is removed"
        );
    }

    #[tokio::test]
    async fn an_adopted_download_becomes_the_current_snapshot_and_stays() {
        let (_tmp, dir, mut receiver) = receiver();
        let (data, bytes) = registry(3);
        let Progress::Done(mut received) = send(&mut receiver, "1-3-1", &bytes, 100).await else {
            panic!("the last chunk completes the snapshot");
        };
        let snapshots = SnapshotDir::new(dir.clone());
        snapshots.adopt(&mut received, "1-3-1").await.unwrap();
        drop(received);
        assert_eq!(files(&dir), ["1-3-1.snap"]);
        let mut current = snapshots.open("1-3-1").await.unwrap();
        assert_eq!(current.decode(3).await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_built_snapshot_is_written_durably_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::new(tmp.path().join("snapshots"));
        let (data, bytes) = registry(20);
        let sum = snapshots.write("1-20-1", data.clone()).unwrap();
        assert_eq!(files(&tmp.path().join("snapshots")), ["1-20-1.snap"]);
        // The sum taken while writing is the file's, as a later read finds it.
        assert_eq!(sum, snapshots.sum("1-20-1").unwrap());
        assert_eq!(sum.bytes, bytes.len() as u64);
        let mut current = snapshots.open("1-20-1").await.unwrap();
        assert_eq!(std::fs::read(current.path()).unwrap(), bytes);
        assert_eq!(current.decode(20).await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_chunk_that_skips_ahead_is_refused_and_drops_the_download() {
        let (_tmp, dir, mut receiver) = receiver();
        receiver
            .receive(&chunk("a", 100, 0, &[1; 10], false))
            .await
            .unwrap();
        assert_eq!(files(&dir).len(), 1);
        let err = receiver
            .receive(&chunk("a", 100, 20, &[1; 10], false))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChunkError::Hole {
                    offset: 20,
                    received: 10
                }
            ),
            "{err}"
        );
        assert!(receiver.in_progress().is_none());
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
        // And the leader starts over.
        receiver
            .receive(&chunk("a", 100, 10, &[1; 10], false))
            .await
            .unwrap_err();
        receiver
            .receive(&chunk("a", 100, 0, &[1; 10], false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_new_snapshot_must_start_at_offset_zero() {
        let (_tmp, dir, mut receiver) = receiver();
        let c = chunk("a", 1 << 20, 4096, &[1; 3], false);
        assert!(matches!(
            receiver.admit(&c),
            Err(ChunkError::NotAtStart { offset: 4096 })
        ));
        assert!(receiver.receive(&c).await.is_err());
        assert!(files(&dir).is_empty());
    }

    #[tokio::test]
    async fn a_chunk_past_the_announced_size_is_refused() {
        let (_tmp, dir, mut receiver) = receiver();
        receiver
            .receive(&chunk("a", 15, 0, &[1; 10], false))
            .await
            .unwrap();
        let err = receiver
            .receive(&chunk("a", 15, 10, &[1; 10], false))
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::PastEnd { size: 15, .. }), "{err}");
        assert!(files(&dir).is_empty());
        // An offset near u64::MAX overflows rather than wrapping round.
        let err = receiver
            .receive(&chunk(
                "b",
                MAX_SNAPSHOT_BYTES,
                u64::MAX - 1,
                &[1; 10],
                false,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::PastEnd { .. }), "{err}");
        // A chunk cannot announce another size half-way either.
        receiver
            .receive(&chunk("c", 20, 0, &[1; 10], false))
            .await
            .unwrap();
        let err = receiver
            .receive(&chunk("c", 1000, 10, &[1; 10], false))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ChunkError::SizeChanged { was: 20, now: 1000 }),
            "{err}"
        );
        assert!(files(&dir).is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_over_the_limit_is_refused_before_anything_is_written() {
        let (_tmp, dir, mut receiver) = receiver();
        let err = receiver
            .receive(&chunk("a", MAX_SNAPSHOT_BYTES + 1, 0, &[1; 10], false))
            .await
            .unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { .. }), "{err}");
        assert!(!dir.exists() || files(&dir).is_empty());
        // At the limit it is taken.
        receiver
            .receive(&chunk("a", MAX_SNAPSHOT_BYTES, 0, &[1; 10], false))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_last_chunk_short_of_the_announced_size_is_refused() {
        let (_tmp, dir, mut receiver) = receiver();
        let err = receiver
            .receive(&chunk("a", 20, 0, &[1; 10], true))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChunkError::Short {
                    received: 10,
                    size: 20
                }
            ),
            "{err}"
        );
        assert!(files(&dir).is_empty());
    }

    #[tokio::test]
    async fn a_resent_chunk_is_rewritten_and_a_new_id_replaces_the_download() {
        let (_tmp, dir, mut receiver) = receiver();
        let (data, bytes) = registry(5);
        let size = bytes.len() as u64;
        // The first half, then the first chunk again (its answer was lost), then the rest.
        let half = bytes.len() / 2;
        receiver
            .receive(&chunk("a", size, 0, &bytes[..10], false))
            .await
            .unwrap();
        receiver
            .receive(&chunk("a", size, 10, &bytes[10..half], false))
            .await
            .unwrap();
        receiver
            .receive(&chunk("a", size, 0, &bytes[..10], false))
            .await
            .unwrap();
        assert_eq!(receiver.in_progress(), Some(("a", 10)));
        receiver
            .receive(&chunk("a", size, 10, &bytes[10..half], false))
            .await
            .unwrap();
        // A new snapshot id drops the download in progress and its file.
        let before = files(&dir);
        receiver
            .receive(&chunk("b", size, 0, &bytes[..half], false))
            .await
            .unwrap();
        let after = files(&dir);
        assert_eq!((before.len(), after.len()), (1, 1));
        assert_ne!(before, after);
        let Progress::Done(mut received) = receiver
            .receive(&chunk("b", size, half as u64, &bytes[half..], true))
            .await
            .unwrap()
        else {
            panic!("the last chunk completes the snapshot");
        };
        assert_eq!(received.decode(5).await.unwrap(), data);
    }

    #[tokio::test]
    async fn start_removes_what_a_crash_left_but_the_current_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snapshots");
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "incoming-3.part",
            "2-9-1.snap.tmp",
            "1-5-1.snap",
            "2-8-1.snap",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        SnapshotDir::new(dir.clone()).clean(Some("2-8-1")).unwrap();
        assert_eq!(files(&dir), ["2-8-1.snap"]);
    }

    #[tokio::test]
    async fn pruning_leaves_a_download_in_progress_alone() {
        let (_tmp, dir, mut receiver) = receiver();
        receiver
            .receive(&chunk("a", 100, 0, &[1; 10], false))
            .await
            .unwrap();
        let snapshots = SnapshotDir::new(dir.clone());
        snapshots.write("1-1-1", RegistryData::default()).unwrap();
        snapshots.write("1-2-2", RegistryData::default()).unwrap();
        snapshots.prune("1-2-2");
        assert_eq!(files(&dir), ["1-2-2.snap", "incoming-0.part"]);
    }
}
