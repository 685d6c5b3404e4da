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
}

/// `cairn tls cert create` flags.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["node", "client"])))]
pub struct CertCreateArgs {
    #[arg(
        long,
        value_name = "ID",
        help = "A node's certificate (node-<ID>.pem), for node-<ID>.<cluster>.cairn, localhost \
                and loopback, as server and client of mutual TLS"
    )]
    pub node: Option<u64>,
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
    /// for several.
    #[arg(long = "dns-name", value_name = "NAME", conflicts_with = "client")]
    pub dns_names: Vec<String>,
    /// An IP address the node is reached at; repeat for several.
    #[arg(long = "ip", value_name = "IP", conflicts_with = "client")]
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
}

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
    // Bad flags first: they say more than a missing CA file.
    match (a.node, &a.client) {
        (Some(id), _) => certs::check_node_cert_args(&a.cluster, id, &a.dns_names, a.days),
        (None, Some(name)) => certs::check_client_cert_args(&a.cluster, name, a.days),
        (None, None) => Ok(()),
    }
    .map_err(fail)?;
    let ca_pem = read_ca_file(&ca_path, "--ca")?;
    let key_pem = read_ca_file(&key_path, "--ca-key")?;
    warn_if_readable_by_others(&key_path);
    let (issued, stem) = match (a.node, &a.client) {
        (Some(id), _) => (
            certs::create_node_cert(
                &ca_pem,
                &key_pem,
                &a.cluster,
                id,
                &a.dns_names,
                &a.ips,
                a.days,
            ),
            format!("node-{id}"),
        ),
        (None, Some(name)) => (
            certs::create_client_cert(&ca_pem, &key_pem, &a.cluster, name, a.days),
            format!("client-{name}"),
        ),
        // clap's group requires one of them.
        (None, None) => return Err(usage("give --node ID or --client NAME")),
    };
    let issued = issued.map_err(fail)?;
    let written = certs::write_issued(&a.dir, &stem, &issued, a.force).map_err(fail)?;
    let until = if issued.clamped_to_ca {
        format!("valid until {}, the CA's end", issued.not_after.date())
    } else {
        format!("valid until {}", issued.not_after.date())
    };
    report(
        target,
        &issued,
        &written,
        &format!("certificate for {}, {until}", issued.name),
        "its private key",
    );
    Ok(())
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
        print_json(&serde_json::json!({
            "name": issued.name,
            "cert": written.cert,
            "key": written.key,
            "valid_until": issued.not_after.date().to_string(),
            "valid_until_unix": issued.not_after.unix_timestamp(),
            "clamped_to_ca": issued.clamped_to_ca,
        }));
        return;
    }
    let cert = written.cert.display().to_string();
    let key = written.key.display().to_string();
    let width = cert.len().max(key.len());
    println!("wrote {cert:<width$}  {cert_note}");
    println!("wrote {key:<width$}  {key_note} (mode 0600)");
}
