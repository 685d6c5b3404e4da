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
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
