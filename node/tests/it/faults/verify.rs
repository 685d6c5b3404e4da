//! Checks one cycle's history: per-key linearizability (with the final reads of every node as
//! the last reads), acknowledged writes missing from those final reads, and index regressions.

use std::collections::BTreeMap;

use super::linearizable::{self, Call, Ret};
use super::workload::{key_id, Kind, Outcome, Record};

/// States the checker may explore per key before it gives up on a history (reported).
const SEARCH_BUDGET: u64 = 5_000_000;

/// A node's read of the service after the cycle healed and every node reached one index.
#[derive(Debug, Clone)]
pub struct FinalRead {
    pub node: u64,
    pub index: u64,
    pub values: BTreeMap<usize, u64>,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: usize,
    /// Consistent reads that answered, each checked against every key.
    pub reads: usize,
    pub unknown: usize,
    pub failed: usize,
    pub lost: usize,
    pub violations: Vec<String>,
}

pub fn verify(records: &[Record], finals: &[FinalRead], keys: usize, final_at: u64) -> Verdict {
    let mut v = Verdict::default();
    for r in records {
        match (&r.kind, &r.outcome) {
            (_, Outcome::Fail(_)) => v.failed += 1,
            (_, Outcome::Unknown(_)) => v.unknown += 1,
            (Kind::Read, _) => v.reads += 1,
            _ => v.acked += 1,
        }
    }
    linearizability(records, finals, keys, final_at, &mut v);
    lost_writes(records, finals, keys, &mut v);
    index_order(records, finals, final_at, &mut v);
    v
}

fn linearizability(
    records: &[Record],
    finals: &[FinalRead],
    keys: usize,
    final_at: u64,
    v: &mut Verdict,
) {
    let mut per_key: Vec<Vec<linearizable::Op>> = vec![Vec::new(); keys];
    for (id, r) in records.iter().enumerate() {
        let known = |ret| Some((r.complete, ret));
        let (key, call, complete) = match (r.kind, &r.outcome) {
            (_, Outcome::Fail(_)) => continue,
            (Kind::Read, Outcome::Read { values, .. }) => {
                for (key, ops) in per_key.iter_mut().enumerate() {
                    ops.push(linearizable::Op {
                        id,
                        call: Call::Read,
                        invoke: r.invoke,
                        complete: known(Ret::Value(values.get(&key).copied())),
                    });
                }
                continue;
            }
            (Kind::Read, _) => continue,
            (Kind::Register { key, value }, Outcome::Ok { .. }) => {
                (key, Call::Register(value), known(Ret::Ok))
            }
            (Kind::Register { key, value }, Outcome::Unknown(_)) => {
                (key, Call::Register(value), None)
            }
            (Kind::Deregister { key }, Outcome::Ok { .. }) => {
                (key, Call::Deregister, known(Ret::Ok))
            }
            (Kind::Deregister { key }, Outcome::NotFound { .. }) => {
                (key, Call::Deregister, known(Ret::NotFound))
            }
            (Kind::Deregister { key }, Outcome::Unknown(_)) => (key, Call::Deregister, None),
            (kind, outcome) => {
                v.violations
                    .push(format!("op {id}: {kind:?} answered {outcome:?}"));
                continue;
            }
        };
        per_key[key].push(linearizable::Op {
            id,
            call,
            invoke: r.invoke,
            complete,
        });
    }
    // The final reads come after everything else, one per node.
    for (n, f) in finals.iter().enumerate() {
        for (key, ops) in per_key.iter_mut().enumerate() {
            ops.push(linearizable::Op {
                id: records.len() + n,
                call: Call::Read,
                invoke: final_at + n as u64 * 2,
                complete: Some((
                    final_at + n as u64 * 2 + 1,
                    Ret::Value(f.values.get(&key).copied()),
                )),
            });
        }
    }
    let describe = |id: usize| match records.get(id) {
        Some(r) => format!(
            "#{id} client {} {:?} on node {} -> {:?}",
            r.client, r.kind, r.node, r.outcome
        ),
        None => format!(
            "#{id} final read of node {}",
            finals[id - records.len()].node
        ),
    };
    for (key, ops) in per_key.iter().enumerate() {
        match linearizable::check(ops, SEARCH_BUDGET) {
            Ok(out) => {
                if let Err(violation) = out.linearizable {
                    let stuck: Vec<String> = violation
                        .stuck
                        .iter()
                        .take(4)
                        .map(|&id| describe(id))
                        .collect();
                    let prefix: Vec<String> = violation
                        .prefix
                        .iter()
                        .rev()
                        .take(4)
                        .rev()
                        .map(|&id| describe(id))
                        .collect();
                    v.violations.push(format!(
                        "key {} not linearizable: {}; last linearized: {prefix:?}; cannot place next: {stuck:?}",
                        key_id(key),
                        violation.message
                    ));
                }
            }
            Err(e) => v.violations.push(format!(
                "key {}: checker gave up after {} states ({} ops)",
                key_id(key),
                e.explored,
                ops.len()
            )),
        }
    }
}

/// An acknowledged write that no other write can follow (every other write on its key ended
/// before it began) must be what every node's final read shows.
fn lost_writes(records: &[Record], finals: &[FinalRead], keys: usize, v: &mut Verdict) {
    for key in 0..keys {
        let writes: Vec<&Record> = records
            .iter()
            .filter(|r| match r.kind {
                Kind::Register { key: k, .. } | Kind::Deregister { key: k } => k == key,
                Kind::Read => false,
            })
            .filter(|r| !matches!(r.outcome, Outcome::Fail(_)))
            .collect();
        for w in &writes {
            if !matches!(w.outcome, Outcome::Ok { .. } | Outcome::NotFound { .. }) {
                continue;
            }
            let last = writes.iter().all(|o| {
                std::ptr::eq(*o, *w)
                    || (!matches!(o.outcome, Outcome::Unknown(_)) && o.complete < w.invoke)
            });
            if !last {
                continue;
            }
            let expected = match w.kind {
                Kind::Register { value, .. } => Some(value),
                _ => None,
            };
            for f in finals {
                let got = f.values.get(&key).copied();
                if got != expected {
                    v.lost += 1;
                    v.violations.push(format!(
                        "acknowledged {:?} (via node {}, {:?}) missing on node {}: it shows {got:?}",
                        w.kind, w.node, w.outcome, f.node
                    ));
                }
            }
        }
    }
}

/// A read never shows an index below one a read before it showed on the same node, nor below
/// a write acknowledged before it began.
fn index_order(records: &[Record], finals: &[FinalRead], final_at: u64, v: &mut Verdict) {
    // (node, invoke, complete, index)
    let mut reads: Vec<(u64, u64, u64, u64)> = records
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Read { index, .. } => Some((r.node, r.invoke, r.complete, index)),
            _ => None,
        })
        .collect();
    reads.extend(
        finals
            .iter()
            .map(|f| (f.node, final_at, final_at + 1, f.index)),
    );
    for a in &reads {
        for b in &reads {
            if a.0 == b.0 && a.2 < b.1 && b.3 < a.3 {
                v.violations.push(format!(
                    "index went back on node {}: a read saw {} and a later one {}",
                    a.0, a.3, b.3
                ));
                return;
            }
        }
    }
    let writes: Vec<(u64, u64)> = records
        .iter()
        .filter_map(|r| match (r.kind, &r.outcome) {
            (Kind::Register { .. } | Kind::Deregister { .. }, Outcome::Ok { index }) => {
                Some((r.complete, *index))
            }
            _ => None,
        })
        .collect();
    for (node, invoke, _, index) in &reads {
        if let Some(w) = writes.iter().filter(|w| w.0 < *invoke).map(|w| w.1).max() {
            if *index < w {
                v.violations.push(format!(
                    "read on node {node} saw index {index}, below {w}, a write acknowledged before it began"
                ));
                return;
            }
        }
    }
}
