//! The registry's fuzz targets (`fuzz/`) replayed over their committed corpus on the stable
//! toolchain: every input a fuzzing run kept, and every crash it found, runs again in each
//! `cargo test`.

#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/corpus.rs"]
mod corpus;
#[path = "../../fuzz/src/registration.rs"]
mod registration;
#[path = "../../fuzz/src/snapshot.rs"]
mod snapshot;
#[path = "../../fuzz/src/state.rs"]
mod state;

#[test]
fn registration_corpus_holds() {
    corpus::replay("registration", registration::check);
}

#[test]
fn snapshot_corpus_holds() {
    corpus::replay("snapshot", snapshot::check);
}
