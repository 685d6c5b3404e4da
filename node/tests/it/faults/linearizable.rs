//! Per-key linearizability checker in the Wing & Gong / Lowe style (as in Porcupine and Knossos).
//!
//! The model is one register per key holding `Option<u64>` (initially `None`). Linearizability is
//! local (Herlihy & Wing), so callers split a multi-key history by key and call [`check`] per key.
//!
//! WGL search: depth-first (explicit stack) over which completed op is linearized next, memoizing
//! visited states, within a step budget. An op may go next iff it was invoked no later than the
//! earliest completion among completed ops not yet linearized (invoking at the very instant another
//! op completes counts as concurrent). Unknown-outcome ops never complete; omitting one is the same
//! as linearizing it last. Sound reductions keep them from blowing up the search:
//! * Every effect is a constant or the identity, so an unknown op matters only right before a
//!   completed read or deregister whose return it fixes: a step places one completed op, preceded by
//!   an unknown op only when needed. Unknown reads are dropped.
//! * Unknown ops with equal effect are interchangeable (the earliest-invoked unused one is taken),
//!   so a state only records how many of each were used, and prunes against a visited state with
//!   the same completed ops and value that used no more of any kind. Values that no remaining
//!   completed read returns are indistinguishable and pooled.
//! * A read or not-found deregister that fits now is placed at once; of moves that act alike only
//!   the earliest-completing is tried. Refuting a history can still take exponential time (e.g.
//!   many unknown registers of repeated values), hence the budget.
use std::collections::{BTreeSet, HashMap, HashSet};

/// An operation on the key's register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Register(u64),
    Deregister,
    Read,
}

/// What an operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// Register always returns Ok; Deregister returns Ok when the key was present.
    Ok,
    /// Deregister of an absent key.
    NotFound,
    /// What a read saw.
    Value(Option<u64>),
}

/// One operation of a single key's history.
#[derive(Clone, Debug)]
pub struct Op {
    /// Caller's id, echoed in violations.
    pub id: usize,
    pub call: Call,
    /// Invocation time (monotonic nanoseconds).
    pub invoke: u64,
    /// `Some((time, ret))` when the outcome is known; `None` when unknown: the op may have taken
    /// effect at any instant after `invoke`, or never, and its return value is unconstrained.
    pub complete: Option<(u64, Ret)>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Human-readable summary.
    pub message: String,
    /// Op ids of the longest linearizable prefix found (by completed ops), in linearization order.
    pub prefix: Vec<usize>,
    /// Completed ops eligible to go right after that prefix, none of which could be placed there.
    pub stuck: Vec<usize>,
}

/// Result of a finished search.
#[derive(Debug)]
pub struct Outcome {
    pub linearizable: Result<(), Violation>,
    /// Number of search steps taken.
    pub explored: u64,
}

/// The search took more than the budgeted number of steps without reaching a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub explored: u64,
}

/// Canonical register value: `Seen(i)` is the i-th distinct value some completed read returned;
/// `Unseen` is any value no completed read returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum State {
    Absent,
    Seen(usize),
    Unseen,
}

/// A completed op; `after` is the register's value once it has been linearized.
struct Known {
    id: usize,
    call: Call,
    ret: Ret,
    invoke: u64,
    complete: u64,
    after: State,
}

/// Unknown-outcome ops leaving the register at `target`, as (invoke, id) sorted by invoke.
struct Class {
    target: State,
    members: Vec<(u64, usize)>,
}

/// What linearizing a completed op from the current value requires.
enum Fix {
    Direct,
    Need(State),
    AnyValue,
    Never,
}

fn fix(st: State, k: &Known) -> Fix {
    match (k.call, k.ret) {
        (Call::Register(_), Ret::Ok) => Fix::Direct,
        (Call::Deregister, Ret::Ok) if st == State::Absent => Fix::AnyValue,
        (Call::Deregister, Ret::Ok) => Fix::Direct,
        (Call::Deregister, Ret::NotFound) | (Call::Read, Ret::Value(_)) if st == k.after => {
            Fix::Direct
        }
        (Call::Deregister, Ret::NotFound) | (Call::Read, Ret::Value(_)) => Fix::Need(k.after),
        _ => Fix::Never,
    }
}

/// A search step: a completed op, optionally preceded by an unknown op from a class.
type Move = (usize, Option<usize>);

/// Search state. `done`: bitset of linearized completed ops; `pending`: (completion, index) of the
/// others; `used[c]`: unknown ops of class `c` used; `live[v]`: pending completed reads of value `v`;
/// `path`: op ids in linearization order; `memo`: per (done, value), the `usage` vectors visited.
struct Search {
    known: Vec<Known>,
    classes: Vec<Class>,
    class_of: HashMap<State, usize>,
    done: Vec<u64>,
    n_done: usize,
    pending: BTreeSet<(u64, usize)>,
    used: Vec<u32>,
    live: Vec<u32>,
    st: State,
    path: Vec<usize>,
    memo: HashMap<(Vec<u64>, State), Vec<Vec<u32>>>,
}

impl Search {
    /// Whether no pending completed read can return this value.
    fn dead(&self, s: State) -> bool {
        matches!(s, State::Unseen) || matches!(s, State::Seen(i) if self.live[i] == 0)
    }
    /// Dead values are indistinguishable: treat them all as `Unseen`.
    fn canon(&self, s: State) -> State {
        if self.dead(s) {
            State::Unseen
        } else {
            s
        }
    }
    /// The earliest completion among pending completed ops.
    fn bound(&self) -> u64 {
        self.pending.first().map_or(u64::MAX, |&(c, _)| c)
    }

    /// Completed ops that may be linearized next.
    fn eligible(&self) -> Vec<usize> {
        let first_open = self.done.iter().position(|w| *w != u64::MAX);
        let start = first_open.map_or(self.known.len(), |w| {
            w * 64 + self.done[w].trailing_ones() as usize
        });
        (start..self.known.len())
            .take_while(|&i| self.known[i].invoke <= self.bound())
            .filter(|&i| self.done[i / 64] >> (i % 64) & 1 == 0)
            .collect()
    }

    /// The steps worth trying from here (see the module docs for the reductions).
    fn moves(&self, eligible: &[usize]) -> Vec<Move> {
        let ready = |c: usize| {
            self.classes[c]
                .members
                .get(self.used[c] as usize)
                .is_some_and(|m| m.0 <= self.bound())
        };
        let mut out = Vec::new();
        for &i in eligible {
            match fix(self.st, &self.known[i]) {
                // A read or not-found deregister that fits now changes nothing, so placing it first
                // loses nothing: moving it earlier in any solution keeps the solution valid.
                Fix::Direct
                    if self.known[i].call == Call::Read || self.known[i].ret == Ret::NotFound =>
                {
                    return vec![(i, None)]
                }
                Fix::Direct => out.push((i, None)),
                Fix::Need(t) => out.extend(
                    self.class_of
                        .get(&t)
                        .filter(|&&c| ready(c))
                        .map(|&c| (i, Some(c))),
                ),
                Fix::AnyValue => {
                    let regs = (0..self.classes.len())
                        .filter(|&c| self.classes[c].target != State::Absent && ready(c));
                    let (dead, live): (Vec<_>, Vec<_>) =
                        regs.partition(|&c| self.dead(self.classes[c].target));
                    out.extend(
                        if dead.is_empty() {
                            live
                        } else {
                            dead[..1].to_vec()
                        }
                        .into_iter()
                        .map(|c| (i, Some(c))),
                    );
                }
                Fix::Never => {}
            }
        }
        // Of moves that act alike, only the earliest-completing one is needed: swapping it in
        // for the others only raises later real-time bounds.
        out.sort_by_key(|&(i, c)| (c.is_some(), self.known[i].complete));
        let mut alike = HashSet::new();
        out.retain(|&(i, c)| alike.insert((self.known[i].ret, self.canon(self.known[i].after), c)));
        out
    }

    fn apply(&mut self, (i, unknown): Move) {
        if let Some(c) = unknown {
            self.path
                .push(self.classes[c].members[self.used[c] as usize].1);
            self.used[c] += 1;
        }
        let k = &self.known[i];
        self.done[i / 64] |= 1 << (i % 64);
        self.n_done += 1;
        self.pending.remove(&(k.complete, i));
        self.path.push(k.id);
        if let (Call::Read, State::Seen(v)) = (k.call, k.after) {
            self.live[v] -= 1;
        }
        self.st = k.after;
    }

    fn undo(&mut self, (i, unknown): Move, st: State) {
        let k = &self.known[i];
        self.done[i / 64] &= !(1 << (i % 64));
        self.n_done -= 1;
        self.pending.insert((k.complete, i));
        self.path.pop();
        if let (Call::Read, State::Seen(v)) = (k.call, k.after) {
            self.live[v] += 1;
        }
        if let Some(c) = unknown {
            self.used[c] -= 1;
            self.path.pop();
        }
        self.st = st;
    }

    /// Records the current state; false if a visited state already dominates it.
    fn remember(&mut self) -> bool {
        let mut usage = vec![0]; // usage[0]: unknown registers of dead values, pooled
        for (c, class) in self.classes.iter().enumerate() {
            if self.dead(class.target) {
                usage[0] += self.used[c]
            } else {
                usage.push(self.used[c])
            }
        }
        let seen = self
            .memo
            .entry((self.done.clone(), self.canon(self.st)))
            .or_default();
        if seen
            .iter()
            .any(|u| u.iter().zip(&usage).all(|(a, b)| a <= b))
        {
            return false;
        }
        seen.push(usage);
        true
    }
}

/// Checks one key's history, taking at most `budget` search steps; `Err(Exhausted)` if that was
/// not enough to decide. A completed op whose completion precedes its invocation can never be placed.
pub fn check(ops: &[Op], budget: u64) -> Result<Outcome, Exhausted> {
    let mut value_ix = HashMap::new(); // values some completed read returned -> dense index
    for o in ops {
        if let (Call::Read, Some((_, Ret::Value(Some(v))))) = (o.call, o.complete) {
            let n = value_ix.len();
            value_ix.entry(v).or_insert(n);
        }
    }
    let canon = |v| value_ix.get(&v).map_or(State::Unseen, |&i| State::Seen(i));
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|o| (o.invoke, o.id));
    let (mut known, mut classes, mut class_of) = (Vec::new(), Vec::<Class>::new(), HashMap::new());
    let mut live = vec![0; value_ix.len()];
    for o in sorted {
        let after = match (o.call, o.complete) {
            (Call::Register(v), _) => canon(v),
            (Call::Read, Some((_, Ret::Value(Some(v))))) => canon(v),
            _ => State::Absent,
        };
        match o.complete {
            Some((complete, ret)) => {
                if let (Call::Read, State::Seen(i)) = (o.call, after) {
                    live[i] += 1;
                }
                known.push(Known {
                    id: o.id,
                    call: o.call,
                    ret,
                    invoke: o.invoke,
                    complete,
                    after,
                });
            }
            None if o.call == Call::Read => {} // an unknown read constrains nothing
            None => {
                let c = *class_of.entry(after).or_insert_with(|| {
                    classes.push(Class {
                        target: after,
                        members: Vec::new(),
                    });
                    classes.len() - 1
                });
                classes[c].members.push((o.invoke, o.id));
            }
        }
    }
    let mut s = Search {
        done: vec![0; known.len().div_ceil(64)],
        pending: known
            .iter()
            .enumerate()
            .map(|(i, k)| (k.complete, i))
            .collect(),
        used: vec![0; classes.len()],
        n_done: 0,
        st: State::Absent,
        path: Vec::new(),
        memo: HashMap::new(),
        known,
        classes,
        class_of,
        live,
    };
    let mut explored = 0;
    if s.known.is_empty() {
        return Ok(Outcome {
            linearizable: Ok(()),
            explored,
        });
    }
    let eligible = s.eligible();
    let mut best = (
        0,
        Vec::new(),
        eligible.iter().map(|&i| s.known[i].id).collect::<Vec<_>>(),
    );
    // Each frame: the moves available in a state, the next one to try, and how we got there.
    let mut stack = vec![(s.moves(&eligible), 0, None)];
    while let Some((moves, next, undo)) = stack.last_mut() {
        let Some(&mv) = moves.get(*next) else {
            if let Some((mv, st)) = *undo {
                s.undo(mv, st);
            }
            stack.pop();
            continue;
        };
        *next += 1;
        let st = s.st;
        s.apply(mv);
        explored += 1;
        if explored > budget {
            return Err(Exhausted { explored });
        }
        if s.n_done == s.known.len() {
            return Ok(Outcome {
                linearizable: Ok(()),
                explored,
            });
        }
        if !s.remember() {
            s.undo(mv, st);
            continue;
        }
        let eligible = s.eligible();
        if s.n_done > best.0 {
            best = (
                s.n_done,
                s.path.clone(),
                eligible.iter().map(|&i| s.known[i].id).collect(),
            );
        }
        stack.push((s.moves(&eligible), 0, Some((mv, st))));
    }
    let (n, prefix, stuck) = best;
    let tail = &prefix[prefix.len().saturating_sub(8)..];
    let message = format!(
        "not linearizable: longest prefix places {n}/{} completed ops (ending ...{tail:?}); \
         none of the completed ops {stuck:?} can be linearized next",
        s.known.len()
    );
    Ok(Outcome {
        linearizable: Err(Violation {
            message,
            prefix,
            stuck,
        }),
        explored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Call::*;

    fn op(id: usize, call: Call, invoke: u64, complete: Option<(u64, Ret)>) -> Op {
        Op {
            id,
            call,
            invoke,
            complete,
        }
    }
    fn val(v: Option<u64>) -> Ret {
        Ret::Value(v)
    }
    fn ok(ops: &[Op]) -> bool {
        check(ops, 1_000_000).expect("budget").linearizable.is_ok()
    }

    #[test]
    fn sequential() {
        let mut h = vec![
            op(0, Register(1), 0, Some((10, Ret::Ok))),
            op(1, Read, 20, Some((30, val(Some(1))))),
            op(2, Deregister, 40, Some((50, Ret::Ok))),
            op(3, Read, 60, Some((70, val(None)))),
            op(4, Deregister, 80, Some((90, Ret::NotFound))),
        ];
        assert!(ok(&h));
        h[3].complete = Some((70, val(Some(1))));
        assert!(!ok(&h));
    }

    #[test]
    fn stale_read() {
        let w = op(0, Register(1), 0, Some((10, Ret::Ok)));
        assert!(!ok(&[w.clone(), op(1, Read, 11, Some((20, val(None))))]));
        assert!(ok(&[w, op(1, Read, 10, Some((20, val(None))))])); // invoke at the ack instant: concurrent
    }

    #[test]
    fn concurrent_register_and_read() {
        let w = op(0, Register(1), 0, Some((10, Ret::Ok)));
        for (seen, expect) in [(Some(1), true), (None, true), (Some(2), false)] {
            assert_eq!(
                ok(&[w.clone(), op(1, Read, 5, Some((15, val(seen))))]),
                expect,
                "{seen:?}"
            );
        }
    }

    #[test]
    fn unknown_register() {
        let w = op(0, Register(5), 0, None);
        assert!(ok(&[
            w.clone(),
            op(1, Read, 10, Some((20, val(None)))),
            op(2, Read, 30, Some((40, val(None))))
        ]));
        assert!(ok(&[
            w.clone(),
            op(1, Read, 10, Some((20, val(Some(5))))),
            op(2, Read, 30, Some((40, val(Some(5)))))
        ]));
        let h = [
            w,
            op(1, Read, 10, Some((20, val(Some(5))))),
            op(2, Read, 30, Some((40, val(None)))),
        ];
        assert!(!ok(&h));
        assert!(ok(&[&h[..], &[op(3, Deregister, 5, None)]].concat())); // an unknown removal explains it
    }

    #[test]
    fn lost_write() {
        let h = [
            op(0, Register(1), 0, Some((10, Ret::Ok))),
            op(1, Read, 20, Some((30, val(Some(1))))),
            op(2, Register(2), 25, None),
            op(3, Read, 40, Some((50, val(None)))),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn deregister_not_found_after_register() {
        let h = [
            op(0, Register(1), 0, Some((10, Ret::Ok))),
            op(1, Deregister, 20, Some((30, Ret::NotFound))),
        ];
        let v = check(&h, 100)
            .expect("budget")
            .linearizable
            .expect_err("violation");
        assert_eq!((v.prefix, v.stuck), (vec![0], vec![1]), "{}", v.message);
        assert!(ok(&[
            h[0].clone(),
            op(1, Deregister, 5, Some((30, Ret::NotFound)))
        ])); // concurrent: fine
    }

    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 24) % n
        }
    }

    /// Runs the model sequentially with op `i` taking effect at 1000 + 100*i, then widens each
    /// interval around that point (each op overlaps ~5 others) and forgets ~10% of the outcomes.
    fn random_history(n: usize, values: u64, seed: u64) -> Vec<Op> {
        let (mut rng, mut state) = (Lcg(seed), None);
        (0..n)
            .map(|id| {
                let t = 1_000 + 100 * id as u64;
                let (call, ret) = match rng.below(10) {
                    0..=3 => {
                        let v = rng.below(values);
                        state = Some(v);
                        (Register(v), Ret::Ok)
                    }
                    4..=5 => (
                        Deregister,
                        if state.take().is_some() {
                            Ret::Ok
                        } else {
                            Ret::NotFound
                        },
                    ),
                    _ => (Read, val(state)),
                };
                let invoke = t - rng.below(250);
                op(
                    id,
                    call,
                    invoke,
                    (rng.below(10) != 0).then(|| (t + rng.below(250), ret)),
                )
            })
            .collect()
    }

    #[test]
    fn random_histories() {
        // Distinct values at full size; repeated values (harder to refute) at a smaller size.
        for (n, values, seed) in [
            (2000, 1 << 40, 1),
            (2000, 1 << 40, 2),
            (2000, 1 << 40, 3),
            (400, 8, 4),
            (400, 8, 5),
        ] {
            let mut h = random_history(n, values, seed);
            let out = check(&h, 10_000_000).expect("budget");
            assert!(
                out.linearizable.is_ok(),
                "seed {seed}: {:?}",
                out.linearizable
            );
            let bad = h
                .iter_mut()
                .skip(n / 2)
                .find(|o| o.call == Read && o.complete.is_some())
                .expect("a read");
            let id = bad.id;
            bad.complete = bad.complete.map(|(t, _)| (t, val(Some(u64::MAX)))); // never written
            let v = check(&h, 10_000_000)
                .expect("budget")
                .linearizable
                .expect_err("corrupted read");
            assert!(v.stuck.contains(&id), "seed {seed}: {}", v.message);
        }
    }

    #[test]
    fn budget_exhaustion() {
        // 40 concurrent registers, each read back, and a read of a value nobody wrote: refuting it
        // means trying every subset of the registers.
        let mut h: Vec<Op> = (0..40)
            .map(|i| op(i, Register(i as u64), 0, Some((1000, Ret::Ok))))
            .collect();
        h.extend((0..40).map(|i| op(40 + i, Read, 0, Some((1000, val(Some(i as u64)))))));
        h.push(op(80, Read, 0, Some((1000, val(Some(99))))));
        assert_eq!(
            check(&h, 50_000).map(|o| o.explored).unwrap_err(),
            Exhausted { explored: 50_001 }
        );
    }

    /// Reference: tries every order of every subset of ops (fine for tiny histories).
    fn brute(ops: &[Op], used: &mut Vec<bool>, st: Option<u64>) -> bool {
        if ops
            .iter()
            .zip(used.iter())
            .all(|(o, u)| *u || o.complete.is_none())
        {
            return true;
        }
        (0..ops.len()).any(|j| {
            let blocked =
                |k: usize| !used[k] && ops[k].complete.is_some_and(|(c, _)| c < ops[j].invoke);
            let (next, ret) = match ops[j].call {
                Register(v) => (Some(v), Ret::Ok),
                Deregister => (None, if st.is_some() { Ret::Ok } else { Ret::NotFound }),
                Read => (st, val(st)),
            };
            if used[j]
                || (0..ops.len()).any(blocked)
                || ops[j].complete.is_some_and(|(_, r)| r != ret)
            {
                return false;
            }
            used[j] = true;
            let found = brute(ops, used, next);
            used[j] = false;
            found
        })
    }

    #[test]
    fn agrees_with_brute_force() {
        let mut rng = Lcg(7);
        for _ in 0..30_000 {
            let h: Vec<Op> = (0..2 + rng.below(7) as usize)
                .map(|id| {
                    let call =
                        [Register(1 + rng.below(3)), Deregister, Read][rng.below(3) as usize];
                    let ret = match call {
                        Register(_) => Ret::Ok,
                        Deregister => [Ret::Ok, Ret::NotFound][rng.below(2) as usize],
                        Read => val(Some(rng.below(4)).filter(|&v| v > 0)),
                    };
                    let invoke = rng.below(30);
                    op(
                        id,
                        call,
                        invoke,
                        (rng.below(3) != 0).then(|| (invoke + rng.below(15), ret)),
                    )
                })
                .collect();
            let got = check(&h, 10_000_000).expect("budget").linearizable.is_ok();
            assert_eq!(got, brute(&h, &mut vec![false; h.len()], None), "{h:#?}");
        }
    }
}
