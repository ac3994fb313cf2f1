//! Where the agent connects and how, in one place: the endpoint, port, ALPN
//! and connect timeout of the config, the trust roots of `ROOT_CERT` (read
//! once), the keep-alive, and the TLS client configuration whose key stays
//! in the key store. Enrollment, rotation, the daemon and `check` all build
//! their connections here, so they cannot drift apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::ConnectOptions;
use crate::config::Config;
use crate::crypto::{
    certified_key, client_config, deferred_client_config, CertError, Certificate,
    DeferredClientCert, TlsError, ALPN_AWS_IOT,
};
use crate::keystore::{KeyInfo, KeyStore};

/// The MQTT keep-alive of every connection: AWS IoT counts anything below
/// 30 s as 30 s; a minute keeps an idle daemon's link quiet (cellular,
/// satellite) while a dead connection is still noticed within 90 s.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot read ROOT_CERT {path}: {source}")]
    ReadRoots {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Roots(CertError),
    /// A credential's certificate does not parse.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// The TLS client configuration cannot be made with this credential.
    #[error("{credential}: {source}")]
    Tls {
        credential: &'static str,
        #[source]
        source: TlsError,
    },
}

/// The endpoint of a configuration, with its trust roots.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    alpn: bool,
    connect_timeout: Duration,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("alpn", &self.alpn)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Reads `ROOT_CERT`.
    pub fn new(config: &Config) -> Result<Self, EndpointError> {
        let path = &config.settings.root_cert;
        let pem = std::fs::read_to_string(path).map_err(|source| EndpointError::ReadRoots {
            path: path.clone(),
            source,
        })?;
        let roots = Certificate::from_pem(&pem, &format!("ROOT_CERT {}", path.display()))
            .map_err(EndpointError::Roots)?
            .chain()
            .to_vec();
        Ok(Self {
            host: config.settings.iot_endpoint.clone(),
            port: config.provisioning.port,
            alpn: config.provisioning.alpn,
            connect_timeout: config.provisioning.connect_timeout,
            roots,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The certificates of `ROOT_CERT`.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// A TLS client configuration that authenticates with `certificate`
    /// and its key in `store` (`credential` names it in errors), offering
    /// ALPN `x-amzn-mqtt-ca` when the config asks for it (port 443).
    pub fn tls(
        &self,
        credential: &'static str,
        certificate: &Certificate,
        store: Arc<dyn KeyStore>,
        key: &KeyInfo,
    ) -> Result<rustls::ClientConfig, EndpointError> {
        let alpn = self.alpn.then_some(ALPN_AWS_IOT);
        client_config(&self.roots, certificate.chain().to_vec(), store, key, alpn)
            .map_err(|source| EndpointError::Tls { credential, source })
    }

    /// `certificate` with its key in `store`, for a connection dialed with
    /// [`Endpoint::deferred_options`]; refused if they do not belong
    /// together.
    pub fn certified_key(
        &self,
        credential: &'static str,
        certificate: &Certificate,
        store: Arc<dyn KeyStore>,
        key: &KeyInfo,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, EndpointError> {
        certified_key(certificate.chain().to_vec(), store, key)
            .map_err(|source| EndpointError::Tls { credential, source })
    }

    /// How to connect with a client certificate set later, through the
    /// returned slot (see [`crate::crypto::deferred_cert`]); the client id
    /// is set when the connection is finished.
    pub fn deferred_options(
        &self,
        credential: &'static str,
    ) -> Result<(ConnectOptions, Arc<DeferredClientCert>), EndpointError> {
        let alpn = self.alpn.then_some(ALPN_AWS_IOT);
        let (tls, slot) = deferred_client_config(&self.roots, alpn)
            .map_err(|source| EndpointError::Tls { credential, source })?;
        Ok((self.connect_options(String::new(), tls), slot))
    }

    /// How to connect as `client_id` with `certificate` and its key.
    pub fn options(
        &self,
        credential: &'static str,
        client_id: String,
        certificate: &Certificate,
        store: Arc<dyn KeyStore>,
        key: &KeyInfo,
    ) -> Result<ConnectOptions, EndpointError> {
        let tls = self.tls(credential, certificate, store, key)?;
        Ok(self.connect_options(client_id, tls))
    }

    fn connect_options(&self, client_id: String, tls: rustls::ClientConfig) -> ConnectOptions {
        ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            client_id,
            tls: Arc::new(tls),
            connect_timeout: self.connect_timeout,
            keep_alive: KEEP_ALIVE,
        }
    }
}
