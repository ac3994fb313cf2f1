//! Errors in the shape AWS's REST-JSON services answer them: the HTTP status
//! the service model gives the error type, header `x-amzn-ErrorType: <Code>`
//! and body `{"message": "..."}`. botocore's `RestJSONParser` takes the code
//! from that header, so boto3 raises `client.exceptions.<Code>`.

use crate::registry::RegistryError;

/// The error types the control plane answers (names and statuses from
/// `iot/2015-05-28/service-2.json`, except [`ErrorKind::UnknownOperation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A parameter, header or body the operation cannot take.
    InvalidRequest,
    /// The thing or certificate named does not exist.
    ResourceNotFound,
    /// `expectedVersion` is not the thing's version.
    VersionConflict,
    /// CreateThing of a thing that exists with another configuration.
    ResourceAlreadyExists,
    /// The certificate's status does not allow the operation.
    CertificateState,
    /// An account limit: a second certificate provider (AWS allows one).
    LimitExceeded,
    /// A policy document the policy engine refuses.
    MalformedPolicy,
    /// The registry failed.
    InternalFailure,
    /// No operation has this method and path: the emulator does not serve
    /// it (yet), or the client is not an AWS IoT client. Not in the IoT
    /// model; the code AWS's JSON services use for an unknown operation.
    UnknownOperation,
}

impl ErrorKind {
    /// The one place an error type becomes its code and HTTP status.
    pub(crate) fn code_and_status(self) -> (&'static str, u16) {
        match self {
            ErrorKind::InvalidRequest => ("InvalidRequestException", 400),
            ErrorKind::ResourceNotFound => ("ResourceNotFoundException", 404),
            ErrorKind::VersionConflict => ("VersionConflictException", 409),
            ErrorKind::ResourceAlreadyExists => ("ResourceAlreadyExistsException", 409),
            ErrorKind::CertificateState => ("CertificateStateException", 406),
            ErrorKind::LimitExceeded => ("LimitExceededException", 410),
            ErrorKind::MalformedPolicy => ("MalformedPolicyException", 400),
            ErrorKind::InternalFailure => ("InternalFailureException", 500),
            ErrorKind::UnknownOperation => ("UnknownOperationException", 404),
        }
    }
}

/// A refused request: its error type and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An [`ErrorKind::InvalidRequest`] message prefixed with the operation
    /// (`CreateThing: ...`); other kinds unchanged.
    pub(crate) fn in_operation(self, op: &str) -> Self {
        match self.kind {
            ErrorKind::InvalidRequest => ApiError::invalid(format!("{op}: {}", self.message)),
            _ => self,
        }
    }

    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::InvalidRequest, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::ResourceNotFound, message)
    }

    /// The response body: `{"message": "..."}`.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.message })
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { kind, name } => {
                ApiError::not_found(format!("{kind} {name} cannot be found"))
            }
            RegistryError::AlreadyExists { .. } => {
                ApiError::new(ErrorKind::ResourceAlreadyExists, e.to_string())
            }
            RegistryError::VersionConflict { .. } => {
                ApiError::new(ErrorKind::VersionConflict, e.to_string())
            }
            RegistryError::OneCertificateProvider { .. } => {
                ApiError::new(ErrorKind::LimitExceeded, e.to_string())
            }
            RegistryError::Invalid(m) => ApiError::invalid(m),
            RegistryError::Policy { .. } => {
                ApiError::new(ErrorKind::MalformedPolicy, e.to_string())
            }
            // As when they were plain messages: refused as the request's.
            RegistryError::TemplateName(_)
            | RegistryError::Template { .. }
            | RegistryError::Corrupt { .. } => ApiError::invalid(e.to_string()),
            RegistryError::Sqlite(_) | RegistryError::Io { .. } => {
                ApiError::new(ErrorKind::InternalFailure, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_keep_their_meaning() {
        let e: ApiError = RegistryError::NotFound {
            kind: "thing",
            name: "gw_1".into(),
        }
        .into();
        assert_eq!(e.kind.code_and_status(), ("ResourceNotFoundException", 404));
        assert!(e.message.contains("gw_1"), "{}", e.message);
        let e: ApiError = RegistryError::VersionConflict {
            kind: "thing",
            name: "gw_1".into(),
            expected: 1,
            actual: 2,
        }
        .into();
        assert_eq!(e.kind.code_and_status(), ("VersionConflictException", 409));
        let e: ApiError = RegistryError::Sqlite(rusqlite::Error::InvalidQuery).into();
        assert_eq!(e.kind.code_and_status().1, 500);
        assert_eq!(
            ApiError::invalid("x").body(),
            serde_json::json!({"message": "x"})
        );
    }
}
