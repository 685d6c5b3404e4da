//! The wire types of Cairn's native HTTP API (`/v1`): request bodies ([`InstanceRegistration`],
//! [`HealthUpdate`], ...), responses ([`ServiceList`], [`ServiceInstances`], [`ClusterStatus`],
//! [`WriteResult`]), the error body ([`ApiError`] with its stable [`ErrorCode`]) and the duration
//! syntax every field and query parameter uses ([`parse_duration`]).
//!
//! This crate is serde and nothing else: the server (`cairn-node`) and the client
//! (`cairn-client`) both speak through it, and a program with its own HTTP stack can depend on it
//! alone. With the feature `openapi` (the server's), the types also derive their JSON Schemas
//! (utoipa), and the module `schema` holds the rules the derives cannot say alone; the server's
//! OpenAPI document (`api/openapi.json`) is built from them. What the cluster stores and
//! replicates is *not* these types: the registry keeps its own
//! persisted types (crate `cairn-registry`), so a change here never changes the replicated format.
//!
//! ```
//! use cairn_api::{ErrorCode, InstanceRegistration};
//!
//! let body: InstanceRegistration =
//!     serde_json::from_str(r#"{"address": "10.0.0.7", "port": 8080, "tags": ["v2"]}"#).unwrap();
//! assert_eq!(body.port, 8080);
//! assert!(ErrorCode::NoLeader.is_retryable());
//! assert!(!ErrorCode::InvalidArgument.is_retryable());
//! ```

mod acl;
mod duration;
mod error;
#[cfg(feature = "openapi")]
pub mod schema;
mod types;

pub use acl::*;
pub use duration::{format_duration, parse_duration, DurationError};
pub use error::{ApiError, ErrorCode};
pub use types::*;

/// Header carrying the registry index a read reflects, or the index a write committed at.
pub const INDEX_HEADER: &str = "x-cairn-index";
/// Header carrying a token's secret (`Authorization: Bearer` works as well).
pub const TOKEN_HEADER: &str = "x-cairn-token";
