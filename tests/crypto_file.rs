//! The signing adapters over the file backend: CSRs verify with OpenSSL and
//! mutual TLS completes over TLS 1.2 and 1.3 for every algorithm. The same
//! checks run on the TPM and PKCS#11 backends in their own test files.

mod common;

use std::sync::Arc;

use common::pki::{mutual_tls, openssl_verify_csr, TestCa};
use prov_agent::crypto::make_csr;
use prov_agent::keystore::{
    file::FileKeyStore, FileSettings, KeyAlgorithm, KeyLabel, KeyStore, PublicKey,
};

fn store() -> (tempfile::TempDir, Arc<dyn KeyStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileKeyStore::open(&FileSettings {
        key_dir: dir.path().join("keys"),
    })
    .unwrap();
    (dir, Arc::new(store))
}

#[test]
fn csr_signed_by_store_verifies_with_openssl() {
    let (dir, store) = store();
    for alg in KeyAlgorithm::ALL {
        let label = KeyLabel::new(format!("csr-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        let csr = make_csr(store.clone(), &info, "GW-0001").unwrap();
        let openssl_pub = openssl_verify_csr(dir.path(), &csr);
        let parsed = pem::parse(openssl_pub.trim()).unwrap();
        let from_openssl = PublicKey::from_spki_der(parsed.contents()).unwrap();
        assert_eq!(
            from_openssl, info.public_key,
            "{alg}: CSR carries another key"
        );
    }
}

#[test]
fn mutual_tls_with_store_key_over_tls12_and_tls13() {
    let (_dir, store) = store();
    let ca = TestCa::new();
    for alg in KeyAlgorithm::ALL {
        let label = KeyLabel::new(format!("tls-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        let cert = ca.issue_client(store.clone(), &info);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let hs = mutual_tls(&ca, store.clone(), &info, cert.clone(), version)
                .unwrap_or_else(|e| panic!("{alg} {:?}: {e}", version.version));
            assert_eq!(hs.version, version.version);
            assert_eq!(
                hs.client_cert, cert,
                "server saw another client certificate"
            );
            assert_eq!(hs.echoed, b"ping");
        }
    }
}

#[test]
fn certificate_of_another_key_is_refused_before_any_handshake() {
    let (_dir, store) = store();
    let ca = TestCa::new();
    let a = store
        .generate(&KeyLabel::new("a").unwrap(), KeyAlgorithm::EcP256)
        .unwrap();
    let b = store
        .generate(&KeyLabel::new("b").unwrap(), KeyAlgorithm::EcP256)
        .unwrap();
    let cert_for_a = ca.issue_client(store.clone(), &a);
    let err = prov_agent::crypto::client_config(&[ca.der()], vec![cert_for_a], store, &b, None)
        .unwrap_err();
    assert!(err.to_string().contains("does not match key b"), "{err}");
}
