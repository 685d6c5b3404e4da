//! Black-box harness: runs the real `cairn` binary as child processes on port 0, reads the bound
//! ports from its `cairn listening ...` line, and kills only the children it started.

pub mod dns;
pub mod proxy;
pub mod tls;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a node may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One `cairn agent` child process.
pub struct Node {
    pub id: u64,
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub rpc: SocketAddr,
    /// The HTTPS API's address, when the node serves one.
    pub https: Option<SocketAddr>,
    /// DNS over TLS and over HTTPS, when the node serves them.
    pub dot: Option<SocketAddr>,
    pub doh: Option<SocketAddr>,
    /// The Cloud Map-compatible API, when the node serves it.
    pub cloudmap: Option<SocketAddr>,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

/// The ports a `cairn listening` line announced (the optional listeners only when served).
struct Listening {
    http: SocketAddr,
    dns: SocketAddr,
    rpc: SocketAddr,
    https: Option<SocketAddr>,
    dot: Option<SocketAddr>,
    doh: Option<SocketAddr>,
    cloudmap: Option<SocketAddr>,
}

fn parse_listening(line: &str) -> Option<Listening> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some(Listening {
        http: field("http=")?,
        dns: field("dns=")?,
        rpc: field("rpc=")?,
        https: field("https="),
        dot: field("dot="),
        doh: field("doh="),
        cloudmap: field("cloudmap="),
    })
}

impl Node {
    /// Starts a node with `--node-id`, `--data-dir`, loopback port-0 listeners unless `args`
    /// sets them, and `args`.
    pub fn start(id: u64, dir: &Path, args: &[&str]) -> Node {
        Node::start_with_data(id, dir, dir.join(format!("node{id}")), args)
    }

    /// Like [`Node::start`], with the data folder at `data_dir` (the log stays in `dir`).
    pub fn start_with_data(id: u64, dir: &Path, data_dir: PathBuf, args: &[&str]) -> Node {
        let mut full: Vec<String> = vec![
            "agent".into(),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--write-timeout".into(),
            "3s".into(),
        ];
        if !args.contains(&"--http-addr") {
            full.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--rpc-addr") {
            full.extend(["--rpc-addr".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--dns-addr") {
            full.extend(["--dns-addr".into(), "127.0.0.1:0".into()]);
        }
        // Tests' check targets are servers they run on loopback, which health checks may not
        // reach outside --dev by default; a test of that rule gives --check-allow itself.
        if !args.contains(&"--check-allow") {
            full.extend(["--check-allow".into(), "127.0.0.0/8".into()]);
        }
        full.extend(args.iter().map(|s| s.to_string()));
        let log_path = dir.join(format!("node{id}.log"));
        let mut node = Node {
            id,
            http: "0.0.0.0:0".parse().unwrap(),
            dns: "0.0.0.0:0".parse().unwrap(),
            rpc: "0.0.0.0:0".parse().unwrap(),
            https: None,
            dot: None,
            doh: None,
            cloudmap: None,
            data_dir,
            log_path,
            args: full,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!(
                "node {} exited with {status} before listening; log:\n{}",
                self.id,
                self.log_tail(40)
            );
        }
    }

    /// Starts the process; answers its exit status if it ended before listening.
    fn try_spawn(&mut self) -> Result<(), ExitStatus> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(&self.args)
            .env("CAIRN_LOG", "info,cairn_raft=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cairn");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addrs) = parse_listening(&line) {
                    let _ = tx.send(addrs);
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => {
                self.http = l.http;
                self.dns = l.dns;
                self.rpc = l.rpc;
                self.https = l.https;
                self.dot = l.dot;
                self.doh = l.doh;
                self.cloudmap = l.cloudmap;
            }
            // Standard output closed: the process ended.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(child.wait().expect("reap cairn"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} printed no listening line within {START_TIMEOUT:?}; log:\n{}",
                    self.id,
                    self.log_tail(40)
                );
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Restarts a stopped node on the same ports and data folder.
    pub fn restart(&mut self) {
        self.reuse_ports();
        self.spawn();
    }

    /// Restarts a stopped node that must refuse to start: answers its exit status.
    pub fn restart_refused(&mut self) -> ExitStatus {
        self.reuse_ports();
        match self.try_spawn() {
            Err(status) => status,
            Ok(()) => panic!("node {} started; log:\n{}", self.id, self.log_tail(20)),
        }
    }

    fn reuse_ports(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        let set = |args: &mut Vec<String>, flag: &str, value: String| {
            let i = args.iter().position(|a| a == flag).expect("flag present");
            args[i + 1] = value;
        };
        set(&mut self.args, "--http-addr", self.http.to_string());
        set(&mut self.args, "--rpc-addr", self.rpc.to_string());
        set(&mut self.args, "--dns-addr", self.dns.to_string());
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM", "STOP", "CONT") to this node only.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_count(needle) > 0
    }

    /// Lines of this node's log (across restarts) that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log_path)
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- node {} log tail ---\n{}", self.id, self.log_tail(30));
        }
        self.kill();
    }
}

/// A cluster of child processes in one temporary folder.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

impl Cluster {
    /// Node 1 bootstraps alone; the others join it. `extra` goes to every node.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_each(n, tempfile::tempdir().unwrap(), |_| extra.clone()).await
    }

    /// Like [`Cluster::start`], with each node's own extra arguments, in `dir`.
    pub async fn start_each(n: u64, dir: TempDir, extra: impl Fn(u64) -> Vec<String>) -> Cluster {
        let http = client();
        let first_extra = extra(1);
        let mut first_args = vec!["--bootstrap"];
        first_args.extend(first_extra.iter().map(String::as_str));
        let first = Node::start(1, dir.path(), &first_args);
        let join_url = first.url("");
        let mut cluster = Cluster {
            nodes: vec![first],
            dir,
            http,
        };
        cluster.wait_ready(0).await;
        for id in 2..=n {
            let node_extra = extra(id);
            let mut args = vec!["--join", join_url.as_str()];
            args.extend(node_extra.iter().map(String::as_str));
            let node = Node::start(id, cluster.dir.path(), &args);
            cluster.nodes.push(node);
        }
        cluster.wait_voters(n as usize).await;
        cluster
    }

    /// A cluster enforcing ACLs (`--acl`, default deny, plus `extra`): node 1 bootstraps the
    /// cluster and its ACLs; the management token's secret is written to `<dir>/mgmt.token`, the
    /// others join with it, and [`Cluster::http`] sends it with every request.
    pub async fn start_acl(n: u64, extra: &[&str]) -> (Cluster, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--bootstrap", "--acl"];
        args.extend(extra);
        let first = Node::start(1, dir.path(), &args);
        let join_url = first.url("");
        let mut cluster = Cluster {
            nodes: vec![first],
            dir,
            http: client(),
        };
        cluster.wait_ready(0).await;
        let res = cluster
            .http
            .put(cluster.node(1).url("/v1/acl/bootstrap"))
            .send()
            .await
            .expect("bootstrap");
        assert_eq!(res.status(), 200, "ACL bootstrap");
        let body: Value = res.json().await.unwrap();
        let secret = body["secret"].as_str().expect("secret").to_owned();
        let token_file = cluster.dir.path().join("mgmt.token");
        std::fs::write(&token_file, &secret).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-cairn-token", secret.parse().unwrap());
        cluster.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .default_headers(headers)
            .build()
            .unwrap();
        let token_arg = token_file.display().to_string();
        for id in 2..=n {
            let mut args = vec!["--join", join_url.as_str(), "--acl"];
            args.extend(["--join-token-file", token_arg.as_str()]);
            args.extend(extra);
            let node = Node::start(id, cluster.dir.path(), &args);
            cluster.nodes.push(node);
        }
        cluster.wait_voters(n as usize).await;
        (cluster, secret)
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub async fn get(&self, node: u64, path: &str) -> (u16, Value) {
        get(&self.http, &self.node(node).url(path)).await
    }

    pub async fn put(&self, node: u64, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .http
            .put(self.node(node).url(path))
            .json(body)
            .send()
            .await
            .expect("PUT");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, node: u64, path: &str) -> (u16, Value) {
        let res = self
            .http
            .delete(self.node(node).url(path))
            .send()
            .await
            .expect("DELETE");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Registers `service/id` through `node`; panics unless it answers 200 with an index.
    pub async fn register(&self, node: u64, service: &str, id: &str) -> u64 {
        let (status, body) = self
            .put(
                node,
                &format!("/v1/services/{service}/instances/{id}"),
                &serde_json::json!({"address": "10.0.0.1", "port": 8080}),
            )
            .await;
        assert_eq!(
            status, 200,
            "register {service}/{id} via node {node}: {body}"
        );
        body["index"].as_u64().expect("index")
    }

    async fn wait_ready(&self, i: usize) {
        let url = self.nodes[i].url("/v1/ready");
        eventually(Duration::from_secs(20), "node ready", || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    /// Waits until the leader reports `n` voters and every running node knows a leader.
    pub async fn wait_voters(&self, n: usize) {
        eventually(Duration::from_secs(30), "all voters joined", || async {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let (status, body) = get(&self.http, &node.url("/v1/cluster")).await;
                if status != 200 || body["leader"].is_null() {
                    return false;
                }
                let voters = body["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count());
                if voters != n {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// The id of the leader that every running node agrees on.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leaders = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let (_, body) = get(&self.http, &node.url("/v1/cluster")).await;
                leaders.push(body["leader"].as_u64());
            }
            if let Some(Some(l)) = leaders.first() {
                let agreed = leaders.iter().all(|x| *x == Some(*l));
                if agreed && self.nodes.iter().any(|n| n.id == *l && n.is_running()) {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Instance ids of `service` as `node` serves them.
    pub async fn instance_ids(&self, node: u64, service: &str) -> Vec<String> {
        let (status, body) = self.get(node, &format!("/v1/services/{service}")).await;
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> = body["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    }
}

/// A numeric response header, such as `x-cairn-index` or `x-consul-index`.
pub fn header_u64(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// GETs `url`; `(0, Null)` when no answer came. Tries twice, because a pooled connection to a
/// node that was killed and restarted on the same port fails once before a new one is made.
pub async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    for _ in 0..2 {
        if let Ok(res) = http.get(url).send().await {
            let status = res.status().as_u16();
            return (status, res.json().await.unwrap_or(Value::Null));
        }
    }
    (0, Value::Null)
}

/// Registers `service/id` with `body` through `node`; panics unless it answers 200.
pub async fn register_with(c: &Cluster, node: u64, service: &str, id: &str, body: Value) {
    let (status, res) = c
        .put(
            node,
            &format!("/v1/services/{service}/instances/{id}"),
            &body,
        )
        .await;
    assert_eq!(
        status, 200,
        "register {service}/{id} via node {node}: {res}"
    );
}

/// Tests that hold a latency goal take this exclusively for the part they measure ([`quiet`]);
/// tests that load the machine (processes under constant load, a browser, schemathesis) hold it
/// shared ([`busy`]). On a two-core machine a measurement beside one of those measures the
/// neighbour (CI saw a 300 ms goal missed at 408 ms beside the fault suite); beside light tests
/// it measures Cairn.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test that loads the machine, for its whole run.
pub async fn busy() -> tokio::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().await
}

/// Held by a test while it measures a latency goal: no [`busy`] test runs meanwhile.
pub async fn quiet() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    QUIET.write().await
}

/// Copies the folder `from` to `to`, recursively (a stopped node's data folder, a fixture).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
