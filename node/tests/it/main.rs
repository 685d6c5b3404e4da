//! Every integration test of cairn-node, in one test binary: the harness compiles once and CI
//! links one executable (as ripgrep's `tests/integration` does). Each module was its own binary
//! before; a module is selected by its path, e.g.
//!
//! ```text
//! cargo test -p cairn-node --test it dns::
//! cargo test -p cairn-node --test it faults::faults_keep -- --nocapture
//! ```
//!
//! Helper programs the tests run (`tools/py_consul_check.py`) stay in `node/tests/tools/`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod harness;

mod acl;
mod certs;
mod checks;
mod cli;
mod client;
mod cloudmap;
mod cluster;
mod consul;
mod deploy;
mod dns;
mod dns_guard;
mod encrypted_dns;
mod faults;
mod fuzz_corpus;
mod observe;
mod openapi;
mod operator;
mod prometheus;
mod quotas;
mod reads;
mod slowloris;
mod snapshot;
mod storage;
mod tls;
mod ui;
mod upgrade;
