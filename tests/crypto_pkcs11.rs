//! The signing adapters over a SoftHSM token: CSRs signed in the token
//! verify with OpenSSL, and mutual TLS completes over TLS 1.2 and 1.3.
#![cfg(feature = "pkcs11")]

mod common;

use std::sync::Arc;

use common::pki::{assert_csr_carries_store_key, assert_mutual_tls_both_versions, TestCa};
use common::softhsm::SoftHsm;
use prov_agent::keystore::pkcs11::Pkcs11KeyStore;
use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStore};

#[test]
fn csr_and_mutual_tls_with_token_keys() {
    let hsm = SoftHsm::new("crypto");
    let store: Arc<dyn KeyStore> = Arc::new(Pkcs11KeyStore::open(&hsm.settings()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    for alg in KeyAlgorithm::ALL {
        let label = KeyLabel::new(format!("k-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        assert_csr_carries_store_key(&store, dir.path(), &info);
        assert_mutual_tls_both_versions(&ca, &store, &info);
    }
}
