//! MQTT over mutual TLS with a hardware key (rumqttc + rustls), and the
//! request/response pattern of the `$aws` APIs.
//!
//! A [`Session`] is one MQTT connection used by one task at a time:
//! provisioning is a sequence of requests, each of which subscribes to its
//! `accepted` and `rejected` topics, publishes, and waits for one answer.

pub mod endpoint;
pub mod payload;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, Transport,
};
use tokio::sync::mpsc;

use crate::config::PayloadFormat;
use crate::error::ErrorKind;

/// AWS IoT's payload limit.
pub const MAX_PAYLOAD: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        endpoint: String,
        detail: String,
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
    #[error("{step}: the connection was lost: {detail}")]
    Disconnected { step: String, detail: String },
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
}

impl MqttError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MqttError::Rejected { .. }
            | MqttError::ConnectRefused { .. }
            | MqttError::CertificateRefused { .. }
            | MqttError::SubscribeRefused { .. } => ErrorKind::Refused,
            MqttError::Timeout { .. }
            | MqttError::Disconnected { .. }
            | MqttError::Connect { .. } => ErrorKind::Unreachable,
            MqttError::Oversized { .. } | MqttError::BadResponse { .. } => ErrorKind::Other,
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

enum Incoming {
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    Publish { topic: String, payload: Vec<u8> },
    Closed(String),
    Oversized(usize),
}

/// One MQTT connection.
pub struct Session {
    client: AsyncClient,
    incoming: mpsc::Receiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
    endpoint: String,
}

impl Session {
    /// Connects (TLS, MQTT CONNECT, CONNACK) within `connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, MqttError> {
        let endpoint = format!("{}:{}", opts.host, opts.port);
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(opts.tls.clone()),
        ));
        mqtt.set_keep_alive(opts.keep_alive);
        mqtt.set_clean_session(true);
        mqtt.set_max_packet_size(MAX_PAYLOAD + 1024, MAX_PAYLOAD + 1024);
        let (client, mut eventloop) = AsyncClient::new(mqtt, 16);

        let connected =
            tokio::time::timeout(opts.connect_timeout, wait_connack(&mut eventloop)).await;
        match connected {
            Err(_) => {
                return Err(MqttError::Timeout {
                    step: format!("connect to {endpoint}"),
                    after: opts.connect_timeout,
                })
            }
            Ok(Err(e)) => return Err(classify_connect_error(e, &endpoint, &opts.client_id)),
            Ok(Ok(())) => {}
        }

        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(pump(eventloop, tx));
        Ok(Self {
            client,
            incoming: rx,
            task,
            endpoint,
        })
    }

    /// Subscribes to `filters` (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filters: &[String],
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let step = format!("subscribe to {}", filters.join(", "));
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(|e| MqttError::Disconnected {
                step: step.clone(),
                detail: e.to_string(),
            })?;
        let codes = self
            .wait_for(&step, timeout, |m| match m {
                Incoming::SubAck(codes) => Some(codes),
                _ => None,
            })
            .await?;
        for (filter, code) in filters.iter().zip(codes) {
            if matches!(code, SubscribeReasonCode::Failure) {
                return Err(MqttError::SubscribeRefused {
                    filter: filter.clone(),
                });
            }
        }
        Ok(())
    }

    /// Publishes with QoS 1 and waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let step = format!("publish to {topic}");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| MqttError::Disconnected {
                step: step.clone(),
                detail: e.to_string(),
            })?;
        self.wait_for(&step, timeout, |m| {
            matches!(m, Incoming::PubAck).then_some(())
        })
        .await
    }

    /// Waits for a message on `topic` (an exact topic, no wildcards).
    pub async fn receive(&mut self, topic: &str, timeout: Duration) -> Result<Vec<u8>, MqttError> {
        let step = format!("wait for a message on {topic}");
        self.wait_for(&step, timeout, |m| match m {
            Incoming::Publish { topic: t, payload } if t == topic => Some(payload),
            _ => None,
        })
        .await
    }

    /// One `$aws` API call: subscribe to `<topic>/accepted` and
    /// `<topic>/rejected`, publish `body`, and return the accepted body or
    /// the rejection as [`MqttError::Rejected`].
    pub async fn request(
        &mut self,
        api: &str,
        topic: &str,
        format: PayloadFormat,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, MqttError> {
        let accepted = format!("{topic}/accepted");
        let rejected = format!("{topic}/rejected");
        self.subscribe(&[accepted.clone(), rejected.clone()], timeout)
            .await?;
        self.publish(topic, payload::encode(format, body), timeout)
            .await?;
        let step = format!("{api} response");
        let (was_accepted, bytes) = self
            .wait_for(&step, timeout, |m| match m {
                Incoming::Publish { topic: t, payload } if t == accepted => Some((true, payload)),
                Incoming::Publish { topic: t, payload } if t == rejected => Some((false, payload)),
                _ => None,
            })
            .await?;
        // CreateKeysAndCertificate answers with a private key: wipe the
        // raw copy once decoded.
        let bytes = zeroize::Zeroizing::new(bytes);
        let value = payload::decode(format, &bytes).map_err(|detail| MqttError::BadResponse {
            api: api.into(),
            detail,
        })?;
        if was_accepted {
            return Ok(value);
        }
        Err(MqttError::Rejected {
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
        })
    }

    /// The next message on any subscribed topic; waits as long as it takes
    /// (the connection's keep-alive notices a dead peer).
    pub async fn next_message(&mut self) -> Result<(String, Vec<u8>), MqttError> {
        loop {
            match self.incoming.recv().await {
                None => {
                    return Err(MqttError::Disconnected {
                        step: "wait for messages".into(),
                        detail: "event loop stopped".into(),
                    })
                }
                Some(Incoming::Closed(detail)) => {
                    return Err(MqttError::Disconnected {
                        step: "wait for messages".into(),
                        detail,
                    })
                }
                Some(Incoming::Oversized(size)) => {
                    return Err(MqttError::Oversized {
                        step: "wait for messages".into(),
                        size,
                    })
                }
                Some(Incoming::Publish { topic, payload }) => return Ok((topic, payload)),
                Some(_) => {}
            }
        }
    }

    /// Sends DISCONNECT and stops the event loop.
    /// When this returns the connection is gone, and with it the TLS
    /// session's hold on the key store.
    pub async fn close(mut self) {
        let _ = self.client.disconnect().await;
        // Give the event loop a moment to flush the DISCONNECT; it ends
        // when the server closes the socket.
        if tokio::time::timeout(Duration::from_millis(500), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn wait_for<T>(
        &mut self,
        step: &str,
        timeout: Duration,
        mut want: impl FnMut(Incoming) -> Option<T>,
    ) -> Result<T, MqttError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv()).await;
            match next {
                Err(_) => {
                    return Err(MqttError::Timeout {
                        step: step.to_string(),
                        after: timeout,
                    })
                }
                Ok(None) => {
                    return Err(MqttError::Disconnected {
                        step: step.to_string(),
                        detail: "event loop stopped".into(),
                    })
                }
                Ok(Some(Incoming::Oversized(size))) => {
                    return Err(MqttError::Oversized {
                        step: step.to_string(),
                        size,
                    })
                }
                Ok(Some(Incoming::Closed(detail))) => {
                    return Err(MqttError::Disconnected {
                        step: step.to_string(),
                        detail,
                    })
                }
                Ok(Some(m)) => {
                    if let Some(v) = want(m) {
                        return Ok(v);
                    }
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_connack(eventloop: &mut EventLoop) -> Result<(), rumqttc::ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = eventloop.poll().await? {
            return match ack.code {
                ConnectReturnCode::Success => Ok(()),
                code => Err(rumqttc::ConnectionError::ConnectionRefused(code)),
            };
        }
    }
}

async fn pump(mut eventloop: EventLoop, tx: mpsc::Sender<Incoming>) {
    loop {
        let msg = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => Incoming::SubAck(ack.return_codes),
            Ok(Event::Incoming(Packet::PubAck(_))) => Incoming::PubAck,
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Event::Incoming(Packet::Disconnect)) => {
                Incoming::Closed("the server sent DISCONNECT".into())
            }
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
            ))) => {
                let _ = tx.send(Incoming::Oversized(size)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Incoming::Closed(e.to_string())).await;
                return;
            }
        };
        let closed = matches!(msg, Incoming::Closed(_) | Incoming::Oversized(_));
        if tx.send(msg).await.is_err() || closed {
            return;
        }
    }
}

fn classify_connect_error(
    e: rumqttc::ConnectionError,
    endpoint: &str,
    client_id: &str,
) -> MqttError {
    use rumqttc::ConnectionError as C;
    if let Some(alert) = refusal_alert(&e) {
        return MqttError::CertificateRefused {
            endpoint: endpoint.into(),
            alert,
        };
    }
    match e {
        C::ConnectionRefused(code) => MqttError::ConnectRefused {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            code,
        },
        C::Tls(t) => MqttError::Connect {
            endpoint: endpoint.into(),
            detail: format!("TLS: {t}; check ROOT_CERT, the endpoint name and that the certificate is registered and ACTIVE"),
            retryable: false,
        },
        C::Io(io) => MqttError::Connect {
            endpoint: endpoint.into(),
            detail: format!("{io}"),
            retryable: true,
        },
        other => MqttError::Connect {
            endpoint: endpoint.into(),
            detail: other.to_string(),
            retryable: true,
        },
    }
}

/// The TLS alert with which the server refused our certificate, wherever
/// rumqttc put the I/O error that carries it.
fn refusal_alert(e: &rumqttc::ConnectionError) -> Option<rustls::AlertDescription> {
    use rumqttc::{mqttbytes, ConnectionError as C, StateError as S};
    let io = match e {
        C::Io(io)
        | C::MqttState(S::Io(io))
        | C::MqttState(S::Deserialization(mqttbytes::Error::Io(io))) => io,
        _ => return None,
    };
    use rustls::AlertDescription as A;
    match io.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            alert @ (A::AccessDenied
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::BadCertificate
            | A::UnknownCA),
        ) => Some(*alert),
        _ => None,
    }
}
