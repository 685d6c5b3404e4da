//! The agent's configuration: command-line flags, `CAIRN_*` environment variables and a TOML
//! file, merged in that order of precedence, then validated into an [`AgentConfig`].
//!
//! Validation happens before any port is bound; a bad value is a [`ConfigError`] naming the flag,
//! and the binary exits with code 64.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_api::parse_duration;
use clap::Args;
use serde::Deserialize;

/// Default ports, as Consul's: HTTP 8500, DNS 8600, cluster RPC 8300.
pub const DEFAULT_HTTP_PORT: u16 = 8500;
pub const DEFAULT_DNS_PORT: u16 = 8600;
pub const DEFAULT_RPC_PORT: u16 = 8300;
/// Default limit on request bodies: far above any registration, far below memory trouble.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Largest accepted `--max-body-bytes`.
const MAX_MAX_BODY: usize = 64 * 1024 * 1024;

/// `cairn agent` flags. Every one can also be set as `CAIRN_<NAME>` or in the `--config` file.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Run a single-node cluster on loopback with a throw-away data folder.
    #[arg(long, env = "CAIRN_DEV")]
    pub dev: bool,

    /// Validate the configuration and exit without binding any port.
    #[arg(long)]
    pub check: bool,

    /// TOML file with any of these settings (flags and environment variables win over it).
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: Option<u64>,

    /// Take the node id from the host name's ordinal suffix, plus one: `cairn-0` is node 1
    /// (for Kubernetes StatefulSets).
    #[arg(long, env = "CAIRN_NODE_ID_FROM_ORDINAL", conflicts_with = "node_id")]
    pub node_id_from_ordinal: bool,

    /// Folder for the Raft log and the registry (RocksDB).
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// HTTP API listen address [default: 0.0.0.0:8500; 127.0.0.1:8500 with --dev].
    #[arg(long, env = "CAIRN_HTTP_ADDR", value_name = "IP:PORT")]
    pub http_addr: Option<String>,

    /// DNS listen address, UDP and TCP [default: 0.0.0.0:8600; 127.0.0.1:8600 with --dev].
    #[arg(long, env = "CAIRN_DNS_ADDR", value_name = "IP:PORT")]
    pub dns_addr: Option<String>,

    /// The DNS zone Cairn answers for [default: cairn].
    #[arg(long, env = "CAIRN_DOMAIN", value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// TTL of DNS answers for services that set none [default: 5s].
    #[arg(long, env = "CAIRN_DNS_TTL", value_name = "DURATION")]
    pub dns_ttl: Option<String>,

    /// TTL of negative DNS answers, the SOA minimum [default: 5s].
    #[arg(long, env = "CAIRN_DNS_NEGATIVE_TTL", value_name = "DURATION")]
    pub dns_negative_ttl: Option<String>,

    /// Most records in one DNS answer, 0 for no limit but the message size [default: 64].
    #[arg(long, env = "CAIRN_DNS_MAX_ANSWERS", value_name = "N")]
    pub dns_max_answers: Option<usize>,

    /// Hand out instances whose health is `warning` along with `passing` ones.
    #[arg(long, env = "CAIRN_DNS_ALLOW_WARNING")]
    pub dns_allow_warning: bool,

    /// Upstream resolvers for names outside the zone, `IP:PORT`, comma-separated; without
    /// them such names are REFUSED.
    #[arg(long, env = "CAIRN_RECURSORS", value_name = "IP:PORT,...")]
    pub recursors: Option<String>,

    /// Cluster RPC listen address [default: the port of this node in --peers, else 8300].
    #[arg(long, env = "CAIRN_RPC_ADDR", value_name = "IP:PORT")]
    pub rpc_addr: Option<String>,

    /// Host or IP (and optionally port) the other nodes reach this node's RPC listener at, when
    /// it differs from the listen address: listening on 0.0.0.0, or behind a port mapping.
    #[arg(long, env = "CAIRN_ADVERTISE", value_name = "HOST[:PORT]")]
    pub advertise: Option<String>,

    /// Voters of a new cluster, the same list on every node: `1=host:8300,2=host:8300,3=host:8300`.
    #[arg(long, env = "CAIRN_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,

    /// Start a new cluster with this node as its only voter (others then --join it).
    #[arg(long, env = "CAIRN_BOOTSTRAP")]
    pub bootstrap: bool,

    /// Join an existing cluster through any member's HTTP API: `http://host:8500` (comma-separate
    /// several to try in turn).
    #[arg(long, env = "CAIRN_JOIN", value_name = "URL")]
    pub join: Option<String>,

    /// Cluster name: nodes refuse cluster RPCs that name another one.
    #[arg(long, env = "CAIRN_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,

    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "CAIRN_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Most blocking queries and watch streams one client address may hold open [default: 1024].
    #[arg(long, env = "CAIRN_MAX_WAITING_PER_CLIENT", value_name = "N")]
    pub max_waiting_per_client: Option<usize>,

    /// Take a snapshot and purge the log after this many entries [default: 100000].
    #[arg(long, env = "CAIRN_SNAPSHOT_THRESHOLD", value_name = "ENTRIES")]
    pub snapshot_threshold: Option<u64>,

    /// Log entries kept behind a snapshot for lagging followers [default: 5000].
    #[arg(long, env = "CAIRN_SNAPSHOT_KEEP_LOGS", value_name = "ENTRIES")]
    pub snapshot_keep_logs: Option<u64>,

    /// How long a write waits for a leader and quorum before answering 503 [default: 5s].
    #[arg(long, env = "CAIRN_WRITE_TIMEOUT", value_name = "DURATION")]
    pub write_timeout: Option<String>,

    /// Log filter, e.g. `info` or `debug,openraft=info` [default: info].
    #[arg(long, env = "CAIRN_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Test only: shifts this node's wall clock, e.g. `30s` or `-30s`, so the fault tests can
    /// show that no replicated decision depends on a node's clock. Not for production.
    #[arg(
        long,
        hide = true,
        value_name = "[-]DURATION",
        allow_hyphen_values = true
    )]
    pub test_clock_offset: Option<String>,
}

/// The same settings in a TOML file, spelled in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dev: Option<bool>,
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub dns_addr: Option<String>,
    pub domain: Option<String>,
    pub dns_ttl: Option<String>,
    pub dns_negative_ttl: Option<String>,
    pub dns_max_answers: Option<usize>,
    pub dns_allow_warning: Option<bool>,
    /// Either `"1.1.1.1:53,9.9.9.9:53"` or a list.
    pub recursors: Option<Peers>,
    pub rpc_addr: Option<String>,
    pub advertise: Option<String>,
    /// Either `"1=a:8300,2=b:8300"` or `["1=a:8300", "2=b:8300"]`.
    pub peers: Option<Peers>,
    pub bootstrap: Option<bool>,
    pub join: Option<String>,
    pub cluster: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_waiting_per_client: Option<usize>,
    pub snapshot_threshold: Option<u64>,
    pub snapshot_keep_logs: Option<u64>,
    pub write_timeout: Option<String>,
    pub log: Option<String>,
}

/// `peers` in a file: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Peers {
    One(String),
    Many(Vec<String>),
}

/// A configuration that cannot run, with the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

fn bad(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        message: message.into(),
    }
}

/// How a node comes into its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Initialise a new cluster with these voters (unless the data folder already holds one).
    Bootstrap(BTreeMap<u64, String>),
    /// Initialise a new cluster of this node alone, once its RPC port is known.
    BootstrapSelf,
    /// Ask a member at one of these URLs to add this node.
    Join(Vec<String>),
    /// Wait to be added (or restart from the data folder).
    Wait,
}

/// The DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub addr: SocketAddr,
    /// Lower-case, with a trailing dot.
    pub domain: String,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub max_answers: usize,
    pub allow_warning: bool,
    pub recursors: Vec<SocketAddr>,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub dev: bool,
    pub node_id: u64,
    /// `None` in dev mode without --data-dir: a temporary folder, removed on exit.
    pub data_dir: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub dns: DnsConfig,
    pub rpc_addr: SocketAddr,
    pub advertise: Option<Advertise>,
    pub membership: Membership,
    pub cluster: String,
    pub max_body_bytes: usize,
    pub max_waiting_per_client: usize,
    pub snapshot_threshold: u64,
    pub snapshot_keep_logs: u64,
    pub write_timeout: Duration,
    pub log: String,
    /// Milliseconds added to this node's wall clock (`--test-clock-offset`).
    pub clock_offset_ms: i64,
}

/// Where the other nodes reach this node's RPC listener (`--advertise`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    host: String,
    /// `None`: the port the RPC listener is bound to.
    port: Option<u16>,
}

impl Advertise {
    fn parse(s: &str) -> Option<Advertise> {
        let valid_host = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        if s.parse::<std::net::Ipv6Addr>().is_ok() {
            return Some(Advertise {
                host: format!("[{s}]"),
                port: None,
            });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, p) = rest.split_once("]:")?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            return Some(Advertise {
                host: format!("[{ip}]"),
                port: Some(port(p)?),
            });
        }
        match s.split_once(':') {
            Some((h, p)) if valid_host(h) => Some(Advertise {
                host: h.to_owned(),
                port: Some(port(p)?),
            }),
            None if valid_host(s) => Some(Advertise {
                host: s.to_owned(),
                port: None,
            }),
            _ => None,
        }
    }

    /// The address to advertise, given the port the RPC listener is bound to.
    pub fn rpc_addr(&self, bound_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(bound_port))
    }
}

impl AgentArgs {
    /// Merges flags (and environment) over the file and validates the result.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        resolve(self, file)
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        bad(
            "--config",
            format!("{}: {}", path.display(), e.to_string().trim_end()),
        )
    })
}

fn parse_addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        bad(
            setting,
            format!("{value:?} is not an IP:PORT address (e.g. 0.0.0.0:8500 or [::1]:8500)"),
        )
    })
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(list: &[String]) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| bad("--peers", format!("{item:?} is not ID=HOST:PORT")))?;
        let id: u64 = id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            bad(
                "--peers",
                format!("{id:?} in {item:?} is not a positive node id"),
            )
        })?;
        let addr = addr.trim();
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(bad(
                "--peers",
                format!("{addr:?} in {item:?} is not HOST:PORT"),
            ));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(bad("--peers", format!("node id {id} appears twice")));
        }
    }
    if peers.is_empty() {
        return Err(bad("--peers", "the list is empty"));
    }
    Ok(peers)
}

/// This machine's host name (as Kubernetes sets it for a pod: the pod's name).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `cairn-2` → node 3.
pub fn ordinal_node_id(host: &str) -> Result<u64, ConfigError> {
    host.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            bad(
                "--node-id-from-ordinal",
                format!("host name {host:?} does not end in -<ordinal>"),
            )
        })
}

/// A DNS TTL: whole seconds, at most a day.
fn ttl_setting(setting: &str, value: Option<&str>, default: u32) -> Result<u32, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let d = parse_duration(v).map_err(|e| bad(setting, e.to_string()))?;
    if d.subsec_nanos() != 0 || d.as_secs() > 86_400 {
        return Err(bad(setting, "must be whole seconds, at most 1 day"));
    }
    Ok(d.as_secs() as u32)
}

fn resolve_dns(a: &AgentArgs, f: &FileConfig, default_ip: &str) -> Result<DnsConfig, ConfigError> {
    let addr = match a.dns_addr.clone().or(f.dns_addr.clone()) {
        Some(s) => parse_addr("--dns-addr", &s)?,
        None => parse_addr("--dns-addr", &format!("{default_ip}:{DEFAULT_DNS_PORT}"))?,
    };
    let domain_in = a
        .domain
        .clone()
        .or(f.domain.clone())
        .unwrap_or_else(|| "cairn".into());
    let trimmed = domain_in.trim_end_matches('.').to_ascii_lowercase();
    let labels_ok = !trimmed.is_empty()
        && trimmed.len() <= 200
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !labels_ok {
        return Err(bad(
            "--domain",
            format!("{domain_in:?} is not a DNS name (labels of a-z, 0-9, '-')"),
        ));
    }
    let ttl = ttl_setting(
        "--dns-ttl",
        a.dns_ttl.as_deref().or(f.dns_ttl.as_deref()),
        5,
    )?;
    let negative_ttl = ttl_setting(
        "--dns-negative-ttl",
        a.dns_negative_ttl
            .as_deref()
            .or(f.dns_negative_ttl.as_deref()),
        5,
    )?;
    let max_answers = a.dns_max_answers.or(f.dns_max_answers).unwrap_or(64);
    if max_answers > 10_000 {
        return Err(bad("--dns-max-answers", "must be at most 10000"));
    }
    let recursors = match (&a.recursors, &f.recursors) {
        (Some(r), _) => vec![r.clone()],
        (None, Some(Peers::One(r))) => vec![r.clone()],
        (None, Some(Peers::Many(r))) => r.clone(),
        (None, None) => Vec::new(),
    };
    let recursors = recursors
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_addr("--recursors", s))
        .collect::<Result<Vec<_>, _>>()?;
    if recursors.len() > 8 {
        return Err(bad("--recursors", "at most 8 upstreams"));
    }
    Ok(DnsConfig {
        addr,
        domain: format!("{trimmed}."),
        ttl,
        negative_ttl,
        max_answers,
        allow_warning: a.dns_allow_warning || f.dns_allow_warning.unwrap_or(false),
        recursors,
    })
}

fn resolve(a: &AgentArgs, f: FileConfig) -> Result<AgentConfig, ConfigError> {
    let dev = a.dev || f.dev.unwrap_or(false);
    let dns = resolve_dns(a, &f, if dev { "127.0.0.1" } else { "0.0.0.0" })?;
    let node_id = a.node_id.or(f.node_id);
    let data_dir = a.data_dir.clone().or(f.data_dir);
    let peers = match (&a.peers, f.peers) {
        (Some(p), _) => Some(vec![p.clone()]),
        (None, Some(Peers::One(p))) => Some(vec![p]),
        (None, Some(Peers::Many(p))) => Some(p),
        (None, None) => None,
    };
    let bootstrap = a.bootstrap || f.bootstrap.unwrap_or(false);
    let join = a.join.clone().or(f.join);
    let cluster = a
        .cluster
        .clone()
        .or(f.cluster)
        .unwrap_or_else(|| "cairn".into());
    if cluster.is_empty()
        || cluster.len() > 64
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad(
            "--cluster",
            "must be 1-64 of A-Z, a-z, 0-9, '-', '_', '.'",
        ));
    }

    let node_id = if a.node_id_from_ordinal {
        Some(ordinal_node_id(&hostname())?)
    } else {
        node_id
    };
    let node_id = match (node_id, dev) {
        (Some(0), _) => return Err(bad("--node-id", "must be a positive integer")),
        (Some(id), _) => id,
        (None, true) => 1,
        (None, false) => return Err(bad("--node-id", "required (or run with --dev)")),
    };
    if data_dir.is_none() && !dev {
        return Err(bad("--data-dir", "required (or run with --dev)"));
    }

    let chosen = [peers.is_some(), bootstrap, join.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if chosen > 1 {
        return Err(bad(
            "--peers/--bootstrap/--join",
            "choose one: --peers or --bootstrap to start a new cluster, --join to enter an existing one",
        ));
    }
    if dev && chosen > 0 {
        return Err(bad(
            "--dev",
            "a dev agent is a cluster of its own; it takes no --peers, --bootstrap or --join",
        ));
    }
    let membership = if dev || bootstrap {
        Membership::BootstrapSelf
    } else if let Some(p) = peers {
        let peers = parse_peers(&p)?;
        if !peers.contains_key(&node_id) {
            return Err(bad(
                "--peers",
                format!("does not list this node (--node-id {node_id})"),
            ));
        }
        Membership::Bootstrap(peers)
    } else if let Some(j) = join {
        let urls: Vec<String> = j
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(bad("--join", "no URL given"));
        }
        for u in &urls {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                return Err(bad(
                    "--join",
                    format!("{u:?} is not an http:// URL of a member's HTTP API"),
                ));
            }
        }
        Membership::Join(urls)
    } else {
        Membership::Wait
    };

    let default_ip = if dev { "127.0.0.1" } else { "0.0.0.0" };
    let http_addr = match a.http_addr.clone().or(f.http_addr) {
        Some(s) => parse_addr("--http-addr", &s)?,
        None => parse_addr("--http-addr", &format!("{default_ip}:{DEFAULT_HTTP_PORT}"))?,
    };
    let rpc_addr = match a.rpc_addr.clone().or(f.rpc_addr) {
        Some(s) => parse_addr("--rpc-addr", &s)?,
        None => {
            let port = match &membership {
                Membership::Bootstrap(p) => p
                    .get(&node_id)
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse().ok())
                    .unwrap_or(DEFAULT_RPC_PORT),
                _ => DEFAULT_RPC_PORT,
            };
            parse_addr("--rpc-addr", &format!("{default_ip}:{port}"))?
        }
    };
    let advertise = match a.advertise.clone().or(f.advertise) {
        None => None,
        Some(adv) => Some(Advertise::parse(&adv).ok_or_else(|| {
            bad(
                "--advertise",
                format!("{adv:?} is not HOST, IP, HOST:PORT or [IPv6]:PORT"),
            )
        })?),
    };
    let self_addressed = matches!(membership, Membership::Join(_) | Membership::BootstrapSelf);
    if self_addressed && advertise.is_none() && rpc_addr.ip().is_unspecified() {
        return Err(bad(
            "--advertise",
            format!(
                "required with --join or --bootstrap when --rpc-addr listens on {} (the others need a reachable address)",
                rpc_addr.ip()
            ),
        ));
    }

    let max_body_bytes = a
        .max_body_bytes
        .or(f.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY);
    if !(1024..=MAX_MAX_BODY).contains(&max_body_bytes) {
        return Err(bad(
            "--max-body-bytes",
            format!("must be between 1024 and {MAX_MAX_BODY}"),
        ));
    }
    let max_waiting_per_client = a
        .max_waiting_per_client
        .or(f.max_waiting_per_client)
        .unwrap_or(crate::http::DEFAULT_MAX_WAITING_PER_CLIENT);
    if !(1..=1_000_000).contains(&max_waiting_per_client) {
        return Err(bad(
            "--max-waiting-per-client",
            "must be between 1 and 1000000",
        ));
    }
    let snapshot_threshold = a
        .snapshot_threshold
        .or(f.snapshot_threshold)
        .unwrap_or(100_000);
    if !(10..=10_000_000).contains(&snapshot_threshold) {
        return Err(bad(
            "--snapshot-threshold",
            "must be between 10 and 10000000",
        ));
    }
    let snapshot_keep_logs = a
        .snapshot_keep_logs
        .or(f.snapshot_keep_logs)
        .unwrap_or(5_000);
    if snapshot_keep_logs > 10_000_000 {
        return Err(bad("--snapshot-keep-logs", "must be at most 10000000"));
    }
    let write_timeout = match a.write_timeout.clone().or(f.write_timeout) {
        None => Duration::from_secs(5),
        Some(s) => {
            let d = parse_duration(&s).map_err(|e| bad("--write-timeout", e.to_string()))?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(bad("--write-timeout", "must be between 100ms and 10m"));
            }
            d
        }
    };
    let clock_offset_ms = match &a.test_clock_offset {
        None => 0,
        Some(s) => {
            let (sign, magnitude) = match s.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, s.as_str()),
            };
            let d =
                parse_duration(magnitude).map_err(|e| bad("--test-clock-offset", e.to_string()))?;
            if d > Duration::from_secs(86_400) {
                return Err(bad("--test-clock-offset", "must be within 24h"));
            }
            sign * d.as_millis() as i64
        }
    };
    let log = a.log.clone().or(f.log).unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
        return Err(bad("--log", format!("{log:?} is not a log filter")));
    }

    Ok(AgentConfig {
        dev,
        node_id,
        data_dir,
        http_addr,
        dns,
        rpc_addr,
        advertise,
        membership,
        cluster,
        max_body_bytes,
        max_waiting_per_client,
        snapshot_threshold,
        snapshot_keep_logs,
        write_timeout,
        log,
        clock_offset_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut AgentArgs)) -> AgentArgs {
        let mut a = AgentArgs::default();
        f(&mut a);
        a
    }

    fn err(a: AgentArgs) -> String {
        a.resolve().expect_err("should be rejected").setting
    }

    #[test]
    fn dev_needs_nothing_else() {
        let c = args(|a| a.dev = true).resolve().unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8500");
        assert_eq!(c.rpc_addr.to_string(), "127.0.0.1:8300");
        assert_eq!(c.membership, Membership::BootstrapSelf);
        assert!(c.data_dir.is_none());
        assert_eq!(c.dns.addr.to_string(), "127.0.0.1:8600");
        assert_eq!(c.dns.domain, "cairn.");
        assert_eq!((c.dns.ttl, c.dns.negative_ttl), (5, 5));
    }

    #[test]
    fn peers_set_the_rpc_port_and_must_include_this_node() {
        let c = args(|a| {
            a.node_id = Some(2);
            a.data_dir = Some("/tmp/x".into());
            a.peers = Some("1=10.0.0.1:7001, 2=10.0.0.2:7002,3=10.0.0.3:7003".into());
        })
        .resolve()
        .unwrap();
        assert_eq!(c.rpc_addr.to_string(), "0.0.0.0:7002");
        let Membership::Bootstrap(p) = c.membership else {
            panic!("expected bootstrap")
        };
        assert_eq!(p.len(), 3);
        assert_eq!(
            err(args(|a| {
                a.node_id = Some(4);
                a.data_dir = Some("/tmp/x".into());
                a.peers = Some("1=a:1,2=b:2".into());
            })),
            "--peers"
        );
    }

    #[test]
    fn advertise_takes_a_host_and_an_optional_port() {
        let parse = |s: &str| Advertise::parse(s).map(|a| a.rpc_addr(8300));
        assert_eq!(parse("10.0.0.5").as_deref(), Some("10.0.0.5:8300"));
        assert_eq!(
            parse("cairn-1.local").as_deref(),
            Some("cairn-1.local:8300")
        );
        assert_eq!(parse("10.0.0.5:18300").as_deref(), Some("10.0.0.5:18300"));
        assert_eq!(parse("::1").as_deref(), Some("[::1]:8300"));
        assert_eq!(parse("[::1]:9000").as_deref(), Some("[::1]:9000"));
        for bad in [
            "", "a:b", "a:0", "a:70000", "[::1]", "[x]:1", "a b", "a:1:2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let base = |f: fn(&mut AgentArgs)| {
            args(|a| {
                a.node_id = Some(1);
                a.data_dir = Some("/tmp/x".into());
                f(a)
            })
        };
        assert_eq!(err(args(|_| {})), "--node-id");
        assert_eq!(err(args(|a| a.node_id = Some(1))), "--data-dir");
        assert_eq!(err(base(|a| a.node_id = Some(0))), "--node-id");
        assert_eq!(
            err(base(|a| a.http_addr = Some("nope".into()))),
            "--http-addr"
        );
        assert_eq!(
            err(base(|a| a.rpc_addr = Some("1.2.3.4".into()))),
            "--rpc-addr"
        );
        assert_eq!(err(base(|a| a.peers = Some("1=a".into()))), "--peers");
        assert_eq!(err(base(|a| a.peers = Some("x=a:1".into()))), "--peers");
        assert_eq!(
            err(base(|a| a.peers = Some("1=a:1,1=b:2".into()))),
            "--peers"
        );
        assert_eq!(err(base(|a| a.join = Some("ftp://x".into()))), "--join");
        assert_eq!(
            err(base(|a| a.join = Some("http://x:8500".into()))),
            "--advertise",
            "joining from 0.0.0.0 needs an address the others can reach"
        );
        assert_eq!(
            err(base(|a| {
                a.bootstrap = true;
                a.join = Some("http://x".into())
            })),
            "--peers/--bootstrap/--join"
        );
        assert_eq!(
            err(base(|a| a.max_body_bytes = Some(1))),
            "--max-body-bytes"
        );
        assert_eq!(
            err(base(|a| a.write_timeout = Some("forever".into()))),
            "--write-timeout"
        );
        assert_eq!(err(base(|a| a.cluster = Some("a b".into()))), "--cluster");
        assert_eq!(err(base(|a| a.dns_addr = Some(":53".into()))), "--dns-addr");
        assert_eq!(
            err(base(|a| a.domain = Some("bad_domain".into()))),
            "--domain"
        );
        assert_eq!(err(base(|a| a.dns_ttl = Some("1.5s".into()))), "--dns-ttl");
        assert_eq!(
            err(base(|a| a.recursors = Some("8.8.8.8".into()))),
            "--recursors"
        );
        assert_eq!(err(base(|a| a.log = Some("=[".into()))), "--log");
        assert_eq!(
            err(args(|a| {
                a.dev = true;
                a.join = Some("http://x".into())
            })),
            "--dev"
        );
    }

    #[test]
    fn ordinals_become_node_ids() {
        assert_eq!(ordinal_node_id("cairn-0").unwrap(), 1);
        assert_eq!(ordinal_node_id("my-cairn-12").unwrap(), 13);
        assert!(ordinal_node_id("cairn").is_err());
        assert!(ordinal_node_id("cairn-x").is_err());
    }

    #[test]
    fn file_values_fill_in_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(
            &path,
            r#"
node_id = 3
data_dir = "/var/lib/cairn"
http_addr = "127.0.0.1:9500"
peers = ["1=a:8300", "2=b:8300", "3=c:8300"]
"#,
        )
        .unwrap();
        let c = args(|a| {
            a.config = Some(path.clone());
            a.http_addr = Some("127.0.0.1:9600".into());
        })
        .resolve()
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9600", "the flag wins");
        assert_eq!(c.rpc_addr.to_string(), "0.0.0.0:8300");

        std::fs::write(&path, "node_id = 3\nnode_idd = 4\n").unwrap();
        let e = args(|a| a.config = Some(path.clone()))
            .resolve()
            .unwrap_err();
        assert_eq!(e.setting, "--config");
        assert!(e.message.contains("node_idd"), "{}", e.message);
    }
}
