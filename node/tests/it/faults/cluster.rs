//! A process cluster whose cluster RPC runs through [`Proxy`]s, with the operations the nemesis
//! needs: kill and restart, pause, partition, remove and re-add, replace with wiped data.
//!
//! The cluster RPC is mutual TLS, as in production, with certificates from `cairn tls`;
//! `CAIRN_FAULTS_RPC=plain` runs it in plaintext instead. Either way each node's RPC
//! connections leave from its own loopback address, by which the proxies know the sender.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::harness::proxy::{self, Net, Proxy};
use crate::harness::tls::Pki;
use crate::harness::Node;

pub struct FaultCluster {
    pub dir: TempDir,
    pub net: Arc<Net>,
    /// Current members, by node id; killed nodes stay here until restarted.
    pub nodes: BTreeMap<u64, Node>,
    proxies: HashMap<u64, Proxy>,
    /// Nodes stopped with SIGSTOP.
    paused: Vec<u64>,
    next_id: u64,
    extra: Vec<String>,
    /// The CA and certificates of the cluster RPC; `None` when it runs in plaintext.
    pki: Option<Pki>,
    pub http: reqwest::Client,
}

/// What `GET /v1/cluster` says, reduced to what the tests use.
#[derive(Debug, Clone)]
pub struct Status {
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
}

impl FaultCluster {
    /// `n` nodes from `--peers`, each with `extra` and `per_node(id)` arguments.
    pub async fn start(n: u64, extra: &[&str], per_node: impl Fn(u64) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = match std::env::var("CAIRN_FAULTS_RPC").as_deref() {
            Ok("tls") | Err(_) => Some(Pki::new(&dir.path().join("pki"), "cairn")),
            Ok("plain") => None,
            Ok(other) => panic!("CAIRN_FAULTS_RPC={other:?}: expected tls or plain"),
        };
        let net = Arc::new(Net::default());
        let mut proxies = HashMap::new();
        for id in 1..=n {
            proxies.insert(id, Proxy::start(id, net.clone()).await);
        }
        let peers = (1..=n)
            .map(|id| format!("{id}={}", proxies[&id].addr))
            .collect::<Vec<_>>()
            .join(",");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut c = FaultCluster {
            dir,
            net,
            nodes: BTreeMap::new(),
            proxies,
            paused: Vec::new(),
            next_id: n + 1,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            pki,
            http,
        };
        for id in 1..=n {
            let mut args = vec!["--peers".to_string(), peers.clone()];
            args.extend(c.node_args(id));
            args.extend(per_node(id));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let node = Node::start(id, c.dir.path(), &args);
            c.proxies[&id].set_upstream(node.rpc);
            c.nodes.insert(id, node);
        }
        c.wait_healthy(Duration::from_secs(30))
            .await
            .expect("cluster formed");
        c
    }

    /// Every node's arguments: the suite's `extra`, the address its RPC connections leave
    /// from, and its certificate (made here) unless the RPC is plaintext.
    fn node_args(&self, id: u64) -> Vec<String> {
        let mut args = self.extra.clone();
        args.extend([
            "--test-rpc-source-addr".to_string(),
            proxy::source_addr(id).to_string(),
        ]);
        if let Some(pki) = &self.pki {
            args.extend(pki.agent_args(id));
        }
        args
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes running and not paused, with their HTTP base URLs.
    pub fn reachable(&self) -> Vec<(u64, String)> {
        self.nodes
            .values()
            .filter(|n| n.is_running() && !self.paused.contains(&n.id))
            .map(|n| (n.id, n.url("")))
            .collect()
    }

    pub async fn status(&self, id: u64) -> Option<Status> {
        let node = self.nodes.get(&id)?;
        let res = self
            .http
            .get(node.url("/v1/cluster"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        let v: Value = res.json().await.ok()?;
        Some(Status {
            role: v["role"].as_str()?.to_owned(),
            leader: v["leader"].as_u64(),
            term: v["term"].as_u64()?,
            last_log_index: v["last_log_index"].as_u64()?,
            snapshot_index: v["snapshot_index"].as_u64()?,
            voters: v["members"]
                .as_array()?
                .iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_u64())
                .collect(),
        })
    }

    /// The node that reports itself leader with the highest term, among the reachable ones.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (id, _) in self.reachable() {
            if let Some(s) = self.status(id).await {
                if s.role == "leader" && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    pub async fn wait_leader(&self, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A leader is elected, every member is a voter in its view, and every running node
    /// follows it.
    pub async fn wait_healthy(&self, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        let members = self.ids();
        loop {
            let mut last = String::new();
            if let Some(leader) = self.leader().await {
                let mut ok = true;
                for (id, _) in self.reachable() {
                    match self.status(id).await {
                        Some(s) if s.leader == Some(leader) && s.voters == members => {}
                        other => {
                            ok = false;
                            last = format!("node {id}: {other:?}");
                        }
                    }
                }
                if ok {
                    return Ok(leader);
                }
            } else {
                last = "no leader".into();
            }
            if Instant::now() > deadline {
                return Err(format!("cluster not healthy within {within:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn followers(&self, leader: u64) -> Vec<u64> {
        self.ids().into_iter().filter(|&i| i != leader).collect()
    }

    pub fn kill(&mut self, id: u64) {
        self.paused.retain(|&p| p != id);
        self.nodes.get_mut(&id).expect("member").kill();
    }

    pub fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("member");
        node.restart();
        self.proxies[&id].set_upstream(node.rpc);
    }

    pub fn pause(&mut self, id: u64) {
        self.nodes[&id].signal("STOP");
        self.paused.push(id);
    }

    pub fn resume(&mut self, id: u64) {
        self.nodes[&id].signal("CONT");
        self.paused.retain(|&p| p != id);
    }

    /// Sends a membership request to any reachable node other than `not`, retrying while the
    /// cluster has no leader.
    async fn membership(
        &self,
        not: u64,
        req: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut last = String::from("no reachable node");
            for (id, url) in self.reachable().into_iter().filter(|(id, _)| *id != not) {
                match req(&url).send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => {
                        last = format!(
                            "node {id}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Removes `id` from the voters; its process keeps running.
    pub async fn remove(&self, id: u64) -> Result<(), String> {
        let http = self.http.clone();
        self.membership(id, |url| {
            http.delete(format!("{url}/v1/cluster/members/{id}"))
                .timeout(Duration::from_secs(70))
        })
        .await
    }

    /// Adds `id` back at its proxy's address, as an operator would.
    pub async fn add(&self, id: u64) -> Result<(), String> {
        let http = self.http.clone();
        let body = json!({"id": id, "rpc_addr": self.proxies[&id].addr.to_string()});
        self.membership(id, |url| {
            http.post(format!("{url}/v1/cluster/members"))
                .json(&body)
                .timeout(Duration::from_secs(70))
        })
        .await
    }

    /// Removes `id`, stops it, wipes its data and starts an empty node with a new id in its
    /// place, which joins. Returns the new id.
    pub async fn replace_wiped(&mut self, id: u64) -> Result<u64, String> {
        self.remove(id).await?;
        let mut old = self.nodes.remove(&id).expect("member");
        old.kill();
        std::fs::remove_dir_all(&old.data_dir).map_err(|e| format!("wipe: {e}"))?;
        drop(old);
        self.proxies.remove(&id);
        let new = self.next_id;
        self.next_id += 1;
        let proxy = Proxy::start(new, self.net.clone()).await;
        let join = self
            .reachable()
            .iter()
            .map(|(_, u)| u.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--join".to_string(),
            join,
            "--advertise".to_string(),
            proxy.addr.to_string(),
        ];
        args.extend(self.node_args(new));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Node::start(new, self.dir.path(), &args);
        proxy.set_upstream(node.rpc);
        self.proxies.insert(new, proxy);
        self.nodes.insert(new, node);
        Ok(new)
    }

    /// Waits until every running node reports the same applied index, then returns each node's
    /// digest at that index. Digests taken at one index must be equal.
    pub async fn converge(&self, within: Duration) -> Result<(u64, BTreeMap<u64, String>), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = BTreeMap::new();
            for (id, url) in self.reachable() {
                let got = async {
                    let r = self
                        .http
                        .get(format!("{url}/v1/cluster/digest"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .ok()?;
                    let v: Value = r.json().await.ok()?;
                    Some((
                        v["applied_index"].as_u64()?,
                        v["digest"].as_str()?.to_owned(),
                    ))
                }
                .await;
                if let Some(d) = got {
                    seen.insert(id, d);
                }
            }
            let indexes: Vec<u64> = seen.values().map(|(i, _)| *i).collect();
            if seen.len() == self.reachable().len()
                && indexes.windows(2).all(|w| w[0] == w[1])
                && !indexes.is_empty()
            {
                let index = indexes[0];
                return Ok((
                    index,
                    seen.into_iter().map(|(id, (_, d))| (id, d)).collect(),
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nodes did not converge within {within:?}: {seen:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Log tails of every node, for a failure report.
    pub fn logs(&self) -> String {
        self.nodes
            .values()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log_tail(25)))
            .collect()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for id in self.paused.clone() {
            if let Some(n) = self.nodes.get(&id) {
                n.signal("CONT");
            }
        }
    }
}
