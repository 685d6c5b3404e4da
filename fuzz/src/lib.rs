//! Cairn's fuzz targets. Each module holds one target's check, `check(data: &[u8])`, which
//! panics when a property breaks; `fuzz_targets/<name>.rs` hands it libFuzzer's inputs.
//!
//! | target | input | property |
//! | --- | --- | --- |
//! | [`dns_query`] | a DNS message | our query parser and hickory-proto agree on header, question and EDNS |
//! | [`dns_answer`] | a DNS message | every answer the zone builds decodes with hickory-proto |
//! | [`registration`] | a native registration body | validation never panics; what it accepts a leader accepts, stores and snapshots |
//! | [`consul_registration`] | a Consul registration body | the same, through the Consul conversion |
//! | [`snapshot`] | snapshot bytes | decoding never panics; what it accepts loads, re-encodes and decodes to the same data |
//! | [`rpc`] | a cluster RPC body | decoding never panics; a forwarded write a leader accepts applies and snapshots |
//!
//! The modules are also compiled into the owning crates' `tests/fuzz_corpus.rs` (by `#[path]`),
//! which replay `fuzz/corpus/<target>/` on the stable toolchain in CI: one definition of each
//! property, run by both. Modules name each other through `super::`, which is this crate's root
//! here and the including test module there.

pub mod consul_registration;
pub mod corpus;
pub mod dns_answer;
pub mod dns_query;
pub mod registration;
pub mod rpc;
pub mod snapshot;
pub mod state;
