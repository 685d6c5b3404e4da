//! The DNS fuzz targets (`fuzz/`) replayed over their committed corpus on the stable toolchain:
//! every input a fuzzing run kept, and every crash it found, runs again in each `cargo test`.

#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/corpus.rs"]
mod corpus;
#[path = "../../fuzz/src/dns_answer.rs"]
mod dns_answer;
#[path = "../../fuzz/src/dns_query.rs"]
mod dns_query;

#[test]
fn dns_query_corpus_holds() {
    corpus::replay("dns_query", dns_query::check);
}

#[test]
fn dns_answer_corpus_holds() {
    corpus::replay("dns_answer", dns_answer::check);
}
