//! The AWS Cloud Map-compatible API, driven by boto3 as Cloud Map programs drive AWS: the
//! current release (Smithy RPC v2 CBOR) and one that speaks AWS JSON 1.1, each against a
//! three-node cluster, then the same instances read through the native API, DNS and
//! `aws servicediscovery discover-instances` (awscli v1).
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

/// The AWS CLI v1 release the tests run (JSON 1.1).
const AWSCLI: &str = "1.45.11";

/// The folder holding Python package `package` at `version`, installed by `scripts/deps --test`.
fn pydeps(package: &str, version: &str) -> String {
    let root = std::env::var("CAIRN_PYDEPS").unwrap_or_else(|_| "/var/tmp/cairn-pydeps".into());
    let dir = format!("{root}/{package}-{version}");
    assert!(
        std::path::Path::new(&dir).join(package).is_dir(),
        "{dir} has no {package}: run scripts/deps --test"
    );
    dir
}

/// Three nodes, each serving the Cloud Map API with the test's key.
async fn cluster() -> Cluster {
    cluster_of(3, &[]).await
}

/// `n` nodes serving the Cloud Map API with the test's key, with `extra` arguments.
async fn cluster_of(n: u64, extra: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cloudmap.toml");
    std::fs::write(
        &creds,
        format!("[[key]]\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n"),
    )
    .unwrap();
    let creds = creds.display().to_string();
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    Cluster::start_each(n, dir, move |_| {
        let mut args = vec![
            "--cloudmap-addr".into(),
            "127.0.0.1:0".into(),
            "--cloudmap-credentials".into(),
            creds.clone(),
        ];
        args.extend(extra.iter().cloned());
        args
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
    let mut c = cluster().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/cloudmap_boto3_check.py"
    );
    let python = std::env::var("CAIRN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&python)
            .env("PYTHONPATH", pydeps("boto3", version))
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

    // `aws servicediscovery discover-instances` with --endpoint-url, as a deploy script runs it.
    let out = tokio::process::Command::new(&python)
        .env("PYTHONPATH", pydeps("awscli", AWSCLI))
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        // The CLI would send DiscoverInstances to `data-127.0.0.1`.
        .env("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
        .args(["-m", "awscli", "servicediscovery", "discover-instances"])
        .args([
            "--namespace-name",
            "example.internal",
            "--service-name",
            "web",
        ])
        .args(["--endpoint-url", &endpoint(&c, 1), "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "aws servicediscovery discover-instances failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = found["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["InstanceId"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["web-2", "web-3"], "{found}");

    // A restarted node loads the namespaces and Cloud Map services back from its storage.
    c.node_mut(1).kill();
    c.node_mut(1).restart();
    let out = tokio::process::Command::new(&python)
        .env("PYTHONPATH", pydeps("boto3", version))
        .args(["-c", AFTER_RESTART, &endpoint(&c, 1), KEY_ID, SECRET])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "after the restart:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a restarted node must still know, asked through boto3.
const AFTER_RESTART: &str = r#"
import sys, boto3
from botocore.config import Config
c = boto3.client("servicediscovery", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
                 config=Config(inject_host_prefix=False, retries={"max_attempts": 1}))
names = sorted(n["Name"] for n in c.list_namespaces()["Namespaces"])
assert names == ["cairn-http", "example.internal"], names
assert c.get_service(Id="srv-web")["Service"]["Name"] == "web"
found = c.discover_instances(NamespaceName="example.internal", ServiceName="web", HealthStatus="ALL")
assert len(found["Instances"]) == 3, found
"#;

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
    // A small body limit, so the oversized body below is sent whole before the answer.
    let c = cluster_of(1, &["--max-body-bytes", "4096"]).await;
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

    // Over --max-body-bytes: refused before the signature is looked at.
    let res = http
        .post(format!(
            "{url}/service/Route53AutoNaming_v20170314/operation/ListNamespaces"
        ))
        .header("smithy-protocol", "rpc-v2-cbor")
        .body(vec![0u8; 8192])
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

/// Runs `cloudmap_dns_setup.py ACTION` (boto3, current release) against node 1.
async fn dns_setup(c: &Cluster, action: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/cloudmap_dns_setup.py"
    );
    let python = std::env::var("CAIRN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .env("PYTHONPATH", pydeps("boto3", BOTO3_CBOR))
            .args([
                script,
                action,
                &endpoint(c, 1),
                &c.node(1).url(""),
                KEY_ID,
                SECRET,
            ])
            .output(),
    )
    .await
    .expect("the setup script finished")
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("done"),
        "cloudmap_dns_setup.py {action} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The addresses (A, AAAA) in a section, as strings.
fn addresses(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// A private DNS namespace made through boto3 is a zone of Cairn's DNS, answered as Route 53
/// answers Cloud Map's records: the types and TTLs of each service's DnsConfig, healthy
/// instances only, up to 8 records for MULTIVALUE and one weighted pick for WEIGHTED; deleting
/// the namespace takes the zone away.
#[tokio::test]
async fn t30_a_private_dns_namespace_answers_as_route_53_would() {
    use hickory_proto::op::ResponseCode;
    let c = cluster_of(1, &[]).await;
    dns_setup(&c, "setup").await;
    let dns = c.node(1).dns;
    let healthy_v4: Vec<String> = (1..10).map(|n| format!("10.1.0.{n}")).collect();

    // MULTIVALUE A: 8 of the 9 healthy instances, the A record's TTL; api-0 (UNHEALTHY) never.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let m = harness::dns::udp(dns, "api.corp.internal.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert!(m.metadata.authoritative, "{m:?}");
        let ips = addresses(&m.answers);
        assert_eq!(ips.len(), 8, "{m:?}");
        assert!(m.answers.iter().all(|r| r.ttl == 15), "{m:?}");
        assert!(ips.iter().all(|ip| healthy_v4.contains(ip)), "{ips:?}");
        seen.extend(ips);
    }
    assert_eq!(
        seen.len(),
        9,
        "every healthy instance in some answer: {seen:?}"
    );

    // AAAA from AWS_INSTANCE_IPV6, its own TTL; over TCP too.
    let m = harness::dns::tcp(dns, "api.corp.internal.", RecordType::AAAA).await;
    let ips = addresses(&m.answers);
    assert_eq!(ips.len(), 8, "{m:?}");
    assert!(m.answers.iter().all(|r| r.ttl == 20), "{m:?}");
    assert!(
        !ips.contains(&"fd00::".to_owned()),
        "api-0 is unhealthy: {ips:?}"
    );

    // SRV: priority 1, weight 1, the instance's port, target <instance-id>.<service>.<namespace>
    // (whose address Cloud Map creates too: in the additional section, and asked directly).
    // Over TCP: 8 SRV records and their 16 addresses do not fit in 512 bytes.
    let m = harness::dns::tcp(dns, "api.corp.internal.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 8, "{m:?}");
    for r in &m.answers {
        let RData::SRV(srv) = &r.data else {
            panic!("not an SRV: {r:?}")
        };
        assert_eq!(r.ttl, 25);
        assert_eq!((srv.priority, srv.weight), (1, 1));
        let target = srv.target.to_ascii();
        let n = target
            .strip_prefix("api-")
            .and_then(|t| t.strip_suffix(".api.corp.internal."))
            .unwrap_or_else(|| panic!("target {target}"));
        assert_ne!(n, "0", "api-0 is unhealthy");
        assert_eq!(srv.port, 9000 + n.parse::<u16>().unwrap());
        assert!(addresses(&m.additionals).contains(&format!("10.1.0.{n}")));
    }
    let m = harness::dns::udp(dns, "api-3.api.corp.internal.", RecordType::A).await;
    assert_eq!(addresses(&m.answers), ["10.1.0.3"], "{m:?}");

    // WEIGHTED: one record per answer; pay-3 (weight 2, registered natively) half of the time.
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..400 {
        let m = harness::dns::udp(dns, "pay.corp.internal.", RecordType::A).await;
        let ips = addresses(&m.answers);
        assert_eq!(ips.len(), 1, "{m:?}");
        assert_eq!(m.answers[0].ttl, 7);
        *counts.entry(ips[0].clone()).or_default() += 1;
    }
    // Expected 100, 100 and 200: the bounds are five standard deviations wide.
    let count = |ip: &str| counts.get(ip).copied().unwrap_or(0);
    assert!((56..=144).contains(&count("10.2.0.1")), "{counts:?}");
    assert!((56..=144).contains(&count("10.2.0.2")), "{counts:?}");
    assert!((150..=250).contains(&count("10.2.0.3")), "{counts:?}");

    // Only the DnsConfig's types: pay has no AAAA or SRV records (NODATA with the namespace's
    // SOA); unknown names are NXDOMAIN; the apex has its SOA.
    for rtype in [RecordType::AAAA, RecordType::SRV] {
        let m = harness::dns::udp(dns, "pay.corp.internal.", rtype).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert!(m.answers.is_empty(), "{m:?}");
        assert_eq!(m.authorities[0].name.to_ascii(), "corp.internal.", "{m:?}");
    }
    for name in ["nosuch.corp.internal.", "pay-1.pay.corp.internal."] {
        let m = harness::dns::udp(dns, name, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}: {m:?}"
        );
    }
    let m = harness::dns::udp(dns, "corp.internal.", RecordType::SOA).await;
    assert!(matches!(m.answers[0].data, RData::SOA(_)), "{m:?}");
    // The cairn. zone is as it was, and sees the same registry.
    let m = harness::dns::udp(dns, "api.service.cairn.", RecordType::A).await;
    assert_eq!(addresses(&m.answers).len(), 9, "{m:?}");

    // Deleting the namespace (after its services, as Cloud Map requires) ends its zone: names
    // in it are outside every zone again.
    dns_setup(&c, "teardown").await;
    for name in ["api.corp.internal.", "corp.internal."] {
        let m = harness::dns::udp(dns, name, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::Refused,
            "{name}: {m:?}"
        );
    }
}
