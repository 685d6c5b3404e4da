//! The Cairn agent: configuration ([`config`]), the native HTTP API ([`api`]), Prometheus
//! metrics ([`metrics`]) and the wiring of Raft, listeners and shutdown ([`agent`]). The `cairn`
//! binary is a thin command line over these.

pub mod agent;
pub mod api;
pub mod checks;
pub mod cli;
pub mod config;
pub mod consul;
pub mod metrics;
pub mod reads;
