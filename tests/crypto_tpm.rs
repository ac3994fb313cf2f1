//! The signing adapters over a swtpm: CSRs signed in the token
//! verify with OpenSSL, and mutual TLS completes over TLS 1.2 and 1.3.
#![cfg(feature = "tpm")]

mod common;

use std::sync::Arc;

use common::pki::{assert_csr_carries_store_key, assert_mutual_tls_both_versions, TestCa};
use common::swtpm::Swtpm;
use prov_agent::keystore::tpm::TpmKeyStore;
use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStore, TpmKeyStorage, TpmSettings};

#[test]
fn csr_and_mutual_tls_with_token_keys() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(
        TpmKeyStore::open(&TpmSettings {
            tcti: tpm.tcti(),
            storage: TpmKeyStorage::Blob,
            persistent_base: 0x8100_0100,
            key_dir: dir.path().join("tpm"),
        })
        .unwrap(),
    );
    let ca = TestCa::new();
    for alg in KeyAlgorithm::ALL {
        let label = KeyLabel::new(format!("k-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        assert_csr_carries_store_key(&store, dir.path(), &info);
        assert_mutual_tls_both_versions(&ca, &store, &info);
    }
}
