//! Receiving a snapshot from the leader, chunk by chunk, into a file.
//!
//! openraft's own receiving (`Raft::install_snapshot`) writes each chunk at whatever offset the
//! sender names into the buffer it was given, and hands a snapshot that fails to decode to the
//! state machine, where the error is fatal to the node. Here a chunk is admitted first
//! ([`Receiver::admit`]), a stale leader's chunk is answered without writing anything, the file
//! is decoded and checked once complete, and only a good snapshot reaches
//! `Raft::install_full_snapshot`.

use std::cmp::Ordering;

use openraft::error::{Fatal, InstallSnapshotError, RaftError};
use openraft::raft::SnapshotResponse;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::Snapshot;

use super::Cluster;
use crate::snapshot::{Chunk, ChunkError, DecodeError, Progress};
use crate::{NodeId, TypeConfig};

/// Why a snapshot chunk, or the snapshot it completed, was refused. Nothing was installed, and
/// the snapshot in progress was dropped with its file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotRefused {
    /// The chunk breaks the rules of [`Receiver::admit`], or could not be written.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The whole snapshot arrived but is not one this node takes.
    #[error("the snapshot received is unusable: {0}")]
    Decode(#[from] DecodeError),
}

impl SnapshotRefused {
    /// Whether the fault is this node's (its disk), not the sender's.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            SnapshotRefused::Chunk(ChunkError::Disk(_))
                | SnapshotRefused::Decode(DecodeError::Disk(_))
        )
    }
}

/// The answer to a chunk openraft's client expects, when the chunk was not refused.
pub type ChunkReply =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

impl Cluster {
    /// Takes one chunk of a snapshot from the leader, which announced the snapshot's `size`.
    /// The last chunk installs it.
    pub async fn receive_snapshot_chunk(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
        size: u64,
    ) -> Result<ChunkReply, SnapshotRefused> {
        let chunk = Chunk {
            snapshot_id: &req.meta.snapshot_id,
            size,
            offset: req.offset,
            bytes: &req.data,
            done: req.done,
        };
        // Chunks are taken one at a time, as openraft takes them.
        let mut receiver = self.snapshot_in.lock().await;
        if let Err(e) = receiver.admit(&chunk) {
            receiver.abandon();
            return Err(e.into());
        }
        let vote = match self.raft.with_raft_state(|s| *s.vote_ref()).await {
            Ok(vote) => vote,
            Err(fatal) => return Ok(Err(RaftError::Fatal(fatal))),
        };
        if !matches!(
            req.vote.partial_cmp(&vote),
            Some(Ordering::Greater | Ordering::Equal)
        ) {
            // Not from the leader this node follows: answered with its vote, nothing written.
            return Ok(Ok(InstallSnapshotResponse { vote }));
        }
        // The chunks are the leader's only messages to this node while they flow: each must
        // count as the leader's contact, or the election timer fires mid-transfer, the new term
        // restarts the transfer, and a large snapshot never arrives.
        self.keep_following(req.vote).await;
        let mut data = match receiver.receive(&chunk).await? {
            Progress::More => return Ok(Ok(InstallSnapshotResponse { vote })),
            Progress::Done(data) => data,
        };
        drop(receiver);
        let last_index = req.meta.last_log_id.map_or(0, |l| l.index);
        // Decoding and installing a large snapshot takes a while too: keep following meanwhile.
        let leader_vote = req.vote;
        let install = async {
            // Dropping `data` on a refusal removes the file.
            data.check(last_index).await?;
            let snapshot = Snapshot {
                meta: req.meta,
                snapshot: data,
            };
            let installed: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
                self.raft.install_full_snapshot(leader_vote, snapshot).await;
            Ok(installed
                .map(InstallSnapshotResponse::from)
                .map_err(RaftError::Fatal))
        };
        tokio::pin!(install);
        let mut tick = tokio::time::interval(KEEP_FOLLOWING_EVERY);
        loop {
            tokio::select! {
                done = &mut install => return done,
                _ = tick.tick() => self.keep_following(leader_vote).await,
            }
        }
    }

    /// Tells openraft that the leader of `vote` was just heard from, as its heartbeat would: an
    /// append-entries with no entries and no log position, which changes nothing but the vote's
    /// time (no entry is appended or truncated, nothing is committed).
    async fn keep_following(&self, vote: openraft::Vote<NodeId>) {
        let beat = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        if let Err(e) = self.raft.append_entries(beat).await {
            tracing::debug!("cannot refresh the leader's contact during a snapshot: {e}");
        }
    }
}

/// How often a follower busy installing a snapshot counts the leader as heard from: well within
/// the shortest election timeout.
const KEEP_FOLLOWING_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
