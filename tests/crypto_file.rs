//! The signing adapters over the file backend: CSRs verify with OpenSSL and
//! mutual TLS completes over TLS 1.2 and 1.3 for every algorithm. The same
//! checks run on the TPM and PKCS#11 backends in their own test files.

mod common;

use std::sync::Arc;

use common::pki::{assert_csr_carries_store_key, assert_mutual_tls_both_versions, TestCa};
use prov_agent::keystore::{file::FileKeyStore, FileSettings, KeyAlgorithm, KeyLabel, KeyStore};

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
        assert_csr_carries_store_key(&store, dir.path(), &info);
    }
}

#[test]
fn mutual_tls_with_store_key_over_tls12_and_tls13() {
    let (_dir, store) = store();
    let ca = TestCa::new();
    for alg in KeyAlgorithm::ALL {
        let label = KeyLabel::new(format!("tls-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        assert_mutual_tls_both_versions(&ca, &store, &info);
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
