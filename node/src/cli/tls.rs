//! `cairn tls ca create` and `cairn tls cert create`: a CA, and node and client certificates
//! signed by it, as PEM files for a new cluster's mutual TLS. Files only: no node is reached.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cairn_tls::certs::{self, CertError, Issued, Written};
use clap::{ArgGroup, Args, Subcommand};

use super::{print_json, usage, Failed, Target, EXIT_USAGE};
use crate::config::DEFAULT_CLUSTER;

#[derive(Debug, Subcommand)]
pub enum TlsAction {
    /// The cluster's certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Node and client certificates, signed by the cluster's CA.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Make a new CA: cairn-ca.pem, for every node and client, and cairn-ca-key.pem, to keep
    /// secret.
    Create(CaCreateArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Make a node's or a client's certificate and key, signed by the CA.
    Create(CertCreateArgs),
}

/// `cairn tls ca create` flags.
#[derive(Debug, Args)]
pub struct CaCreateArgs {
    /// Folder to write cairn-ca.pem and cairn-ca-key.pem to (made if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    #[arg(
        long,
        env = "CAIRN_CLUSTER",
        value_name = "NAME",
        default_value = DEFAULT_CLUSTER,
        help = "Cluster name, as the agents' --cluster: one DNS label, since node names are \
                node-<id>.<cluster>.cairn"
    )]
    pub cluster: String,
    /// Days the CA is valid.
    #[arg(long, value_name = "N", default_value_t = certs::DEFAULT_CA_DAYS)]
    pub days: u32,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
    /// Keep a CA that is already there (checked: a CA of this cluster, valid, with its key)
    /// and succeed, so that an init step can run on every start without minting a new one.
    #[arg(long, conflicts_with = "force")]
    pub keep_existing: bool,
}

/// `cairn tls cert create` flags.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("subject")
        .required(true)
        .multiple(true)
        .args(["node", "client"])
))]
pub struct CertCreateArgs {
    #[arg(
        long,
        value_name = "ID",
        value_delimiter = ',',
        help = "A node's certificate (node-<ID>.pem), for node-<ID>.<cluster>.cairn, localhost \
                and loopback, as server and client of mutual TLS; several with 1,2,3"
    )]
    pub node: Vec<u64>,
    #[arg(
        long,
        value_name = "NAME",
        help = "A client's certificate (client-<NAME>.pem), for client-<NAME>.<cluster>.cairn, \
                as a client only. NAME: a-z, 0-9 and '-'"
    )]
    pub client: Option<String>,
    /// Cluster name, as the agents' --cluster and the CA's.
    #[arg(long, env = "CAIRN_CLUSTER", value_name = "NAME", default_value = DEFAULT_CLUSTER)]
    pub cluster: String,
    /// The CA certificate [default: DIR/cairn-ca.pem].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The CA key [default: DIR/cairn-ca-key.pem].
    #[arg(long, value_name = "FILE")]
    pub ca_key: Option<PathBuf>,
    /// Another DNS name the node's HTTPS API and RPC are reached at (its host name); repeat
    /// for several. `{id}` in it stands for the node id: `--node 1,2 --dns-name cairn{id}`.
    #[arg(long = "dns-name", value_name = "NAME", requires = "node")]
    pub dns_names: Vec<String>,
    /// An IP address the node is reached at; repeat for several.
    #[arg(long = "ip", value_name = "IP", requires = "node")]
    pub ips: Vec<IpAddr>,
    /// Folder to write the certificate and key to (made if missing), and to find the CA in.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Days the certificate is valid (cut to the CA's end if that comes first).
    #[arg(long, value_name = "N", default_value_t = certs::DEFAULT_CERT_DAYS)]
    pub days: u32,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
    /// Keep a certificate that is already there (checked: signed by this CA, valid, naming
    /// the node or client, with its key) and succeed; a bad one is still an error.
    #[arg(long, conflicts_with = "force")]
    pub keep_existing: bool,
}

/// Whom a certificate is for.
enum Subject {
    Node(u64),
    Client(String),
}

impl Subject {
    /// The identity name its certificate carries: `node-3.prod.cairn`.
    fn name(&self, cluster: &str) -> String {
        match self {
            Subject::Node(id) => certs::node_name(cluster, *id),
            Subject::Client(name) => certs::client_name(cluster, name),
        }
    }

    /// The file names' stem: `node-3`, `client-ops`.
    fn stem(&self) -> String {
        match self {
            Subject::Node(id) => format!("node-{id}"),
            Subject::Client(name) => format!("client-{name}"),
        }
    }
}

/// `{id}` in a `--dns-name`: the node's id.
const NODE_ID_PLACEHOLDER: &str = "{id}";

/// Runs a `cairn tls` command.
pub(super) fn run(target: &Target, action: TlsAction) -> Result<(), Failed> {
    match action {
        TlsAction::Ca {
            action: CaAction::Create(args),
        } => ca_create(target, args),
        TlsAction::Cert {
            action: CertAction::Create(args),
        } => cert_create(target, args),
    }
}

fn ca_create(target: &Target, a: CaCreateArgs) -> Result<(), Failed> {
    let no_ca = Path::new("");
    if a.keep_existing {
        let pair = pair_in(&a.dir, certs::CA_FILE_STEM);
        let check = || {
            let cert = read_pem(&pair.cert)?;
            let key = read_pem(&pair.key)?;
            certs::check_ca(&cert, &key, &a.cluster).map_err(|e| e.to_string())
        };
        if keep(target, &pair, "the CA", check)? {
            return Ok(());
        }
    }
    let ca = certs::create_ca(&a.cluster, a.days).map_err(|e| failure(e, no_ca, no_ca))?;
    let written = certs::write_issued(&a.dir, certs::CA_FILE_STEM, &ca, a.force)
        .map_err(|e| failure(e, no_ca, no_ca))?;
    report(
        target,
        &ca,
        &written,
        "the CA certificate: every node and client trusts it",
        "the CA key: keep it secret, and off the nodes",
    );
    if !target.json {
        let mut flags = String::new();
        if a.cluster != DEFAULT_CLUSTER {
            flags.push_str(&format!(" --cluster {}", a.cluster));
        }
        if a.dir != Path::new(".") {
            flags.push_str(&format!(" --dir {}", a.dir.display()));
        }
        println!(
            "next, for each node: cairn tls cert create{flags} --node <ID> --dns-name <its host \
             name> (--client <NAME> for a program or an operator)"
        );
    }
    Ok(())
}

fn cert_create(target: &Target, a: CertCreateArgs) -> Result<(), Failed> {
    let ca_path =
        a.ca.clone()
            .unwrap_or_else(|| a.dir.join(certs::CA_CERT_FILE));
    let key_path = a
        .ca_key
        .clone()
        .unwrap_or_else(|| a.dir.join(certs::CA_KEY_FILE));
    let fail = |e: CertError| failure(e, &ca_path, &key_path);
    let subjects: Vec<Subject> = a
        .node
        .iter()
        .map(|id| Subject::Node(*id))
        .chain(a.client.iter().map(|name| Subject::Client(name.clone())))
        .collect();
    let dns_names = |id: u64| -> Vec<String> {
        a.dns_names
            .iter()
            .map(|n| n.replace(NODE_ID_PLACEHOLDER, &id.to_string()))
            .collect()
    };
    // Bad flags first, for every subject: they say more than a missing CA file, and nothing is
    // written when one of them is wrong.
    for subject in &subjects {
        match subject {
            Subject::Node(id) => {
                certs::check_node_cert_args(&a.cluster, *id, &dns_names(*id), a.days)
            }
            Subject::Client(name) => certs::check_client_cert_args(&a.cluster, name, a.days),
        }
        .map_err(fail)?;
    }
    if subjects.is_empty() {
        // clap's group requires one of them.
        return Err(usage("give --node ID or --client NAME"));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = a.node.iter().find(|id| !seen.insert(**id)) {
        return Err(usage(format!("--node: {twice} is given twice")));
    }
    // All or nothing: a file in the way of a later subject stops the command before an earlier
    // one is written.
    if !a.force && !a.keep_existing {
        for subject in &subjects {
            let pair = pair_in(&a.dir, &subject.stem());
            for path in [pair.cert, pair.key] {
                if path.symlink_metadata().is_ok() {
                    return Err(fail(CertError::Exists { path }));
                }
            }
        }
    }
    let ca_pem = read_ca_file(&ca_path, "--ca")?;
    let key_pem = read_ca_file(&key_path, "--ca-key")?;
    warn_if_readable_by_others(&key_path);
    let mut reports = Vec::new();
    for subject in &subjects {
        let stem = subject.stem();
        if a.keep_existing {
            let pair = pair_in(&a.dir, &stem);
            let name = subject.name(&a.cluster);
            let check = || {
                let checked = match subject {
                    Subject::Node(_) => {
                        cairn_tls::identity::check_own_certificate(&ca_path, &pair.cert, &name)
                    }
                    Subject::Client(_) => {
                        cairn_tls::identity::check_client_certificate(&ca_path, &pair.cert, &name)
                    }
                };
                // The key goes with the certificate (rustls compares their public keys).
                checked
                    .and_then(|()| {
                        cairn_tls::config::client_config(&ca_path, Some((&pair.cert, &pair.key)))
                            .map(drop)
                    })
                    .map_err(|e| e.to_string())
            };
            if let Some(kept) = kept(&pair, &name, check)? {
                reports.push(kept);
                continue;
            }
        }
        let issued = match subject {
            Subject::Node(id) => certs::create_node_cert(
                &ca_pem,
                &key_pem,
                &a.cluster,
                *id,
                &dns_names(*id),
                &a.ips,
                a.days,
            ),
            Subject::Client(name) => {
                certs::create_client_cert(&ca_pem, &key_pem, &a.cluster, name, a.days)
            }
        }
        .map_err(fail)?;
        let written = certs::write_issued(&a.dir, &stem, &issued, a.force).map_err(fail)?;
        let until = if issued.clamped_to_ca {
            format!("valid until {}, the CA's end", issued.not_after.date())
        } else {
            format!("valid until {}", issued.not_after.date())
        };
        reports.push(Report::Issued {
            cert_note: format!("certificate for {}, {until}", issued.name),
            issued,
            written,
        });
    }
    if target.json {
        let values: Vec<serde_json::Value> = reports.iter().map(Report::json).collect();
        match <[serde_json::Value; 1]>::try_from(values) {
            // One subject, one object (as before several could be asked for).
            Ok([one]) => print_json(&one),
            Err(values) => print_json(&values),
        }
    } else {
        for r in &reports {
            r.print("its private key");
        }
    }
    Ok(())
}

/// What `cert create` did for one subject.
enum Report {
    Issued {
        issued: Issued,
        written: Written,
        cert_note: String,
    },
    Kept {
        name: String,
        pair: Written,
    },
}

impl Report {
    fn json(&self) -> serde_json::Value {
        match self {
            Report::Issued {
                issued, written, ..
            } => issued_json(issued, written),
            Report::Kept { name, pair } => serde_json::json!({
                "name": name,
                "cert": pair.cert,
                "key": pair.key,
                "kept": true,
            }),
        }
    }

    fn print(&self, key_note: &str) {
        match self {
            Report::Issued {
                written, cert_note, ..
            } => print_written(written, cert_note, key_note),
            Report::Kept { name, pair } => print_kept(name, pair),
        }
    }
}

/// `<stem>.pem` and `<stem>-key.pem` in `dir`.
fn pair_in(dir: &Path, stem: &str) -> Written {
    let (cert, key) = certs::pem_file_names(stem);
    Written {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

fn read_pem(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// For --keep-existing: `Some` when both files of `pair` are there and pass `check` (keep
/// them), `None` when neither is (make them). One file without the other, or a pair that
/// fails the check, is an error: keeping it would start a cluster that cannot handshake, and
/// replacing it silently could replace a CA that nodes trust.
fn kept(
    pair: &Written,
    what: &str,
    check: impl FnOnce() -> Result<(), String>,
) -> Result<Option<Report>, Failed> {
    let there = |p: &Path| p.symlink_metadata().is_ok();
    match (there(&pair.cert), there(&pair.key)) {
        (false, false) => Ok(None),
        (true, true) => match check() {
            Ok(()) => Ok(Some(Report::Kept {
                name: what.to_owned(),
                pair: pair.clone(),
            })),
            Err(e) => Err(Failed {
                code: 1,
                message: format!(
                    "--keep-existing: {} is there but cannot be kept: {e} (remove it, or replace it with --force)",
                    pair.cert.display()
                ),
            }),
        },
        (cert, _) => {
            let (present, missing) = if cert {
                (&pair.cert, &pair.key)
            } else {
                (&pair.key, &pair.cert)
            };
            Err(Failed {
                code: 1,
                message: format!(
                    "--keep-existing: {} is there without {} (remove it, or replace both with --force)",
                    present.display(),
                    missing.display()
                ),
            })
        }
    }
}

/// [`kept`] for the CA, printing what was kept: `true` when there is nothing left to do.
fn keep(
    target: &Target,
    pair: &Written,
    what: &str,
    check: impl FnOnce() -> Result<(), String>,
) -> Result<bool, Failed> {
    let Some(report) = kept(pair, what, check)? else {
        return Ok(false);
    };
    if target.json {
        print_json(&report.json());
    } else {
        report.print("its key");
    }
    Ok(true)
}

fn read_ca_file(path: &Path, flag: &str) -> Result<String, Failed> {
    std::fs::read_to_string(path).map_err(|e| {
        let mut message = format!("{flag} {}: cannot read it: {e}", path.display());
        if e.kind() == std::io::ErrorKind::NotFound {
            message.push_str(
                " (make a CA with `cairn tls ca create`, or name its files with --ca and --ca-key)",
            );
        }
        Failed { code: 1, message }
    })
}

/// The CA key signs for the whole cluster: say so when other users can read it.
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "cairn: warning: {} can be read by other users (mode {mode:o}): chmod 600 it",
                path.display()
            );
        }
    }
}

/// The error, prefixed with the flag or CA file it is about; 64 for bad flags, 1 otherwise.
fn failure(e: CertError, ca: &Path, ca_key: &Path) -> Failed {
    let about = match &e {
        CertError::InvalidCluster(_) | CertError::ClusterNotDnsLabel { .. } => {
            "--cluster".to_owned()
        }
        CertError::InvalidNodeId => "--node".to_owned(),
        CertError::InvalidClientName(_) => "--client".to_owned(),
        CertError::InvalidDays(_) => "--days".to_owned(),
        CertError::InvalidDnsName { .. } => "--dns-name".to_owned(),
        CertError::ClusterMismatch { .. } => format!("--cluster (CA {})", ca.display()),
        CertError::CaCert(_) | CertError::NotCa { .. } | CertError::CaExpired(_) => {
            format!("--ca {}", ca.display())
        }
        CertError::CaKey(_) | CertError::CaKeyMismatch => {
            format!("--ca-key {}", ca_key.display())
        }
        // The rest name their file, or are about none.
        _ => String::new(),
    };
    let mut message = if about.is_empty() {
        e.to_string()
    } else {
        format!("{about}: {e}")
    };
    match &e {
        CertError::Exists { .. } => message.push_str(" (--force replaces it)"),
        CertError::ClusterMismatch { ca_cluster, .. } => {
            message.push_str(&format!(": pass --cluster {ca_cluster}"))
        }
        _ => {}
    }
    Failed {
        code: if e.is_bad_input() { EXIT_USAGE } else { 1 },
        message,
    }
}

fn report(target: &Target, issued: &Issued, written: &Written, cert_note: &str, key_note: &str) {
    if target.json {
        print_json(&issued_json(issued, written));
    } else {
        print_written(written, cert_note, key_note);
    }
}

fn issued_json(issued: &Issued, written: &Written) -> serde_json::Value {
    serde_json::json!({
        "name": issued.name,
        "cert": written.cert,
        "key": written.key,
        "valid_until": issued.not_after.date().to_string(),
        "valid_until_unix": issued.not_after.unix_timestamp(),
        "clamped_to_ca": issued.clamped_to_ca,
        "kept": false,
    })
}

fn print_written(written: &Written, cert_note: &str, key_note: &str) {
    let cert = written.cert.display().to_string();
    let key = written.key.display().to_string();
    let width = cert.len().max(key.len());
    println!("wrote {cert:<width$}  {cert_note}");
    println!("wrote {key:<width$}  {key_note} (mode 0600)");
}

fn print_kept(what: &str, pair: &Written) {
    let cert = pair.cert.display().to_string();
    let key = pair.key.display().to_string();
    let width = cert.len().max(key.len());
    println!("kept  {cert:<width$}  {what}: already there, checked (--keep-existing)");
    println!("kept  {key:<width$}");
}
