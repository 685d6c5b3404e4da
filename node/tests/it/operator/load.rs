//! A steady write load over every node of a cluster, recording when each write was
//! acknowledged: the longest gap between two acknowledgements is what a client saw of a leader
//! change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

/// Writers that register `load/<writer>-<n>` in a loop, each on its own connection pool,
/// moving to the next node when one does not answer (stopped, restarting).
pub struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Answers other than 200 that still were answers (503 while no leader, ...).
    pub refused: Arc<AtomicU64>,
    /// Requests that got no answer (connection refused or reset).
    pub unanswered: Arc<AtomicU64>,
    /// The first few failures, with when and where they happened.
    pub failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Failures kept for the report.
const MAX_FAILURES_KEPT: usize = 30;

/// One request's limit: beyond the cluster's write time-out (3 s in the harness).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Load {
    /// Starts `writers` writers over the nodes at `urls` (base URLs, `http://host:port`).
    pub fn start(urls: Vec<String>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let unanswered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let began = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (stop, acks, urls) = (stop.clone(), acks.clone(), urls.clone());
            let (refused, unanswered) = (refused.clone(), unanswered.clone());
            let failures = failures.clone();
            let note = move |what: String| {
                let mut f = failures.lock();
                if f.len() < MAX_FAILURES_KEPT {
                    f.push(format!("+{:?} {what}", began.elapsed()));
                }
            };
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .unwrap();
                let mut node = w % urls.len();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("w{w}-{n}");
                    let url = format!("{}/v1/services/load/instances/{id}", urls[node]);
                    let body = json!({"address": "10.1.0.1", "port": 80});
                    match http.put(&url).json(&body).send().await {
                        Ok(res) if res.status() == 200 => {
                            acks.lock().push((Instant::now(), id));
                        }
                        Ok(res) => {
                            let status = res.status();
                            let body = res.text().await.unwrap_or_default();
                            note(format!("{} {status} {body}", urls[node]));
                            refused.fetch_add(1, Ordering::Relaxed);
                            node = (node + 1) % urls.len();
                        }
                        Err(e) => {
                            note(format!("{} {e}", urls[node]));
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            node = (node + 1) % urls.len();
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            acks,
            refused,
            unanswered,
            failures,
            tasks,
        }
    }

    /// Stops the writers; answers every acknowledged write in order of acknowledgement.
    pub async fn stop(self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut acks = std::mem::take(&mut *self.acks.lock());
        acks.sort();
        acks
    }

    /// Acknowledgements so far.
    pub fn acked(&self) -> usize {
        self.acks.lock().len()
    }
}

/// The longest gap between two consecutive acknowledgements in `acks` (sorted), and when it
/// began.
pub fn longest_gap(acks: &[(Instant, String)]) -> (Duration, Option<Instant>) {
    acks.windows(2)
        .map(|w| (w[1].0 - w[0].0, Some(w[0].0)))
        .max()
        .unwrap_or((Duration::ZERO, None))
}
