//! MQTT over mutual TLS with a hardware key (rustls, and rumqttc's packet
//! codec), and the request/response pattern of the `$aws` APIs, at the
//! fewest round trips the protocols allow (docs/architecture.md, "Round
//! trips").
//!
//! A [`Session`] is one MQTT connection used by one task at a time:
//! provisioning is a sequence of requests on topics subscribed to in the
//! packet right behind CONNECT, each publishing and waiting for one answer.

pub mod endpoint;
mod link;
mod message;
pub mod payload;
mod session;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::ConnectReturnCode;

pub use link::LinkError;
pub use message::Message;
#[cfg(fuzzing)]
pub use session::fuzz_read_publish;
pub use session::{response_topics, Dialed, Prepared, Session};

use crate::error::ErrorKind;

/// AWS IoT's payload limit.
pub const MAX_PAYLOAD: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot connect to {endpoint}: {source}{}", connect_hint(source))]
    Connect {
        endpoint: String,
        #[source]
        source: LinkError,
        retryable: bool,
    },
    #[error("{endpoint} refused the MQTT connection as client {client_id}: {code:?}; check that the certificate is ACTIVE and its policy allows iot:Connect for this client id")]
    ConnectRefused {
        endpoint: String,
        client_id: String,
        code: ConnectReturnCode,
    },
    /// The server ended the TLS handshake with an alert refusing our
    /// certificate (with TLS 1.3 it arrives after the client's side of the
    /// handshake, on the first read).
    #[error("{endpoint} refused the client certificate (TLS alert {alert:?}); check that the certificate is registered and ACTIVE and that ROOT_CERT is the endpoint's CA")]
    CertificateRefused {
        endpoint: String,
        alert: rustls::AlertDescription,
    },
    #[error("{step}: no answer within {after:?}")]
    Timeout { step: String, after: Duration },
    #[error("{step}: the connection was lost: {source}")]
    Disconnected {
        step: String,
        #[source]
        source: LinkError,
    },
    #[error("subscription to {filter} was refused: the policy does not allow it")]
    SubscribeRefused { filter: String },
    #[error("{api} rejected: statusCode {status_code}, errorCode {error_code}, errorMessage {error_message:?}")]
    Rejected {
        api: String,
        status_code: u16,
        error_code: String,
        error_message: String,
    },
    #[error(
        "{step}: the service sent a {size}-byte packet, over the {MAX_PAYLOAD}-byte limit; refused"
    )]
    Oversized { step: String, size: usize },
    #[error("{api}: malformed response: {detail}")]
    BadResponse { api: String, detail: String },
    #[error("{api}: malformed response: {source}")]
    BadPayload {
        api: String,
        #[source]
        source: payload::PayloadError,
    },
}

/// What to check after a TLS failure while connecting.
fn connect_hint(e: &LinkError) -> &'static str {
    match e {
        _ if e.signature_failure().is_some() => "",
        LinkError::Tls(_) => {
            "; check ROOT_CERT, the endpoint name and that the certificate is registered and ACTIVE"
        }
        _ => "",
    }
}

impl MqttError {
    /// A `rejected` answer of `api`, from its body.
    pub fn rejected(api: &str, value: &serde_json::Value) -> Self {
        MqttError::Rejected {
            api: api.into(),
            status_code: value
                .get("statusCode")
                .and_then(|v| v.as_u64())
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(0),
            error_code: value
                .get("errorCode")
                .and_then(|v| v.as_str())
                .unwrap_or("(none)")
                .to_string(),
            error_message: value
                .get("errorMessage")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            MqttError::Rejected { .. }
            | MqttError::ConnectRefused { .. }
            | MqttError::CertificateRefused { .. }
            | MqttError::SubscribeRefused { .. } => ErrorKind::Refused,
            MqttError::Connect { source, .. } => match source.signature_failure() {
                Some(failed) => failed.source.kind(),
                None => ErrorKind::Unreachable,
            },
            MqttError::Timeout { .. } | MqttError::Disconnected { .. } => ErrorKind::Unreachable,
            MqttError::Oversized { .. }
            | MqttError::BadResponse { .. }
            | MqttError::BadPayload { .. } => ErrorKind::Other,
        }
    }

    /// Whether the same request may succeed if tried again: timeouts,
    /// lost connections, network errors and throttling. Other rejections
    /// are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            MqttError::Connect { retryable, .. } => *retryable,
            MqttError::Timeout { .. } | MqttError::Disconnected { .. } => true,
            MqttError::Rejected { error_code, .. } => error_code == "ThrottlingException",
            _ => false,
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}
