//! Prometheus' HTTP service discovery against `/v1/prometheus/sd`: Debian's `prometheus` with a
//! stock `http_sd_configs` block scrapes the targets registered in Cairn, drops one that is
//! deregistered, relabels on a meta label, and sees only the services its token may read.
//! Prometheus' own API (`/api/v1/targets`) is the witness.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{register_with, Cluster};

/// Debian's prometheus package (installed by `scripts/deps --test`).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A scrape target: answers every request with a one-line exposition.
async fn metrics_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "# TYPE target_up gauge\ntarget_up 1\n";
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(res.as_bytes()).await;
            });
        }
    });
    addr
}

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    web: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &std::path::Path, config: &str) -> Prometheus {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // Prometheus does not report a port-0 listener's port; a port just freed is used.
        let web = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run prometheus (scripts/deps --test installs it)");
        Prometheus { child, web, log }
    }

    /// `/api/v1/targets`: (active, dropped).
    async fn targets(&self) -> (Vec<Value>, Vec<Value>) {
        let url = format!("http://{}/api/v1/targets", self.web);
        let Ok(res) = reqwest::get(&url).await else {
            return (Vec::new(), Vec::new());
        };
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let list = |k: &str| body["data"][k].as_array().cloned().unwrap_or_default();
        (list("activeTargets"), list("droppedTargets"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the active targets until `check` holds; panics with Prometheus' view and log after
    /// `timeout`.
    async fn until(&mut self, timeout: Duration, what: &str, check: impl Fn(&[Value]) -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (active, dropped) = self.targets().await;
            if check(&active) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {what}\nprometheus: {:?}\nactive: {active:#?}\ndropped: \
                 {dropped:#?}\nlog:\n{}",
                self.child.try_wait(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `instance` label (`host:port`) of each active target that was scraped successfully.
fn up(active: &[Value]) -> Vec<String> {
    let mut up: Vec<String> = active
        .iter()
        .filter(|t| t["health"] == "up")
        .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
        .collect();
    up.sort();
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_prometheus_http_sd_scrapes_relabels_and_forgets_deregistered_targets() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    let (a, b, dropped, secret) = (
        metrics_target().await,
        metrics_target().await,
        metrics_target().await,
        metrics_target().await,
    );
    let instance = |addr: SocketAddr, team: &str| {
        json!({"address": addr.ip().to_string(), "port": addr.port(),
               "tags": ["metrics"], "meta": {"team-name": team}})
    };
    register_with(&c, 1, "app", "a", instance(a, "blue")).await;
    register_with(&c, 1, "app", "b", instance(b, "green")).await;
    register_with(&c, 1, "app", "d", instance(dropped, "no-scrape")).await;
    register_with(&c, 1, "vault", "s", instance(secret, "blue")).await;

    // Prometheus reads with a token that may read `app` only.
    let (status, body) = c
        .put(
            1,
            "/v1/acl/policies/scrape",
            &json!({"rules": {"service": {"app": "read"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let res = c
        .http
        .post(c.node(1).url("/v1/acl/tokens"))
        .json(&json!({"policies": ["scrape"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let token: Value = res.json().await.unwrap();
    let token_file = c.dir.path().join("scrape.token");
    std::fs::write(&token_file, token["secret"].as_str().unwrap()).unwrap();

    // What Prometheus will be handed: `app`'s three instances, not `vault`'s.
    let sd_url = c.node(1).url("/v1/prometheus/sd?tag=metrics");
    let res = crate::harness::client()
        .get(&sd_url)
        .bearer_auth(token["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let groups: Value = res.json().await.unwrap();
    assert_eq!(groups.as_array().map(Vec::len), Some(3), "{groups}");

    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 500ms
scrape_configs:
  - job_name: cairn
    http_sd_configs:
      - url: {sd}
        refresh_interval: 1s
        # Prometheus 2.42 sends http_sd credentials without a scheme unless `type` is set.
        authorization:
          type: Bearer
          credentials_file: {token}
    relabel_configs:
      - source_labels: [__meta_cairn_meta_team_name]
        regex: no-scrape
        action: drop
      - source_labels: [__meta_cairn_meta_team_name]
        target_label: team
      - source_labels: [__meta_cairn_service]
        target_label: service
"#,
        sd = sd_url,
        token = token_file.display(),
    );
    let mut prom = Prometheus::start(c.dir.path(), &config);

    let want = |addrs: &[SocketAddr]| {
        let mut v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        v.sort();
        v
    };
    let both = want(&[a, b]);
    prom.until(
        Duration::from_secs(30),
        "prometheus scrapes app/a and app/b",
        |active| up(active) == both,
    )
    .await;
    let (active, dropped_targets) = prom.targets().await;
    for t in &active {
        let team = if t["labels"]["instance"] == a.to_string() {
            "blue"
        } else {
            "green"
        };
        assert_eq!(t["labels"]["team"], team, "{t}");
        assert_eq!(t["labels"]["service"], "app", "{t}");
        assert_eq!(t["discoveredLabels"]["__meta_cairn_tags"], ",metrics,");
        assert_eq!(t["discoveredLabels"]["__meta_cairn_health"], "passing");
    }
    // The relabel rule dropped `d`; `vault` was never handed to this token.
    assert!(
        dropped_targets
            .iter()
            .any(|t| t["discoveredLabels"]["__address__"] == dropped.to_string()),
        "{dropped_targets:?}"
    );
    assert!(
        !active
            .iter()
            .chain(&dropped_targets)
            .any(|t| t["discoveredLabels"]["__meta_cairn_service"] == "vault"),
        "a service the token may not read was discovered"
    );

    let (status, body) = c.delete(1, "/v1/services/app/instances/b").await;
    assert_eq!(status, 200, "{body}");
    let only_a = want(&[a]);
    prom.until(
        Duration::from_secs(20),
        "prometheus forgets the deregistered app/b",
        |active| up(active) == only_a && active.len() == 1,
    )
    .await;
    assert!(
        !prom.log().contains("level=error"),
        "prometheus logged errors:\n{}",
        prom.log()
    );
}

/// The endpoint itself: filters, blocking, ACL filtering and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_sd_filters_blocks_and_answers_only_readable_services() {
    let (c, _) = Cluster::start_acl(1, &[]).await;
    let body = |port: u16, tags: Value| json!({"address": "10.0.0.1", "port": port, "tags": tags});
    register_with(&c, 1, "web", "w1", body(1, json!(["a"]))).await;
    register_with(&c, 1, "web", "w2", body(2, json!([]))).await;
    register_with(&c, 1, "db", "d1", body(3, json!(["a"]))).await;

    let (status, all) = c.get(1, "/v1/prometheus/sd").await;
    assert_eq!(status, 200, "{all}");
    let targets = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["targets"].as_array().unwrap().clone())
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    // Sorted by service, then instance id.
    assert_eq!(
        targets(&all),
        ["10.0.0.1:3", "10.0.0.1:1", "10.0.0.1:2"],
        "{all}"
    );
    let (_, tagged) = c.get(1, "/v1/prometheus/sd?tag=A").await;
    assert_eq!(targets(&tagged), ["10.0.0.1:3", "10.0.0.1:1"]);
    let (_, web) = c
        .get(1, "/v1/prometheus/sd?service=web&health=passing")
        .await;
    assert_eq!(targets(&web), ["10.0.0.1:1", "10.0.0.1:2"]);
    let (_, none) = c.get(1, "/v1/prometheus/sd?service=nothing").await;
    assert_eq!(none, json!([]));
    for bad in ["health=ok", "service=no_such", "colour=red"] {
        let (status, body) = c.get(1, &format!("/v1/prometheus/sd?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // A blocking read wakes when an instance changes, not only when the service list does.
    let res = c
        .http
        .get(c.node(1).url("/v1/prometheus/sd"))
        .send()
        .await
        .unwrap();
    let index = crate::harness::header_u64(&res, "x-cairn-index").unwrap();
    let url = c
        .node(1)
        .url(&format!("/v1/prometheus/sd?index={index}&wait=20s"));
    let http = c.http.clone();
    let blocked = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let res = http.get(url).send().await.unwrap();
        (started.elapsed(), res.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    register_with(&c, 1, "web", "w3", body(4, json!([]))).await;
    let (waited, after) = blocked.await.unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(
        targets(&after).contains(&"10.0.0.1:4".to_owned()),
        "{after}"
    );

    // A token that may read `web` only sees `web`, and is told the list was filtered.
    let (status, _) = c
        .put(
            1,
            "/v1/acl/policies/web-read",
            &json!({"rules": {"service": {"web": "read"}}}),
        )
        .await;
    assert_eq!(status, 200);
    let res = c
        .http
        .post(c.node(1).url("/v1/acl/tokens"))
        .json(&json!({"policies": ["web-read"]}))
        .send()
        .await
        .unwrap();
    let secret = res.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = crate::harness::client();
    let res = plain
        .get(c.node(1).url("/v1/prometheus/sd"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("x-cairn-filtered").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let seen = res.json::<Value>().await.unwrap();
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .all(|g| g["labels"]["__meta_cairn_service"] == "web"),
        "{seen}"
    );
    assert_eq!(targets(&seen).len(), 3);
    let res = plain
        .get(c.node(1).url("/v1/prometheus/sd?service=db"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = plain
        .get(c.node(1).url("/v1/prometheus/sd"))
        .send()
        .await
        .unwrap();
    let anonymous = res.json::<Value>().await.unwrap();
    assert_eq!(anonymous, json!([]), "no token, default deny: nothing");
}
