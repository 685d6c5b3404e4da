//! Concurrent clients doing registers, deregisters and consistent reads of one service's keys,
//! and the history they record: every operation's invocation, then `ok` with its index, a
//! definite failure, or an unknown outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// What a client asked for. Keys are indexes into the cycle's key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Register { key: usize, value: u64 },
    Deregister { key: usize },
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write that took effect at `index` (a deregister that removed an instance).
    Ok { index: u64 },
    /// A deregister of an absent instance, decided at `index`.
    NotFound { index: u64 },
    /// A consistent read: the value of each present key, at the service's `index`.
    Read {
        index: u64,
        values: BTreeMap<usize, u64>,
    },
    /// Known not to have happened (refused before it reached the log).
    Fail(String),
    /// May or may not have happened.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub node: u64,
    pub kind: Kind,
    /// Nanoseconds since the run began.
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

/// The run's clock and the history of the current cycle.
pub struct Recorder {
    epoch: Instant,
    records: Mutex<Vec<Record>>,
    values: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder {
            epoch: Instant::now(),
            records: Mutex::default(),
            values: AtomicU64::new(1),
        })
    }

    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn push(&self, r: Record) {
        self.records.lock().unwrap().push(r);
    }

    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.records.lock().unwrap())
    }

    /// Writes acknowledged by now that were invoked at or after `since`.
    pub fn acked_since(&self, since: u64) -> usize {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter(|r| r.invoke >= since && r.kind != Kind::Read)
            .filter(|r| matches!(r.outcome, Outcome::Ok { .. } | Outcome::NotFound { .. }))
            .count()
    }

    /// Writes acknowledged between `from` and `to` (completion times).
    pub fn acked_between(&self, from: u64, to: u64) -> usize {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter(|r| r.complete >= from && r.complete < to && r.kind != Kind::Read)
            .filter(|r| matches!(r.outcome, Outcome::Ok { .. } | Outcome::NotFound { .. }))
            .count()
    }
}

pub fn key_id(key: usize) -> String {
    format!("k{key}")
}

/// Runs `clients` concurrent clients on `service` until `stop`, against the given nodes.
pub async fn run(
    recorder: Arc<Recorder>,
    nodes: Vec<(u64, String)>,
    service: String,
    keys: usize,
    clients: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (recorder, nodes, service, stop) = (
            recorder.clone(),
            nodes.clone(),
            service.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (client as u64) << 32);
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(6))
                .connect_timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            while !stop.load(Ordering::Acquire) {
                let (node, url) = &nodes[rng.gen_range(0..nodes.len())];
                let key = rng.gen_range(0..keys);
                let kind = match rng.gen_range(0..10) {
                    0..=3 => Kind::Register {
                        key,
                        value: recorder.values.fetch_add(1, Ordering::Relaxed),
                    },
                    4..=5 => Kind::Deregister { key },
                    _ => Kind::Read,
                };
                let invoke = recorder.now();
                let outcome = call(&http, url, &service, kind).await;
                let complete = recorder.now();
                let failed = matches!(outcome, Outcome::Fail(_) | Outcome::Unknown(_));
                recorder.push(Record {
                    client,
                    node: *node,
                    kind,
                    invoke,
                    complete,
                    outcome,
                });
                if failed {
                    // Do not spin on a node that is down.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn call(http: &reqwest::Client, url: &str, service: &str, kind: Kind) -> Outcome {
    let req = match kind {
        Kind::Register { key, value } => http
            .put(format!(
                "{url}/v1/services/{service}/instances/{}",
                key_id(key)
            ))
            .json(&json!({
                "address": "10.9.0.1",
                "port": 1000 + key,
                "meta": {"v": value.to_string()},
            })),
        Kind::Deregister { key } => http.delete(format!(
            "{url}/v1/services/{service}/instances/{}",
            key_id(key)
        )),
        Kind::Read => http.get(format!("{url}/v1/services/{service}?consistent")),
    };
    let res = match req.send().await {
        // Refused before anything was sent: the node is down.
        Err(e) if e.is_connect() => return Outcome::Fail(format!("connect: {e}")),
        Err(e) => return Outcome::Unknown(format!("{e}")),
        Ok(r) => r,
    };
    let status = res.status().as_u16();
    let index = crate::harness::header_u64(&res, "x-cairn-index");
    let body: Value = match res.json().await {
        Ok(b) => b,
        Err(e) => return Outcome::Unknown(format!("{status}: body: {e}")),
    };
    let code = body["code"].as_str().unwrap_or("");
    match (kind, status, index) {
        (Kind::Read, 200, Some(index)) => match parse_values(&body) {
            Some(values) => Outcome::Read { index, values },
            None => Outcome::Fail(format!("unreadable service: {body}")),
        },
        (Kind::Read, 404, Some(index)) if code == "not_found" => Outcome::Read {
            index,
            values: BTreeMap::new(),
        },
        (Kind::Read, _, _) => Outcome::Fail(format!("read: {status} {body}")),
        (_, 200, Some(index)) => Outcome::Ok { index },
        (Kind::Deregister { .. }, 404, index) if code == "not_found" => Outcome::NotFound {
            index: index.unwrap_or(0),
        },
        (_, 503, _) if code == "no_leader" => Outcome::Fail(format!("{status} {body}")),
        _ => Outcome::Unknown(format!("{status} {body}")),
    }
}

/// The `meta.v` of every instance of a service read, by key.
pub fn parse_values(body: &Value) -> Option<BTreeMap<usize, u64>> {
    body["instances"]
        .as_array()?
        .iter()
        .map(|i| {
            let key = i["id"].as_str()?.strip_prefix('k')?.parse().ok()?;
            let value = i["meta"]["v"].as_str()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}
