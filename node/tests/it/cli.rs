//! The binary's command line: bad flags and configs exit 64 naming the problem, before binding.

use std::process::{Command, Output};

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_flags_exit_64_with_a_message_naming_the_flag() {
    // A port held by us: if the agent got as far as binding, it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agent"], "--node-id"),
        (vec!["agent", "--node-id", "1"], "--data-dir"),
        (
            vec!["agent", "--node-id", "x", "--data-dir", data],
            "--node-id",
        ),
        (
            vec![
                "agent",
                "--node-id",
                "1",
                "--data-dir",
                data,
                "--http-addr",
                "localhost",
            ],
            "--http-addr",
        ),
        (
            vec![
                "agent",
                "--node-id",
                "1",
                "--data-dir",
                data,
                "--peers",
                "1=a",
            ],
            "--peers",
        ),
        (
            vec![
                "agent",
                "--node-id",
                "1",
                "--data-dir",
                data,
                "--join",
                "nowhere",
                "--http-addr",
                &http,
            ],
            "--join",
        ),
        (vec!["agent", "--dev", "--bootstrap"], "--dev"),
        (vec!["agent", "--no-such-flag"], "--no-such-flag"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = cairn(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should name {needle}: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no data was written"
    );
}

#[test]
fn a_bad_config_file_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(
        &path,
        "node_id = 1\ndata_dir = \"/tmp/x\"\nhttp_adr = \"1.2.3.4:5\"\n",
    )
    .unwrap();
    let out = cairn(&["agent", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("http_adr"), "{stderr}");
}

#[test]
fn check_validates_without_starting() {
    let out = cairn(&["agent", "--dev", "--check"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    let out = cairn(&["agent", "--check", "--node-id", "0", "--data-dir", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn environment_variables_configure_the_agent() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["agent", "--check"])
        .env("CAIRN_NODE_ID", "2")
        .env("CAIRN_DATA_DIR", "/tmp/cairn-env")
        .env("CAIRN_PEERS", "1=a:8300,2=b:8300,3=c:8300")
        .env("CAIRN_INSECURE_RPC", "true")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["agent", "--check"])
        .env("CAIRN_NODE_ID", "4")
        .env("CAIRN_DATA_DIR", "/tmp/cairn-env")
        .env("CAIRN_PEERS", "1=a:8300,2=b:8300,3=c:8300")
        .env("CAIRN_INSECURE_RPC", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_plaintext_cluster_rpc_off_loopback_needs_insecure_rpc_or_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let base = [
        "agent",
        "--check",
        "--node-id",
        "1",
        "--data-dir",
        data,
        "--peers",
        "1=10.0.0.1:8300",
        "--rpc-addr",
        "0.0.0.0:8300",
    ];
    let out = cairn(&base);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-rpc"), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // --dev is no exception once its RPC is opened to the network.
    let out = cairn(&["agent", "--dev", "--check", "--rpc-addr", "192.0.2.1:8300"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-rpc"));

    // The explicit opt-out is accepted, and so is loopback.
    let mut insecure = base.to_vec();
    insecure.push("--insecure-rpc");
    assert_eq!(cairn(&insecure).status.code(), Some(0));
    let mut loopback = base.to_vec();
    let last = loopback.len() - 1;
    loopback[last] = "127.0.0.1:8300";
    assert_eq!(cairn(&loopback).status.code(), Some(0));

    // Half the TLS files, or certificates that do not exist, are refused naming the flags.
    let mut half = base.to_vec();
    half.extend(["--ca-file", "/nonexistent/ca.pem"]);
    let out = cairn(&half);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file/--tls-cert/--tls-key"));
    let mut missing = base.to_vec();
    missing.extend([
        "--ca-file",
        "/nonexistent/ca.pem",
        "--tls-cert",
        "/nonexistent/node.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    let out = cairn(&missing);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ca.pem"));
}

#[test]
fn a_node_certificate_must_name_this_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::harness::tls::Pki::new(&dir.path().join("pki"), "cairn");
    let data = dir.path().join("data");
    let args = |id: &str, files: &[String]| {
        let mut a: Vec<String> = ["agent", "--check", "--node-id", id, "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(data.display().to_string());
        a.extend(files.iter().cloned());
        a
    };
    let node2 = pki.agent_args(2);
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(&a)
            .output()
            .unwrap()
    };
    assert_eq!(run(args("2", &node2)).status.code(), Some(0));
    let out = run(args("1", &node2));
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("node-1.cairn.cairn"),
        "{stderr}"
    );
}
