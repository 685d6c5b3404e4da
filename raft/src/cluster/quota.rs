//! The leader's quota gate: each write is admitted against the registry's usage before it is
//! proposed, so a write that would take the registry past a quota never enters the log.
//!
//! Why here and not in apply: apply must give the same state on every replica, and quotas are
//! per-node flags. A limit checked in apply would make a replica with a smaller limit refuse
//! what the others applied, and the replicas would part. Checked before proposing, a refusal
//! is the leader's alone and the log holds only writes that every replica applies alike. A
//! node's flags so take effect while it leads: give every node the same ones.
//!
//! The gate counts the growth of writes admitted and not yet applied ([`Pending`]), so writers
//! racing for the last free slot cannot all take it. Around a leader change the new leader may
//! admit against a view that has not applied everything committed yet, and check results can
//! grow a record after it was admitted: the quotas are a bound on growth, not an exact ledger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cairn_registry::quota::{Growth, Pending, QuotaExceeded, QuotaKind, Quotas};
use cairn_registry::{Op, Registry};
use parking_lot::Mutex;

/// What the gate did for one quota, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    pub kind: QuotaKind,
    /// The limit (0: none).
    pub limit: u64,
    /// Writes this node refused for this quota while leading.
    pub refused: u64,
    /// Whether the last write that grew what this quota counts was refused.
    pub exceeded: bool,
}

/// Admits writes on the leader; see the module's docs.
pub(super) struct Gate {
    registry: Arc<Registry>,
    quotas: Quotas,
    pending: Mutex<Pending>,
    refused: [AtomicU64; 4],
    exceeded: [AtomicBool; 4],
}

impl Gate {
    pub(super) fn new(registry: Arc<Registry>, quotas: Quotas) -> Gate {
        Gate {
            registry,
            quotas,
            pending: Mutex::new(Pending::default()),
            refused: Default::default(),
            exceeded: Default::default(),
        }
    }

    /// Admits `op`: its growth, to [`release`](Gate::release) once the write was applied or
    /// failed; or why it is refused. The first refusal of a quota is logged once, and again
    /// only after a write it counts was admitted since.
    pub(super) fn admit(&self, op: &Op) -> Result<Growth, QuotaExceeded> {
        let mut pending = self.pending.lock();
        match self.registry.admit(op, &self.quotas, &pending) {
            Ok(g) => {
                pending.add(&g);
                drop(pending);
                for kind in grown(&g) {
                    if self.exceeded[kind.slot()].swap(false, Ordering::AcqRel) {
                        tracing::info!(
                            quota = kind.name(),
                            "the {} quota admits writes again",
                            kind.name()
                        );
                    }
                }
                Ok(g)
            }
            Err(e) => {
                drop(pending);
                let slot = e.kind.slot();
                self.refused[slot].fetch_add(1, Ordering::Relaxed);
                if !self.exceeded[slot].swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        quota = e.kind.name(),
                        "registry quota reached, refusing writes that grow it with 507 \
                         quota_exceeded until there is room: {}",
                        e.message
                    );
                }
                Err(e)
            }
        }
    }

    /// Forgets the growth of writes that were applied (the view shows them now) or failed.
    pub(super) fn release<'a>(&self, growth: impl IntoIterator<Item = &'a Growth>) {
        let mut pending = self.pending.lock();
        for g in growth {
            pending.remove(g);
        }
    }

    pub(super) fn status(&self) -> Vec<QuotaStatus> {
        QuotaKind::ALL
            .iter()
            .map(|&kind| QuotaStatus {
                kind,
                limit: self.quotas.limit(kind),
                refused: self.refused[kind.slot()].load(Ordering::Relaxed),
                exceeded: self.exceeded[kind.slot()].load(Ordering::Acquire),
            })
            .collect()
    }
}

/// The quotas whose counts `g` moves.
fn grown(g: &Growth) -> impl Iterator<Item = QuotaKind> + '_ {
    QuotaKind::ALL.into_iter().filter(move |k| match k {
        QuotaKind::Bytes => g.bytes > 0,
        QuotaKind::Services => g.service.is_some(),
        QuotaKind::InstancesPerService => g.instance.is_some(),
        QuotaKind::Checks => g.checks > 0,
    })
}
