//! The Cairn agent: configuration ([`config`]), the HTTP layer ([`http`]: one core, with the
//! native API, the Consul-compatible API, Prometheus metrics and the cluster RPC routes as
//! leaves), the AWS Cloud Map-compatible API on its own listener ([`cloudmap`]), the health checker ([`checks`]), its probes ([`prober`]) and where they may connect
//! ([`check_targets`]), the wiring of Raft, listeners and shutdown
//! ([`agent`]), and the command line ([`cli`]). The `cairn` binary is a thin command line over
//! these.

pub mod agent;
pub mod check_targets;
pub mod checks;
pub mod cli;
pub mod cloudmap;
pub mod config;
pub mod http;
pub mod logs;
pub mod prober;
