//! rustls client authentication with a key that stays in the key store.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey, SingleCertAndKey};
use rustls::{SignatureAlgorithm, SignatureScheme as TlsScheme};

use crate::keystore::{
    KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, PublicKey, SignatureScheme,
};

/// The ALPN protocol AWS IoT Core expects for MQTT on port 443.
pub const ALPN_AWS_IOT: &[u8] = b"x-amzn-mqtt-ca";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate's public key does not match key {label}: the certificate belongs to another key")]
    KeyMismatch { label: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{host:?} is not a valid TLS server name: {source}")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
}

/// The key store failed to make the handshake's signature. It travels
/// through rustls as [`rustls::Error::Other`], so that the connection's
/// error keeps it: [`signature_failure`] finds it again, and the failure is
/// the key store's (its kind, whether a retry may help), not the network's.
#[derive(Debug, thiserror::Error)]
#[error("key store signature with {label} failed: {source}")]
pub struct SignatureFailed {
    pub label: String,
    #[source]
    pub source: KeyStoreError,
}

/// The key store's failure inside a TLS error, if that is what it is.
pub fn signature_failure(error: &rustls::Error) -> Option<&SignatureFailed> {
    match error {
        rustls::Error::Other(rustls::OtherError(inner)) => inner.downcast_ref(),
        _ => None,
    }
}

/// A rustls [`SigningKey`] whose private half lives in a [`KeyStore`].
pub struct HardwareSigningKey {
    store: Arc<dyn KeyStore>,
    label: KeyLabel,
    public_key: PublicKey,
}

impl HardwareSigningKey {
    pub fn new(store: Arc<dyn KeyStore>, info: &KeyInfo) -> Self {
        Self {
            store,
            label: info.label.clone(),
            public_key: info.public_key.clone(),
        }
    }

    /// Our preference among the schemes the peer offers. For RSA, PKCS#1
    /// v1.5 comes first: rustls never offers it in TLS 1.3, so TLS 1.2 gets
    /// PKCS#1 v1.5 and TLS 1.3 gets PSS.
    fn preferences(&self) -> &'static [(TlsScheme, SignatureScheme)] {
        match self.public_key.algorithm() {
            KeyAlgorithm::EcP256 => &[(
                TlsScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::EcdsaSha256,
            )],
            KeyAlgorithm::EcP384 => &[(
                TlsScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::EcdsaSha384,
            )],
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => &[
                (TlsScheme::RSA_PKCS1_SHA256, SignatureScheme::RsaPkcs1Sha256),
                (TlsScheme::RSA_PKCS1_SHA384, SignatureScheme::RsaPkcs1Sha384),
                (TlsScheme::RSA_PKCS1_SHA512, SignatureScheme::RsaPkcs1Sha512),
                (TlsScheme::RSA_PSS_SHA256, SignatureScheme::RsaPssSha256),
                (TlsScheme::RSA_PSS_SHA384, SignatureScheme::RsaPssSha384),
                (TlsScheme::RSA_PSS_SHA512, SignatureScheme::RsaPssSha512),
            ],
        }
    }
}

impl std::fmt::Debug for HardwareSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HardwareSigningKey")
            .field("backend", &self.store.backend())
            .field("label", &self.label)
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl SigningKey for HardwareSigningKey {
    fn choose_scheme(&self, offered: &[TlsScheme]) -> Option<Box<dyn Signer>> {
        let (tls, ours) = self
            .preferences()
            .iter()
            .find(|(tls, _)| offered.contains(tls))?;
        Some(Box::new(HardwareSigner {
            store: self.store.clone(),
            label: self.label.clone(),
            tls: *tls,
            scheme: *ours,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.public_key.spki_der()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        if self.public_key.algorithm().is_ec() {
            SignatureAlgorithm::ECDSA
        } else {
            SignatureAlgorithm::RSA
        }
    }
}

struct HardwareSigner {
    store: Arc<dyn KeyStore>,
    label: KeyLabel,
    tls: TlsScheme,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for HardwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HardwareSigner")
            .field("label", &self.label)
            .field("scheme", &self.tls)
            .finish()
    }
}

impl Signer for HardwareSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        tracing::debug!(key = %self.label, scheme = ?self.tls, "hardware signature: TLS handshake");
        self.store
            .sign(&self.label, self.scheme, message)
            .map_err(|source| {
                tracing::error!(key = %self.label, error = %source, "TLS signature in the key store failed");
                rustls::Error::Other(rustls::OtherError(Arc::new(SignatureFailed {
                    label: self.label.to_string(),
                    source,
                })))
            })
    }

    fn scheme(&self) -> TlsScheme {
        self.tls
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) that
/// trusts `roots` and authenticates with `chain` and the hardware key.
/// Refuses a certificate whose public key is not the key's.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    store: Arc<dyn KeyStore>,
    key: &KeyInfo,
    alpn: Option<&[u8]>,
) -> Result<rustls::ClientConfig, TlsError> {
    let certified = certified_key(chain, store, key)?;
    config_with(roots, Arc::new(SingleCertAndKey::from(certified)), alpn)
}

/// `chain` with the hardware key, checked to belong together: refuses a
/// certificate whose public key is not the key's.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    store: Arc<dyn KeyStore>,
    key: &KeyInfo,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing_key: Arc<dyn SigningKey> = Arc::new(HardwareSigningKey::new(store, key));
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            label: key.label.to_string(),
        },
        other => TlsError::Rustls(other),
    })?;
    Ok(Arc::new(certified))
}

/// The client configuration of every connection: `roots`, the client
/// certificate `resolver` gives, and ALPN when asked for.
pub(super) fn config_with(
    roots: &[CertificateDer<'static>],
    resolver: Arc<dyn rustls::client::ResolvesClientCert>,
    alpn: Option<&[u8]>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut root_store = rustls::RootCertStore::empty();
    for root in roots {
        root_store.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store)
        .with_client_cert_resolver(resolver);
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(config)
}

/// The server name to present in SNI (required by AWS IoT).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|source| TlsError::ServerName {
        host: host.to_string(),
        source,
    })
}
