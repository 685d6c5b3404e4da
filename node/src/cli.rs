//! The operator subcommands: `cairn members`, `services`, `instances`, `register`, `deregister`,
//! `health set`, `watch`, and `tls` (certificates, in [`tls`]). Aligned tables by default,
//! `--json` for programs; exit 0 on success, 1 on an error, 64 on bad usage.

pub mod acl;
pub mod operator;
pub mod snapshot;
pub mod tls;

use std::collections::BTreeMap;
use std::process::ExitCode;

use cairn_client::{
    CheckKind, CheckRegistration, Client, ClientError, ErrorCode, HealthStatus,
    InstanceRegistration, ReadOptions, WatchOptions,
};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Where to find the cluster, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// HTTP address of one or more nodes, comma-separated; tried in turn.
    #[arg(
        long,
        env = "CAIRN_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        global = true
    )]
    pub http_addr: String,
    /// A CA certificate (PEM) to trust for `https://` nodes, besides the public roots.
    #[arg(long, env = "CAIRN_CACERT", value_name = "FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for nodes that require one (their --tls-client-ca).
    #[arg(long, env = "CAIRN_CLIENT_CERT", value_name = "FILE", global = true)]
    pub client_cert: Option<std::path::PathBuf>,
    /// The key of --client-cert (PEM).
    #[arg(long, env = "CAIRN_CLIENT_KEY", value_name = "FILE", global = true)]
    pub client_key: Option<std::path::PathBuf>,
    /// The ACL token's secret to send (prefer CAIRN_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(
        long,
        env = "CAIRN_TOKEN",
        value_name = "SECRET",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the ACL token's secret.
    #[arg(long, env = "CAIRN_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    /// The token to send: --token, else the content of --token-file.
    fn token(&self) -> Result<Option<String>, Failed> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(usage("give --token or --token-file, not both")),
            (Some(t), None) => Ok(Some(t.trim().to_owned())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
                let t = text.trim();
                if t.is_empty() || t.contains(char::is_whitespace) {
                    return Err(usage(format!(
                        "--token-file {}: does not hold one token secret",
                        path.display()
                    )));
                }
                Ok(Some(t.to_owned()))
            }
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum MembersAction {
    /// Remove a node from the cluster.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum HealthAction {
    /// Set an instance's custom health.
    Set {
        service: String,
        id: String,
        /// passing, warning or critical.
        status: String,
        #[arg(long)]
        output: Option<String>,
    },
}

/// `cairn register` flags.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    pub service: String,
    pub id: String,
    #[arg(long)]
    pub address: String,
    #[arg(long)]
    pub port: u32,
    /// A tag; repeat for several.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// `key=value`; repeat for several.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    #[arg(long)]
    pub weight: Option<u32>,
    /// An HTTP check of this URL.
    #[arg(long)]
    pub http_check: Option<String>,
    /// A TCP check of the instance's address and port.
    #[arg(long)]
    pub tcp_check: bool,
    /// A TTL check with this TTL (e.g. 30s); pass it with heartbeats.
    #[arg(long)]
    pub ttl_check: Option<String>,
    /// Interval of the HTTP or TCP check.
    #[arg(long)]
    pub interval: Option<String>,
    /// Time-out of the HTTP or TCP check.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Remove the instance after its check has been critical this long.
    #[arg(long)]
    pub deregister_after: Option<String>,
}

/// The operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the cluster's members (or remove one).
    Members {
        #[command(subcommand)]
        action: Option<MembersAction>,
    },
    /// List services with instance counts by health.
    Services,
    /// List a service's instances.
    Instances {
        service: String,
        /// Only passing instances.
        #[arg(long)]
        passing: bool,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Register (or replace) an instance.
    Register(RegisterArgs),
    /// Deregister an instance.
    Deregister { service: String, id: String },
    /// Set an instance's health.
    Health {
        #[command(subcommand)]
        action: HealthAction,
    },
    /// Ask a node's DNS interface (UDP) and print the records.
    Lookup {
        /// e.g. web.service.cairn
        name: String,
        /// A, AAAA or SRV.
        #[arg(long = "type", default_value = "A")]
        rtype: String,
        #[arg(long, env = "CAIRN_DNS_ADDR", default_value = "127.0.0.1:8600")]
        dns_addr: String,
    },
    /// Print a service's instances on every change, until interrupted.
    Watch {
        service: String,
        #[arg(long)]
        passing: bool,
    },
    /// Make a CA and node and client certificates for a new cluster's mutual TLS.
    Tls {
        #[command(subcommand)]
        action: tls::TlsAction,
    },
    /// Access control: bootstrap, tokens, policies.
    Acl {
        #[command(subcommand)]
        action: acl::AclAction,
    },
    /// The leader's view of replication; lost-quorum recovery of a stopped node.
    Operator {
        #[command(subcommand)]
        action: operator::OperatorAction,
    },
    /// Backups: save the registry to a file, inspect a file, restore one.
    Snapshot {
        #[command(subcommand)]
        action: snapshot::SnapshotAction,
    },
    /// The most recent changes made through the API: who (token accessor), what, when.
    Audit {
        /// Only the last N entries.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Exit code for bad usage, as for the agent.
const EXIT_USAGE: u8 = 64;

/// A failure, with the exit code it maps to.
struct Failed {
    code: u8,
    message: String,
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        let code = match e.code() {
            Some(ErrorCode::InvalidArgument) => EXIT_USAGE,
            _ => 1,
        };
        let message = match &e {
            ClientError::Unreachable { tried, last } => format!(
                "no Cairn node reachable at {tried} (set --http-addr or CAIRN_HTTP_ADDR): {last}"
            ),
            other => other.to_string(),
        };
        Failed { code, message }
    }
}

fn usage(message: impl Into<String>) -> Failed {
    Failed {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

/// Runs one command; prints its output or its error.
pub async fn run(target: Target, cmd: Command) -> ExitCode {
    let cmd = match cmd {
        // Files only: no node to reach.
        Command::Tls { action } => return finish(tls::run(&target, action)),
        Command::Operator {
            action: operator::OperatorAction::Recover(args),
        } => return finish(operator::recover(&target, args)),
        Command::Snapshot {
            action: snapshot::SnapshotAction::Inspect { file },
        } => return finish(snapshot::inspect(&target, &file)),
        other => other,
    };
    let addrs: Vec<&str> = target.http_addr.split(',').collect();
    // A person is waiting: try each node once more than there are nodes, not the library's
    // default budget (a write refused for want of a leader already took the write time-out).
    let policy = cairn_client::RetryPolicy {
        attempts: addrs.len() as u32 + 1,
        ..cairn_client::RetryPolicy::default()
    };
    let tls = cairn_client::TlsOptions {
        ca_file: target.ca_file.clone(),
        client_cert: target.client_cert.clone(),
        client_key: target.client_key.clone(),
    };
    let token = match target.token() {
        Ok(t) => t,
        Err(f) => return finish(Err(f)),
    };
    let client = Client::with_tls(addrs, policy, &tls).and_then(|c| match &token {
        Some(t) => c.with_token(t),
        None => Ok(c),
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    finish(execute(&client, &target, cmd).await)
}

fn finish(result: Result<(), Failed>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("cairn: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

/// Columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

async fn execute(client: &Client, target: &Target, cmd: Command) -> Result<(), Failed> {
    match cmd {
        Command::Acl { action } => acl::run(client, target, action).await?,
        Command::Audit { limit } => acl::audit(client, target, limit).await?,
        Command::Operator { action } => operator::run(client, target, action).await?,
        Command::Snapshot { action } => snapshot::run(client, target, action).await?,
        Command::Members { action: None } => {
            let status = client.cluster().await?;
            // Best effort: the leader's view; `unknown` without it (the container health
            // check runs this, and must not fail for want of a leader).
            let health = operator::health_by_id(client).await;
            let health_of = |id: u64| health.get(&id).map_or("unknown", String::as_str);
            if target.json {
                #[derive(Serialize)]
                struct Members<'a> {
                    #[serde(flatten)]
                    status: &'a cairn_client::ClusterStatus,
                    /// Each member's health as the leader sees it, by id.
                    health: &'a BTreeMap<u64, String>,
                }
                print_json(&Members {
                    status: &status,
                    health: &health,
                });
                return Ok(());
            }
            let rows: Vec<Vec<String>> = status
                .members
                .iter()
                .map(|m| {
                    let role = if status.leader == Some(m.id) {
                        "leader"
                    } else if m.voter {
                        "voter"
                    } else {
                        "learner"
                    };
                    vec![
                        m.id.to_string(),
                        m.rpc_addr.clone(),
                        role.to_owned(),
                        health_of(m.id).to_owned(),
                    ]
                })
                .collect();
            println!("{}", table(&["ID", "RPC ADDRESS", "ROLE", "HEALTH"], &rows));
        }
        Command::Members {
            action: Some(MembersAction::Remove { id }),
        } => {
            let w = client.remove_member(id).await?;
            report_write(target, &w, &format!("removed node {id}"));
        }
        Command::Services => {
            let list = client.services(&ReadOptions::default()).await?.value;
            if target.json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.instances.to_string(),
                        s.passing.to_string(),
                        s.warning.to_string(),
                        s.critical.to_string(),
                        s.tags.join(","),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &[
                        "SERVICE",
                        "INSTANCES",
                        "PASSING",
                        "WARNING",
                        "CRITICAL",
                        "TAGS"
                    ],
                    &rows
                )
            );
        }
        Command::Instances {
            service,
            passing,
            tag,
        } => {
            let opts = ReadOptions {
                passing_only: passing,
                tag,
                ..ReadOptions::default()
            };
            let s = client.service(&service, &opts).await?.value;
            print_instances(target, &s);
        }
        Command::Register(args) => {
            let body = registration(&args)?;
            let w = client.register(&args.service, &args.id, &body).await?;
            report_write(
                target,
                &w,
                &format!("registered {}/{}", args.service, args.id),
            );
        }
        Command::Deregister { service, id } => {
            let w = client.deregister(&service, &id).await?;
            report_write(target, &w, &format!("deregistered {service}/{id}"));
        }
        Command::Health {
            action:
                HealthAction::Set {
                    service,
                    id,
                    status,
                    output,
                },
        } => {
            let status: HealthStatus = serde_json::from_value(serde_json::Value::String(
                status.clone(),
            ))
            .map_err(|_| usage(format!("{status:?} is not passing, warning or critical")))?;
            let w = client.set_health(&service, &id, status, output).await?;
            report_write(target, &w, &format!("{service}/{id} is {status}"));
        }
        Command::Lookup {
            name,
            rtype,
            dns_addr,
        } => lookup(target, &name, &rtype, &dns_addr).await?,
        Command::Tls { action } => tls::run(target, action)?,
        Command::Watch { service, passing } => {
            use futures::StreamExt;
            let stream = cairn_client::watch(
                client.clone(),
                service,
                WatchOptions {
                    passing_only: passing,
                    tag: None,
                },
            );
            futures::pin_mut!(stream);
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(Ok(s)) => {
                            if target.json {
                                println!("{}", serde_json::to_string(&s).unwrap_or_default());
                            } else {
                                println!("index {}", s.index);
                                print_instances(target, &s);
                                println!();
                            }
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(()),
                    },
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

async fn lookup(target: &Target, name: &str, rtype: &str, server: &str) -> Result<(), Failed> {
    use cairn_dns::wire;
    let qtype = match rtype.to_ascii_uppercase().as_str() {
        "A" => wire::TYPE_A,
        "AAAA" => wire::TYPE_AAAA,
        "SRV" => wire::TYPE_SRV,
        other => return Err(usage(format!("--type {other}: use A, AAAA or SRV"))),
    };
    let server: std::net::SocketAddr = server
        .parse()
        .map_err(|_| usage(format!("--dns-addr {server:?} is not IP:PORT")))?;
    let mut q = vec![0x1c, 0x2b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let fqdn = wire::DomainName::new(name)
        .map_err(|e| usage(format!("{name:?} is not a domain name: {e}")))?;
    wire::push_name(&mut q, &fqdn);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    let failed = |m: String| Failed {
        code: 1,
        message: m,
    };
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| failed(format!("cannot open a UDP socket: {e}")))?;
    sock.send_to(&q, server)
        .await
        .map_err(|e| failed(format!("cannot send to {server}: {e}")))?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(std::time::Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .map_err(|_| failed(format!("no answer from {server} within 3 s")))?
        .map_err(|e| failed(format!("reading the answer from {server}: {e}")))?;
    let (rcode, truncated, answers) =
        wire::read_response(&buf[..n]).map_err(|e| failed(format!("bad answer: {e}")))?;
    let rcode_name = match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    };
    let type_name = |t: u16| match t {
        wire::TYPE_A => "A",
        wire::TYPE_AAAA => "AAAA",
        wire::TYPE_SRV => "SRV",
        wire::TYPE_CNAME => "CNAME",
        wire::TYPE_SOA => "SOA",
        wire::TYPE_NS => "NS",
        _ => "?",
    };
    if target.json {
        let records: Vec<serde_json::Value> = answers
            .iter()
            .map(|a| serde_json::json!({"name": a.name, "type": type_name(a.rtype), "ttl": a.ttl, "data": a.data}))
            .collect();
        print_json(
            &serde_json::json!({"rcode": rcode_name, "truncated": truncated, "records": records}),
        );
    } else {
        println!(
            "{rcode_name}{}",
            if truncated { " (truncated)" } else { "" }
        );
        let rows: Vec<Vec<String>> = answers
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    a.ttl.to_string(),
                    type_name(a.rtype).into(),
                    a.data.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            println!("{}", table(&["NAME", "TTL", "TYPE", "DATA"], &rows));
        }
    }
    if rcode == 0 {
        Ok(())
    } else {
        Err(failed(format!("{name}: {rcode_name}")))
    }
}

fn print_instances(target: &Target, s: &cairn_client::ServiceInstances) {
    if target.json {
        print_json(s);
        return;
    }
    let rows: Vec<Vec<String>> = s
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.address.clone(),
                i.port.to_string(),
                i.health.to_string(),
                i.weight.to_string(),
                i.tags.join(","),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["ID", "ADDRESS", "PORT", "HEALTH", "WEIGHT", "TAGS"],
            &rows
        )
    );
}

fn report_write(target: &Target, w: &cairn_client::WriteResult, what: &str) {
    if target.json {
        print_json(w);
    } else {
        println!("{what} (index {})", w.index);
    }
}

fn registration(a: &RegisterArgs) -> Result<InstanceRegistration, Failed> {
    let mut meta = BTreeMap::new();
    for m in &a.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| usage(format!("--meta {m:?} is not key=value")))?;
        meta.insert(k.to_owned(), v.to_owned());
    }
    let check = |kind: CheckKind| CheckRegistration {
        id: None,
        kind,
        url: None,
        method: None,
        headers: BTreeMap::new(),
        tls_skip_verify: false,
        output_body: false,
        target: None,
        ttl: None,
        interval: a.interval.clone(),
        timeout: a.timeout.clone(),
        rise: None,
        fall: None,
        initial_status: None,
        deregister_after: a.deregister_after.clone(),
    };
    let mut checks = Vec::new();
    if let Some(url) = &a.http_check {
        checks.push(CheckRegistration {
            url: Some(url.clone()),
            ..check(CheckKind::Http)
        });
    }
    if a.tcp_check {
        checks.push(check(CheckKind::Tcp));
    }
    if let Some(ttl) = &a.ttl_check {
        checks.push(CheckRegistration {
            ttl: Some(ttl.clone()),
            interval: None,
            timeout: None,
            ..check(CheckKind::Ttl)
        });
    }
    if checks.is_empty() && (a.interval.is_some() || a.timeout.is_some()) {
        return Err(usage(
            "--interval and --timeout need --http-check or --tcp-check",
        ));
    }
    Ok(InstanceRegistration {
        address: a.address.clone(),
        port: a.port,
        tags: a.tags.clone(),
        meta,
        weight: a.weight,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["22".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  NAME\n1   alpha\n22  b");
    }
}
