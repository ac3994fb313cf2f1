//! The errors of registering or evaluating a template, and the error code
//! each one answers with.

use super::MAX_TEMPLATE_CHARS;
use crate::policy::{JsonError, PolicyError};

const SUPPORTED_FUNCTIONS: &str = "Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub";

/// A template that cannot be registered or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template body is not valid JSON: {0}")]
    Json(#[source] JsonError),
    #[error("template body is {size} characters long; the limit is {MAX_TEMPLATE_CHARS}")]
    TooLarge { size: usize },
    #[error("template name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{path}: {function} is not supported in provisioning templates (supported: {SUPPORTED_FUNCTIONS})")]
    UnsupportedFunction { path: String, function: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A policy document in the template (at `path`) that
    /// [`PolicyDocument::parse`](crate::policy::PolicyDocument::parse) refuses.
    #[error("{path}: {source}")]
    Policy {
        path: String,
        #[source]
        source: PolicyError,
    },
    #[error("parameter {name} was not provided and has no Default in the template")]
    MissingParameter { name: String },
    /// An `OverrideSettings` value of `FAIL` met an existing thing that differs.
    #[error("{0}")]
    ResourceConflict(String),
}

impl TemplateError {
    /// The error code RegisterThing / CreateProvisioningTemplate answers with.
    pub fn error_code(&self) -> &'static str {
        match self {
            TemplateError::ResourceConflict(_) => "ResourceConflictsException",
            _ => "InvalidRequestException",
        }
    }

    pub(super) fn policy(path: impl Into<String>, source: PolicyError) -> Self {
        TemplateError::Policy {
            path: path.into(),
            source,
        }
    }

    pub(super) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        TemplateError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}
