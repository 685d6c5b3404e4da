//! `cairn snapshot save|inspect|restore`: backups of the registry (README "Backup and restore").
//!
//! `save` streams `GET /v1/snapshot` into a temporary file beside the target, checks it as
//! `inspect` would, syncs it and renames it into place: a file under the target's name is
//! always a whole, checked backup. `inspect` reads a file offline. `restore` checks the file
//! the same way before it sends it, so a damaged file is named here, not on a node.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_client::Client;
use cairn_registry::backup::{self, Backup};
use clap::Subcommand;
use serde::Serialize;

use super::{print_json, table, Failed, Target};

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Save a backup of the registry (needs operator:write) to FILE.
    Save { file: PathBuf },
    /// Check a backup FILE (its checksum, format and registry) and show what it holds. Offline.
    Inspect { file: PathBuf },
    /// Replace the cluster's registry with a backup's (needs operator:write).
    Restore {
        file: PathBuf,
        /// Restore even when your token would lose operator:write by it (the backup's tokens
        /// replace the cluster's).
        #[arg(long)]
        allow_lockout: bool,
    },
}

fn failed(message: String) -> Failed {
    Failed { code: 1, message }
}

/// `inspect`: needs no node.
pub(super) fn inspect(target: &Target, file: &Path) -> Result<(), Failed> {
    let b = read(file)?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    print_backup(target, file, size, &b);
    Ok(())
}

pub(super) async fn run(
    client: &Client,
    target: &Target,
    action: SnapshotAction,
) -> Result<(), Failed> {
    match action {
        SnapshotAction::Inspect { file } => inspect(target, &file),
        SnapshotAction::Save { file } => save(client, target, &file).await,
        SnapshotAction::Restore {
            file,
            allow_lockout,
        } => {
            let len = std::fs::metadata(&file)
                .map_err(|e| failed(format!("{}: {e}", file.display())))?
                .len();
            if len > cairn_raft::MAX_RESTORE_BYTES as u64 {
                return Err(failed(format!(
                    "{}: {len} bytes, over the {} bytes a restore can carry",
                    file.display(),
                    cairn_raft::MAX_RESTORE_BYTES
                )));
            }
            let b = read(&file)?;
            let bytes =
                std::fs::read(&file).map_err(|e| failed(format!("{}: {e}", file.display())))?;
            let r = client.snapshot_restore(bytes, allow_lockout).await?;
            if target.json {
                print_json(&r);
            } else {
                println!(
                    "restored {} (cluster {}, index {}): {} services, {} instances, {} tokens, \
                     {} policies (index {})",
                    file.display(),
                    b.header.cluster,
                    r.backup_index,
                    r.services,
                    r.instances,
                    r.tokens,
                    r.policies,
                    r.index
                );
            }
            Ok(())
        }
    }
}

/// Reads and checks a backup file.
fn read(file: &Path) -> Result<Backup, Failed> {
    let f = std::fs::File::open(file).map_err(|e| failed(format!("{}: {e}", file.display())))?;
    backup::read_backup(std::io::BufReader::new(f))
        .map_err(|e| failed(format!("{}: {e}", file.display())))
}

async fn save(client: &Client, target: &Target, file: &Path) -> Result<(), Failed> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| failed(format!("{}: not a file name", file.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(|e| failed(format!("cannot write in {}: {e}", dir.display())))?;
    let started = Instant::now();
    let mut download = client.snapshot().await?;
    let mut size = 0u64;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        while let Some(chunk) = download.chunk().await? {
            size += chunk.len() as u64;
            out.write_all(&chunk)
                .map_err(|e| failed(format!("cannot write {}: {e}", file.display())))?;
        }
        out.flush()
            .map_err(|e| failed(format!("cannot write {}: {e}", file.display())))?;
    }
    // Checked before it takes the target's name: a cut download never looks like a backup.
    let b = read(tmp.path()).map_err(|f| {
        failed(format!(
            "the backup from {} is unusable: {}",
            download.node(),
            f.message
        ))
    })?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| failed(format!("cannot sync {}: {e}", file.display())))?;
    tmp.persist(file)
        .map_err(|e| failed(format!("cannot write {}: {}", file.display(), e.error)))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    if target.json {
        print_backup(target, file, size, &b);
    } else {
        println!(
            "saved {}: index {}, term {}, {} services, {} instances, {} bytes in {:.1} s",
            file.display(),
            b.header.index,
            b.header.term,
            b.header.services,
            b.header.instances,
            size,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// What `inspect` shows.
#[derive(Serialize)]
struct Summary<'a> {
    file: String,
    bytes: u64,
    sha256: &'a str,
    #[serde(flatten)]
    header: &'a backup::BackupHeader,
    /// Instances per service.
    by_service: Vec<(&'a str, usize)>,
}

fn print_backup(target: &Target, file: &Path, size: u64, b: &Backup) {
    let summary = Summary {
        file: file.display().to_string(),
        bytes: size,
        sha256: &b.trailer.sha256,
        header: &b.header,
        by_service: b
            .data
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.instances.len()))
            .collect(),
    };
    if target.json {
        print_json(&summary);
        return;
    }
    let h = &b.header;
    let rows = [
        ("File", summary.file.clone()),
        ("Size", format!("{size} bytes")),
        ("SHA-256", format!("{} (verified)", b.trailer.sha256)),
        ("Cluster", h.cluster.clone()),
        ("Index", h.index.to_string()),
        ("Term", h.term.to_string()),
        ("Format", h.format.to_string()),
        ("Services", h.services.to_string()),
        ("Instances", h.instances.to_string()),
        ("Tokens", h.tokens.to_string()),
        ("Policies", h.policies.to_string()),
    ];
    for (k, v) in rows {
        println!("{:<10} {v}", format!("{k}:"));
    }
    let rows: Vec<Vec<String>> = summary
        .by_service
        .iter()
        .map(|(name, n)| vec![name.to_string(), n.to_string()])
        .collect();
    println!();
    println!("{}", table(&["SERVICE", "INSTANCES"], &rows));
}
