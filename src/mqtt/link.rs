//! One TLS connection over TCP, driven by hand (rustls without an I/O
//! wrapper) so that the agent decides when each flight leaves:
//!
//! - [`Link::start`] connects (TCP_NODELAY: every flight is a few small
//!   records that must not wait for an ACK behind Nagle's algorithm), sends
//!   the ClientHello and reads the server's first flight; or in two steps,
//!   [`Link::dial`] (TCP and ClientHello) and [`Dialed::server_flight`],
//!   for a connection dialed before its client certificate exists. The
//!   client's
//!   answer (its certificate and the hardware's signature, and in TLS 1.3
//!   its Finished) then waits in the connection: a handshake can be
//!   prepared while something else is in flight, for example RegisterThing
//!   for the very certificate it will present.
//! - [`Handshake::finish`] sends that answer with the first MQTT packets
//!   right behind it, in one write: in TLS 1.3 CONNECT and SUBSCRIBE travel
//!   with the client's Finished, so the CONNACK and SUBACK come back one
//!   round trip later.
//!
//! The server sees the client's certificate only in the answer, so holding
//! it back never shows the server a certificate before it should be used.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::ConnectOptions;

/// Why a connection could not be made, or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{host:?} is not a valid TLS server name (IOT_ENDPOINT)")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server sent DISCONNECT")]
    ServerDisconnect,
    #[error("the server sent a malformed MQTT packet: {0}")]
    Protocol(#[source] rumqttc::mqttbytes::Error),
    #[error("no answer to the keep-alive ping within {0:?}")]
    KeepAlive(Duration),
}

impl LinkError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| LinkError::Io { what, source }
    }

    /// Whether connecting again may help: network trouble yes, a TLS
    /// failure (a certificate or trust problem) no, the key store failing
    /// the handshake's signature as the key store says.
    pub fn is_retryable(&self) -> bool {
        if let Some(failed) = self.signature_failure() {
            return failed.source.is_retryable();
        }
        !matches!(self, LinkError::Tls(_) | LinkError::ServerName { .. })
    }

    /// The key store's failure to sign the handshake, if that is what
    /// ended it.
    pub fn signature_failure(&self) -> Option<&crate::crypto::tls::SignatureFailed> {
        match self {
            LinkError::Tls(e) => crate::crypto::tls::signature_failure(e),
            _ => None,
        }
    }

    /// The TLS alert with which the server refused our certificate.
    pub fn refusal_alert(&self) -> Option<rustls::AlertDescription> {
        use rustls::AlertDescription as A;
        match self {
            LinkError::Tls(rustls::Error::AlertReceived(
                alert @ (A::AccessDenied
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::BadCertificate
                | A::UnknownCA),
            )) => Some(*alert),
            _ => None,
        }
    }
}

/// The largest TLS record plus its header: one read's worth.
const READ_CHUNK: usize = 16 * 1024 + 2048;

/// An established (or establishing) TLS connection.
pub(crate) struct Link {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
    chunk: Box<[u8; READ_CHUNK]>,
}

/// A TLS handshake whose client answer is held back (see the module docs).
pub struct Handshake {
    link: Link,
}

/// A connection whose ClientHello went and whose server flight is not read
/// yet: it stays in the socket until [`Dialed::server_flight`].
pub(crate) struct Dialed {
    link: Link,
}

impl Link {
    /// TCP connect, ClientHello, the server's first flight read and
    /// processed (which signs with the key store in TLS 1.3). Not bounded
    /// in time: the caller puts a timeout around it.
    pub async fn start(opts: &ConnectOptions) -> Result<Handshake, LinkError> {
        Self::dial(opts).await?.server_flight().await
    }

    /// TCP connect and ClientHello; nothing is read. Not bounded in time.
    pub async fn dial(opts: &ConnectOptions) -> Result<Dialed, LinkError> {
        let name =
            ServerName::try_from(opts.host.clone()).map_err(|source| LinkError::ServerName {
                host: opts.host.clone(),
                source,
            })?;
        tracing::debug!("TCP connect to {}:{}", opts.host, opts.port);
        let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
            .await
            .map_err(LinkError::io("TCP connect"))?;
        tcp.set_nodelay(true)
            .map_err(LinkError::io("set TCP_NODELAY"))?;
        let tls = rustls::ClientConnection::new(opts.tls.clone(), name).map_err(LinkError::Tls)?;
        let mut link = Link {
            tcp,
            tls,
            chunk: Box::new([0; READ_CHUNK]),
        };
        link.flush().await?;
        Ok(Dialed { link })
    }

    /// Sends everything rustls has queued, in one write.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        if !self.tls.wants_write() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(4096);
        while self.tls.wants_write() {
            self.tls
                .write_tls(&mut out)
                .map_err(LinkError::io("encrypt"))?;
        }
        self.tcp
            .write_all(&out)
            .await
            .map_err(LinkError::io("send"))
    }

    /// Queues `bytes` as application data (sent by the next
    /// [`Link::flush`]).
    pub fn queue(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.tls
            .writer()
            .write_all(bytes)
            .map_err(LinkError::io("queue for sending"))
    }

    /// Waits for bytes from the server and processes them. Cancel-safe:
    /// nothing is consumed until the socket's read returns.
    pub async fn read(&mut self) -> Result<(), LinkError> {
        let n = self
            .tcp
            .read(&mut self.chunk[..])
            .await
            .map_err(LinkError::io("receive"))?;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        let mut rest = &self.chunk[..n];
        let result = loop {
            if rest.is_empty() {
                break Ok(());
            }
            if let Err(e) = self.tls.read_tls(&mut rest) {
                break Err(LinkError::io("decrypt")(e));
            }
            if let Err(e) = self.tls.process_new_packets() {
                break Err(LinkError::Tls(e));
            }
        };
        // The ciphertext of a record may carry a key (CreateKeysAndCertificate).
        zeroize::Zeroize::zeroize(&mut self.chunk[..n]);
        result
    }

    /// [`Link::read`], and on a failure the alert rustls may have for the
    /// server sent (best effort). Not cancel-safe: for the handshake, not
    /// for a `select!`.
    async fn read_or_alert(&mut self) -> Result<(), LinkError> {
        let result = self.read().await;
        if result.is_err() {
            let _ = self.flush().await;
        }
        result
    }

    /// Moves the decrypted bytes into `into`; `Ok(true)` when the server
    /// also sent close_notify (the bytes before it are in `into`: a refusal
    /// such as a CONNACK with an error code comes just before it).
    pub fn take_plaintext(&mut self, into: &mut BytesMut) -> Result<bool, LinkError> {
        let mut buf = Zeroizing::new([0u8; 4096]);
        loop {
            match self.tls.reader().read(&mut buf[..]) {
                Ok(0) => return Ok(true),
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(LinkError::io("read plaintext")(e)),
            }
        }
    }

    /// Sends close_notify (best effort) and ends the connection.
    pub async fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
        let _ = self.tcp.shutdown().await;
    }

    /// Whether the socket has TCP_NODELAY set (read back from the kernel).
    pub fn nodelay(&self) -> std::io::Result<bool> {
        self.tcp.nodelay()
    }
}

impl Dialed {
    /// Reads and processes the server's first flight, until the client's
    /// answer is ready (TLS 1.3: the handshake done on our side, the
    /// CertificateVerify signed by the key store; TLS 1.2: its key exchange
    /// and certificate to send). Not bounded in time.
    pub async fn server_flight(mut self) -> Result<Handshake, LinkError> {
        let link = &mut self.link;
        while link.tls.is_handshaking() && !link.tls.wants_write() {
            link.read_or_alert().await?;
        }
        Ok(Handshake { link: self.link })
    }
}

impl Handshake {
    /// Completes the handshake and sends `first` (MQTT packets) right
    /// behind the client's answer. Not bounded in time.
    pub(crate) async fn finish(mut self, first: &[u8]) -> Result<Link, LinkError> {
        let link = &mut self.link;
        // TLS 1.2: the server must answer our flight before data may go.
        while link.tls.is_handshaking() {
            link.flush().await?;
            if link.tls.is_handshaking() {
                link.read_or_alert().await?;
            }
        }
        link.queue(first)?;
        link.flush().await?;
        Ok(self.link)
    }

    /// Whether the socket has TCP_NODELAY set (read back from the kernel).
    pub fn nodelay(&self) -> std::io::Result<bool> {
        self.link.nodelay()
    }
}
