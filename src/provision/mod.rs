//! Enrollment and rotation: the journal, the flows, the credential commit.

pub mod enroll;
pub mod fault;
pub mod identity;
pub mod journal;
pub mod retry;
pub mod serial;

use std::path::PathBuf;
use std::time::Duration;

use crate::commands::exit;
use crate::keystore::KeyStoreError;
use crate::mqtt::MqttError;

/// How long one step of a flow took, for the human output.
#[derive(Debug, Clone)]
pub struct StepTiming {
    pub name: &'static str,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("{api}: the service's answer is refused: {detail}; nothing was changed")]
    BadResponse { api: String, detail: String },
    #[error("{step}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        step: String,
        attempts: u32,
        last: Box<ProvisionError>,
    },
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ProvisionError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ProvisionError::Io { what, path, source }
    }

    /// Whether trying the same step again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProvisionError::Mqtt(e) => e.is_retryable(),
            ProvisionError::KeyStore(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The documented exit code (README).
    pub fn exit_code(&self) -> u8 {
        match self {
            ProvisionError::Input(_) | ProvisionError::Serial(_) => exit::CONFIG,
            ProvisionError::KeyStore(_) => exit::KEYSTORE,
            ProvisionError::Mqtt(e) => match e {
                MqttError::Rejected { .. }
                | MqttError::ConnectRefused { .. }
                | MqttError::SubscribeRefused { .. } => exit::REFUSED,
                MqttError::Timeout { .. }
                | MqttError::Disconnected { .. }
                | MqttError::Connect { .. } => exit::UNREACHABLE,
                MqttError::Oversized { .. } | MqttError::BadResponse { .. } => exit::OTHER,
            },
            ProvisionError::GaveUp { .. } => exit::UNREACHABLE,
            _ => exit::OTHER,
        }
    }
}
