//! Backup files: what `GET /v1/snapshot` streams, `cairn snapshot save` writes and
//! `cairn snapshot restore` sends back.
//!
//! A backup is three lines of JSON:
//!
//! 1. a [`BackupHeader`]: the cluster's name, the Raft index and term it was taken at, the
//!    persisted format version, the counts, and the time;
//! 2. the registry as a snapshot ([`crate::format::SnapshotFile`], the same encoding a node's own
//!    snapshots use, so one golden file pins both);
//! 3. a [`BackupTrailer`]: the size and SHA-256 of the first two lines.
//!
//! The checksum comes last so the file can be streamed as it is encoded, never whole in memory.
//! Compact JSON never holds a raw newline, so the lines are found without parsing; a file that
//! was cut short lacks its trailer, and one changed anywhere fails its checksum, before a byte
//! of the registry is decoded.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use crate::format::{self, SnapshotError, FORMAT_VERSION};
use crate::registry::RegistryData;

/// The version of this file layout (the three lines), apart from the registry's
/// [`FORMAT_VERSION`] inside it.
pub const BACKUP_VERSION: u32 = 1;
/// The longest header or trailer line read: they hold a few numbers and a name.
const MAX_META_LINE: u64 = 4096;

/// The first line of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// [`BACKUP_VERSION`] of the writer.
    pub cairn_backup: u32,
    /// The cluster's name (`--cluster`): a restore into another cluster is refused.
    pub cluster: String,
    /// The Raft index the registry was read at: every change up to it is in the backup.
    pub index: u64,
    /// The Raft term of the entry at `index`.
    pub term: u64,
    /// The persisted format of the registry ([`FORMAT_VERSION`] of the writer).
    pub format: u32,
    /// The leader's time at `index`, milliseconds since the epoch.
    pub time_ms: u64,
    pub services: u64,
    pub instances: u64,
    pub tokens: u64,
    pub policies: u64,
}

impl BackupHeader {
    /// The header of `data`, read at `index` in `term`.
    pub fn new(cluster: &str, index: u64, term: u64, time_ms: u64, data: &RegistryData) -> Self {
        BackupHeader {
            cairn_backup: BACKUP_VERSION,
            cluster: cluster.to_owned(),
            index,
            term,
            format: FORMAT_VERSION,
            time_ms,
            services: data.services.len() as u64,
            instances: data.services.iter().map(|s| s.instances.len() as u64).sum(),
            tokens: data.acl.tokens.len() as u64,
            policies: data.acl.policies.len() as u64,
        }
    }
}

/// The last line of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupTrailer {
    /// Bytes of the header and registry lines, newlines included.
    pub bytes: u64,
    /// Their SHA-256, lower-case hex.
    pub sha256: String,
}

/// A backup that cannot be used; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error("cannot read the backup: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with a backup header.
    #[error("not a Cairn backup: {0}")]
    NotBackup(String),
    /// The file ends before its trailer: a download or copy was cut short.
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    /// The bytes differ from those the checksum was taken of.
    #[error("the backup is corrupt: {0}")]
    Checksum(String),
    /// A layout or registry format newer (or older) than this build reads.
    #[error(
        "the backup was written in format {found} (layout {layout}); this build reads format \
         {FORMAT_VERSION} (layout {BACKUP_VERSION}): restore it with a build that reads it"
    )]
    Version { found: u32, layout: u32 },
    /// The registry inside does not decode or breaks a rule of the model.
    #[error("the backup's registry is unusable: {0}")]
    Registry(SnapshotError),
    /// The header's counts disagree with the registry inside.
    #[error("the backup's header does not match its registry: {0}")]
    Mismatch(String),
}

/// A backup read and checked: its header, trailer and registry.
#[derive(Debug, Clone)]
pub struct Backup {
    pub header: BackupHeader,
    pub trailer: BackupTrailer,
    pub data: RegistryData,
}

/// A writer that passes bytes on and keeps their count and SHA-256.
struct Summing<W> {
    inner: W,
    ctx: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` as a backup with `header` into `out`, as it goes. Give it a buffered writer.
/// Returns the trailer written.
pub fn write_backup(
    header: &BackupHeader,
    data: RegistryData,
    out: impl Write,
) -> io::Result<BackupTrailer> {
    let mut w = Summing {
        inner: out,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    serde_json::to_writer(&mut w, header)?;
    w.write_all(b"\n")?;
    format::write_snapshot(data, &mut w)?;
    w.write_all(b"\n")?;
    let trailer = BackupTrailer {
        bytes: w.bytes,
        sha256: hex(w.ctx.finish().as_ref()),
    };
    let mut out = w.inner;
    serde_json::to_writer(&mut out, &trailer)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(trailer)
}

/// Reads and checks a backup: header first (a file that is no backup at all is named as such),
/// then the checksum over everything before the trailer, then the registry, decoded as it is
/// read. Needs to seek: the trailer is read before the registry is decoded.
pub fn read_backup(mut file: impl Read + Seek) -> Result<Backup, BackupError> {
    let total = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut first = String::new();
    BufReader::new((&mut file).take(MAX_META_LINE)).read_line(&mut first)?;
    if !first.ends_with('\n') {
        const START: &str = "{\"cairn_backup\"";
        return Err(
            if !first.is_empty() && (first.starts_with(START) || START.starts_with(&first)) {
                BackupError::Truncated("the file ends inside its header".into())
            } else {
                BackupError::NotBackup("the first line is not a backup header".into())
            },
        );
    }
    // The version alone first: a newer layout may have changed the rest of the header.
    #[derive(Deserialize)]
    struct Versions {
        cairn_backup: u32,
        #[serde(default)]
        format: u32,
    }
    let versions: Versions = serde_json::from_str(&first)
        .map_err(|e| BackupError::NotBackup(format!("the header does not parse: {e}")))?;
    if versions.cairn_backup != BACKUP_VERSION || versions.format != FORMAT_VERSION {
        return Err(BackupError::Version {
            found: versions.format,
            layout: versions.cairn_backup,
        });
    }
    let header: BackupHeader = serde_json::from_str(&first)
        .map_err(|e| BackupError::NotBackup(format!("the header does not parse: {e}")))?;

    // The trailer is the last line.
    let tail_len = total.min(MAX_META_LINE);
    file.seek(SeekFrom::Start(total - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    (&mut file).take(tail_len).read_to_end(&mut tail)?;
    let truncated = || BackupError::Truncated(format!("{total} bytes end without a trailer"));
    let body = tail.strip_suffix(b"\n").ok_or_else(truncated)?;
    let start = body
        .iter()
        .rposition(|b| *b == b'\n')
        .ok_or_else(truncated)?;
    let trailer: BackupTrailer =
        serde_json::from_slice(&body[start + 1..]).map_err(|_| truncated())?;
    let summed = total - (tail.len() - start - 1) as u64;
    if trailer.bytes != summed {
        return Err(BackupError::Checksum(format!(
            "the trailer covers {} bytes, the file has {summed} before it",
            trailer.bytes
        )));
    }

    file.seek(SeekFrom::Start(0))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut rest = (&mut file).take(summed);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let sha256 = hex(ctx.finish().as_ref());
    if sha256 != trailer.sha256 {
        return Err(BackupError::Checksum(format!(
            "SHA-256 {sha256}, the trailer says {}",
            trailer.sha256
        )));
    }

    let body_start = first.len() as u64;
    file.seek(SeekFrom::Start(body_start))?;
    let reader = BufReader::new((&mut file).take(summed - body_start));
    let data = format::read_snapshot(reader, header.index).map_err(BackupError::Registry)?;
    let found = BackupHeader::new(
        &header.cluster,
        header.index,
        header.term,
        header.time_ms,
        &data,
    );
    if found != header {
        return Err(BackupError::Mismatch(format!(
            "it counts {} services, {} instances, {} tokens, {} policies; the registry holds {}, \
             {}, {}, {}",
            header.services,
            header.instances,
            header.tokens,
            header.policies,
            found.services,
            found.instances,
            found.tokens,
            found.policies
        )));
    }
    Ok(Backup {
        header,
        trailer,
        data,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::model::validate_registration;
    use crate::{Command, Dirty, Op, Registry};

    fn backup(n: u64) -> (RegistryData, Vec<u8>) {
        let registry = Registry::default();
        for i in 1..=n {
            let body = serde_json::json!({"address": "10.0.0.1", "port": 80});
            let instance =
                validate_registration(&format!("i{i}"), &serde_json::from_value(body).unwrap())
                    .unwrap();
            let cmd = Command::new(
                1_700_000_000_000,
                vec![Op::Register {
                    service: if i % 2 == 0 { "web" } else { "db" }.into(),
                    instance,
                    health: None,
                }],
            );
            registry.apply(i, &cmd, &mut Dirty::default());
        }
        let data = registry.export();
        let header = BackupHeader::new("c1", n, 3, 1_700_000_000_000, &data);
        let mut bytes = Vec::new();
        write_backup(&header, data.clone(), &mut bytes).unwrap();
        (data, bytes)
    }

    #[test]
    fn a_backup_reads_back_with_its_header() {
        let (data, bytes) = backup(5);
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 3);
        let b = read_backup(Cursor::new(&bytes)).unwrap();
        assert_eq!(b.data, data);
        assert_eq!(
            (b.header.cluster.as_str(), b.header.index, b.header.term),
            ("c1", 5, 3)
        );
        assert_eq!((b.header.services, b.header.instances), (2, 5));
        let trailer = serde_json::to_vec(&b.trailer).unwrap();
        assert_eq!(
            b.trailer.bytes + trailer.len() as u64 + 1,
            bytes.len() as u64
        );
    }

    #[test]
    fn a_cut_file_is_truncated_wherever_it_is_cut() {
        let (_, bytes) = backup(5);
        for cut in [10, bytes.len() / 2, bytes.len() - 30, bytes.len() - 1] {
            let err = read_backup(Cursor::new(&bytes[..cut])).unwrap_err();
            assert!(
                matches!(err, BackupError::Truncated(_)),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_changed_byte_fails_the_checksum() {
        let (_, mut bytes) = backup(5);
        let at = bytes.len() / 2;
        // A digit for a digit or a letter for a letter: still JSON, only the sum can tell.
        bytes[at] = match bytes[at] {
            b'0'..=b'8' => bytes[at] + 1,
            b'9' => b'0',
            b'a'..=b'y' => bytes[at] + 1,
            other => other ^ 0x20,
        };
        let err = read_backup(Cursor::new(&bytes)).unwrap_err();
        assert!(matches!(err, BackupError::Checksum(_)), "{err}");
    }

    #[test]
    fn other_files_and_newer_formats_are_named_for_what_they_are() {
        let err = read_backup(Cursor::new(b"hello\nworld\n")).unwrap_err();
        assert!(matches!(err, BackupError::NotBackup(_)), "{err}");
        let (_, bytes) = backup(1);
        let text = String::from_utf8(bytes).unwrap();
        let newer = text.replacen(
            &format!("\"format\":{FORMAT_VERSION}"),
            &format!("\"format\":{}", FORMAT_VERSION + 1),
            1,
        );
        let err = read_backup(Cursor::new(newer.as_bytes())).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, BackupError::Version { .. }), "{err}");
        assert!(
            message.contains(&format!("format {}", FORMAT_VERSION + 1))
                && message.contains(&format!("reads format {FORMAT_VERSION}")),
            "{message}"
        );
    }
}
