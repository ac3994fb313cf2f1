//! A test PKI and an in-memory TLS peer, to check what the key stores sign
//! with independent implementations (ring through rustls' server side,
//! and the OpenSSL command line).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use prov_agent::crypto::{client_config, HardwareCsrKey};
use prov_agent::keystore::{KeyInfo, KeyStore};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA with a software key, as a stand-in for AWS's or the emulator's.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "prov-agent test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        Self { cert, issuer }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A client certificate for the key-store key (its public half only).
    pub fn issue_client(&self, store: Arc<dyn KeyStore>, key: &KeyInfo) -> CertificateDer<'static> {
        self.issue_for(
            &HardwareCsrKey::new(store, key),
            &format!("client {}", key.label),
        )
    }

    /// A client certificate for any public key.
    pub fn issue_for(
        &self,
        public: &impl rcgen::PublicKeyData,
        cn: &str,
    ) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params
            .signed_by(public, &self.issuer)
            .unwrap()
            .der()
            .clone()
    }

    /// A server certificate and its software key for `localhost`.
    pub fn issue_server(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What the server saw of a completed handshake.
pub struct Handshake {
    pub version: rustls::ProtocolVersion,
    pub client_cert: CertificateDer<'static>,
    pub echoed: Vec<u8>,
}

/// Runs a full mutual-TLS handshake in memory between a rustls server that
/// requires a client certificate from `ca` and a client whose key is
/// `key` in `store`, limited to one protocol version, and exchanges one
/// application message. Any failure is returned as a string.
pub fn mutual_tls(
    ca: &TestCa,
    store: Arc<dyn KeyStore>,
    key: &KeyInfo,
    client_cert: CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Handshake, String> {
    mutual_tls_typed(ca, store, key, client_cert, version).map_err(|e| match e {
        Failure::Tls(e) => e.to_string(),
        Failure::Other(e) => e,
    })
}

/// Why [`mutual_tls_typed`] failed: rustls's own error where it is one.
#[allow(dead_code)]
pub enum Failure {
    Tls(rustls::Error),
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Other(e.into())
    }
}

/// [`mutual_tls`], keeping rustls's error as it is.
pub fn mutual_tls_typed(
    ca: &TestCa,
    store: Arc<dyn KeyStore>,
    key: &KeyInfo,
    client_cert: CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Handshake, Failure> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let (server_cert, server_key) = ca.issue_server();
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert], server_key)
        .unwrap();

    // The client offers TLS 1.2 and 1.3 as in production; the server's
    // single version decides.
    let client_config = client_config(&[ca.der()], vec![client_cert], store, key, None)
        .map_err(|e| e.to_string())?;
    let mut client = rustls::Connection::from(
        rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
            .map_err(Failure::Tls)?,
    );
    let mut server = rustls::Connection::from(
        rustls::ServerConnection::new(Arc::new(server_config)).map_err(Failure::Tls)?,
    );

    client.writer().write_all(b"ping").unwrap();
    let mut echoed = Vec::new();
    for _ in 0..50 {
        pump(&mut client, &mut server)?;
        pump(&mut server, &mut client)?;
        let mut buf = [0u8; 64];
        if let Ok(n) = server.reader().read(&mut buf) {
            if n > 0 {
                server.writer().write_all(&buf[..n]).unwrap();
            }
        }
        if let Ok(n) = client.reader().read(&mut buf) {
            echoed.extend_from_slice(&buf[..n]);
        }
        if !client.is_handshaking() && !server.is_handshaking() && echoed.len() >= 4 {
            break;
        }
    }
    if server.is_handshaking() {
        return Err("handshake did not complete".into());
    }
    let client_cert = server
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("server saw no client certificate")?;
    Ok(Handshake {
        version: server.protocol_version().unwrap(),
        client_cert: client_cert.into_owned(),
        echoed,
    })
}

fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<(), Failure> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).map_err(|e| e.to_string())?;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(Failure::Tls)?;
    }
    Ok(())
}

/// `openssl req -verify` on a PEM CSR; returns the public key OpenSSL read
/// from it, as PEM.
pub fn openssl_verify_csr(dir: &Path, csr_pem: &str) -> String {
    let path = dir.join("req.csr");
    std::fs::write(&path, csr_pem).unwrap();
    // Without inherited descriptors: a TPM connection of another test
    // thread must not stay open in the child (see `CLOSE_FDS_AND_EXEC`).
    let out = super::clean_command("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(&path)
        .output()
        .expect("openssl is installed (ci/install-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && (stderr.contains("verify OK") || stdout.contains("verify OK")),
        "openssl req -verify failed: {stdout} {stderr}"
    );
    let out = super::clean_command("openssl")
        .args(["req", "-noout", "-pubkey", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// PEM of one DER certificate.
pub fn cert_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// A CSR signed with `key` in `store` passes `openssl req -verify` and
/// carries `key`'s public key.
pub fn assert_csr_carries_store_key(store: &Arc<dyn KeyStore>, dir: &Path, key: &KeyInfo) {
    let csr = prov_agent::crypto::make_csr(store.clone(), key, "GW-0001").unwrap();
    let openssl_pub = openssl_verify_csr(dir, &csr);
    let from_openssl = prov_agent::keystore::PublicKey::from_spki_der(
        pem::parse(openssl_pub.trim()).unwrap().contents(),
    )
    .unwrap();
    assert_eq!(
        from_openssl,
        key.public_key,
        "{}: CSR carries another key",
        key.algorithm()
    );
}

/// Mutual TLS with `key` in `store` completes over TLS 1.2 and 1.3, the
/// server sees the client certificate `ca` issued for it, and data flows.
pub fn assert_mutual_tls_both_versions(ca: &TestCa, store: &Arc<dyn KeyStore>, key: &KeyInfo) {
    let cert = ca.issue_client(store.clone(), key);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let hs = mutual_tls(ca, store.clone(), key, cert.clone(), version)
            .unwrap_or_else(|e| panic!("{} {:?}: {e}", key.algorithm(), version.version));
        assert_eq!(hs.version, version.version);
        assert_eq!(
            hs.client_cert, cert,
            "server saw another client certificate"
        );
        assert_eq!(hs.echoed, b"ping");
    }
}
