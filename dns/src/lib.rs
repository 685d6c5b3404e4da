//! Cairn's DNS interface: every node answers for its zone (`cairn.` by default) from its own
//! registry view, over UDP and TCP, and optionally over TLS and HTTPS.
//!
//! | name | answer |
//! | --- | --- |
//! | `<service>.service.cairn.` A/AAAA | healthy instances' addresses, weighted random order |
//! | `<tag>.<service>.service.cairn.` | the same, instances with that tag |
//! | `<service>.service.cairn.` SRV, `_<service>._tcp...`, `_<service>._<tag>...` | one SRV per instance; targets' addresses in the additional section |
//! | `<hex-ip>.addr.cairn.` A/AAAA | the address an SRV target encodes |
//! | `cairn.` SOA/NS, `node-<id>.node.cairn.` | the zone, the cluster's nodes as name servers |
//!
//! The pieces: [`wire`] reads queries and writes messages (only what an authoritative server
//! needs, written for speed: records are encoded once per service change, not per query);
//! [`answer`] holds the naming scheme and the [`Zone`]; [`server`] the UDP and TCP listeners,
//! forwarding of other names to upstream resolvers (for allowed clients only), and the
//! [`Answerer`] every transport answers through; [`rrl`] limits the rate of answers over UDP; [`dot`] serves DNS over TLS and [`doh`] routes DNS over HTTPS, with the same answers.
//!
//! ```
//! use cairn_dns::wire;
//! let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
//! let name = wire::DomainName::new("web.service.cairn.").unwrap();
//! wire::push_name(&mut q, &name);
//! q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
//! let parsed = wire::parse_query(&q).unwrap();
//! assert_eq!(parsed.name(), "web.service.cairn.");
//! ```

pub mod answer;
pub mod doh;
pub mod dot;
pub mod rrl;
pub mod server;
pub mod wire;

pub use answer::{check_domain, Nameservers, Outcome, Zone, ZoneConfig};
pub use rrl::RrlConfig;
pub use server::{
    Answerer, DnsStats, LatencyHistogram, Listeners, ServerConfig, LATENCY_BOUNDS_US, QTYPE_LABELS,
    RCODE_LABELS,
};
