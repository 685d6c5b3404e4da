//! The agent's configuration: command-line flags, `CAIRN_*` environment variables and a TOML
//! file, merged in that order of precedence, then validated into an [`AgentConfig`].
//!
//! Each setting is defined once, as one field of [`AgentArgs`]: its name is the TOML key, clap
//! derives the flag from it, and the field's attributes give the environment variable and the
//! help text; a setting with a default takes it from one `DEFAULT_*` constant, which both the
//! help text and [`AgentArgs::resolve`] use. The flags (with the environment) and the file are
//! read into that same struct and merged field by field, flags over file.
//!
//! Validation happens before any port is bound; a bad value is a [`ConfigError`] naming the flag,
//! and the binary exits with code 64.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cairn_api::{format_duration, parse_duration};
use cairn_registry::acl::{Access, AclMode, Secret};
use cairn_registry::quota::Quotas;
use clap::Args;
use serde::Deserialize;

/// Default ports, as Consul's: HTTP 8500, DNS 8600, cluster RPC 8300.
pub const DEFAULT_HTTP_PORT: u16 = 8500;
pub const DEFAULT_DNS_PORT: u16 = 8600;
pub const DEFAULT_RPC_PORT: u16 = 8300;
/// HTTP and DNS listen on loopback unless an address is given (as Consul's `client_addr`):
/// opening them to the network is a choice made with --http-addr and --dns-addr. The cluster
/// RPC listens on every interface, since the other nodes must reach it (without certificates
/// that takes --insecure-rpc), and on loopback with --dev.
const DEFAULT_CLIENT_IP: &str = "127.0.0.1";
const DEFAULT_RPC_IP: &str = "0.0.0.0";
const DEFAULT_DEV_IP: &str = "127.0.0.1";
pub const DEFAULT_DOMAIN: &str = cairn_dns::answer::DEFAULT_DOMAIN;
/// DNS TTLs, in seconds.
pub const DEFAULT_DNS_TTL: u32 = cairn_dns::answer::DEFAULT_TTL;
pub const DEFAULT_DNS_NEGATIVE_TTL: u32 = cairn_dns::answer::DEFAULT_NEGATIVE_TTL;
pub const DEFAULT_DNS_MAX_ANSWERS: usize = cairn_dns::answer::DEFAULT_MAX_ANSWERS;
pub const DEFAULT_DNS_RRL_RATE: u32 = cairn_dns::rrl::DEFAULT_RATE;
pub const DEFAULT_DNS_RRL_SLIP: u32 = cairn_dns::rrl::DEFAULT_SLIP;
pub const DEFAULT_DNS_RRL_TABLE_SIZE: usize = cairn_dns::rrl::DEFAULT_TABLE_SIZE;
/// Most responses a second per client prefix --dns-rrl-rate takes.
const MAX_DNS_RRL_RATE: u32 = 1_000_000;
/// Bounds of --dns-rrl-table-size: 32 bytes a bucket, so at most 512 MiB.
const DNS_RRL_TABLE_SIZES: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;
pub const DEFAULT_CLUSTER: &str = cairn_raft::cluster::DEFAULT_CLUSTER_NAME;
/// Default limit on request bodies: far above any registration, far below memory trouble.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Largest accepted `--max-body-bytes`.
const MAX_MAX_BODY: usize = 64 * 1024 * 1024;
/// Default `--max-restore-bytes`: restores of this size are tested to commit through a follower,
/// in a debug build (README "Backup and restore").
pub const DEFAULT_MAX_RESTORE: usize = 2 * 1024 * 1024;
/// Largest `--max-restore-bytes`: a restore is one log entry, which must fit one cluster RPC.
const MAX_MAX_RESTORE: usize = cairn_raft::MAX_RESTORE_BYTES;
pub const DEFAULT_MAX_WAITING_PER_CLIENT: usize = crate::http::DEFAULT_MAX_WAITING_PER_CLIENT;
/// Connection limits and time-outs of the listeners (README "Limits and protections").
pub const DEFAULT_HTTP_MAX_CONNS: usize = cairn_tls::serve::MAX_CONNECTIONS;
pub const DEFAULT_HTTP_MAX_CONNS_PER_CLIENT: usize = cairn_tls::serve::MAX_PER_CLIENT;
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = cairn_tls::serve::HEADER_TIMEOUT;
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = cairn_tls::serve::IDLE_TIMEOUT;
/// Beyond a join's wait (12 write time-outs, 60 s by default), so only a stuck request meets it.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_RPC_MAX_CONNS: usize = cairn_tls::serve::MAX_CONNECTIONS;
/// Peers hold a few connections each, but a follower forwards each write in flight on its own.
pub const DEFAULT_RPC_MAX_CONNS_PER_CLIENT: usize = 1024;
pub const DEFAULT_DNS_TCP_MAX_CONNS: usize = cairn_dns::server::DEFAULT_MAX_TCP_CONNECTIONS;
pub const DEFAULT_DNS_TCP_MAX_CONNS_PER_CLIENT: usize =
    cairn_dns::server::DEFAULT_MAX_TCP_PER_CLIENT;
pub const DEFAULT_DNS_TCP_WRITE_TIMEOUT: Duration = cairn_dns::server::DEFAULT_TCP_WRITE_TIMEOUT;
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = cairn_raft::cluster::DEFAULT_SNAPSHOT_THRESHOLD;
pub const DEFAULT_MIN_FREE_DISK: u64 = cairn_raft::cluster::DEFAULT_MIN_FREE_DISK;
pub use cairn_registry::quota::{
    DEFAULT_QUOTA_BYTES, DEFAULT_QUOTA_CHECKS, DEFAULT_QUOTA_INSTANCES_PER_SERVICE,
    DEFAULT_QUOTA_SERVICES,
};
/// Tokens whose rights a node keeps ready (--acl-cache-size): more than the clients of most
/// clusters use at once, a few MiB with policies of a few rules each.
pub const DEFAULT_ACL_CACHE_SIZE: usize = 10_000;
/// Largest accepted `--acl-cache-size`.
const MAX_ACL_CACHE_SIZE: usize = 1_000_000;
pub const DEFAULT_SNAPSHOT_KEEP_LOGS: u64 = cairn_raft::cluster::DEFAULT_KEEP_LOGS;
pub const DEFAULT_WRITE_TIMEOUT: Duration = cairn_raft::cluster::DEFAULT_WRITE_TIMEOUT;
pub const DEFAULT_LOG: &str = "info";
/// `--http-addr off`: no plain HTTP listener (Consul's `ports.http = -1`), for an API that is
/// HTTPS only, where `--tls-client-ca` then binds every client.
pub const HTTP_OFF: &str = "off";
/// Stands for the node id in --tls-cert and --tls-key.
const NODE_ID_PLACEHOLDER: &str = "{id}";

/// A setting's help text with its default, as clap shows one: `text [default: value]`.
fn with_default(text: &str, default: impl Display) -> String {
    format!("{text} [default: {default}]")
}

/// The default of a client-facing listen address: loopback, with or without --dev.
fn listen_default(port: u16) -> String {
    format!("{DEFAULT_CLIENT_IP}:{port}")
}

fn ttl_default(seconds: u32) -> String {
    format_duration(Duration::from_secs(seconds.into()))
}

/// Every `cairn agent` setting, defined once.
///
/// Clap reads the flags and their `CAIRN_<NAME>` environment variables into it; serde reads the
/// `--config` file into it, one snake_case key per field (`#[serde(skip)]`: flag only). Fields
/// are `Option`s (or `bool` flags, false when absent) with no clap `default_value`, so that an
/// unset flag leaves the file's value in place; defaults are applied by [`AgentArgs::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentArgs {
    /// Run a single-node cluster on loopback with a throw-away data folder.
    #[arg(long, env = "CAIRN_DEV")]
    pub dev: bool,

    /// Validate the configuration and exit without binding any port.
    #[arg(long)]
    #[serde(skip)]
    pub check: bool,

    /// TOML file with any of these settings (flags and environment variables win over it).
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: Option<u64>,

    /// Take the node id from the host name's ordinal suffix, plus one: `cairn-0` is node 1
    /// (for Kubernetes StatefulSets).
    #[arg(long, env = "CAIRN_NODE_ID_FROM_ORDINAL", conflicts_with = "node_id")]
    #[serde(skip)] // flag and environment only, as before the settings were defined once
    pub node_id_from_ordinal: bool,

    /// Folder for the Raft log and the registry (RocksDB).
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[arg(
        long,
        env = "CAIRN_HTTP_ADDR",
        value_name = "IP:PORT",
        help = with_default(
            "HTTP API listen address, or `off` for no plain HTTP (with --https-addr)",
            listen_default(DEFAULT_HTTP_PORT)
        )
    )]
    pub http_addr: Option<String>,

    #[arg(
        long,
        env = "CAIRN_DNS_ADDR",
        value_name = "IP:PORT",
        help = with_default("DNS listen address, UDP and TCP", listen_default(DEFAULT_DNS_PORT))
    )]
    pub dns_addr: Option<String>,

    #[arg(
        long,
        env = "CAIRN_DOMAIN",
        value_name = "DOMAIN",
        help = with_default("The DNS zone Cairn answers for", DEFAULT_DOMAIN)
    )]
    pub domain: Option<String>,

    #[arg(
        long,
        env = "CAIRN_DNS_TTL",
        value_name = "DURATION",
        help = with_default(
            "TTL of DNS answers for services that set none",
            ttl_default(DEFAULT_DNS_TTL)
        )
    )]
    pub dns_ttl: Option<String>,

    #[arg(
        long,
        env = "CAIRN_DNS_NEGATIVE_TTL",
        value_name = "DURATION",
        help = with_default(
            "TTL of negative DNS answers, the SOA minimum",
            ttl_default(DEFAULT_DNS_NEGATIVE_TTL)
        )
    )]
    pub dns_negative_ttl: Option<String>,

    #[arg(
        long,
        env = "CAIRN_DNS_MAX_ANSWERS",
        value_name = "N",
        help = with_default(
            "Most records in one DNS answer, 0 for no limit but the message size",
            DEFAULT_DNS_MAX_ANSWERS
        )
    )]
    pub dns_max_answers: Option<usize>,

    /// Hand out instances whose health is `warning` along with `passing` ones.
    #[arg(long, env = "CAIRN_DNS_ALLOW_WARNING")]
    pub dns_allow_warning: bool,

    /// Upstream resolvers for names outside the zone, `IP:PORT`, comma-separated; without
    /// them such names are REFUSED.
    #[arg(long, env = "CAIRN_RECURSORS", value_name = "IP:PORT,...")]
    pub recursors: Option<Peers>,

    #[arg(
        long,
        env = "CAIRN_RECURSORS_ALLOW",
        value_name = "CIDR,...",
        help = with_default(
            "Clients whose names outside the zone are forwarded to --recursors, CIDR ranges, \
             comma-separated (empty: none); the others get REFUSED for them",
            cairn_dns::server::DEFAULT_RECURSORS_ALLOW.join(",")
        )
    )]
    pub recursors_allow: Option<Peers>,

    #[arg(
        long,
        env = "CAIRN_DNS_RRL_RATE",
        value_name = "N",
        help = with_default(
            "Response rate limit over UDP: answers a second per client /24 (IPv4) or /56 \
             (IPv6), 0 for off",
            DEFAULT_DNS_RRL_RATE
        )
    )]
    pub dns_rrl_rate: Option<u32>,

    #[arg(
        long,
        env = "CAIRN_DNS_RRL_SLIP",
        value_name = "N",
        help = with_default(
            "Every Nth answer over the rate limit is sent truncated (the client retries over \
             TCP), the others dropped; 0 drops all",
            DEFAULT_DNS_RRL_SLIP
        )
    )]
    pub dns_rrl_slip: Option<u32>,

    #[arg(
        long,
        env = "CAIRN_DNS_RRL_TABLE_SIZE",
        value_name = "N",
        help = with_default(
            "Client prefixes the rate limiter tracks (a fixed table of 32-byte buckets)",
            DEFAULT_DNS_RRL_TABLE_SIZE
        )
    )]
    pub dns_rrl_table_size: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_RPC_ADDR",
        value_name = "IP:PORT",
        help = with_default(
            "Cluster RPC listen address",
            format!("the port of this node in --peers, else {DEFAULT_RPC_PORT}")
        )
    )]
    pub rpc_addr: Option<String>,

    /// Host or IP (and optionally port) the other nodes reach this node's RPC listener at, when
    /// it differs from the listen address: listening on 0.0.0.0, or behind a port mapping.
    #[arg(long, env = "CAIRN_ADVERTISE", value_name = "HOST[:PORT]")]
    pub advertise: Option<String>,

    /// Voters of a new cluster, the same list on every node: `1=host:8300,2=host:8300,3=host:8300`.
    #[arg(long, env = "CAIRN_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<Peers>,

    /// Start a new cluster with this node as its only voter (others then --join it).
    #[arg(long, env = "CAIRN_BOOTSTRAP")]
    pub bootstrap: bool,

    /// Join an existing cluster through any member's HTTP API: `http://host:8500` (comma-separate
    /// several to try in turn).
    #[arg(long, env = "CAIRN_JOIN", value_name = "URL")]
    pub join: Option<String>,

    #[arg(
        long,
        env = "CAIRN_CLUSTER",
        value_name = "NAME",
        help = with_default(
            "Cluster name: nodes refuse cluster RPCs that name another one",
            DEFAULT_CLUSTER
        )
    )]
    pub cluster: Option<String>,

    /// The cluster's CA certificate (PEM): cluster RPC peers must present a certificate it
    /// signed. With --tls-cert and --tls-key, the cluster RPC runs over mutual TLS.
    #[arg(long, env = "CAIRN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// This node's certificate (PEM), signed by the cluster CA, naming `node-<id>.<cluster>.cairn`
    /// (`cairn tls cert create --node <id>` makes one). `{id}` in the path stands for the node
    /// id, so that every node can share one setting: `/certs/node-{id}.pem`.
    #[arg(long, env = "CAIRN_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM); `{id}` in the path stands for the node id.
    #[arg(long, env = "CAIRN_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// HTTPS API listen address, beside the plain HTTP one: the same API over TLS (HTTP/1.1 and
    /// HTTP/2) with --tls-cert and --tls-key. Off unless given.
    #[arg(long, env = "CAIRN_HTTPS_ADDR", value_name = "IP:PORT")]
    pub https_addr: Option<String>,

    /// Require HTTPS clients to present a certificate signed by this CA (PEM).
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// DNS over TLS listen address (RFC 7858; port 853 by convention), with --tls-cert and
    /// --tls-key: the same answers as --dns-addr, for resolvers that forward over TLS. Off
    /// unless given.
    #[arg(long, env = "CAIRN_DNS_TLS_ADDR", value_name = "IP:PORT")]
    pub dns_tls_addr: Option<String>,

    /// DNS over HTTPS listen address (RFC 8484: GET and POST on /dns-query, HTTP/1.1 and
    /// HTTP/2), with --tls-cert and --tls-key: the same answers as --dns-addr. Off unless given.
    #[arg(long, env = "CAIRN_DNS_HTTPS_ADDR", value_name = "IP:PORT")]
    pub dns_https_addr: Option<String>,

    /// Require DNS over TLS and HTTPS clients to present a certificate signed by this CA (PEM).
    #[arg(long, env = "CAIRN_DNS_TLS_CLIENT_CA", value_name = "FILE")]
    pub dns_tls_client_ca: Option<PathBuf>,

    /// AWS Cloud Map-compatible API listen address (AWS JSON 1.1 and Smithy RPC v2 CBOR, SigV4),
    /// with --cloudmap-credentials; `--cloudmap-addr` alone means 127.0.0.1:8520. Off unless
    /// given.
    #[arg(long, env = "CAIRN_CLOUDMAP_ADDR", value_name = "IP:PORT", num_args = 0..=1,
        default_missing_value = DEFAULT_CLOUDMAP_ADDR)]
    pub cloudmap_addr: Option<String>,

    /// The access keys the Cloud Map-compatible API accepts (TOML: `[[key]]` tables with
    /// `access_key_id`, `secret_access_key` and, with --acl, the `token` whose rights the key
    /// has); see README "AWS Cloud Map-compatible API".
    #[arg(long, env = "CAIRN_CLOUDMAP_CREDENTIALS", value_name = "FILE")]
    pub cloudmap_credentials: Option<PathBuf>,

    /// CA certificates (PEM) that HTTPS health checks trust besides the public roots, for
    /// targets whose certificates a private CA signed. A check with `tls_skip_verify` trusts any.
    #[arg(long, env = "CAIRN_CHECK_CA_FILE", value_name = "FILE")]
    pub check_ca_file: Option<PathBuf>,

    /// CIDR ranges health checks may connect to although a default rule denies them (e.g.
    /// `127.0.0.0/8` for services on loopback), comma-separated. The most specific range
    /// decides; see README "Limits and protections".
    #[arg(long, env = "CAIRN_CHECK_ALLOW", value_name = "CIDR,...")]
    pub check_allow: Option<Peers>,

    /// CIDR ranges health checks may not connect to, besides link-local, the cloud metadata
    /// addresses, loopback (outside --dev) and this node's own listeners, comma-separated.
    #[arg(long, env = "CAIRN_CHECK_DENY", value_name = "CIDR,...")]
    pub check_deny: Option<Peers>,

    /// Serve the cluster RPC in plaintext on a non-loopback address, without certificates:
    /// anyone who reaches the port can then act as a member. Only for trusted networks.
    #[arg(long, env = "CAIRN_INSECURE_RPC")]
    pub insecure_rpc: bool,

    /// Enforce ACLs: every API request answers to a token (`cairn acl bootstrap` makes the
    /// first). Every server of a cluster must agree on it.
    #[arg(long, env = "CAIRN_ACL")]
    pub acl: bool,

    /// With --acl: what a token may do where no rule of its policies decides: `deny` (the
    /// default) or `allow` (everything but ACL management).
    #[arg(long, env = "CAIRN_ACL_DEFAULT", value_name = "allow|deny")]
    pub acl_default: Option<String>,

    /// With --acl: a file holding the secret of the token whose rights DNS answers with;
    /// without it, DNS has the anonymous token's rights.
    #[arg(long, env = "CAIRN_DNS_TOKEN_FILE", value_name = "FILE")]
    pub dns_token_file: Option<PathBuf>,

    /// A file holding the secret of a token with `operator:write`, sent with --join when the
    /// cluster enforces ACLs.
    #[arg(long, env = "CAIRN_JOIN_TOKEN_FILE", value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,

    #[arg(
        long,
        env = "CAIRN_ACL_CACHE_SIZE",
        value_name = "N",
        help = with_default(
            "With --acl: tokens whose rights are kept ready, so a request need not hash its \
             secret and merge its policies again; 0 turns the cache off",
            DEFAULT_ACL_CACHE_SIZE
        )
    )]
    pub acl_cache_size: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_MAX_BODY_BYTES",
        value_name = "BYTES",
        help = with_default("Largest accepted request body in bytes", DEFAULT_MAX_BODY)
    )]
    pub max_body_bytes: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_MAX_RESTORE_BYTES",
        value_name = "BYTES",
        help = with_default(
            "Largest backup `PUT /v1/snapshot` (cairn snapshot restore) accepts, in bytes; at most \
             7340032, what one log entry holds",
            DEFAULT_MAX_RESTORE
        )
    )]
    pub max_restore_bytes: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_MAX_WAITING_PER_CLIENT",
        value_name = "N",
        help = with_default(
            "Most blocking queries and watch streams one client address may hold open",
            DEFAULT_MAX_WAITING_PER_CLIENT
        )
    )]
    pub max_waiting_per_client: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_HTTP_MAX_CONNS",
        value_name = "N",
        help = with_default(
            "Connections the HTTP and HTTPS API each keep open at once; past it a new one is closed",
            DEFAULT_HTTP_MAX_CONNS
        )
    )]
    pub http_max_conns: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_HTTP_MAX_CONNS_PER_CLIENT",
        value_name = "N",
        help = with_default(
            "Connections one client IP address may hold open on the HTTP or HTTPS API; past it its new ones are closed",
            DEFAULT_HTTP_MAX_CONNS_PER_CLIENT
        )
    )]
    pub http_max_conns_per_client: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_HTTP_HEADER_TIMEOUT",
        value_name = "DURATION",
        help = with_default(
            "How long a client of the HTTP, HTTPS or RPC listener may take to send a request's headers, from connecting or from its first byte; past it the connection is closed",
            format_duration(DEFAULT_HTTP_HEADER_TIMEOUT)
        )
    )]
    pub http_header_timeout: Option<String>,

    #[arg(
        long,
        env = "CAIRN_HTTP_IDLE_TIMEOUT",
        value_name = "DURATION",
        help = with_default(
            "How long an HTTP, HTTPS or RPC connection may stay open with no request in flight",
            format_duration(DEFAULT_HTTP_IDLE_TIMEOUT)
        )
    )]
    pub http_idle_timeout: Option<String>,

    #[arg(
        long,
        env = "CAIRN_HTTP_REQUEST_TIMEOUT",
        value_name = "DURATION",
        help = with_default(
            "How long an API request may take to send its body and get its response's headers (503 past it), besides a blocking read's wait; streams are not cut",
            format_duration(DEFAULT_HTTP_REQUEST_TIMEOUT)
        )
    )]
    pub http_request_timeout: Option<String>,

    #[arg(
        long,
        env = "CAIRN_RPC_MAX_CONNS",
        value_name = "N",
        help = with_default(
            "Connections the cluster RPC keeps open at once; past it a new one is closed",
            DEFAULT_RPC_MAX_CONNS
        )
    )]
    pub rpc_max_conns: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_RPC_MAX_CONNS_PER_CLIENT",
        value_name = "N",
        help = with_default(
            "Cluster RPC connections one IP address may hold open; past it its new ones are closed",
            DEFAULT_RPC_MAX_CONNS_PER_CLIENT
        )
    )]
    pub rpc_max_conns_per_client: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_DNS_TCP_MAX_CONNS",
        value_name = "N",
        help = with_default(
            "Connections DNS over TCP (and over TLS and HTTPS) each keep open at once; past it a new one is closed",
            DEFAULT_DNS_TCP_MAX_CONNS
        )
    )]
    pub dns_tcp_max_conns: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_DNS_TCP_MAX_CONNS_PER_CLIENT",
        value_name = "N",
        help = with_default(
            "DNS over TCP (TLS, HTTPS) connections one client IP address may hold open; past it its new ones are closed",
            DEFAULT_DNS_TCP_MAX_CONNS_PER_CLIENT
        )
    )]
    pub dns_tcp_max_conns_per_client: Option<usize>,

    #[arg(
        long,
        env = "CAIRN_DNS_TCP_WRITE_TIMEOUT",
        value_name = "DURATION",
        help = with_default(
            "How long a DNS over TCP or TLS client may take to read an answer before it is dropped",
            format_duration(DEFAULT_DNS_TCP_WRITE_TIMEOUT)
        )
    )]
    pub dns_tcp_write_timeout: Option<String>,

    #[arg(
        long,
        env = "CAIRN_MIN_FREE_DISK_BYTES",
        value_name = "BYTES",
        help = with_default(
            "Stop the node (exit 1) rather than append to the log when the data folder's file \
             system has less free space than this; 0 turns the check off",
            DEFAULT_MIN_FREE_DISK
        )
    )]
    pub min_free_disk_bytes: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_QUOTA_BYTES",
        value_name = "BYTES",
        help = with_default(
            "Refuse (507 quota_exceeded) writes that would grow the registry's records past this \
             many bytes; deletes and health changes still work; 0 for no limit",
            DEFAULT_QUOTA_BYTES
        )
    )]
    pub quota_bytes: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_QUOTA_SERVICES",
        value_name = "N",
        help = with_default(
            "Refuse (507 quota_exceeded) registrations that would make more services than this; \
             0 for no limit",
            DEFAULT_QUOTA_SERVICES
        )
    )]
    pub quota_services: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_QUOTA_INSTANCES_PER_SERVICE",
        value_name = "N",
        help = with_default(
            "Refuse (507 quota_exceeded) registrations that would give a service more instances \
             than this; 0 for no limit",
            DEFAULT_QUOTA_INSTANCES_PER_SERVICE
        )
    )]
    pub quota_instances_per_service: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_QUOTA_CHECKS",
        value_name = "N",
        help = with_default(
            "Refuse (507 quota_exceeded) registrations that would make the cluster run more \
             health checks than this in all; 0 for no limit",
            DEFAULT_QUOTA_CHECKS
        )
    )]
    pub quota_checks: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_SNAPSHOT_THRESHOLD",
        value_name = "ENTRIES",
        help = with_default(
            "Take a snapshot and purge the log after this many entries",
            DEFAULT_SNAPSHOT_THRESHOLD
        )
    )]
    pub snapshot_threshold: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_SNAPSHOT_KEEP_LOGS",
        value_name = "ENTRIES",
        help = with_default(
            "Log entries kept behind a snapshot for lagging followers",
            DEFAULT_SNAPSHOT_KEEP_LOGS
        )
    )]
    pub snapshot_keep_logs: Option<u64>,

    #[arg(
        long,
        env = "CAIRN_WRITE_TIMEOUT",
        value_name = "DURATION",
        help = with_default(
            "How long a write waits for a leader and quorum before answering 503",
            format_duration(DEFAULT_WRITE_TIMEOUT)
        )
    )]
    pub write_timeout: Option<String>,

    #[arg(
        long,
        env = "CAIRN_LOG",
        value_name = "FILTER",
        help = with_default("Log filter, e.g. `info` or `debug,openraft=info`", DEFAULT_LOG)
    )]
    pub log: Option<String>,

    #[arg(
        long,
        env = "CAIRN_LOG_FORMAT",
        value_name = "FORMAT",
        help = with_default(
            "Log line format: `text` (for people) or `json` (one object a line, for log collectors)",
            "text"
        )
    )]
    pub log_format: Option<String>,

    /// Test only: shifts this node's wall clock, e.g. `30s` or `-30s`, so the fault tests can
    /// show that no replicated decision depends on a node's clock. Not for production.
    #[arg(
        long,
        hide = true,
        value_name = "[-]DURATION",
        allow_hyphen_values = true
    )]
    #[serde(skip)]
    pub test_clock_offset: Option<String>,

    /// Test only: the local IP address this node's cluster RPC connections leave from, e.g.
    /// `127.0.0.2`, so that the fault tests' proxy can tell which node a connection is from
    /// when mutual TLS hides everything else. Not for production.
    #[arg(long, hide = true, value_name = "IP")]
    #[serde(skip)]
    pub test_rpc_source_addr: Option<String>,
}

/// A list setting (`peers`, `recursors`): one comma-separated string as a flag; in a file, one
/// string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Peers {
    One(String),
    Many(Vec<String>),
}

impl Peers {
    fn into_vec(self) -> Vec<String> {
        match self {
            Peers::One(s) => vec![s],
            Peers::Many(v) => v,
        }
    }
}

/// The flag's value: parsed (split at commas) by validation, like the file's.
impl FromStr for Peers {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Peers, Infallible> {
        Ok(Peers::One(s.to_owned()))
    }
}

impl From<&str> for Peers {
    fn from(s: &str) -> Peers {
        Peers::One(s.to_owned())
    }
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's default, for people.
    Text,
    /// One JSON object a line, with the fields of the line and of its spans (a request's
    /// `request_id`), for log collectors.
    Json,
}

/// How one setting's two sources combine: the upper one where it is set.
trait Merge {
    fn merge(self, under: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(self, under: Self) -> Self {
        self.or(under)
    }
}

/// A `bool` flag can only turn a setting on.
impl Merge for bool {
    fn merge(self, under: Self) -> Self {
        self || under
    }
}

/// The token secret in file `path`, named by `flag` in errors.
fn read_secret(flag: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(flag, format!("{}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() || secret.len() > 256 || secret.contains(char::is_whitespace) {
        return Err(bad(
            flag,
            format!("{} does not hold one token secret", path.display()),
        ));
    }
    Ok(Secret::new(secret.to_owned()))
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
    /// Clients names outside the zone are forwarded for (--recursors-allow).
    pub recursors_allow: Vec<ipnet::IpNet>,
    /// Response rate limiting over UDP.
    pub rrl: cairn_dns::RrlConfig,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub dev: bool,
    pub node_id: u64,
    /// `None` in dev mode without --data-dir: a temporary folder, removed on exit.
    pub data_dir: Option<PathBuf>,
    /// The plain HTTP API; `None` with `--http-addr off` (the API is then HTTPS only).
    pub http_addr: Option<SocketAddr>,
    pub dns: DnsConfig,
    pub rpc_addr: SocketAddr,
    pub advertise: Option<Advertise>,
    pub membership: Membership,
    pub cluster: String,
    pub max_body_bytes: usize,
    /// Largest backup a restore accepts.
    pub max_restore_bytes: usize,
    pub max_waiting_per_client: usize,
    /// Connection caps and time-outs of the listeners.
    pub conns: ConnLimits,
    pub snapshot_threshold: u64,
    pub snapshot_keep_logs: u64,
    pub write_timeout: Duration,
    pub log: String,
    pub log_format: LogFormat,
    /// Milliseconds added to this node's wall clock (`--test-clock-offset`).
    pub clock_offset_ms: i64,
    /// Where this node's RPC connections leave from (`--test-rpc-source-addr`).
    pub rpc_source_addr: Option<IpAddr>,
    /// The cluster RPC's mutual TLS; `None` for plaintext (loopback, --dev or --insecure-rpc).
    pub tls: Option<NodeTls>,
    pub insecure_rpc: bool,
    /// The HTTPS API, when --https-addr is given.
    pub https: Option<HttpsConfig>,
    /// DNS over TLS and over HTTPS, when either address is given.
    pub dns_tls: Option<DnsTlsConfig>,
    /// The Cloud Map-compatible API's listener and access keys, when served.
    pub cloudmap: Option<CloudMapConfig>,
    /// CA certificates HTTPS health checks trust besides the public roots.
    pub check_ca_file: Option<PathBuf>,
    /// Ranges health checks may reach despite a default rule (--check-allow).
    pub check_allow: Vec<ipnet::IpNet>,
    /// Ranges health checks may not reach (--check-deny).
    pub check_deny: Vec<ipnet::IpNet>,
    /// Free space the data folder's file system must keep for the log to be appended to.
    pub min_free_disk_bytes: u64,
    /// What the leader admits writes against (0: no limit).
    pub quotas: Quotas,
    /// Whether ACLs are enforced, and their default.
    pub acl: AclMode,
    /// The secret DNS answers with, read from --dns-token-file.
    pub dns_token: Option<Secret>,
    /// The secret sent with --join, read from --join-token-file.
    pub join_token: Option<Secret>,
    /// Tokens whose rights are kept ready (--acl-cache-size).
    pub acl_cache_size: usize,
}

/// The listeners' connection caps and time-outs (README "Limits and protections").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// The HTTP and HTTPS API listeners, each.
    pub http: cairn_tls::Limits,
    /// The cluster RPC listener (the header and idle time-outs are the API's).
    pub rpc: cairn_tls::Limits,
    /// An API request's time to its response head, besides a blocking read's wait.
    pub request_timeout: Duration,
    pub dns_tcp_max_conns: usize,
    pub dns_tcp_max_conns_per_client: usize,
    pub dns_tcp_write_timeout: Duration,
}

/// The Cloud Map-compatible API: its listener and the access keys it accepts, loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMapConfig {
    pub addr: SocketAddr,
    pub credentials: crate::cloudmap::Credentials,
}

/// The HTTPS API's listener and files, checked to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// DNS over TLS and HTTPS: their listeners (at least one), and the files they present and
/// verify clients with, checked to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTlsConfig {
    pub tls_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// A node's TLS files, checked to load and to name this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
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
        self.resolve_with(hostname)
    }

    /// [`AgentArgs::resolve`], with the host name (for `--node-id-from-ordinal`) from `hostname`.
    fn resolve_with(&self, hostname: impl FnOnce() -> String) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => AgentArgs::default(),
        };
        self.clone().merge(file).validate(hostname)
    }

    /// Each setting from `self` where it is set, else from `under`. The struct literal names
    /// every field, so a new setting does not compile until it is merged here too.
    fn merge(self, under: AgentArgs) -> AgentArgs {
        AgentArgs {
            dev: self.dev.merge(under.dev),
            check: self.check.merge(under.check),
            config: self.config.merge(under.config),
            node_id: self.node_id.merge(under.node_id),
            node_id_from_ordinal: self.node_id_from_ordinal.merge(under.node_id_from_ordinal),
            data_dir: self.data_dir.merge(under.data_dir),
            http_addr: self.http_addr.merge(under.http_addr),
            dns_addr: self.dns_addr.merge(under.dns_addr),
            domain: self.domain.merge(under.domain),
            dns_ttl: self.dns_ttl.merge(under.dns_ttl),
            dns_negative_ttl: self.dns_negative_ttl.merge(under.dns_negative_ttl),
            dns_max_answers: self.dns_max_answers.merge(under.dns_max_answers),
            dns_allow_warning: self.dns_allow_warning.merge(under.dns_allow_warning),
            recursors: self.recursors.merge(under.recursors),
            recursors_allow: self.recursors_allow.merge(under.recursors_allow),
            dns_rrl_rate: self.dns_rrl_rate.merge(under.dns_rrl_rate),
            dns_rrl_slip: self.dns_rrl_slip.merge(under.dns_rrl_slip),
            dns_rrl_table_size: self.dns_rrl_table_size.merge(under.dns_rrl_table_size),
            rpc_addr: self.rpc_addr.merge(under.rpc_addr),
            advertise: self.advertise.merge(under.advertise),
            peers: self.peers.merge(under.peers),
            bootstrap: self.bootstrap.merge(under.bootstrap),
            join: self.join.merge(under.join),
            cluster: self.cluster.merge(under.cluster),
            ca_file: self.ca_file.merge(under.ca_file),
            tls_cert: self.tls_cert.merge(under.tls_cert),
            tls_key: self.tls_key.merge(under.tls_key),
            https_addr: self.https_addr.merge(under.https_addr),
            tls_client_ca: self.tls_client_ca.merge(under.tls_client_ca),
            dns_tls_addr: self.dns_tls_addr.merge(under.dns_tls_addr),
            dns_https_addr: self.dns_https_addr.merge(under.dns_https_addr),
            dns_tls_client_ca: self.dns_tls_client_ca.merge(under.dns_tls_client_ca),
            cloudmap_addr: self.cloudmap_addr.merge(under.cloudmap_addr),
            cloudmap_credentials: self.cloudmap_credentials.merge(under.cloudmap_credentials),
            check_ca_file: self.check_ca_file.merge(under.check_ca_file),
            check_allow: self.check_allow.merge(under.check_allow),
            check_deny: self.check_deny.merge(under.check_deny),
            insecure_rpc: self.insecure_rpc.merge(under.insecure_rpc),
            acl: self.acl.merge(under.acl),
            acl_default: self.acl_default.merge(under.acl_default),
            dns_token_file: self.dns_token_file.merge(under.dns_token_file),
            join_token_file: self.join_token_file.merge(under.join_token_file),
            acl_cache_size: self.acl_cache_size.merge(under.acl_cache_size),
            max_body_bytes: self.max_body_bytes.merge(under.max_body_bytes),
            max_restore_bytes: self.max_restore_bytes.merge(under.max_restore_bytes),
            max_waiting_per_client: self
                .max_waiting_per_client
                .merge(under.max_waiting_per_client),
            http_max_conns: self.http_max_conns.merge(under.http_max_conns),
            http_max_conns_per_client: self
                .http_max_conns_per_client
                .merge(under.http_max_conns_per_client),
            http_header_timeout: self.http_header_timeout.merge(under.http_header_timeout),
            http_idle_timeout: self.http_idle_timeout.merge(under.http_idle_timeout),
            http_request_timeout: self.http_request_timeout.merge(under.http_request_timeout),
            rpc_max_conns: self.rpc_max_conns.merge(under.rpc_max_conns),
            rpc_max_conns_per_client: self
                .rpc_max_conns_per_client
                .merge(under.rpc_max_conns_per_client),
            dns_tcp_max_conns: self.dns_tcp_max_conns.merge(under.dns_tcp_max_conns),
            dns_tcp_max_conns_per_client: self
                .dns_tcp_max_conns_per_client
                .merge(under.dns_tcp_max_conns_per_client),
            dns_tcp_write_timeout: self
                .dns_tcp_write_timeout
                .merge(under.dns_tcp_write_timeout),
            min_free_disk_bytes: self.min_free_disk_bytes.merge(under.min_free_disk_bytes),
            quota_bytes: self.quota_bytes.merge(under.quota_bytes),
            quota_services: self.quota_services.merge(under.quota_services),
            quota_instances_per_service: self
                .quota_instances_per_service
                .merge(under.quota_instances_per_service),
            quota_checks: self.quota_checks.merge(under.quota_checks),
            snapshot_threshold: self.snapshot_threshold.merge(under.snapshot_threshold),
            snapshot_keep_logs: self.snapshot_keep_logs.merge(under.snapshot_keep_logs),
            write_timeout: self.write_timeout.merge(under.write_timeout),
            log: self.log.merge(under.log),
            log_format: self.log_format.merge(under.log_format),
            test_clock_offset: self.test_clock_offset.merge(under.test_clock_offset),
            test_rpc_source_addr: self.test_rpc_source_addr.merge(under.test_rpc_source_addr),
        }
    }

    /// Applies the defaults and checks every setting; an error names the flag.
    fn validate(self, hostname: impl FnOnce() -> String) -> Result<AgentConfig, ConfigError> {
        let dev = self.dev;
        let default_ip = if dev { DEFAULT_DEV_IP } else { DEFAULT_RPC_IP };
        let dns = self.validate_dns(DEFAULT_CLIENT_IP)?;
        let (acl, dns_token) = self.validate_acl()?;
        let conns = self.validate_conns()?;
        let join_token = match &self.join_token_file {
            None => None,
            Some(path) => Some(read_secret("--join-token-file", path)?),
        };
        let cluster = self.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into());
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

        let node_id = if self.node_id_from_ordinal {
            Some(ordinal_node_id(&hostname())?)
        } else {
            self.node_id
        };
        let node_id = match (node_id, dev) {
            (Some(0), _) => return Err(bad("--node-id", "must be a positive integer")),
            (Some(id), _) => id,
            (None, true) => 1,
            (None, false) => return Err(bad("--node-id", "required (or run with --dev)")),
        };
        let tls_cert = node_path("--tls-cert", self.tls_cert, node_id)?;
        let tls_key = node_path("--tls-key", self.tls_key, node_id)?;
        let dns_tls = validate_dns_tls(
            self.dns_tls_addr,
            self.dns_https_addr,
            tls_cert.as_ref().zip(tls_key.as_ref()),
            self.dns_tls_client_ca,
        )?;
        let https = validate_https(
            self.https_addr,
            tls_cert.clone(),
            tls_key.clone(),
            self.tls_client_ca,
            self.ca_file.is_some() || dns_tls.is_some(),
        )?;
        let tls = validate_tls(self.ca_file, tls_cert, tls_key, &cluster, node_id)?;
        let cloudmap = validate_cloudmap(self.cloudmap_addr, self.cloudmap_credentials, acl)?;
        let check_ca_file = match self.check_ca_file {
            None => None,
            Some(path) => {
                cairn_tls::config::load_roots(&path)
                    .map_err(|e| bad("--check-ca-file", e.to_string()))?;
                Some(path)
            }
        };
        let insecure_rpc = self.insecure_rpc;
        let data_dir = self.data_dir;
        if data_dir.is_none() && !dev {
            return Err(bad("--data-dir", "required (or run with --dev)"));
        }

        let (peers, bootstrap, join) = (self.peers, self.bootstrap, self.join);
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
            let peers = parse_peers(&p.into_vec())?;
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

        let http_addr = match self.http_addr.as_deref() {
            Some(HTTP_OFF) => {
                if https.is_none() {
                    return Err(bad(
                        "--http-addr",
                        "off would leave the agent without an API: give --https-addr too",
                    ));
                }
                None
            }
            Some(s) => Some(parse_addr("--http-addr", s)?),
            None => Some(parse_addr(
                "--http-addr",
                &format!("{DEFAULT_CLIENT_IP}:{DEFAULT_HTTP_PORT}"),
            )?),
        };
        let rpc_addr = match self.rpc_addr {
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
        let advertise = match self.advertise {
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

        // --dev too: a dev agent told to listen on another address is as open as any node.
        if tls.is_none() && !insecure_rpc && !rpc_addr.ip().is_loopback() {
            return Err(bad(
                "--insecure-rpc",
                format!(
                    "the cluster RPC would listen on {rpc_addr} without TLS, open to anyone who reaches it: \
                     give --ca-file, --tls-cert and --tls-key (`cairn tls` makes them), or --insecure-rpc \
                     on a trusted network"
                ),
            ));
        }

        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if !(1024..=MAX_MAX_BODY).contains(&max_body_bytes) {
            return Err(bad(
                "--max-body-bytes",
                format!("must be between 1024 and {MAX_MAX_BODY}"),
            ));
        }
        let max_restore_bytes = self.max_restore_bytes.unwrap_or(DEFAULT_MAX_RESTORE);
        if !(1024..=MAX_MAX_RESTORE).contains(&max_restore_bytes) {
            return Err(bad(
                "--max-restore-bytes",
                format!("must be between 1024 and {MAX_MAX_RESTORE}"),
            ));
        }
        let max_waiting_per_client = self
            .max_waiting_per_client
            .unwrap_or(DEFAULT_MAX_WAITING_PER_CLIENT);
        if !(1..=1_000_000).contains(&max_waiting_per_client) {
            return Err(bad(
                "--max-waiting-per-client",
                "must be between 1 and 1000000",
            ));
        }
        let min_free_disk_bytes = self.min_free_disk_bytes.unwrap_or(DEFAULT_MIN_FREE_DISK);
        let quotas = Quotas {
            bytes: self.quota_bytes.unwrap_or(DEFAULT_QUOTA_BYTES),
            services: self.quota_services.unwrap_or(DEFAULT_QUOTA_SERVICES),
            instances_per_service: self
                .quota_instances_per_service
                .unwrap_or(DEFAULT_QUOTA_INSTANCES_PER_SERVICE),
            checks: self.quota_checks.unwrap_or(DEFAULT_QUOTA_CHECKS),
        };
        let acl_cache_size = self.acl_cache_size.unwrap_or(DEFAULT_ACL_CACHE_SIZE);
        if acl_cache_size > MAX_ACL_CACHE_SIZE {
            return Err(bad(
                "--acl-cache-size",
                format!("must be between 0 and {MAX_ACL_CACHE_SIZE}"),
            ));
        }
        let check_allow = cidr_list("--check-allow", self.check_allow.clone())?;
        let check_deny = cidr_list("--check-deny", self.check_deny.clone())?;
        let snapshot_threshold = self
            .snapshot_threshold
            .unwrap_or(DEFAULT_SNAPSHOT_THRESHOLD);
        if !(10..=10_000_000).contains(&snapshot_threshold) {
            return Err(bad(
                "--snapshot-threshold",
                "must be between 10 and 10000000",
            ));
        }
        let snapshot_keep_logs = self
            .snapshot_keep_logs
            .unwrap_or(DEFAULT_SNAPSHOT_KEEP_LOGS);
        if snapshot_keep_logs > 10_000_000 {
            return Err(bad("--snapshot-keep-logs", "must be at most 10000000"));
        }
        let write_timeout = match self.write_timeout {
            None => DEFAULT_WRITE_TIMEOUT,
            Some(s) => {
                let d = parse_duration(&s).map_err(|e| bad("--write-timeout", e.to_string()))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                    return Err(bad("--write-timeout", "must be between 100ms and 10m"));
                }
                d
            }
        };
        if conns.request_timeout <= write_timeout {
            return Err(bad(
                "--http-request-timeout",
                format!(
                    "must be longer than --write-timeout ({}), or a slow write fails",
                    format_duration(write_timeout)
                ),
            ));
        }
        let clock_offset_ms = match &self.test_clock_offset {
            None => 0,
            Some(s) => {
                let (sign, magnitude) = match s.strip_prefix('-') {
                    Some(rest) => (-1, rest),
                    None => (1, s.as_str()),
                };
                let d = parse_duration(magnitude)
                    .map_err(|e| bad("--test-clock-offset", e.to_string()))?;
                if d > Duration::from_secs(86_400) {
                    return Err(bad("--test-clock-offset", "must be within 24h"));
                }
                sign * d.as_millis() as i64
            }
        };
        let rpc_source_addr = match &self.test_rpc_source_addr {
            None => None,
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                bad(
                    "--test-rpc-source-addr",
                    format!("{s:?} is not an IP address, e.g. 127.0.0.2"),
                )
            })?),
        };
        let log = self.log.unwrap_or_else(|| DEFAULT_LOG.to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(bad("--log", format!("{log:?} is not a log filter")));
        }
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "--log-format",
                    format!("{other:?} is not a log format: text or json"),
                ))
            }
        };

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
            max_restore_bytes,
            max_waiting_per_client,
            conns,
            snapshot_threshold,
            snapshot_keep_logs,
            write_timeout,
            log,
            log_format,
            clock_offset_ms,
            rpc_source_addr,
            tls,
            insecure_rpc,
            https,
            dns_tls,
            cloudmap,
            check_ca_file,
            check_allow,
            check_deny,
            min_free_disk_bytes,
            quotas,
            acl,
            dns_token,
            join_token,
            acl_cache_size,
        })
    }

    /// The listeners' connection caps and time-outs.
    fn validate_conns(&self) -> Result<ConnLimits, ConfigError> {
        let count = |flag: &str, value: Option<usize>, default: usize| {
            let n = value.unwrap_or(default);
            if (1..=1_000_000).contains(&n) {
                Ok(n)
            } else {
                Err(bad(flag, "must be between 1 and 1000000"))
            }
        };
        let time = |flag: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(s).map_err(|e| bad(flag, e.to_string()))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                    return Err(bad(flag, "must be between 100ms and 1h"));
                }
                Ok(d)
            }
        };
        let header_timeout = time(
            "--http-header-timeout",
            &self.http_header_timeout,
            DEFAULT_HTTP_HEADER_TIMEOUT,
        )?;
        let idle_timeout = time(
            "--http-idle-timeout",
            &self.http_idle_timeout,
            DEFAULT_HTTP_IDLE_TIMEOUT,
        )?;
        let request_timeout = time(
            "--http-request-timeout",
            &self.http_request_timeout,
            DEFAULT_HTTP_REQUEST_TIMEOUT,
        )?;
        Ok(ConnLimits {
            http: cairn_tls::Limits {
                max_connections: count(
                    "--http-max-conns",
                    self.http_max_conns,
                    DEFAULT_HTTP_MAX_CONNS,
                )?,
                max_per_client: count(
                    "--http-max-conns-per-client",
                    self.http_max_conns_per_client,
                    DEFAULT_HTTP_MAX_CONNS_PER_CLIENT,
                )?,
                header_timeout,
                idle_timeout,
            },
            rpc: cairn_tls::Limits {
                max_connections: count(
                    "--rpc-max-conns",
                    self.rpc_max_conns,
                    DEFAULT_RPC_MAX_CONNS,
                )?,
                max_per_client: count(
                    "--rpc-max-conns-per-client",
                    self.rpc_max_conns_per_client,
                    DEFAULT_RPC_MAX_CONNS_PER_CLIENT,
                )?,
                header_timeout,
                idle_timeout,
            },
            request_timeout,
            dns_tcp_max_conns: count(
                "--dns-tcp-max-conns",
                self.dns_tcp_max_conns,
                DEFAULT_DNS_TCP_MAX_CONNS,
            )?,
            dns_tcp_max_conns_per_client: count(
                "--dns-tcp-max-conns-per-client",
                self.dns_tcp_max_conns_per_client,
                DEFAULT_DNS_TCP_MAX_CONNS_PER_CLIENT,
            )?,
            dns_tcp_write_timeout: time(
                "--dns-tcp-write-timeout",
                &self.dns_tcp_write_timeout,
                DEFAULT_DNS_TCP_WRITE_TIMEOUT,
            )?,
        })
    }

    /// --acl, --acl-default and --dns-token-file.
    fn validate_acl(&self) -> Result<(AclMode, Option<Secret>), ConfigError> {
        if !self.acl {
            if self.acl_default.is_some() {
                return Err(bad("--acl-default", "needs --acl"));
            }
            if self.dns_token_file.is_some() {
                return Err(bad("--dns-token-file", "needs --acl"));
            }
            return Ok((AclMode::Off, None));
        }
        let default = match self.acl_default.as_deref() {
            None | Some("deny") => Access::Deny,
            Some("allow") => Access::Write,
            Some(other) => {
                return Err(bad(
                    "--acl-default",
                    format!("{other:?} is not \"allow\" or \"deny\""),
                ))
            }
        };
        let dns_token = match &self.dns_token_file {
            None => None,
            Some(path) => Some(read_secret("--dns-token-file", path)?),
        };
        Ok((AclMode::On { default }, dns_token))
    }

    fn validate_dns(&self, default_ip: &str) -> Result<DnsConfig, ConfigError> {
        let addr = match &self.dns_addr {
            Some(s) => parse_addr("--dns-addr", s)?,
            None => parse_addr("--dns-addr", &format!("{default_ip}:{DEFAULT_DNS_PORT}"))?,
        };
        let domain_in = self.domain.as_deref().unwrap_or(DEFAULT_DOMAIN);
        let trimmed = domain_in.trim_end_matches('.').to_ascii_lowercase();
        let labels_ok =
            !trimmed.is_empty() && trimmed.split('.').all(cairn_registry::model::is_dns_label);
        if !labels_ok {
            return Err(bad(
                "--domain",
                format!("{domain_in:?} is not a DNS name (labels of a-z, 0-9, '-')"),
            ));
        }
        // Room under the domain for the longest name the zone makes.
        cairn_dns::check_domain(&trimmed)
            .map_err(|e| bad("--domain", format!("{domain_in:?}: {e}")))?;
        let ttl = ttl_setting("--dns-ttl", self.dns_ttl.as_deref(), DEFAULT_DNS_TTL)?;
        let negative_ttl = ttl_setting(
            "--dns-negative-ttl",
            self.dns_negative_ttl.as_deref(),
            DEFAULT_DNS_NEGATIVE_TTL,
        )?;
        let max_answers = self.dns_max_answers.unwrap_or(DEFAULT_DNS_MAX_ANSWERS);
        if max_answers > 10_000 {
            return Err(bad("--dns-max-answers", "must be at most 10000"));
        }
        let recursors = self
            .recursors
            .clone()
            .map(Peers::into_vec)
            .unwrap_or_default();
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
        let recursors_allow = match &self.recursors_allow {
            None => cairn_dns::server::default_recursors_allow(),
            list => cidr_list("--recursors-allow", list.clone())?,
        };
        let rate = self.dns_rrl_rate.unwrap_or(DEFAULT_DNS_RRL_RATE);
        if rate > MAX_DNS_RRL_RATE {
            return Err(bad(
                "--dns-rrl-rate",
                format!("must be at most {MAX_DNS_RRL_RATE}"),
            ));
        }
        let slip = self.dns_rrl_slip.unwrap_or(DEFAULT_DNS_RRL_SLIP);
        if slip > 100 {
            return Err(bad("--dns-rrl-slip", "must be at most 100"));
        }
        let table_size = self
            .dns_rrl_table_size
            .unwrap_or(DEFAULT_DNS_RRL_TABLE_SIZE);
        if !DNS_RRL_TABLE_SIZES.contains(&table_size) {
            return Err(bad(
                "--dns-rrl-table-size",
                format!(
                    "must be between {} and {}",
                    DNS_RRL_TABLE_SIZES.start(),
                    DNS_RRL_TABLE_SIZES.end()
                ),
            ));
        }
        Ok(DnsConfig {
            addr,
            domain: format!("{trimmed}."),
            ttl,
            negative_ttl,
            max_answers,
            allow_warning: self.dns_allow_warning,
            recursors,
            recursors_allow,
            rrl: cairn_dns::RrlConfig {
                rate,
                slip,
                table_size,
            },
        })
    }
}

/// The Cloud Map-compatible API: its address and its credentials file, read and checked.
fn validate_cloudmap(
    addr: Option<String>,
    credentials: Option<PathBuf>,
    acl: AclMode,
) -> Result<Option<CloudMapConfig>, ConfigError> {
    let Some(addr) = addr else {
        if credentials.is_some() {
            return Err(bad("--cloudmap-credentials", "needs --cloudmap-addr"));
        }
        return Ok(None);
    };
    let addr = parse_addr("--cloudmap-addr", &addr)?;
    let Some(path) = credentials else {
        return Err(bad(
            "--cloudmap-addr",
            "needs --cloudmap-credentials (the access keys requests are signed with)",
        ));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad("--cloudmap-credentials", format!("{}: {e}", path.display())))?;
    let credentials = crate::cloudmap::Credentials::parse(&text, acl != AclMode::Off)
        .map_err(|e| bad("--cloudmap-credentials", format!("{}: {e}", path.display())))?;
    Ok(Some(CloudMapConfig { addr, credentials }))
}

/// DNS over TLS and HTTPS: their addresses, the node's certificate and key (--tls-cert,
/// --tls-key, as the HTTPS API's), and optionally the CA clients' certificates must come from.
fn validate_dns_tls(
    tls_addr: Option<String>,
    https_addr: Option<String>,
    cert_key: Option<(&PathBuf, &PathBuf)>,
    client_ca: Option<PathBuf>,
) -> Result<Option<DnsTlsConfig>, ConfigError> {
    if tls_addr.is_none() && https_addr.is_none() {
        if client_ca.is_some() {
            return Err(bad(
                "--dns-tls-client-ca",
                "applies to DNS over TLS and HTTPS: give --dns-tls-addr or --dns-https-addr too",
            ));
        }
        return Ok(None);
    }
    let tls_addr = tls_addr
        .map(|a| parse_addr("--dns-tls-addr", &a))
        .transpose()?;
    let https_addr = https_addr
        .map(|a| parse_addr("--dns-https-addr", &a))
        .transpose()?;
    let setting = if tls_addr.is_some() {
        "--dns-tls-addr"
    } else {
        "--dns-https-addr"
    };
    let Some((cert, key)) = cert_key else {
        return Err(bad(
            setting,
            "needs --tls-cert and --tls-key (the certificate DNS clients check)",
        ));
    };
    cairn_tls::config::server_config(cert, key, client_ca.as_deref(), &[])
        .map_err(|e| bad(setting, e.to_string()))?;
    Ok(Some(DnsTlsConfig {
        tls_addr,
        https_addr,
        cert: cert.clone(),
        key: key.clone(),
        client_ca,
    }))
}

/// The HTTPS API: an address, the certificate and key it presents (they load together), and
/// optionally the CA its clients' certificates must come from. `other_use`: the cluster RPC or
/// encrypted DNS uses the certificate too.
fn validate_https(
    addr: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    other_use: bool,
) -> Result<Option<HttpsConfig>, ConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(bad(
            "--tls-cert/--tls-key",
            "go together: a certificate and its key",
        ));
    }
    let Some(addr) = addr else {
        if client_ca.is_some() {
            return Err(bad(
                "--tls-client-ca",
                "applies to the HTTPS API: give --https-addr too",
            ));
        }
        if cert.is_some() && !other_use {
            return Err(bad(
                "--tls-cert",
                "is used by the HTTPS API (--https-addr), DNS over TLS or HTTPS (--dns-tls-addr, --dns-https-addr) and, with --ca-file, the cluster RPC: give one of them, or nothing would use it",
            ));
        }
        return Ok(None);
    };
    let addr = parse_addr("--https-addr", &addr)?;
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(bad(
            "--https-addr",
            "needs --tls-cert and --tls-key (the certificate the API presents)",
        ));
    };
    cairn_tls::config::server_config(&cert, &key, client_ca.as_deref(), &[])
        .map_err(|e| bad("--https-addr", e.to_string()))?;
    Ok(Some(HttpsConfig {
        addr,
        cert,
        key,
        client_ca,
    }))
}

/// The node's TLS files: all three or none. They are loaded here, so that a missing file, a
/// key that does not match, or a certificate for another node is a configuration error (exit
/// 64, and `--check` finds it), not a failure after the ports are bound.
fn validate_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cluster: &str,
    node_id: u64,
) -> Result<Option<NodeTls>, ConfigError> {
    let (ca, cert, key) = match (ca, cert, key) {
        (None, None, None) => return Ok(None),
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        // A certificate for the HTTPS API only: no CA to check other nodes against (and
        // validate_https refuses it when there is no --https-addr either).
        (None, Some(_), Some(_)) => return Ok(None),
        (None, _, _) => {
            return Err(bad(
                "--tls-cert/--tls-key",
                "go together: a certificate and its key",
            ))
        }
        (Some(_), _, _) => {
            return Err(bad(
                "--ca-file/--tls-cert/--tls-key",
                "go together: the cluster's CA, this node's certificate and its key (`cairn tls` makes them)",
            ))
        }
    };
    // A certificate's names need the cluster name to be a DNS label.
    cairn_tls::certs::check_cluster(cluster).map_err(|e| bad("--cluster", e.to_string()))?;
    cairn_tls::config::client_config(&ca, Some((&cert, &key)))
        .map_err(|e| bad("--tls-cert", e.to_string()))?;
    cairn_tls::config::server_config(&cert, &key, Some(&ca), &[])
        .map_err(|e| bad("--tls-cert", e.to_string()))?;
    let name = cairn_tls::node_name(cluster, node_id);
    let leaf =
        cairn_tls::config::load_certs(&cert).map_err(|e| bad("--tls-cert", e.to_string()))?;
    if !leaf
        .first()
        .is_some_and(|c| cairn_tls::identity::certifies(c, &name))
    {
        return Err(bad(
            "--tls-cert",
            format!(
                "{} does not name {name}: it is not node {node_id}'s certificate of cluster {cluster:?}",
                cert.display()
            ),
        ));
    }
    // Chain, expiry and both uses, as the peers will check them.
    cairn_tls::identity::check_own_certificate(&ca, &cert, &name)
        .map_err(|e| bad("--tls-cert", e.to_string()))?;
    Ok(Some(NodeTls { ca, cert, key }))
}

/// `{id}` in a per-node file's path (`/certs/node-{id}.pem`), replaced with the node id: one
/// setting for every node of a compose file or a StatefulSet. No other braces are taken, so
/// that a misspelt placeholder is an error rather than a file that is never there.
fn node_path(
    setting: &str,
    path: Option<PathBuf>,
    node_id: u64,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let Some(text) = path.to_str() else {
        // Not UTF-8, so no placeholder: the path as given.
        return Ok(Some(path));
    };
    let expanded = text.replace(NODE_ID_PLACEHOLDER, &node_id.to_string());
    if expanded.contains(['{', '}']) {
        return Err(bad(
            setting,
            format!("{text:?}: the only placeholder is {NODE_ID_PLACEHOLDER}, the node id"),
        ));
    }
    Ok(Some(PathBuf::from(expanded)))
}

/// Reads a `--config` file into the settings it sets; an unknown key is an error.
fn load_file(path: &Path) -> Result<AgentArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        bad(
            "--config",
            format!("{}: {}", path.display(), e.to_string().trim_end()),
        )
    })
}

/// A comma-separated list of CIDR ranges (`10.0.0.0/8`, `fd00::/8`); a bare address is a range
/// of one.
fn cidr_list(setting: &str, list: Option<Peers>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let list = list.map(Peers::into_vec).unwrap_or_default();
    let mut out = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let net = item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                bad(
                    setting,
                    format!("{item:?} is not a CIDR range such as 10.0.0.0/8"),
                )
            })?;
        out.push(net);
    }
    if out.len() > 256 {
        return Err(bad(setting, "at most 256 ranges"));
    }
    Ok(out)
}

/// Where `--cloudmap-addr` without a value listens: loopback, as the HTTP API by default.
const DEFAULT_CLOUDMAP_ADDR: &str = "127.0.0.1:8520";

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
    fn recursion_is_for_private_clients_and_rrl_is_off_unless_set() {
        let c = args(|a| a.dev = true).resolve().unwrap();
        let allowed: Vec<String> = c
            .dns
            .recursors_allow
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(allowed, cairn_dns::server::DEFAULT_RECURSORS_ALLOW);
        assert_eq!(c.dns.rrl, cairn_dns::RrlConfig::default());
        assert_eq!(c.dns.rrl.rate, 0);
        // Empty: recursion for nobody; a bare address is a range of one.
        let c = args(|a| {
            a.dev = true;
            a.recursors_allow = Some("".into());
        })
        .resolve()
        .unwrap();
        assert!(c.dns.recursors_allow.is_empty());
        let c = args(|a| {
            a.dev = true;
            a.recursors_allow = Some("192.0.2.7, 2001:db8::/32".into());
            a.dns_rrl_rate = Some(20);
            a.dns_rrl_slip = Some(0);
        })
        .resolve()
        .unwrap();
        let allowed: Vec<String> = c
            .dns
            .recursors_allow
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(allowed, ["192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!((c.dns.rrl.rate, c.dns.rrl.slip), (20, 0));
    }

    #[test]
    fn dev_needs_nothing_else() {
        let c = args(|a| a.dev = true).resolve().unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.http_addr, Some("127.0.0.1:8500".parse().unwrap()));
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
            a.insecure_rpc = true;
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
                a.insecure_rpc = true;
                f(a)
            })
        };
        assert_eq!(err(args(|_| {})), "--node-id");
        assert_eq!(err(args(|a| a.node_id = Some(1))), "--data-dir");
        assert_eq!(
            err(base(|a| a.http_max_conns_per_client = Some(0))),
            "--http-max-conns-per-client"
        );
        assert_eq!(
            err(base(|a| a.dns_tcp_max_conns = Some(2_000_000))),
            "--dns-tcp-max-conns"
        );
        assert_eq!(
            err(base(|a| a.http_header_timeout = Some("10ms".into()))),
            "--http-header-timeout"
        );
        assert_eq!(
            err(base(|a| a.dns_tcp_write_timeout = Some("soon".into()))),
            "--dns-tcp-write-timeout"
        );
        assert_eq!(
            err(base(|a| a.http_request_timeout = Some("5s".into()))),
            "--http-request-timeout",
            "not longer than the default --write-timeout of 5s"
        );
        assert_eq!(err(base(|a| a.node_id = Some(0))), "--node-id");
        assert_eq!(
            err(base(|a| a.cloudmap_addr = Some("127.0.0.1:8520".into()))),
            "--cloudmap-addr",
            "the Cloud Map API needs its credentials file"
        );
        assert_eq!(
            err(base(|a| a.cloudmap_credentials = Some("/tmp/x.toml".into()))),
            "--cloudmap-credentials"
        );
        assert_eq!(
            err(base(|a| {
                a.cloudmap_addr = Some("127.0.0.1:8520".into());
                a.cloudmap_credentials = Some("/nonexistent/cloudmap.toml".into());
            })),
            "--cloudmap-credentials"
        );
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
            err(base(|a| a.check_allow = Some("10.0.0.0/33".into()))),
            "--check-allow"
        );
        assert_eq!(
            err(base(|a| a.check_deny = Some("10.0.0.0/8,nope".into()))),
            "--check-deny"
        );
        assert_eq!(
            err(base(|a| a.max_body_bytes = Some(1))),
            "--max-body-bytes"
        );
        assert_eq!(
            err(base(|a| a.max_restore_bytes = Some(MAX_MAX_RESTORE + 1))),
            "--max-restore-bytes"
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
        assert_eq!(
            err(base(|a| a.recursors_allow = Some("10.0.0.0/8,nope".into()))),
            "--recursors-allow"
        );
        assert_eq!(
            err(base(|a| a.dns_rrl_rate = Some(1_000_001))),
            "--dns-rrl-rate"
        );
        assert_eq!(err(base(|a| a.dns_rrl_slip = Some(101))), "--dns-rrl-slip");
        assert_eq!(
            err(base(|a| a.dns_rrl_table_size = Some(1023))),
            "--dns-rrl-table-size"
        );
        assert_eq!(
            err(base(|a| a.dns_rrl_table_size = Some(16 * 1024 * 1024 + 1))),
            "--dns-rrl-table-size"
        );
        assert_eq!(err(base(|a| a.log = Some("=[".into()))), "--log");
        assert_eq!(
            err(base(|a| a.log_format = Some("yaml".into()))),
            "--log-format"
        );
        assert_eq!(
            err(base(|a| a.test_rpc_source_addr = Some("127.0.0.2:0".into()))),
            "--test-rpc-source-addr"
        );
        assert_eq!(
            err(args(|a| {
                a.dev = true;
                a.join = Some("http://x".into())
            })),
            "--dev"
        );
    }

    #[test]
    fn a_domain_without_room_for_the_zones_names_is_refused() {
        let with_domain = |d: String| {
            args(|a| {
                a.node_id = Some(1);
                a.data_dir = Some("/tmp/x".into());
                a.insecure_rpc = true;
                a.domain = Some(d);
            })
        };
        // Valid labels, 63 * 3 + 3 = 192 bytes: an IPv6 SRV target under it still fits.
        let label = "a".repeat(63);
        assert!(with_domain([label.as_str(); 3].join(".")).resolve().is_ok());
        // 229 bytes: `<32 hex>.addr.<domain>` would pass DNS's 255 bytes.
        let long = format!("{}.{}", [label.as_str(); 3].join("."), "b".repeat(36));
        assert_eq!(err(with_domain(long)), "--domain");
    }

    #[test]
    fn plaintext_rpc_off_loopback_needs_the_opt_in_and_http_dns_default_to_loopback() {
        let node = |f: fn(&mut AgentArgs)| {
            args(|a| {
                a.node_id = Some(1);
                a.data_dir = Some("/tmp/x".into());
                f(a)
            })
        };
        assert_eq!(err(node(|_| {})), "--insecure-rpc");
        assert_eq!(
            err(node(|a| a.rpc_addr = Some("10.0.0.1:8300".into()))),
            "--insecure-rpc"
        );
        let c = node(|a| a.rpc_addr = Some("127.0.0.1:8300".into()))
            .resolve()
            .unwrap();
        assert!(c.tls.is_none() && !c.insecure_rpc);
        assert_eq!(c.http_addr, Some("127.0.0.1:8500".parse().unwrap()));
        assert_eq!(c.dns.addr.to_string(), "127.0.0.1:8600");
        let c = node(|a| a.insecure_rpc = true).resolve().unwrap();
        assert_eq!(c.rpc_addr.to_string(), "0.0.0.0:8300");
        assert_eq!(
            err(node(|a| a.ca_file = Some("/x/ca.pem".into()))),
            "--ca-file/--tls-cert/--tls-key"
        );
        assert_eq!(
            err(node(|a| a.tls_cert = Some("/x/c.pem".into()))),
            "--tls-cert/--tls-key"
        );
        // A certificate and key that nothing would use.
        assert_eq!(
            err(node(|a| {
                a.rpc_addr = Some("127.0.0.1:8300".into());
                a.tls_cert = Some("/x/c.pem".into());
                a.tls_key = Some("/x/k.pem".into())
            })),
            "--tls-cert"
        );
        assert_eq!(
            err(node(|a| {
                a.insecure_rpc = true;
                a.https_addr = Some("127.0.0.1:8501".into())
            })),
            "--https-addr"
        );
        assert_eq!(
            err(node(|a| {
                a.insecure_rpc = true;
                a.tls_client_ca = Some("/x/ca.pem".into())
            })),
            "--tls-client-ca"
        );
    }

    #[test]
    fn id_in_certificate_paths_is_the_node_id_and_http_can_be_off() {
        let pki = tempfile::tempdir().unwrap();
        let ca = cairn_tls::certs::create_ca("cairn", 30).unwrap();
        cairn_tls::certs::write_issued(pki.path(), "cairn-ca", &ca, false).unwrap();
        let node =
            cairn_tls::certs::create_node_cert(&ca.cert_pem, &ca.key_pem, "cairn", 2, &[], &[], 30)
                .unwrap();
        cairn_tls::certs::write_issued(pki.path(), "node-2", &node, false).unwrap();
        let dir = pki.path().to_owned();
        let with = |id: u64, cert: &str, key: &str, f: fn(&mut AgentArgs)| {
            args(|a| {
                a.node_id = Some(id);
                a.data_dir = Some("/tmp/x".into());
                a.ca_file = Some(dir.join("cairn-ca.pem"));
                a.tls_cert = Some(dir.join(cert));
                a.tls_key = Some(dir.join(key));
                f(a)
            })
        };
        let shared =
            |id: u64, f: fn(&mut AgentArgs)| with(id, "node-{id}.pem", "node-{id}-key.pem", f);

        let c = shared(2, |_| {}).resolve().unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, dir.join("node-2.pem"));
        assert_eq!(tls.key, dir.join("node-2-key.pem"));
        // The same setting on node 3 names node 3's files, which are not there.
        let e = shared(3, |_| {}).resolve().unwrap_err();
        assert_eq!(e.setting, "--tls-cert");
        assert!(e.to_string().contains("node-3.pem"), "{e}");
        // Only {id} is a placeholder.
        for (cert, key, setting) in [
            ("node-{node}.pem", "node-{id}-key.pem", "--tls-cert"),
            ("node-{id}.pem", "node-{id-key.pem", "--tls-key"),
            ("node-{ID}.pem", "node-{id}-key.pem", "--tls-cert"),
        ] {
            assert_eq!(err(with(2, cert, key, |_| {})), setting, "{cert} {key}");
        }

        // `--http-addr off`: no plain listener, only with the HTTPS API.
        assert_eq!(
            err(shared(2, |a| a.http_addr = Some(HTTP_OFF.into()))),
            "--http-addr"
        );
        let c = shared(2, |a| {
            a.http_addr = Some(HTTP_OFF.into());
            a.https_addr = Some("0.0.0.0:8501".into());
        })
        .resolve()
        .unwrap();
        assert_eq!(c.http_addr, None);
        let https = c.https.unwrap();
        assert_eq!(https.cert, dir.join("node-2.pem"), "{{id}} for HTTPS too");
        assert_eq!(
            err(shared(2, |a| {
                a.http_addr = Some("OFF".into());
                a.https_addr = Some("0.0.0.0:8501".into());
            })),
            "--http-addr"
        );
    }

    #[test]
    fn dns_over_tls_and_https_take_the_node_certificate() {
        let pki = tempfile::tempdir().unwrap();
        let ca = cairn_tls::certs::create_ca("cairn", 30).unwrap();
        cairn_tls::certs::write_issued(pki.path(), "cairn-ca", &ca, false).unwrap();
        let node =
            cairn_tls::certs::create_node_cert(&ca.cert_pem, &ca.key_pem, "cairn", 1, &[], &[], 30)
                .unwrap();
        cairn_tls::certs::write_issued(pki.path(), "node-1", &node, false).unwrap();
        let dir = pki.path().to_owned();
        let with_cert = |f: &dyn Fn(&mut AgentArgs)| {
            args(|a| {
                a.node_id = Some(1);
                a.data_dir = Some("/tmp/x".into());
                a.rpc_addr = Some("127.0.0.1:8300".into());
                a.tls_cert = Some(dir.join("node-{id}.pem"));
                a.tls_key = Some(dir.join("node-{id}-key.pem"));
                f(a)
            })
        };

        // Either listener alone uses the certificate (nothing else needs it here).
        let c = with_cert(&|a| a.dns_tls_addr = Some("127.0.0.1:853".into()))
            .resolve()
            .unwrap();
        let d = c.dns_tls.unwrap();
        assert_eq!(d.tls_addr, Some("127.0.0.1:853".parse().unwrap()));
        assert_eq!((d.https_addr, d.client_ca), (None, None));
        assert_eq!(
            d.cert,
            dir.join("node-1.pem"),
            "{{id}} for DNS over TLS too"
        );
        let c = with_cert(&|a| {
            a.dns_https_addr = Some("127.0.0.1:8443".into());
            a.dns_tls_client_ca = Some(dir.join("cairn-ca.pem"));
        })
        .resolve()
        .unwrap();
        let d = c.dns_tls.unwrap();
        assert_eq!(d.https_addr, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(d.client_ca, Some(dir.join("cairn-ca.pem")));
        assert!(c.https.is_none() && c.tls.is_none());

        // Without a certificate, with a bad address, with a client CA that is no CA file, or a
        // client CA for no listener.
        let no_cert = args(|a| {
            a.node_id = Some(1);
            a.data_dir = Some("/tmp/x".into());
            a.rpc_addr = Some("127.0.0.1:8300".into());
            a.dns_https_addr = Some("127.0.0.1:8443".into());
        });
        assert_eq!(err(no_cert), "--dns-https-addr");
        assert_eq!(
            err(with_cert(&|a| a.dns_tls_addr = Some("localhost:853".into()))),
            "--dns-tls-addr"
        );
        assert_eq!(
            err(with_cert(&|a| {
                a.dns_tls_addr = Some("127.0.0.1:853".into());
                a.dns_tls_client_ca = Some(dir.join("missing.pem"));
            })),
            "--dns-tls-addr"
        );
        assert_eq!(
            err(with_cert(&|a| {
                a.https_addr = Some("127.0.0.1:8501".into());
                a.dns_tls_client_ca = Some(dir.join("cairn-ca.pem"));
            })),
            "--dns-tls-client-ca"
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
insecure_rpc = true
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
        assert_eq!(
            c.http_addr,
            Some("127.0.0.1:9600".parse().unwrap()),
            "the flag wins"
        );
        assert_eq!(c.rpc_addr.to_string(), "0.0.0.0:8300");

        std::fs::write(&path, "node_id = 3\nnode_idd = 4\n").unwrap();
        let e = args(|a| a.config = Some(path.clone()))
            .resolve()
            .unwrap_err();
        assert_eq!(e.setting, "--config");
        assert!(e.message.contains("node_idd"), "{}", e.message);
    }

    use clap::parser::ValueSource;
    use clap::{Command, FromArgMatches};

    /// `cairn agent` as the binary parses it, but blind to the environment: the tests must not
    /// depend on the `CAIRN_*` variables of whoever runs them.
    fn command() -> Command {
        AgentArgs::augment_args(Command::new("agent")).mut_args(|a| a.env(None::<&'static str>))
    }

    /// Each setting's environment variable, by flag id.
    fn env_vars() -> BTreeMap<String, String> {
        AgentArgs::augment_args(Command::new("agent"))
            .get_arguments()
            .filter_map(|a| {
                let var = a.get_env()?.to_str()?.to_owned();
                Some((a.get_id().to_string(), var))
            })
            .collect()
    }

    /// `cairn agent <argv>` with no environment.
    fn from_flags(argv: &[String]) -> Result<AgentArgs, clap::Error> {
        let argv = std::iter::once("agent").chain(argv.iter().map(String::as_str));
        AgentArgs::from_arg_matches(&command().try_get_matches_from(argv)?)
    }

    #[test]
    fn a_bare_cloudmap_addr_listens_on_the_default() {
        let a = from_flags(&["--cloudmap-addr".to_owned()]).unwrap();
        assert_eq!(a.cloudmap_addr.as_deref(), Some(DEFAULT_CLOUDMAP_ADDR));
        let a = from_flags(&["--cloudmap-addr=0.0.0.0:9520".to_owned()]).unwrap();
        assert_eq!(a.cloudmap_addr.as_deref(), Some("0.0.0.0:9520"));
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The keys a `--config` file may hold: the fields serde's derive declares for [`AgentArgs`].
    fn file_keys() -> Vec<&'static str> {
        struct Fields(&'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("expected a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = fields;
                Err(serde::de::Error::custom("fields recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = AgentArgs::deserialize(&mut fields);
        fields.0.to_vec()
    }

    /// A value for every file key, as its flag takes it (`None`: a flag without a value).
    const SAMPLES: &[(&str, Option<&str>)] = &[
        ("dev", None),
        ("node_id", Some("7")),
        ("data_dir", Some("/srv/cairn")),
        ("http_addr", Some("127.0.0.1:9500")),
        ("dns_addr", Some("[::1]:9600")),
        ("domain", Some("Example.Internal.")),
        ("dns_ttl", Some("30s")),
        ("dns_negative_ttl", Some("1m")),
        ("dns_max_answers", Some("12")),
        ("dns_allow_warning", None),
        ("recursors", Some("1.1.1.1:53,9.9.9.9:53")),
        ("recursors_allow", Some("10.0.0.0/8,fd00::/8")),
        ("dns_rrl_rate", Some("50")),
        ("dns_rrl_slip", Some("2")),
        ("dns_rrl_table_size", Some("4096")),
        ("rpc_addr", Some("127.0.0.1:9300")),
        ("advertise", Some("cairn-7.example:9300")),
        ("peers", Some("7=a:8300,8=b:8300")),
        ("bootstrap", None),
        ("join", Some("http://a:8500,http://b:8500")),
        ("cluster", Some("prod-eu")),
        ("ca_file", Some("/etc/cairn/ca.pem")),
        ("tls_cert", Some("/etc/cairn/node-7.pem")),
        ("tls_key", Some("/etc/cairn/node-7-key.pem")),
        ("https_addr", Some("127.0.0.1:8501")),
        ("tls_client_ca", Some("/etc/cairn/clients-ca.pem")),
        ("dns_tls_addr", Some("127.0.0.1:8853")),
        ("dns_https_addr", Some("127.0.0.1:8443")),
        ("dns_tls_client_ca", Some("/etc/cairn/dns-clients-ca.pem")),
        ("cloudmap_addr", Some("127.0.0.1:8520")),
        ("cloudmap_credentials", Some("/etc/cairn/cloudmap.toml")),
        ("check_ca_file", Some("/etc/cairn/checks-ca.pem")),
        ("check_allow", Some("127.0.0.0/8,10.0.0.0/8")),
        ("check_deny", Some("10.1.0.0/16")),
        ("insecure_rpc", None),
        ("acl", None),
        ("acl_default", Some("allow")),
        ("dns_token_file", Some("/etc/cairn/dns.token")),
        ("join_token_file", Some("/etc/cairn/join.token")),
        ("acl_cache_size", Some("500")),
        ("max_body_bytes", Some("4096")),
        ("max_restore_bytes", Some("65536")),
        ("max_waiting_per_client", Some("16")),
        ("http_max_conns", Some("1000")),
        ("http_max_conns_per_client", Some("20")),
        ("http_header_timeout", Some("3s")),
        ("http_idle_timeout", Some("30s")),
        ("http_request_timeout", Some("2m")),
        ("rpc_max_conns", Some("2000")),
        ("rpc_max_conns_per_client", Some("100")),
        ("dns_tcp_max_conns", Some("100")),
        ("dns_tcp_max_conns_per_client", Some("4")),
        ("dns_tcp_write_timeout", Some("5s")),
        ("min_free_disk_bytes", Some("1048576")),
        ("quota_bytes", Some("1073741824")),
        ("quota_services", Some("500")),
        ("quota_instances_per_service", Some("1000")),
        ("quota_checks", Some("5000")),
        ("snapshot_threshold", Some("500")),
        ("snapshot_keep_logs", Some("50")),
        ("write_timeout", Some("2s")),
        ("log", Some("debug,openraft=info")),
        ("log_format", Some("json")),
    ];

    #[test]
    fn every_file_key_means_what_its_flag_means() {
        let keys = file_keys();
        let sampled: Vec<&str> = SAMPLES.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, sampled, "a sample for every file key");
        let vars = env_vars();
        let cmd = command();
        for (key, value) in SAMPLES {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == *key)
                .unwrap_or_else(|| panic!("file key {key} has no flag"));
            let long = arg.get_long().unwrap();
            assert_eq!(long, key.replace('_', "-"));
            let var = format!("CAIRN_{}", key.to_ascii_uppercase());
            assert_eq!(vars.get(*key), Some(&var), "--{long}");
            let (argv, toml) = match value {
                None => {
                    assert!(!arg.get_action().takes_values(), "--{long} takes a value");
                    (vec![format!("--{long}")], format!("{key} = true"))
                }
                Some(v) => {
                    let literal = match v.parse::<i64>() {
                        Ok(n) => toml::Value::Integer(n),
                        Err(_) => toml::Value::String((*v).to_owned()),
                    };
                    (vec![format!("--{long}={v}")], format!("{key} = {literal}"))
                }
            };
            let flagged = from_flags(&argv).unwrap();
            let filed: AgentArgs = toml::from_str(&toml).unwrap();
            assert_ne!(filed, AgentArgs::default(), "`{toml}` sets something");
            assert_eq!(flagged, filed, "--{long} and `{toml}`");
        }

        // The rest are flags only.
        let flag_only: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !keys.contains(&id.as_str()))
            .collect();
        assert_eq!(
            flag_only,
            [
                "check",
                "config",
                "node_id_from_ordinal",
                "test_clock_offset",
                "test_rpc_source_addr"
            ]
        );

        // A file's list means the flag's comma-separated string.
        let flagged = from_flags(&strings(&[
            "--node-id=7",
            "--data-dir=/srv/cairn",
            "--peers=7=a:8300,8=b:8300",
            "--recursors=1.1.1.1:53,9.9.9.9:53",
            "--insecure-rpc",
        ]))
        .unwrap()
        .resolve()
        .unwrap();
        let filed: AgentArgs = toml::from_str(
            r#"
node_id = 7
data_dir = "/srv/cairn"
peers = ["7=a:8300", "8=b:8300"]
recursors = ["1.1.1.1:53", "9.9.9.9:53"]
insecure_rpc = true
"#,
        )
        .unwrap();
        let filed = filed.resolve().unwrap();
        assert_eq!(format!("{flagged:?}"), format!("{filed:?}"));
        assert_eq!(filed.dns.recursors.len(), 2);
    }

    #[test]
    fn flags_win_over_the_file_setting_by_setting() {
        let file: AgentArgs = toml::from_str(
            "node_id = 1\ndata_dir = \"/a\"\ndns_allow_warning = true\nlog = \"debug\"\n",
        )
        .unwrap();
        let flags = from_flags(&strings(&["--node-id=2", "--log=warn"])).unwrap();
        let merged = flags.merge(file);
        assert_eq!(merged.node_id, Some(2));
        assert_eq!(merged.log.as_deref(), Some("warn"));
        assert_eq!(
            merged.data_dir,
            Some("/a".into()),
            "unset flags leave the file's value"
        );
        assert!(
            merged.dns_allow_warning,
            "an absent bool flag does not clear the file's true"
        );
    }

    /// The settings whose help shows a default: each flag with a default value.
    const WITH_DEFAULTS: &[&str] = &[
        "http_addr",
        "dns_addr",
        "domain",
        "dns_ttl",
        "dns_negative_ttl",
        "dns_max_answers",
        "recursors_allow",
        "dns_rrl_rate",
        "dns_rrl_slip",
        "dns_rrl_table_size",
        "rpc_addr",
        "cluster",
        "acl_cache_size",
        "max_body_bytes",
        "max_restore_bytes",
        "max_waiting_per_client",
        "http_max_conns",
        "http_max_conns_per_client",
        "http_header_timeout",
        "http_idle_timeout",
        "http_request_timeout",
        "rpc_max_conns",
        "rpc_max_conns_per_client",
        "dns_tcp_max_conns",
        "dns_tcp_max_conns_per_client",
        "dns_tcp_write_timeout",
        "min_free_disk_bytes",
        "quota_bytes",
        "quota_services",
        "quota_instances_per_service",
        "quota_checks",
        "snapshot_threshold",
        "snapshot_keep_logs",
        "write_timeout",
        "log",
        "log_format",
    ];

    #[test]
    fn help_shows_each_flag_with_its_env_var_and_the_default_it_applies() {
        let mut cmd = AgentArgs::augment_args(Command::new("agent"));
        let help = cmd.render_long_help().to_string();
        let vars = env_vars();
        let dev = strings(&["--dev"]);
        let node = strings(&["--node-id=1", "--data-dir=/srv/cairn"]);
        let resolved = |argv: &[String]| format!("{:?}", from_flags(argv).unwrap().resolve());
        let mut shown = Vec::new();
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            let long = arg.get_long().unwrap();
            let text = arg.get_help().unwrap().to_string();
            assert!(help.contains(&format!("--{long}")), "--{long} in the help");
            assert!(help.contains(text.as_str()), "--{long}'s text in the help");
            if id != "check" {
                let var = format!("CAIRN_{}", id.to_ascii_uppercase());
                assert_eq!(vars.get(id), Some(&var), "--{long}");
                assert!(help.contains(&format!("[env: {var}=")), "{var} in the help");
            }
            let Some((_, default)) = text.split_once("[default: ") else {
                continue;
            };
            let default = default.trim_end_matches(']');
            shown.push(id);
            // The value shown is the value used: giving it changes nothing.
            let (normal, in_dev) = match default.split_once("; ") {
                Some((normal, d)) => (normal, d.strip_suffix(" with --dev").unwrap()),
                None => (default, default),
            };
            if normal.contains(' ') {
                assert_eq!(id, "rpc_addr", "only --rpc-addr's default is a description");
                continue;
            }
            for (base, value) in [(&node, normal), (&dev, in_dev)] {
                let mut given = base.clone();
                given.push(format!("--{long}={value}"));
                assert_eq!(resolved(&given), resolved(base), "--{long}={value}");
            }
        }
        assert_eq!(shown, WITH_DEFAULTS);
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned()
    }

    /// `cairn agent <argv>` with `env` as its whole environment, the way the binary reads it:
    /// clap takes the flags, then the `CAIRN_*` variables of the flags not given; then
    /// [`AgentArgs::resolve`] (reading any `--config` file).
    fn check(argv: &[String], env: &BTreeMap<String, String>) -> Result<AgentConfig, String> {
        let (agent, argv) = argv.split_first().ok_or("no command")?;
        assert_eq!(agent, "agent");
        let given = command()
            .try_get_matches_from(std::iter::once("agent").chain(argv.iter().map(String::as_str)))
            .map_err(|e| e.to_string())?;
        let mut argv = argv.to_vec();
        for (id, var) in env_vars() {
            let Some(value) = env.get(&var) else {
                continue;
            };
            if given.value_source(&id) == Some(ValueSource::CommandLine) {
                continue;
            }
            let cmd = command();
            let arg = cmd.get_arguments().find(|a| a.get_id() == &id).unwrap();
            let long = arg.get_long().unwrap();
            match (arg.get_action().takes_values(), value.as_str()) {
                (true, _) => argv.push(format!("--{long}={value}")),
                (false, "true") => argv.push(format!("--{long}")),
                (false, "false") => {}
                (false, _) => return Err(format!("{var}={value}: neither true nor false")),
            }
        }
        let args = from_flags(&argv).map_err(|e| e.to_string())?;
        let host = env.get("HOSTNAME").cloned().unwrap_or_default();
        args.resolve_with(|| host).map_err(|e| e.to_string())
    }

    /// The files under `dir`, recursively.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out.sort();
        out
    }

    /// The `cairn agent` command lines in a Markdown text's code, `agent` first: backslash
    /// continuations joined, `$VAR` of a `VAR=value` line and `$i` of a `for i in 1 2 3; do`
    /// loop substituted. Mentions without a setting (`cairn agent --help`) are left out.
    fn markdown_command_lines(text: &str) -> Vec<Vec<String>> {
        let text = text.replace("\\\n", " ");
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut loops: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some((name, value)) = line.split_once('=') {
                let shell_var = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                    && !value.contains(char::is_whitespace);
                if shell_var {
                    vars.push((format!("${name}"), value.to_owned()));
                }
            }
            if let Some((var, values)) = line
                .strip_prefix("for ")
                .and_then(|l| l.strip_suffix("; do"))
                .and_then(|l| l.split_once(" in "))
            {
                let values = values.split_whitespace().map(str::to_owned).collect();
                loops.push((format!("${var}"), values));
            }
        }
        vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        let mut out = Vec::new();
        for line in text.lines() {
            for marker in ["cairn agent", "-- agent"] {
                for (at, _) in line.match_indices(marker) {
                    let rest = &line[at + marker.len()..];
                    let mut rest = rest.split('`').next().unwrap_or("").to_owned();
                    for (name, value) in &vars {
                        rest = rest.replace(name.as_str(), value);
                    }
                    let tokens: Vec<&str> = rest.split_whitespace().filter(|t| *t != "&").collect();
                    if tokens.iter().all(|t| matches!(*t, "--check" | "--help")) {
                        continue;
                    }
                    let joined = tokens.join(" ");
                    let expanded: Vec<String> =
                        match loops.iter().find(|(v, _)| joined.contains(v.as_str())) {
                            Some((var, values)) => values
                                .iter()
                                .map(|i| joined.replace(var.as_str(), i))
                                .collect(),
                            None => vec![joined],
                        };
                    for line in expanded {
                        assert!(
                            !line.contains('$'),
                            "unknown shell variable in `cairn agent {line}`"
                        );
                        out.push(
                            std::iter::once("agent".to_owned())
                                .chain(line.split_whitespace().map(str::to_owned))
                                .collect(),
                        );
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_shipped_example_passes_check() {
        let root = repo();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        let sample = root.join("deploy/systemd/cairn.toml");
        // The certificates the README's "Securing a cluster" makes, for cluster `prod`, in
        // the `pki/` folder its commands name.
        let pki = tempfile::tempdir().unwrap();
        let ca = cairn_tls::certs::create_ca("prod", 30).unwrap();
        cairn_tls::certs::write_issued(pki.path(), "cairn-ca", &ca, false).unwrap();
        for id in 1..=3 {
            let node = cairn_tls::certs::create_node_cert(
                &ca.cert_pem,
                &ca.key_pem,
                "prod",
                id,
                &[],
                &[],
                30,
            )
            .unwrap();
            cairn_tls::certs::write_issued(pki.path(), &format!("node-{id}"), &node, false)
                .unwrap();
        }
        let pki_dir = format!("{}/", pki.path().display());
        // The deployment files' certificates, of cluster `cairn`: the compose volume and the
        // Kubernetes Secret at /certs, the systemd sample's /etc/cairn/tls.
        let certs = tempfile::tempdir().unwrap();
        let ca = cairn_tls::certs::create_ca("cairn", 30).unwrap();
        cairn_tls::certs::write_issued(certs.path(), "cairn-ca", &ca, false).unwrap();
        for id in 1..=3 {
            let node = cairn_tls::certs::create_node_cert(
                &ca.cert_pem,
                &ca.key_pem,
                "cairn",
                id,
                &[],
                &[],
                30,
            )
            .unwrap();
            cairn_tls::certs::write_issued(certs.path(), &format!("node-{id}"), &node, false)
                .unwrap();
        }
        let certs_dir = format!("{}/", certs.path().display());
        let deployed = |a: &str| {
            a.replace("/certs/", &certs_dir)
                .replace("/etc/cairn/tls/", &certs_dir)
        };
        // Each TOML file as installed: its certificate paths where the test made them.
        let toml_copies = tempfile::tempdir().unwrap();
        let toml_copy = |path: &Path| {
            let copy = toml_copies.path().join(path.file_name().unwrap());
            std::fs::write(&copy, deployed(&read(path))).unwrap();
            copy
        };
        let installed_sample = toml_copy(&sample);
        // The Cloud Map credentials file the README's example writes first.
        let cloudmap_keys = toml_copies.path().join("cloudmap.toml");
        std::fs::write(
            &cloudmap_keys,
            "[[key]]\naccess_key_id = \"AKIDCAIRNEXAMPLE\"\nsecret_access_key = \"change-me\"\n",
        )
        .unwrap();
        // The sample configuration in the place the unit and the docs install it.
        let installed = |a: &str| {
            let a = a
                .replace("pki/", &pki_dir)
                .replace("/etc/cairn/cairn.toml", installed_sample.to_str().unwrap());
            if a == "cloudmap.toml" {
                cloudmap_keys.display().to_string()
            } else {
                a
            }
        };
        let yaml_strings = |v: &serde_yaml::Value| -> Vec<String> {
            v.as_sequence()
                .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let no_env = BTreeMap::new();
        let mut cases: Vec<(String, Vec<String>, BTreeMap<String, String>)> = Vec::new();

        // Compose: each service's command with its environment.
        let mut compose: serde_yaml::Value =
            serde_yaml::from_str(&read(&root.join("deploy/docker-compose.yml"))).unwrap();
        compose.apply_merge().unwrap();
        for (name, service) in compose["services"].as_mapping().unwrap() {
            // The certificate steps run `cairn tls` (run by deploy::t10 in the tests of the
            // binary); the nodes run `cairn agent`.
            if yaml_strings(&service["command"])
                .first()
                .map(String::as_str)
                != Some("agent")
            {
                continue;
            }
            let env = service["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_owned(),
                        deployed(v.as_str().unwrap()),
                    )
                })
                .collect();
            let what = format!("docker-compose.yml {}", name.as_str().unwrap());
            cases.push((what, yaml_strings(&service["command"]), env));
        }

        // Kubernetes: the StatefulSet's arguments, in each of its pods.
        let text = read(&root.join("deploy/kubernetes/cairn.yaml"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            if doc["kind"] != "StatefulSet" {
                continue;
            }
            let args: Vec<String> =
                yaml_strings(&doc["spec"]["template"]["spec"]["containers"][0]["args"])
                    .iter()
                    .map(|a| deployed(a))
                    .collect();
            for ordinal in 0..doc["spec"]["replicas"].as_u64().unwrap() {
                let pod = format!("{}-{ordinal}", doc["metadata"]["name"].as_str().unwrap());
                let env = BTreeMap::from([("HOSTNAME".to_owned(), pod.clone())]);
                cases.push((format!("kubernetes pod {pod}"), args.clone(), env));
            }
        }

        // systemd: the unit's ExecStart.
        let unit = read(&root.join("deploy/systemd/cairn.service"));
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let args = exec.split_whitespace().skip(1).map(installed).collect();
        cases.push(("cairn.service ExecStart".into(), args, no_env.clone()));

        // The image's default command.
        let dockerfile = read(&root.join("deploy/Dockerfile"));
        let cmd = dockerfile
            .lines()
            .find_map(|l| l.strip_prefix("CMD "))
            .unwrap();
        cases.push((
            "Dockerfile CMD".into(),
            serde_json::from_str(cmd).unwrap(),
            no_env.clone(),
        ));

        // Every TOML file under deploy/, as --config, and every command line in the docs.
        let mut docs = vec![root.join("README.md")];
        for path in files(&root.join("deploy")) {
            match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => {
                    let copy = toml_copy(&path);
                    let args = strings(&["agent", "--config", copy.to_str().unwrap()]);
                    cases.push((path.display().to_string(), args, no_env.clone()));
                }
                Some("md") => docs.push(path),
                _ => {}
            }
        }
        for doc in &docs {
            for args in markdown_command_lines(&read(doc)) {
                let args = args.iter().map(|a| installed(a)).collect();
                cases.push((doc.display().to_string(), args, no_env.clone()));
            }
        }

        let mut failed = Vec::new();
        for (what, args, env) in &cases {
            match check(args, env) {
                Ok(config) => eprintln!(
                    "ok: {what}: cairn {} -> node {}",
                    args.join(" "),
                    config.node_id
                ),
                Err(e) => failed.push(format!("{what}: `cairn {}`: {e}", args.join(" "))),
            }
        }
        assert!(failed.is_empty(), "refused:\n{}", failed.join("\n"));
        for source in [
            "docker-compose.yml",
            "kubernetes",
            "cairn.service",
            "Dockerfile",
            "cairn.toml",
            "README.md",
            "systemd/README.md",
        ] {
            assert!(
                cases.iter().any(|(what, _, _)| what.contains(source)),
                "no example found in {source}"
            );
        }
    }

    #[test]
    fn a_broken_example_would_be_caught() {
        let env = BTreeMap::from([("CAIRN_NODE_ID".to_owned(), "9".to_owned())]);
        let argv = strings(&[
            "agent",
            "--data-dir=/d",
            "--peers=1=a:1,2=b:2",
            "--insecure-rpc",
        ]);
        assert!(check(&argv, &env).unwrap_err().contains("--peers"));
        let env = BTreeMap::from([("CAIRN_NODE_ID".to_owned(), "2".to_owned())]);
        assert_eq!(check(&argv, &env).unwrap().node_id, 2);
        let env = BTreeMap::from([("CAIRN_DEV".to_owned(), "yes".to_owned())]);
        assert!(check(&strings(&["agent"]), &env).is_err());
        let lines = markdown_command_lines(
            "`cairn agent` runs; `cairn agent --help` lists flags.\n```sh\nP=1=h:1\nfor i in 1 2; do\n  cairn agent --node-id $i \\\n    --peers $P &\ndone\n```\n",
        );
        assert_eq!(
            lines,
            [
                strings(&["agent", "--node-id", "1", "--peers", "1=h:1"]),
                strings(&["agent", "--node-id", "2", "--peers", "1=h:1"]),
            ]
        );
    }
}
