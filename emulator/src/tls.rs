//! TLS: the server configuration, the client-certificate check against
//! the registry (within its validity period, and registered and ACTIVE by
//! certificate id, or issued by a registered ACTIVE CA, then registered on
//! first use), and the ClientHello check for SNI.

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::pki::certificate_id;
use crate::registry::{CertStatus, Registry};

/// ALPN protocol AWS IoT Core selects on port 443 for MQTT with client certificates.
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";

/// Subject (DER) of a registered CA and the policies its certificates get.
type CaPolicies = Vec<(Vec<u8>, Vec<String>)>;

/// Chain verification against the registered ACTIVE CAs, rebuilt when they change.
#[derive(Clone)]
struct CaVerifier {
    epoch: u64,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    cas: CaPolicies,
}

struct RegistryClientVerifier {
    registry: Registry,
    provider: Arc<CryptoProvider>,
    algorithms: WebPkiSupportedAlgorithms,
    cas: Mutex<Option<CaVerifier>>,
}

impl std::fmt::Debug for RegistryClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryClientVerifier")
    }
}

impl RegistryClientVerifier {
    /// The verifier over the registered CAs and their policies, current.
    fn ca_verifier(&self) -> Result<CaVerifier, rustls::Error> {
        let epoch = self.registry.auth_epoch();
        let mut cache = self.cas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.epoch == epoch) {
            return Ok(c.clone());
        }
        let records = self
            .registry
            .ca_certificates()
            .map_err(|e| rustls::Error::General(format!("registry: {e}")))?;
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        for ca in records
            .into_iter()
            .filter(|c| c.status == CertStatus::Active)
        {
            let Ok(p) = pem::parse(&ca.certificate_pem) else {
                continue;
            };
            let der = p.into_contents();
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) {
                cas.push((
                    cert.subject().as_raw().to_vec(),
                    ca.auto_attach_policies.clone(),
                ));
            }
            let _ = roots.add(CertificateDer::from(der));
        }
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(format!("registered CAs: {e}")))?,
            )
        };
        let current = CaVerifier {
            epoch,
            verifier,
            cas,
        };
        *cache = Some(current.clone());
        Ok(current)
    }

    /// A certificate unknown to the registry: accepted and registered if it
    /// chains to a registered ACTIVE CA.
    fn verify_by_ca(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        id: &str,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let CaVerifier {
            verifier: Some(verifier),
            cas,
            ..
        } = self.ca_verifier()?
        else {
            return Err(CertificateError::UnknownIssuer.into());
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let issuer = cert.issuer().as_raw();
        let policies = cas
            .iter()
            .find(|(subject, _)| subject.as_slice() == issuer)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        let pem_str = pem::encode(&pem::Pem::new("CERTIFICATE", end_entity.to_vec()));
        self.registry
            .auto_register(&pem_str, id, &policies)
            .map_err(|e| rustls::Error::General(format!("registry: {e}")))?;
        tracing::info!(certificate_id = %id, "certificate of a registered CA registered on first connection");
        Ok(ClientCertVerified::assertion())
    }
}

/// Refuses a client certificate outside its validity period (expired, or
/// not yet valid), registered or not, as AWS IoT Core does at the
/// handshake. The error is not an `InvalidCertificate` one, so that rustls
/// answers with a `handshake_failure` alert, telling the client nothing
/// more than AWS does (it documents no alert, and does not say why).
fn within_validity(
    end_entity: &CertificateDer<'_>,
    now: UnixTime,
    id: &str,
) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = cert.validity();
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::General(format!(
            "certificate {id} is not valid before {}",
            validity.not_before
        )));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::General(format!(
            "certificate {id} expired at {}",
            validity.not_after
        )));
    }
    Ok(())
}

impl ClientCertVerifier for RegistryClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = certificate_id(end_entity);
        within_validity(end_entity, now, &id)?;
        let status = self
            .registry
            .certificate_status(&id)
            .map_err(|e| rustls::Error::General(format!("registry: {e}")))?;
        match status {
            Some(CertStatus::Active) => Ok(ClientCertVerified::assertion()),
            Some(CertStatus::Revoked) => Err(CertificateError::Revoked.into()),
            Some(_) => Err(CertificateError::ApplicationVerificationFailure.into()),
            None => self.verify_by_ca(end_entity, intermediates, now, &id),
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
        provider: provider.clone(),
        cas: Mutex::new(None),
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

/// A fatal `handshake_failure` alert record, in the clear as before the
/// ServerHello: what a client that sends no SNI gets.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40];

/// The TLS handshake of one MQTT connection. The ClientHello is read first:
/// without the SNI extension (a client connecting by IP address, or one
/// that turned SNI off) and `require_sni`, the client gets a
/// `handshake_failure` alert and the connection ends, as on AWS IoT
/// Core's endpoints; any host name is accepted.
pub(crate) async fn accept<S>(
    mut io: S,
    config: Arc<ServerConfig>,
    require_sni: bool,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buf = vec![0u8; 16 * 1024];
    let accepted = loop {
        let n = io
            .read(&mut buf)
            .await
            .map_err(|e| format!("TLS handshake failed: reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("TLS handshake failed: closed before its ClientHello".into());
        }
        let mut rd: &[u8] = &buf[..n];
        while !rd.is_empty() {
            acceptor
                .read_tls(&mut rd)
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = io.write_all(&out).await;
                return Err(format!("TLS handshake failed: {e}"));
            }
        }
    };
    if require_sni && accepted.client_hello().server_name().is_none() {
        let _ = io.write_all(&HANDSHAKE_FAILURE_ALERT).await;
        let _ = io.shutdown().await;
        return Err("TLS handshake refused: the client sent no SNI (server name); connect by host name (e.g. localhost), or serve with --allow-no-sni".into());
    }
    tokio_rustls::StartHandshake::from_parts(accepted, io)
        .into_stream(config)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}
