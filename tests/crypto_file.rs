//! The signing adapters over the file backend: the signing cases of the
//! conformance suite (CSRs verify with OpenSSL, mutual TLS completes over
//! TLS 1.2 and 1.3 for every algorithm, a certificate of another key is
//! refused), as on the TPM and PKCS#11 backends in their own test files.

mod common;

use common::conformance::{Caps, Subject};
use prov_agent::keystore::{Backend, FileSettings, KeyStoreSettings};

fn subject() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::File(FileSettings {
        key_dir: dir.path().join("keys"),
    });
    Subject::new(dir, move || prov_agent::keystore::open(&settings).unwrap())
}

crate::signing_suite!(subject(), Caps::all(Backend::File));

/// A key store that fails the handshake's signature (here the key went
/// from the store after the connection was set up) ends the connection
/// with the key store's error, kept typed through rustls: the connection
/// error is classified as the key store's (exit 5), not as the network's
/// (exit 4), and is retried only if the store says a retry may help.
#[test]
fn a_failed_handshake_signature_stays_the_key_stores_failure() {
    use prov_agent::error::ErrorKind;
    use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStoreError};
    use prov_agent::mqtt::{LinkError, MqttError};

    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::File(FileSettings {
        key_dir: dir.path().join("keys"),
    });
    let store: std::sync::Arc<dyn prov_agent::keystore::KeyStore> =
        prov_agent::keystore::open(&settings).unwrap();
    let label = KeyLabel::new("device").unwrap();
    let key = store.generate(&label, KeyAlgorithm::EcP256).unwrap();
    let ca = common::pki::TestCa::new();
    let cert = ca.issue_client(store.clone(), &key);
    store.delete(&label).unwrap();

    let Err(common::pki::Failure::Tls(tls)) =
        common::pki::mutual_tls_typed(&ca, store.clone(), &key, cert, &rustls::version::TLS13)
    else {
        panic!("the handshake did not fail in rustls");
    };
    let failed = prov_agent::crypto::tls::signature_failure(&tls)
        .unwrap_or_else(|| panic!("the key store's error is lost in {tls:?}"));
    assert!(
        matches!(failed.source, KeyStoreError::NotFound { .. }),
        "{:?}",
        failed.source
    );

    let link = LinkError::Tls(tls);
    assert!(!link.is_retryable(), "a missing key is not retried");
    let error = MqttError::Connect {
        endpoint: "localhost:8883".into(),
        retryable: link.is_retryable(),
        source: link,
    };
    assert_eq!(error.kind(), ErrorKind::KeyStore);
    let text = prov_agent::error::report(&error);
    assert!(
        text.contains("key store signature with device failed"),
        "{text}"
    );
    assert!(
        !text.contains("check ROOT_CERT"),
        "a network hint for a key store failure: {text}"
    );
}
