//! Every answer our zone builds for a query we accept decodes with hickory-proto, fits the
//! transport's limit, echoes the question, and only carries records for the name asked.
//!
//! The zone serves a small fixed registry: IPv4, IPv6 and host-name instances, tags, a service
//! too large for one UDP answer, one with no healthy instance (fail-open) and one with its own
//! TTL, and three name servers, one without an address.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use cairn_api::InstanceRegistration;
use cairn_dns::wire;
use cairn_dns::{Outcome, Zone, ZoneConfig};
use cairn_registry::model::{validate_registration, SettingsSpec};
use cairn_registry::{Command, Dirty, Op, Registry};
use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// What TCP allows: the whole 16-bit length.
const TCP_LIMIT: usize = 65_535;

pub fn check(data: &[u8]) {
    let Ok(query) = wire::parse_query(data) else {
        return;
    };
    // The ID's low bit picks the transport, so the fuzzer reaches both limits.
    let limit = if query.id & 1 == 0 {
        query.udp_limit()
    } else {
        TCP_LIMIT
    };
    let mut bytes = Vec::new();
    match zone().answer(&query, limit, &mut bytes) {
        Outcome::Reply => {}
        Outcome::Forward => panic!("a zone without recursion forwarded {}", query.name()),
    }
    assert!(
        bytes.len() <= limit,
        "{} bytes over a limit of {limit}",
        bytes.len()
    );
    let response = Message::from_vec(&bytes)
        .unwrap_or_else(|e| panic!("hickory cannot read our answer ({e}): {bytes:?}"));
    wire::read_response(&bytes).unwrap_or_else(|e| panic!("we cannot read our answer: {e}"));

    let meta = &response.metadata;
    assert_eq!(meta.id, query.id);
    assert_eq!(meta.message_type, MessageType::Response);
    assert_eq!(u8::from(meta.op_code), query.opcode);
    assert_eq!(meta.recursion_desired, query.recursion_desired);
    assert_eq!(response.edns.is_some(), query.edns.is_some(), "OPT echoed");

    // The question comes back byte for byte (the client's 0x20 case included).
    let mut decoder = BinDecoder::new(data);
    let asked = Header::read(&mut decoder).and_then(|_| Query::read(&mut decoder));
    let asked = asked.unwrap_or_else(|e| panic!("hickory refuses a question we accepted: {e}"));
    assert_eq!(response.queries.len(), 1);
    assert_eq!(
        response.queries[0].name().to_ascii(),
        asked.name().to_ascii()
    );
    assert_eq!(response.queries[0].query_type(), asked.query_type());
    assert_eq!(response.queries[0].query_class(), asked.query_class());

    for record in &response.answers {
        assert!(
            record.name == *asked.name(),
            "answer owned by {} for a question of {}",
            record.name,
            asked.name()
        );
        let t = record.record_type();
        assert!(
            t == asked.query_type() || t == RecordType::CNAME,
            "{t} record answering {}",
            asked.query_type()
        );
    }
    match meta.response_code {
        ResponseCode::NXDomain => assert!(
            response.answers.is_empty()
                && response.authorities.len() == 1
                && response.authorities[0].record_type() == RecordType::SOA,
            "NXDOMAIN without just the SOA: {response:?}"
        ),
        ResponseCode::NoError if response.answers.is_empty() && meta.authoritative => {
            assert!(
                response
                    .authorities
                    .iter()
                    .any(|r| r.record_type() == RecordType::SOA),
                "NODATA without the SOA: {response:?}"
            )
        }
        ResponseCode::NoError
        | ResponseCode::Refused
        | ResponseCode::NotImp
        | ResponseCode::FormErr => {}
        other => panic!("unexpected RCODE {other}"),
    }
}

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let nameservers: cairn_dns::Nameservers = Arc::new(|| {
            vec![
                (1, Some(IpAddr::from([10, 0, 0, 53]))),
                (2, "2001:db8::53".parse().ok()),
                (3, None),
            ]
        });
        Zone::new(ZoneConfig::default(), Arc::new(registry()), nameservers)
            .unwrap_or_else(|e| panic!("the default zone: {e}"))
    })
}

fn register(service: &str, id: &str, body: serde_json::Value) -> Op {
    let body: InstanceRegistration =
        serde_json::from_value(body).unwrap_or_else(|e| panic!("{service}/{id}: {e}"));
    let instance =
        validate_registration(id, &body).unwrap_or_else(|e| panic!("{service}/{id}: {e}"));
    Op::Register {
        service: service.into(),
        instance,
        health: None,
    }
}

fn registry() -> Registry {
    use serde_json::json;
    let mut ops = vec![
        register(
            "web",
            "web-1",
            json!({"address": "10.0.0.1", "port": 80, "tags": ["v1"]}),
        ),
        register(
            "web",
            "web-2",
            json!({"address": "10.0.0.2", "port": 80, "tags": ["v2"], "weight": 5}),
        ),
        register(
            "web",
            "web-3",
            json!({"address": "2001:db8::1", "port": 8080, "tags": ["v1", "v6"]}),
        ),
        register(
            "db",
            "db-1",
            json!({"address": "db.example.com", "port": 5432}),
        ),
        register(
            "sick",
            "sick-1",
            json!({"address": "10.0.1.1", "port": 1, "checks": [{"kind": "ttl", "ttl": "10s"}]}),
        ),
        register(
            "sick",
            "sick-2",
            json!({"address": "10.0.1.2", "port": 1, "checks": [{"kind": "ttl", "ttl": "10s"}]}),
        ),
        Op::SetSettings {
            service: "sick".into(),
            settings: SettingsSpec {
                fail_open: true,
                dns_ttl_s: None,
                cloudmap: None,
            },
        },
        Op::SetSettings {
            service: "web".into(),
            settings: SettingsSpec {
                fail_open: false,
                dns_ttl_s: Some(60),
                cloudmap: None,
            },
        },
    ];
    // More instances than one UDP answer holds, with long host names for some.
    for i in 0..150u32 {
        let address = if i % 3 == 0 {
            format!("host-{i}.{}.example.org", "x".repeat(40))
        } else {
            format!("10.2.{}.{}", i / 200, i % 200 + 1)
        };
        ops.push(register(
            "big",
            &format!("big-{i}"),
            json!({"address": address, "port": 9000 + i, "tags": ["all"]}),
        ));
    }
    let registry = Registry::default();
    registry.apply(1, &Command::new(1_000, ops), &mut Dirty::default());
    registry
}
