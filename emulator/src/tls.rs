//! TLS: the server configuration and the client-certificate check against
//! the registry (registered and ACTIVE, by certificate id).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::pki::certificate_id;
use crate::registry::{CertStatus, Registry};

/// ALPN protocol AWS IoT Core selects on port 443 for MQTT with client certificates.
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";

#[derive(Debug)]
struct RegistryClientVerifier {
    registry: Registry,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RegistryClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = certificate_id(end_entity);
        let status = self
            .registry
            .certificate_status(&id)
            .map_err(|e| rustls::Error::General(format!("registry: {e}")))?;
        match status {
            Some(CertStatus::Active) => Ok(ClientCertVerified::assertion()),
            Some(CertStatus::Revoked) => Err(CertificateError::Revoked.into()),
            Some(_) => Err(CertificateError::ApplicationVerificationFailure.into()),
            None => Err(CertificateError::UnknownIssuer.into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server configuration for both listeners; `alpn` selects `x-amzn-mqtt-ca`.
pub(crate) fn server_config(
    registry: Registry,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    alpn: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = RegistryClientVerifier {
        registry,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut chain = Vec::new();
    for pem_str in [cert_pem, ca_pem] {
        let p = pem::parse(pem_str)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        chain.push(CertificateDer::from(p.into_contents()));
    }
    let key =
        pem::parse(key_pem).map_err(|e| rustls::Error::General(format!("server key: {e}")))?;
    let key = PrivateKeyDer::try_from(key.into_contents())
        .map_err(|e| rustls::Error::General(e.into()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    if alpn {
        config.alpn_protocols = vec![ALPN_MQTT_CA.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The ring provider, for clients built by tests and tools.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
