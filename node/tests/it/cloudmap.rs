//! The AWS Cloud Map-compatible API, driven by boto3 as Cloud Map programs drive AWS: the
//! current release (Smithy RPC v2 CBOR) and one that speaks AWS JSON 1.1, each against a
//! three-node cluster, then the same instances read through the native API and DNS.
//!
//! boto3 comes from PyPI into `$CAIRN_PYDEPS` (default `/var/tmp/cairn-pydeps`), one folder per
//! release, as `scripts/deps --test` installs it.

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

use crate::harness::{self, Cluster};

const KEY_ID: &str = "AKIDCAIRNTEST0001";
const SECRET: &str = "cairn-test-secret/Key+0001";
/// Current boto3: its servicediscovery model lists Smithy RPC v2 CBOR (first) and JSON 1.1;
/// botocore ranks JSON higher, and the driver makes it pick CBOR (see the driver's docs).
const BOTO3_CBOR: &str = "1.44.8";
/// The last boto3 whose servicediscovery model speaks only AWS JSON 1.1.
const BOTO3_JSON: &str = "1.43.11";

/// The folder holding boto3 `version`, installed by `scripts/deps --test`.
fn boto3(version: &str) -> String {
    let root = std::env::var("CAIRN_PYDEPS").unwrap_or_else(|_| "/var/tmp/cairn-pydeps".into());
    let dir = format!("{root}/boto3-{version}");
    assert!(
        std::path::Path::new(&dir).join("boto3").is_dir(),
        "{dir} has no boto3: run scripts/deps --test"
    );
    dir
}

/// Three nodes, each serving the Cloud Map API with the test's key.
async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cloudmap.toml");
    std::fs::write(
        &creds,
        format!("[[key]]\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n"),
    )
    .unwrap();
    let creds = creds.display().to_string();
    Cluster::start_each(3, dir, move |_| {
        vec![
            "--cloudmap-addr".into(),
            "127.0.0.1:0".into(),
            "--cloudmap-credentials".into(),
            creds.clone(),
        ]
    })
    .await
}

fn endpoint(c: &Cluster, node: u64) -> String {
    format!(
        "http://{}",
        c.node(node).cloudmap.expect("serves Cloud Map")
    )
}

/// Runs the boto3 driver against nodes 2 and 3, then reads `web` through DNS: the two
/// instances the driver left healthy, with the TTL of its DNS records.
async fn boto3_scenario(version: &str, protocol: &str) {
    let c = cluster().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/cloudmap_boto3_check.py"
    );
    let python = std::env::var("CAIRN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(python)
            .env("PYTHONPATH", boto3(version))
            .args([
                script,
                protocol,
                &endpoint(&c, 2),
                &endpoint(&c, 3),
                &c.node(1).url(""),
                KEY_ID,
                SECRET,
            ])
            .output(),
    )
    .await
    .expect("the driver finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "boto3 {version} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");

    let (status, body) = c.get(1, "/v1/services/web?health=passing").await;
    assert_eq!(status, 200, "{body}");
    let mut passing: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    passing.sort_unstable();
    assert_eq!(passing, ["web-2", "web-3"]);

    let answer = harness::dns::udp(c.node(3).dns, "web.service.cairn.", RecordType::A).await;
    let mut ips: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    ips.sort_unstable();
    assert_eq!(
        ips,
        [
            "127.0.0.2".parse::<IpAddr>().unwrap(),
            "127.0.0.3".parse().unwrap()
        ]
    );
    assert!(answer.answers.iter().all(|r| r.ttl == 30), "{answer:?}");
}

#[tokio::test]
async fn t10_current_boto3_over_cbor_drives_the_cloud_map_scenario() {
    boto3_scenario(BOTO3_CBOR, "smithy-rpc-v2-cbor").await;
}

#[tokio::test]
async fn t11_boto3_speaking_json_1_1_drives_the_same_scenario() {
    boto3_scenario(BOTO3_JSON, "json").await;
}

/// What reaches the listener without an SDK: an unsigned request, an unknown operation, a
/// body over the limit, garbage CBOR. Each gets AWS's error shape and changes nothing.
#[tokio::test]
async fn t20_unsigned_oversized_and_malformed_requests_get_aws_error_shapes() {
    let c = cluster().await;
    let http = harness::client();
    let url = endpoint(&c, 1);
    let res = http
        .post(format!("{url}/"))
        .header("x-amz-target", "Route53AutoNaming_v20170314.ListNamespaces")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["__type"], "UnrecognizedClientException", "{body}");

    let res = http
        .post(format!("{url}/"))
        .header("x-amz-target", "Other_v1.ListNamespaces")
        .body("{}")
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["__type"], "UnknownOperationException", "{body}");

    // Over --max-body-bytes (1 MiB by default): refused before the signature is looked at.
    let res = http
        .post(format!(
            "{url}/service/Route53AutoNaming_v20170314/operation/ListNamespaces"
        ))
        .header("smithy-protocol", "rpc-v2-cbor")
        .body(vec![0u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/cbor"
    );

    let res = http
        .post(format!(
            "{url}/service/ServiceDiscovery/operation/ListNamespaces"
        ))
        .header("smithy-protocol", "rpc-v2-cbor")
        .body(vec![0xff, 0x00, 0x13])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let (status, services) = c.get(1, "/v1/services").await;
    assert_eq!(
        (status, services["services"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}
