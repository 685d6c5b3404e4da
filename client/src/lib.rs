//! A client of Cairn's native HTTP API (`/v1`).
//!
//! This crate has no server dependencies: a program that registers itself or looks up a service
//! depends on it alone. The API's wire types live in `cairn-api` and are re-exported here.
//!
//! - [`Client`]: typed calls for every endpoint, over several node addresses with failover, with
//!   backoff and a bound ([`RetryPolicy`]). What is retried depends on the call's [`CallKind`]
//!   and is decided by [`ClientError::is_retryable_for`] alone: a read moves on to the next node
//!   after any transport failure, `no_leader`, `unavailable` or `too_many_requests`; a write
//!   only when it surely did not reach a leader (no connection was made, `no_leader`,
//!   `too_many_requests`). A write that was sent and got no definite answer (a time-out, a
//!   connection broken after sending, a 502/503 without the API's body, `unavailable`) fails
//!   with [`ClientError::OutcomeUnknown`]: it may or may not have been applied, and sending it
//!   again could apply it twice or turn a deregistration that took effect into `not_found`.
//!   Each write opens a new connection, so a node that died since the last call fails it at
//!   connect, where it is retried, rather than after sending.
//! - [`Registration`]: registers an instance, heartbeats its TTL checks in the background, and
//!   deregisters on [`Registration::deregister`] or drop.
//! - [`watch`]: a service's instance sets as a `Stream`, surviving node failover.
//! - [`Balancer`]: pick a healthy instance of a watched service (weighted random, or power of
//!   two choices); [`Resolver`]: a `reqwest` resolver so `http://web.service.cairn/` reaches one.
//! - The wire types, re-exported from `cairn-api`: request bodies ([`InstanceRegistration`],
//!   [`HealthUpdate`], ...), responses ([`ServiceList`], [`ServiceInstances`],
//!   [`ClusterStatus`], [`WriteResult`]) and the error body ([`ApiError`] with its stable
//!   [`ErrorCode`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::ClientError> {
//! use cairn_client::{Client, InstanceRegistration, Registration};
//!
//! let client = Client::new(["10.0.0.1:8500", "10.0.0.2:8500", "10.0.0.3:8500"])?;
//! let me: InstanceRegistration = serde_json::from_value(serde_json::json!({
//!     "address": "10.0.0.7", "port": 8080,
//!     "checks": [{"kind": "ttl", "ttl": "10s"}]
//! })).expect("valid JSON");
//! let registration = Registration::start(client.clone(), "web", "web-7", me).await?;
//! let balancer = cairn_client::Balancer::start(client, "db");
//! if let Some(db) = balancer.pick() {
//!     println!("talking to {}:{}", db.address, db.port);
//! }
//! registration.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! The wire types alone, for programs with their own HTTP stack:
//!
//! ```
//! use cairn_client::{InstanceRegistration, ErrorCode};
//!
//! let body: InstanceRegistration =
//!     serde_json::from_str(r#"{"address": "10.0.0.7", "port": 8080, "tags": ["v2"]}"#).unwrap();
//! assert_eq!(body.port, 8080);
//! assert!(ErrorCode::NoLeader.is_retryable());
//! assert!(!ErrorCode::InvalidArgument.is_retryable());
//! ```

mod client;
mod live;

pub use cairn_api::*;
pub use client::{
    CallKind, Client, ClientError, Indexed, ReadOptions, RetryPolicy, SnapshotDownload, TlsOptions,
};
pub use live::{watch, Balancer, Registration, Resolver, WatchOptions};
