//! Cairn's registry: what the cluster stores, and the rules for changing it.
//!
//! Services, their instances and the instances' health, as one deterministic state machine and
//! the in-memory view every reader uses. This crate knows nothing of Raft, RocksDB or HTTP:
//! `cairn-raft` replicates its [`Command`]s and persists its records, `cairn-dns` and the HTTP
//! layer read its [`Registry`].
//!
//! - [`model`]: the data model and the validation every user input passes before it is proposed;
//! - [`command`]: what a log entry carries ([`Command`], [`Op`]) and what applying it answers;
//! - [`registry`]: the read view ([`Registry`]) and the apply that keeps it current;
//! - [`cloudmap`]: the namespaces and service configuration the Cloud Map-compatible API keeps
//!   in settings records;
//! - [`acl`]: policies, tokens and the [`acl::Authorizer`] every API request is judged by;
//! - [`watch`]: per-service change channels with replay history, for blocking reads and streams;
//! - [`hash`]: the one stable hash, for the state digest and rendezvous placement of checks;
//! - [`backup`]: backup files (a header, the registry as a snapshot, a checksum);
//! - [`health`] and [`format`]: the persisted types that are not the model's own, and the
//!   format version. Every persisted encoding is pinned by the golden files in `tests/golden/`.
//!
//! ```
//! use cairn_registry::{Command, Dirty, Op, OpResult, Registry};
//!
//! let body = serde_json::from_str(r#"{"address": "10.0.0.7", "port": 8080}"#).unwrap();
//! let instance = cairn_registry::model::validate_registration("web-1", &body).unwrap();
//! let registry = Registry::default();
//! let cmd = Command::new(1_700_000_000_000, vec![Op::Register { service: "web".into(), instance, health: None }]);
//! assert_eq!(registry.apply(7, &cmd, &mut Dirty::default()), [OpResult::Ok]);
//! assert_eq!(registry.service("web").unwrap().modify_index, 7);
//! ```

pub mod acl;
pub mod backup;
pub mod cloudmap;
pub mod command;
pub mod format;
pub mod hash;
pub mod health;
mod ids;
mod intern;
pub mod model;
pub mod quota;
pub mod registry;
pub mod watch;

pub use command::{Command, Op, OpResult, StatedHealth};
pub use health::{CheckState, HealthStatus};
pub use registry::{Dirty, Registry, RegistryData, ServiceEntry, ServiceSettings};
