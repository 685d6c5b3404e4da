//! The shipped deployment files: every agent command line in them passes the binary's
//! validation, and the compose cluster, built from this tree's image, survives leader loss, a
//! network cut and a rolling restart (Docker).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::harness;
use crate::harness::eventually;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `cairn agent <args> --check` with `env`; panics with the output unless it is valid.
fn check_agent(what: &str, args: &[String], env: &BTreeMap<String, String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--check")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: `cairn {}` was refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// `/certs` (the compose volume, the Kubernetes Secret) and `/etc/cairn/tls` (systemd) as
/// `dir`, a folder of this test.
fn localise(arg: &str, dir: &Path) -> String {
    let dir = dir.display().to_string();
    if arg == "/certs" {
        return dir;
    }
    arg.replace("/certs/", &format!("{dir}/"))
        .replace("/etc/cairn/tls/", &format!("{dir}/"))
}

/// Runs `cairn <args>`; panics unless it succeeds; its standard output.
fn cairn_ok(what: &str, args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: `cairn {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn t10_every_shipped_agent_command_line_passes_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");

    // Compose: the certificate steps, run as compose runs them (twice: the second `up` keeps
    // what the first made), then each node's command with the shared environment, against
    // the files the steps made.
    let mut compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    compose.apply_merge().unwrap(); // the services share `<<: *node`
    let services = compose["services"].as_mapping().unwrap();
    let steps = ["tls-ca", "tls-certs"];
    for (i, step) in steps.iter().enumerate() {
        let svc = &compose["services"][*step];
        assert_eq!(strings(&svc["command"])[0], "tls", "{step}");
        if i > 0 {
            assert_eq!(
                svc["depends_on"][steps[i - 1]]["condition"],
                "service_completed_successfully",
                "{step} runs after {}",
                steps[i - 1]
            );
        }
    }
    let run_steps = |round: &str| -> Vec<String> {
        steps
            .iter()
            .map(|step| {
                let args: Vec<String> = strings(&compose["services"][*step]["command"])
                    .iter()
                    .map(|a| localise(a, &certs))
                    .collect();
                cairn_ok(&format!("compose {step}, {round} run"), &args)
            })
            .collect()
    };
    run_steps("first");
    let made = contents(&certs);
    for f in [
        "cairn-ca.pem",
        "node-1.pem",
        "node-3-key.pem",
        "client-operator.pem",
    ] {
        assert!(made.contains_key(f), "{f} made: {:?}", made.keys());
    }
    let again = run_steps("second");
    assert!(
        again.iter().all(|out| out.contains("kept")),
        "the second run keeps: {again:?}"
    );
    assert_eq!(contents(&certs), made, "a second `up` mints nothing new");

    let mut nodes = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if steps.contains(&name) {
            continue;
        }
        assert_eq!(
            svc["depends_on"]["tls-certs"]["condition"], "service_completed_successfully",
            "{name} starts once the certificates are there"
        );
        let mut env = BTreeMap::new();
        for (k, v) in svc["environment"].as_mapping().unwrap() {
            env.insert(
                k.as_str().unwrap().to_owned(),
                localise(v.as_str().unwrap(), &certs),
            );
        }
        check_agent(&format!("compose {name}"), &strings(&svc["command"]), &env);
        nodes += 1;
    }
    assert_eq!(nodes, 3);

    // Kubernetes: the StatefulSet's container arguments, in each of its pods, with the Secret
    // (the same kind of files) at /certs.
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/cairn.yaml")).unwrap();
    let mut checked = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        if doc["kind"] == "StatefulSet" {
            let args: Vec<String> =
                strings(&doc["spec"]["template"]["spec"]["containers"][0]["args"])
                    .iter()
                    .map(|a| localise(a, &certs))
                    .collect();
            for pod in ["cairn-0", "cairn-1", "cairn-2"] {
                let env = BTreeMap::from([("HOSTNAME".to_owned(), pod.to_owned())]);
                check_agent(&format!("kubernetes pod {pod}"), &args, &env);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 1);

    // systemd: the unit's ExecStart, with the sample configuration file in its place and the
    // certificates in /etc/cairn/tls.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/cairn.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let sample = std::fs::read_to_string(repo().join("deploy/systemd/cairn.toml")).unwrap();
    let installed = tmp.path().join("cairn.toml");
    std::fs::write(&installed, localise(&sample, &certs)).unwrap();
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("/etc/cairn/cairn.toml", installed.to_str().unwrap()))
        .collect();
    check_agent("systemd unit", &args, &BTreeMap::new());

    // The image's default command.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    check_agent("Dockerfile CMD", &cmd, &BTreeMap::new());

    // No shipped cluster runs a plaintext cluster RPC.
    for file in [
        "deploy/docker-compose.yml",
        "deploy/kubernetes/cairn.yaml",
        "deploy/systemd/cairn.toml",
        "deploy/systemd/cairn.service",
    ] {
        let text = std::fs::read_to_string(repo().join(file))
            .unwrap()
            .to_ascii_lowercase();
        for flag in ["insecure-rpc", "insecure_rpc"] {
            assert!(!text.contains(flag), "{file} uses {flag}");
        }
    }
}

use serde::Deserialize;

/// `docker compose` or `docker-compose`, whichever this machine has.
fn compose_program() -> Vec<String> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A compose project of this test run: image, containers, network and volumes, all removed on
/// drop, also when the test fails.
struct Deployment {
    project: String,
    image: String,
    program: Vec<String>,
    /// The certificates the init step made, copied out of the volume.
    certs: tempfile::TempDir,
}

impl Deployment {
    fn up() -> Deployment {
        let project = format!("cairntest{}", std::process::id());
        let image = format!("cairn-test:{project}");
        let out = Command::new(repo().join("deploy/build-image.sh"))
            .arg(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_IMAGE", &image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "image build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = Deployment {
            project,
            image,
            program: compose_program(),
            certs: tempfile::tempdir().unwrap(),
        };
        d.compose_ok(&["up", "-d"]);
        // The CA and the operator's client certificate, as a user takes them out of the volume.
        let out = Command::new("docker")
            .args(["cp", &format!("{}:/certs/.", d.container(1))])
            .arg(d.certs.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.certs.path().join(name)
    }

    /// An HTTPS client that trusts the cluster's CA only and presents `identity`'s certificate
    /// (`client-operator`) if one is named.
    fn https_client(&self, identity: Option<&str>) -> reqwest::ClientBuilder {
        let ca = std::fs::read(self.cert("cairn-ca.pem")).unwrap();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false);
        if let Some(identity) = identity {
            let mut pem = std::fs::read(self.cert(&format!("{identity}.pem"))).unwrap();
            pem.extend(std::fs::read(self.cert(&format!("{identity}-key.pem"))).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b
    }

    /// Node `n`'s address on the compose network.
    fn ip(&self, node: u64) -> std::net::IpAddr {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &self.container(node),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("node {node}'s address: {text:?}"))
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/docker-compose.yml"))
            .args(args)
            .env("CAIRN_IMAGE", &self.image);
        // Free host ports, on loopback only.
        for n in 1..=3 {
            cmd.env(format!("CAIRN{n}_HTTPS_PORT"), "");
            cmd.env(format!("CAIRN{n}_DNS_PORT"), "");
        }
        cmd.output().unwrap()
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn port(&self, node: u64, port: u16, udp: bool) -> Option<SocketAddr> {
        let service = format!("cairn{node}");
        let port = port.to_string();
        let mut args = vec!["port"];
        if udp {
            args.push("--protocol=udp");
        }
        args.extend([service.as_str(), port.as_str()]);
        let out = self.compose(&args);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    fn container(&self, node: u64) -> String {
        self.compose_ok(&["ps", "-q", &format!("cairn{node}")])
    }

    fn network(&self) -> String {
        format!("{}_cairn", self.project)
    }

    /// Runs the CLI inside node `n`'s container.
    fn exec(&self, node: u64, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["exec", &self.container(node), "/cairn"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.image])
            .output();
    }
}

/// Where each node's HTTPS API and DNS are published right now (they move when a container
/// restarts).
#[derive(Default)]
struct Ports(Mutex<HashMap<u64, (SocketAddr, SocketAddr)>>);

impl Ports {
    fn refresh(&self, d: &Deployment, node: u64) -> bool {
        match (d.port(node, 8501, false), d.port(node, 8600, true)) {
            (Some(h), Some(u)) => {
                self.0.lock().insert(node, (h, u));
                true
            }
            _ => false,
        }
    }
    fn http(&self, node: u64) -> SocketAddr {
        self.0.lock()[&node].0
    }
    fn dns(&self, node: u64) -> SocketAddr {
        self.0.lock()[&node].1
    }
}

async fn ready(http: &reqwest::Client, d: &Deployment, ports: &Ports, node: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("node {node} ready"),
        || async {
            ports.refresh(d, node)
                && http
                    .get(format!("https://{}/v1/ready", ports.http(node)))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

async fn register(http: &reqwest::Client, addr: SocketAddr, id: &str) -> u16 {
    let res = http
        .put(format!("https://{addr}/v1/services/web/instances/{id}"))
        .json(&json!({"address": "10.9.0.1", "port": 80}))
        .send()
        .await;
    res.map_or(0, |r| r.status().as_u16())
}

async fn leader(http: &reqwest::Client, addr: SocketAddr) -> Option<u64> {
    let body: Value = http
        .get(format!("https://{addr}/v1/cluster"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["leader"].as_u64()
}

async fn a_records(dns: SocketAddr) -> Option<usize> {
    let bytes = harness::dns::udp_raw(
        dns,
        &harness::dns::query("web.service.cairn.", RecordType::A, None),
    )
    .await?;
    let m = hickory_proto::op::Message::from_vec(&bytes).ok()?;
    (m.metadata.response_code == hickory_proto::op::ResponseCode::NoError)
        .then_some(m.answers.len())
}

// Two workers: the rolling restart's `docker compose restart` blocks one (in `block_in_place`)
// while the writer measures on the other.
/// The longest pause in acknowledged writes the rolling restart may cause (issue 17's goal).
const ROLLING_RESTART_MAX_GAP: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_compose_cluster_survives_leader_loss_a_network_cut_and_a_rolling_restart() {
    let started = std::time::Instant::now();
    let d = Deployment::up();
    // The API is HTTPS, with the operator's client certificate from the volume.
    let http = d.https_client(Some("client-operator")).build().unwrap();
    let ports = Ports::default();
    for n in 1..=3 {
        ready(&http, &d, &ports, n).await;
    }

    // Register through node 1, resolve through node 3.
    assert_eq!(register(&http, ports.http(1), "first").await, 200);
    eventually(Duration::from_secs(10), "node 3 answers DNS", || async {
        a_records(ports.dns(3)).await == Some(1)
    })
    .await;

    // Without a client certificate, the HTTPS API refuses the handshake.
    let anonymous = d.https_client(None).build().unwrap();
    let res = anonymous
        .get(format!("https://{}/v1/services", ports.http(1)))
        .send()
        .await;
    assert!(
        res.is_err(),
        "an HTTPS client without a certificate: {res:?}"
    );

    // The cluster RPC speaks only mutual TLS. The forged forward, in plaintext, to a
    // node's RPC port on the compose network: no HTTP answer at all.
    let rpc = SocketAddr::new(d.ip(2), 8300);
    let forged = json!({"write": {"op": "deregister", "service": "web", "id": "first"}});
    let res = harness::client()
        .post(format!("http://{rpc}/raft/forward"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", "1")
        .json(&forged)
        .send()
        .await;
    assert!(res.is_err(), "a plaintext RPC was answered: {res:?}");
    // Over TLS with a certificate of the CA that is not a node's, the handshake succeeds (the
    // port is TLS, node 2 proves its name) and admission refuses it: the caller is no member.
    let name = "node-2.cairn.cairn";
    let operator = d
        .https_client(Some("client-operator"))
        .resolve(name, rpc)
        .build()
        .unwrap();
    let res = operator
        .post(format!("https://{name}:8300/raft/forward"))
        .header("x-cairn-cluster", "cairn")
        .header("x-cairn-from", "1")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        403,
        "a client certificate on the RPC"
    );
    let body: Value = http
        .get(format!("https://{}/v1/services/web", ports.http(3)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["instances"][0]["id"], "first",
        "nothing forged applied"
    );

    // Stop the leader's container: writes go on through the others, DNS keeps answering.
    let old = leader(&http, ports.http(1)).await.unwrap();
    d.compose_ok(&["stop", "-t", "5", &format!("cairn{old}")]);
    let others: Vec<u64> = (1..=3).filter(|n| *n != old).collect();
    eventually(
        Duration::from_secs(20),
        "a write after leader loss",
        || async { register(&http, ports.http(others[0]), "after-leader-loss").await == 200 },
    )
    .await;
    for n in &others {
        eventually(Duration::from_secs(10), "DNS after leader loss", || async {
            a_records(ports.dns(*n)).await == Some(2)
        })
        .await;
    }
    d.compose_ok(&["start", &format!("cairn{old}")]);
    ready(&http, &d, &ports, old).await;

    // Cut a follower off the network: the majority writes on; the cut-off node answers DNS from
    // its replica and refuses writes with 503; reconnected, it catches up.
    let leader_now = leader(&http, ports.http(others[0])).await.unwrap();
    let cut = (1..=3).find(|n| *n != leader_now).unwrap();
    let container = d.container(cut);
    let net = d.network();
    let out = Command::new("docker")
        .args(["network", "disconnect", &net, &container])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let majority: Vec<u64> = (1..=3).filter(|n| *n != cut).collect();
    assert_eq!(
        register(&http, ports.http(majority[0]), "during-cut").await,
        200
    );
    let lookup = d.exec(
        cut,
        &[
            "lookup",
            "web.service.cairn",
            "--dns-addr",
            "127.0.0.1:8600",
        ],
    );
    assert!(
        lookup.status.success(),
        "{}",
        String::from_utf8_lossy(&lookup.stderr)
    );
    assert!(String::from_utf8_lossy(&lookup.stdout).contains("10.9.0.1"));
    let refused = d.exec(
        cut,
        &[
            "register",
            "web",
            "x",
            "--address",
            "10.9.0.2",
            "--port",
            "80",
            "--http-addr",
            "127.0.0.1:8500",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("503"),
        "the cut-off node refuses writes with 503: {err}"
    );
    let out = Command::new("docker")
        .args(["network", "connect", &net, &container])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ready(&http, &d, &ports, cut).await;
    eventually(
        Duration::from_secs(20),
        "the reconnected node caught up",
        || async { a_records(ports.dns(cut)).await == Some(3) },
    )
    .await;

    // Rolling restart of all three under continuous registrations and DNS queries, measured
    // while no test that loads the machine runs.
    let quiet = crate::harness::quiet().await;
    let ports = Arc::new(ports);
    let up: Arc<Mutex<BTreeSet<u64>>> = Arc::new(Mutex::new((1..=3).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // When each registration was acknowledged: the longest gap is what a rolling restart costs
    // writers (leaders hand leadership over on SIGTERM).
    let acked_at: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let dns_failures = Arc::new(AtomicU64::new(0));
    let dns_queries = Arc::new(AtomicU64::new(0));
    let writer = {
        let (ports, up, stop, acked, acked_at, http) = (
            ports.clone(),
            up.clone(),
            stop.clone(),
            acked.clone(),
            acked_at.clone(),
            http.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let nodes: Vec<u64> = up.lock().iter().copied().collect();
                let node = nodes[(i as usize) % nodes.len()];
                let id = format!("roll-{i}");
                if register(&http, ports.http(node), &id).await == 200 {
                    acked.lock().push(id);
                    acked_at.lock().push(std::time::Instant::now());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let resolver = {
        let (ports, up, stop, failures, queries) = (
            ports.clone(),
            up.clone(),
            stop.clone(),
            dns_failures.clone(),
            dns_queries.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let nodes: Vec<u64> = up.lock().iter().copied().collect();
                for n in nodes {
                    let addr = ports.dns(n);
                    let answered = a_records(addr).await.is_some_and(|c| c > 0);
                    // Count only failures of nodes that were up for the whole query.
                    if !answered && up.lock().contains(&n) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    queries.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for n in 1..=3 {
        up.lock().remove(&n);
        tokio::time::sleep(Duration::from_millis(200)).await; // let in-flight queries finish
        tokio::task::block_in_place(|| {
            d.compose_ok(&["restart", "-t", "5", &format!("cairn{n}")]);
        });
        ready(&http, &d, &ports, n).await;
        // Its DNS answers from a caught-up replica before it counts as up again.
        let dns = ports.dns(n);
        eventually(
            Duration::from_secs(20),
            "restarted node answers",
            || async { a_records(dns).await.is_some_and(|c| c > 0) },
        )
        .await;
        up.lock().insert(n);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    resolver.await.unwrap();
    drop(quiet);

    let acked = acked.lock().clone();
    let longest_gap = acked_at
        .lock()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // What each leader said of its handover, to tell a slow handover from a missed one.
    let handovers: Vec<String> =
        String::from_utf8_lossy(&d.compose(&["logs", "--no-color"]).stdout)
            .lines()
            .filter(|l| l.contains("leadership"))
            .map(str::to_owned)
            .collect();
    eprintln!(
        "rolling restart in containers: longest gap between acknowledged writes {longest_gap:?}; \
         the leaders' handovers:\n{}",
        handovers.join("\n")
    );
    // The goal; without the handover a restarted leader costs an election time-out
    // plus the leader lease (3-4 s).
    assert!(
        longest_gap <= ROLLING_RESTART_MAX_GAP,
        "rolling restart paused writes for {longest_gap:?}"
    );
    assert!(
        acked.len() > 50,
        "registrations kept being acknowledged: {}",
        acked.len()
    );
    for n in 1..=3 {
        let addr = ports.http(n);
        eventually(
            Duration::from_secs(20),
            "every acknowledged registration on every node",
            || async {
                let body: Value = match http
                    .get(format!("https://{addr}/v1/services/web"))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => return false,
                };
                let have: BTreeSet<&str> = body["instances"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
                    .unwrap_or_default();
                acked.iter().all(|id| have.contains(id.as_str()))
            },
        )
        .await;
    }
    assert_eq!(
        dns_failures.load(Ordering::Relaxed),
        0,
        "failed DNS queries to nodes that were up (of {})",
        dns_queries.load(Ordering::Relaxed)
    );
    eprintln!(
        "compose cluster with TLS: {} acknowledged registrations, {} DNS queries, {:.0?}",
        acked.len(),
        dns_queries.load(Ordering::Relaxed),
        started.elapsed()
    );
}
