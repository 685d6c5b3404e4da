//! Certificates for test clusters, made the way a user makes them: with `cairn tls`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A CA and the certificates it signed, in one folder.
pub struct Pki {
    pub dir: PathBuf,
    pub cluster: String,
}

fn cairn(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn tls");
    assert!(
        out.status.success(),
        "cairn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA for cluster `cluster` in `dir`.
    pub fn new(dir: &Path, cluster: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display().to_string();
        cairn(&["tls", "ca", "create", "--dir", &d, "--cluster", cluster]);
        Pki {
            dir: dir.to_owned(),
            cluster: cluster.to_owned(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("cairn-ca.pem")
    }

    /// Makes (again, with `--force`) node `id`'s certificate; its (certificate, key) paths.
    pub fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        let d = self.dir.display().to_string();
        let id_s = id.to_string();
        cairn(&[
            "tls",
            "cert",
            "create",
            "--node",
            &id_s,
            "--dir",
            &d,
            "--cluster",
            &self.cluster,
            "--force",
        ]);
        (
            self.dir.join(format!("node-{id}.pem")),
            self.dir.join(format!("node-{id}-key.pem")),
        )
    }

    /// Makes client `name`'s certificate; its (certificate, key) paths.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.display().to_string();
        cairn(&[
            "tls",
            "cert",
            "create",
            "--client",
            name,
            "--dir",
            &d,
            "--cluster",
            &self.cluster,
            "--force",
        ]);
        (
            self.dir.join(format!("client-{name}.pem")),
            self.dir.join(format!("client-{name}-key.pem")),
        )
    }

    /// The agent flags of node `id` (making its certificate).
    pub fn agent_args(&self, id: u64) -> Vec<String> {
        let (cert, key) = self.node(id);
        vec![
            "--ca-file".into(),
            self.ca().display().to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]
    }

    /// An HTTPS client that trusts this CA and presents `identity` (certificate, key), reaching
    /// `name` (a certificate name such as `node-2.cairn.cairn`) at `addr`.
    pub fn client(
        &self,
        identity: Option<(&Path, &Path)>,
        name: &str,
        addr: std::net::SocketAddr,
    ) -> reqwest::Client {
        let ca = std::fs::read(self.ca()).unwrap();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(name, addr);
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).unwrap();
            pem.extend(std::fs::read(key).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}
