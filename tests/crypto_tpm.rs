//! The signing adapters over a swtpm: CSRs signed in the token
//! verify with OpenSSL, and mutual TLS completes over TLS 1.2 and 1.3.
#![cfg(feature = "tpm")]

mod common;

use std::sync::Arc;

use common::pki::{mutual_tls, openssl_verify_csr, TestCa};
use common::swtpm::Swtpm;
use prov_agent::crypto::make_csr;
use prov_agent::keystore::tpm::TpmKeyStore;
use prov_agent::keystore::{
    KeyAlgorithm, KeyLabel, KeyStore, PublicKey, TpmKeyStorage, TpmSettings,
};

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

        let csr = make_csr(store.clone(), &info, "GW-0001").unwrap();
        let openssl_pub = openssl_verify_csr(dir.path(), &csr);
        let from_csr =
            PublicKey::from_spki_der(pem::parse(openssl_pub.trim()).unwrap().contents()).unwrap();
        assert_eq!(from_csr, info.public_key, "{alg}");

        let cert = ca.issue_client(store.clone(), &info);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let hs = mutual_tls(&ca, store.clone(), &info, cert.clone(), version)
                .unwrap_or_else(|e| panic!("{alg} {:?}: {e}", version.version));
            assert_eq!(hs.version, version.version);
            assert_eq!(hs.client_cert, cert);
            assert_eq!(hs.echoed, b"ping");
        }
    }
}
