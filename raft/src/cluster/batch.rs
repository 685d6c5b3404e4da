//! Group commit on the leader: writes that arrive while earlier batches are being committed go
//! into one log entry together.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cairn_registry::{Command, Op};
use openraft::error::RaftError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::handover::HandoverGate;
use super::quota::Gate;
use super::write::{client_write_error, WriteError, HANDING_OVER};
use crate::rpc::ForwardReply;
use crate::stats::{seconds, RaftStats};
use crate::Raft;

/// Group commit on the leader: writes that arrive while earlier batches are being committed go
/// into one log entry together. openraft's core handles each entry on one task, so one entry per
/// write would cap throughput at that task's speed; batching spreads its cost over the batch.
/// At most this many operations in one entry...
const MAX_BATCH_OPS: usize = 256;
/// ...and about this many bytes of them (a larger single operation still goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries proposed and not yet applied. While all are busy, new writes queue up into the next
/// batch; a lone write on an idle cluster is proposed at once.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Writes waiting for a batch; beyond this, writers wait (back-pressure, not memory growth).
pub(super) const PROPOSAL_QUEUE: usize = 16 * 1024;

/// One write waiting to be batched on the leader.
pub(super) struct Proposal {
    pub(super) op: Op,
    /// The accessor id of the client's token.
    pub(super) by: Option<String>,
    pub(super) reply: oneshot::Sender<Result<ForwardReply, WriteError>>,
}

/// The wall clock in Unix milliseconds, shifted by `offset_ms`.
pub(super) fn now_ms(offset_ms: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(offset_ms)
}

/// Proposes queued writes in batches (see [`MAX_BATCH_OPS`]), each as one log entry. Each
/// write passes the quota `gate` as it is taken into a batch; a refused one is answered at once
/// and never proposed.
pub(super) async fn run_batcher(
    raft: Raft,
    mut queue: mpsc::Receiver<Proposal>,
    clock_offset_ms: i64,
    gate: Arc<Gate>,
    handover: Arc<HandoverGate>,
    stats: Arc<RaftStats>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        // Wait for a free slot first: while every slot is busy, writes gather in the queue.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut growth = Vec::new();
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match gate.admit(&p.op) {
                Ok(g) => {
                    bytes += p.op.approx_size();
                    batch.push(p);
                    growth.push(g);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(WriteError::QuotaExceeded(e.message)));
                }
            }
            if batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        let gate = gate.clone();
        let handover = handover.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut ops = Vec::with_capacity(batch.len());
            let mut by = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for p in batch {
                ops.push(p.op);
                by.push(p.by);
                replies.push(p.reply);
            }
            if by.iter().all(Option::is_none) {
                by.clear();
            }
            let cmd = Command {
                time_ms: now_ms(clock_offset_ms),
                ops,
                by,
            };
            let proposed = Instant::now();
            // Proposed only while no handover runs (see `handover`); refused writes were not
            // proposed, so the writer retries them on the next leader.
            let written = match handover.propose(raft.client_write_ff(cmd)).await {
                None => Err(WriteError::NoLeader(HANDING_OVER.into())),
                // Raft stopped (shutdown) before taking it: not proposed.
                Some(Err(fatal)) => Err(WriteError::NoLeader(format!("this node stops: {fatal}"))),
                Some(Ok(answer)) => match answer.await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(e)) => Err(client_write_error(RaftError::APIError(e))),
                    // Raft stopped with the write in its log: another leader may commit it.
                    Err(_) => Err(WriteError::Unavailable(
                        "this node stopped before the write was answered; it may or may not have committed".into(),
                    )),
                },
            };
            // Applied (the leader answers after applying) or failed: either way the view, not
            // the pending growth, now tells. Released before the replies, so a client's next
            // write is admitted against a view that holds its last one.
            gate.release(&growth);
            match written {
                Ok(resp) => {
                    stats.commit_seconds.observe(seconds(proposed.elapsed()));
                    let index = resp.log_id.index;
                    for (reply, result) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(ForwardReply { index, result }));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
