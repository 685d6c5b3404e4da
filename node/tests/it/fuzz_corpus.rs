//! The Consul registration fuzz target (`fuzz/`) replayed over its committed corpus: every input
//! a fuzzing run kept, and every crash it found, runs again in each `cargo test`. No cluster.

#[path = "../../../fuzz/src/consul_registration.rs"]
mod consul_registration;
#[path = "../../../fuzz/src/corpus.rs"]
mod corpus;
// For what the Consul target shares with it; its own check is replayed by cairn-registry.
#[allow(dead_code)]
#[path = "../../../fuzz/src/registration.rs"]
mod registration;
#[path = "../../../fuzz/src/state.rs"]
mod state;

#[test]
fn consul_registration_corpus_holds() {
    corpus::replay("consul_registration", consul_registration::check);
}
