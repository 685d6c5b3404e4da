//! [`CloudMapError`]: an error in AWS's shape, `{"__type": <kind>, "Message": ...}` in JSON or
//! CBOR, which the SDKs raise as the exception class of that name.

use cairn_raft::WriteError;
use cairn_registry::model::ValidationError;

use crate::http::Failure;

/// An AWS error: the exception's name, its message, its HTTP status, and the members some
/// exceptions carry (`ServiceId` of `ServiceAlreadyExists`, ...).
#[derive(Debug)]
pub struct CloudMapError {
    pub kind: &'static str,
    pub message: String,
    pub status: u16,
    pub members: Vec<(&'static str, String)>,
}

impl CloudMapError {
    /// A client error (400), as every modeled Cloud Map exception is.
    pub fn new(kind: &'static str, message: impl Into<String>) -> CloudMapError {
        CloudMapError {
            kind,
            message: message.into(),
            status: 400,
            members: Vec::new(),
        }
    }

    /// `InvalidInput`, naming the field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> CloudMapError {
        CloudMapError::new("InvalidInput", format!("{field}: {message}"))
    }

    /// With an extra member (`ServiceId`, `NamespaceId`, `CreatorRequestId`, ...).
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> CloudMapError {
        self.members.push((name, value.into()));
        self
    }

    pub fn with_status(mut self, status: u16) -> CloudMapError {
        self.status = status;
        self
    }

    /// The error as a document: what the wire encodes.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("__type".into(), self.kind.into());
        body.insert("Message".into(), self.message.clone().into());
        for (k, v) in &self.members {
            body.insert((*k).into(), v.clone().into());
        }
        body.into()
    }
}

impl From<ValidationError> for CloudMapError {
    fn from(e: ValidationError) -> CloudMapError {
        CloudMapError::invalid(&e.field, e.message)
    }
}

impl From<WriteError> for CloudMapError {
    fn from(e: WriteError) -> CloudMapError {
        match e {
            WriteError::NoLeader(m) | WriteError::Unavailable(m) => {
                CloudMapError::new("ServiceUnavailableException", m).with_status(503)
            }
            WriteError::NotFound(m) => CloudMapError::new("InstanceNotFound", m),
            WriteError::Conflict(m) => CloudMapError::new("ResourceInUse", m),
            WriteError::Denied(m) => CloudMapError::new("AccessDeniedException", m),
            WriteError::QuotaExceeded(m) => CloudMapError::new("ResourceLimitExceeded", m),
            WriteError::Invalid(m) => CloudMapError::new("InvalidInput", m),
            WriteError::Internal(m) => CloudMapError::new("InternalFailure", m).with_status(500),
        }
    }
}

/// An error of the HTTP core (a denied right, a failed read barrier) in AWS's words.
impl From<Failure> for CloudMapError {
    fn from(f: Failure) -> CloudMapError {
        use cairn_api::ErrorCode;
        let m = f.0.message;
        match f.0.code {
            ErrorCode::PermissionDenied => CloudMapError::new("AccessDeniedException", m),
            ErrorCode::InvalidArgument => CloudMapError::new("InvalidInput", m),
            ErrorCode::NotFound => CloudMapError::new("InstanceNotFound", m),
            code if code.http_status() == 503 => {
                CloudMapError::new("ServiceUnavailableException", m).with_status(503)
            }
            _ => CloudMapError::new("InternalFailure", m).with_status(500),
        }
    }
}
