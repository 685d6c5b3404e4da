//! The cluster RPC's fuzz target (`fuzz/`) replayed over its committed corpus on the stable
//! toolchain: every input a fuzzing run kept, and every crash it found, runs again in each
//! `cargo test`.

#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/corpus.rs"]
mod corpus;
#[path = "../../fuzz/src/rpc.rs"]
mod rpc;
#[path = "../../fuzz/src/state.rs"]
mod state;

#[test]
fn rpc_corpus_holds() {
    corpus::replay("rpc", rpc::check);
}
