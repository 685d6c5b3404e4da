//! `cairn tls ca create` and `cairn tls cert create` end to end: the files a new cluster needs,
//! their modes, no overwriting without `--force`, and exit 64 naming the flag for bad input.
//! What the certificates are worth under rustls is tested in cairn-tls (`tls/tests/certs.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use cairn_tls::certs;

fn cairn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(dir)
        .env_remove("CAIRN_CLUSTER")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_ca_two_nodes_and_a_client_for_a_new_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = cairn(dir, &["tls", "ca", "create", "--cluster", "prod"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("./cairn-ca.pem"), "{text}");
    assert!(text.contains("./cairn-ca-key.pem"), "{text}");
    assert!(
        text.contains("cairn tls cert create --cluster prod --node"),
        "the hint carries the cluster: {text}"
    );

    for (id, extra) in [("1", "cairn-1.example.net"), ("2", "cairn-2.example.net")] {
        let out = cairn(
            dir,
            &[
                "tls",
                "cert",
                "create",
                "--node",
                id,
                "--cluster",
                "prod",
                "--dns-name",
                extra,
                "--ip",
                "10.0.0.7",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(&format!("./node-{id}.pem")), "{text}");
        assert!(text.contains(&format!("node-{id}.prod.cairn")), "{text}");
    }
    let out = cairn(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "--client",
            "ops",
            "--cluster",
            "prod",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("client-ops.prod.cairn"));

    assert_eq!(
        files(dir),
        [
            "cairn-ca-key.pem",
            "cairn-ca.pem",
            "client-ops-key.pem",
            "client-ops.pem",
            "node-1-key.pem",
            "node-1.pem",
            "node-2-key.pem",
            "node-2.pem",
        ]
    );
    for stem in ["cairn-ca", "node-1", "node-2", "client-ops"] {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        assert_eq!(mode(&cert), 0o644, "{stem}");
        assert_eq!(mode(&key), 0o600, "{stem}");
        let cert = std::fs::read_to_string(cert).unwrap();
        let key = std::fs::read_to_string(key).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{stem}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{stem}");
    }
    // The CA the command wrote signs again: its key matches, and what it signs verifies
    // (cairn-tls checks each certificate with rustls before handing it out).
    let ca = std::fs::read_to_string(dir.join("cairn-ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("cairn-ca-key.pem")).unwrap();
    certs::create_node_cert(&ca, &ca_key, "prod", 3, &[], &[], 1).unwrap();
}

#[test]
fn files_in_another_folder_and_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let pki_arg = pki.to_str().unwrap();
    let out = cairn(
        tmp.path(),
        &["tls", "ca", "create", "--dir", pki_arg, "--days", "30"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("--dir {pki_arg}")),
        "{}",
        stdout(&out)
    );
    let out = cairn(
        tmp.path(),
        &[
            "--json", "tls", "cert", "create", "--node", "7", "--dir", pki_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "node-7.cairn.cairn");
    assert_eq!(v["cert"], pki.join("node-7.pem").to_str().unwrap());
    assert_eq!(v["key"], pki.join("node-7-key.pem").to_str().unwrap());
    // 365 days asked of a 30-day CA: cut to the CA's end.
    assert_eq!(v["clamped_to_ca"], true);
    assert_eq!(mode(&pki.join("node-7-key.pem")), 0o600);
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_eq!(cairn(dir, &["tls", "ca", "create"]).status.code(), Some(0));
    let ca = std::fs::read_to_string(dir.join("cairn-ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("cairn-ca-key.pem")).unwrap();

    let out = cairn(dir, &["tls", "ca", "create"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cairn-ca.pem") && err.contains("already exists"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("cairn-ca.pem")).unwrap(),
        ca
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("cairn-ca-key.pem")).unwrap(),
        ca_key
    );

    assert_eq!(
        cairn(dir, &["tls", "cert", "create", "--node", "1"])
            .status
            .code(),
        Some(0)
    );
    let node = std::fs::read_to_string(dir.join("node-1.pem")).unwrap();
    let out = cairn(dir, &["tls", "cert", "create", "--node", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("node-1.pem"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("node-1.pem")).unwrap(),
        node
    );

    let out = cairn(dir, &["tls", "cert", "create", "--node", "1", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(
        std::fs::read_to_string(dir.join("node-1.pem")).unwrap(),
        node
    );
    let out = cairn(dir, &["tls", "ca", "create", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(
        std::fs::read_to_string(dir.join("cairn-ca-key.pem")).unwrap(),
        ca_key
    );
    assert_eq!(mode(&dir.join("cairn-ca-key.pem")), 0o600);
}

#[test]
fn bad_tls_flags_exit_64_naming_the_flag_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["tls", "ca", "create", "--cluster", "prod_eu"],
            "--cluster",
        ),
        (vec!["tls", "ca", "create", "--cluster", "a b"], "--cluster"),
        (vec!["tls", "ca", "create", "--days", "0"], "--days"),
        (vec!["tls", "ca", "create", "--days", "forever"], "--days"),
        (vec!["tls", "cert", "create", "--node", "0"], "--node"),
        (vec!["tls", "cert", "create", "--node", "x"], "--node"),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--node",
                "1",
                "--cluster",
                "prod.eu",
            ],
            "--cluster",
        ),
        (vec!["tls", "cert", "create", "--client", "Ops"], "--client"),
        (vec!["tls", "cert", "create"], "--node"),
        // Several subjects at once: one bad one stops them all.
        (
            vec!["tls", "cert", "create", "--node", "1,2", "--client", "Ops"],
            "--client",
        ),
        (vec!["tls", "cert", "create", "--node", "1,0"], "--node"),
        (vec!["tls", "cert", "create", "--node", "1,2,1"], "--node"),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--node",
                "1,2",
                "--dns-name",
                "cairn{node}",
            ],
            "--dns-name",
        ),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--node",
                "1",
                "--keep-existing",
                "--force",
            ],
            "--force",
        ),
        (
            vec!["tls", "cert", "create", "--node", "1", "--ip", "nowhere"],
            "--ip",
        ),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--client",
                "ops",
                "--dns-name",
                "a.b",
            ],
            "--dns-name",
        ),
        (
            vec!["tls", "cert", "create", "--node", "1", "--days", "36501"],
            "--days",
        ),
        (
            vec!["tls", "cert", "create", "--client", "ops", "--days", "0"],
            "--days",
        ),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--node",
                "1",
                "--dns-name",
                "node-2.cairn.cairn",
            ],
            "--dns-name",
        ),
        (
            vec![
                "tls",
                "cert",
                "create",
                "--node",
                "1",
                "--dns-name",
                "10.0.0.1",
            ],
            "--ip",
        ),
    ];
    for (args, needle) in &cases {
        let out = cairn(dir, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?} should name {needle}: {err}");
    }
    assert!(files(dir).is_empty(), "{:?}", files(dir));

    // With a CA in place: a cluster other than the CA's.
    assert_eq!(cairn(dir, &["tls", "ca", "create"]).status.code(), Some(0));
    let out = cairn(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "--node",
            "1",
            "--cluster",
            "staging",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--cluster") && err.contains("pass --cluster cairn"),
        "{err}"
    );
    assert_eq!(files(dir), ["cairn-ca-key.pem", "cairn-ca.pem"]);
}

#[test]
fn a_missing_or_wrong_ca_exits_1_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = cairn(dir, &["tls", "cert", "create", "--node", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--ca ./cairn-ca.pem"), "{err}");
    assert!(err.contains("cairn tls ca create"), "{err}");

    let other = dir.join("other");
    let other_arg = other.to_str().unwrap();
    assert_eq!(cairn(dir, &["tls", "ca", "create"]).status.code(), Some(0));
    assert_eq!(
        cairn(dir, &["tls", "ca", "create", "--dir", other_arg])
            .status
            .code(),
        Some(0)
    );
    let other_key = other.join("cairn-ca-key.pem");
    let out = cairn(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "--node",
            "1",
            "--ca-key",
            other_key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--ca-key") && err.contains("does not match"),
        "{err}"
    );

    // A node certificate is no CA.
    assert_eq!(
        cairn(dir, &["tls", "cert", "create", "--node", "1"])
            .status
            .code(),
        Some(0)
    );
    let out = cairn(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "--node",
            "2",
            "--ca",
            "node-1.pem",
            "--ca-key",
            "node-1-key.pem",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--ca node-1.pem") && err.contains("is not a CA"),
        "{err}"
    );
    assert!(!dir.join("node-2.pem").exists());

    // A CA key that others can read is used, with a warning.
    std::fs::set_permissions(
        dir.join("cairn-ca-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = cairn(dir, &["tls", "cert", "create", "--client", "ops"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// What compose's init steps run on every `up`: the first run makes the files, later ones
/// check and keep them, and a file that cannot be kept stops the step instead of being replaced.
#[test]
fn keep_existing_makes_once_then_checks_and_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = ["tls", "ca", "create", "--keep-existing"];
    let certs = [
        "tls",
        "cert",
        "create",
        "--node",
        "1,2,3",
        "--dns-name",
        "cairn{id}",
        "--client",
        "operator",
        "--keep-existing",
    ];
    for args in [&ca[..], &certs[..]] {
        let out = cairn(dir, args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("wrote"), "{}", stdout(&out));
    }
    assert_eq!(
        files(dir),
        [
            "cairn-ca-key.pem",
            "cairn-ca.pem",
            "client-operator-key.pem",
            "client-operator.pem",
            "node-1-key.pem",
            "node-1.pem",
            "node-2-key.pem",
            "node-2.pem",
            "node-3-key.pem",
            "node-3.pem",
        ]
    );
    // Each node's certificate with its own name: {id} expanded per node.
    let leaf = |f: &str| cairn_tls::config::load_certs(&dir.join(f)).unwrap()[0].clone();
    assert!(cairn_tls::identity::certifies(
        &leaf("node-2.pem"),
        "cairn2"
    ));
    assert!(!cairn_tls::identity::certifies(
        &leaf("node-2.pem"),
        "cairn1"
    ));
    assert!(cairn_tls::identity::certifies(
        &leaf("node-3.pem"),
        "node-3.cairn.cairn"
    ));

    let made = contents(dir);
    for args in [&ca[..], &certs[..]] {
        let out = cairn(dir, args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stdout(&out).contains("wrote"), "{}", stdout(&out));
        assert!(stdout(&out).contains("kept"), "{}", stdout(&out));
    }
    let mut json_args = vec!["--json"];
    json_args.extend(certs);
    let out = cairn(dir, &json_args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["kept"], true);
            r["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "node-1.cairn.cairn",
            "node-2.cairn.cairn",
            "node-3.cairn.cairn",
            "client-operator.cairn.cairn"
        ]
    );
    assert_eq!(contents(dir), made, "nothing rewritten");

    let refused = |args: &[&str], about: &str| {
        let out = cairn(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--keep-existing") && err.contains(about),
            "{err}"
        );
        assert_eq!(contents(dir), made, "{args:?} changed nothing");
    };
    // A CA of another cluster.
    refused(
        &[
            "tls",
            "ca",
            "create",
            "--keep-existing",
            "--cluster",
            "prod",
        ],
        "cairn-ca.pem",
    );
    // A key that is not the certificate's.
    let node2_key = dir.join("node-2-key.pem");
    std::fs::copy(dir.join("node-1-key.pem"), &node2_key).unwrap();
    let made = contents(dir);
    let refused = |args: &[&str], about: &str| {
        let out = cairn(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--keep-existing") && err.contains(about),
            "{err}"
        );
        assert_eq!(contents(dir), made, "{args:?} changed nothing");
    };
    refused(
        &["tls", "cert", "create", "--node", "2", "--keep-existing"],
        "node-2.pem",
    );
    // Another node's certificate under this node's name.
    std::fs::copy(dir.join("node-1.pem"), dir.join("node-3.pem")).unwrap();
    std::fs::copy(dir.join("node-1-key.pem"), dir.join("node-3-key.pem")).unwrap();
    let made = contents(dir);
    let out = cairn(
        dir,
        &["tls", "cert", "create", "--node", "3", "--keep-existing"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("node-3.cairn.cairn"),
        "{}",
        stderr(&out)
    );
    assert_eq!(contents(dir), made);
    // Half a pair.
    std::fs::remove_file(dir.join("client-operator-key.pem")).unwrap();
    let out = cairn(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "--client",
            "operator",
            "--keep-existing",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("without") && err.contains("client-operator-key.pem"),
        "{err}"
    );
    assert!(!dir.join("client-operator-key.pem").exists());
    // Without --keep-existing, a file in the way of one subject stops all of them.
    let fresh = tempfile::tempdir().unwrap();
    let fresh = fresh.path();
    assert_eq!(
        cairn(fresh, &["tls", "ca", "create"]).status.code(),
        Some(0)
    );
    std::fs::write(fresh.join("node-2.pem"), "in the way").unwrap();
    let out = cairn(fresh, &["tls", "cert", "create", "--node", "1,2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("node-2.pem"), "{}", stderr(&out));
    assert!(!fresh.join("node-1.pem").exists(), "node 1 not written");
    // --keep-existing and --force contradict each other.
    let out = cairn(dir, &["tls", "ca", "create", "--keep-existing", "--force"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
