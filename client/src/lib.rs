//! Types of Cairn's native HTTP API (`/v1`), shared by the server and by programs that call it.
//!
//! This crate has no server dependencies: a program that registers itself or looks up a service
//! depends on it alone. The request bodies ([`InstanceRegistration`], [`HealthUpdate`],
//! [`JoinRequest`]), the responses ([`ServiceList`], [`ServiceInstances`], [`ClusterStatus`],
//! [`WriteResult`]) and the error body ([`ApiError`] with its stable [`ErrorCode`]) are exactly what
//! goes over the wire as JSON.
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

mod duration;
mod error;
mod types;

pub use duration::{format_duration, parse_duration, DurationError};
pub use error::{ApiError, ErrorCode};
pub use types::*;

/// Header carrying the registry index a read reflects, or the index a write committed at.
pub const INDEX_HEADER: &str = "x-cairn-index";
