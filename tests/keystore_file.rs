//! The file backend (development only) passes the same conformance checks
//! as the hardware backends, and keeps its files private.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::conformance;
use prov_agent::keystore::{
    file::FileKeyStore, FileSettings, KeyAlgorithm, KeyStore, KeyStoreError, PrivateKeyMaterial,
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
fn generate_sign_verify_every_algorithm() {
    let (_d, s) = store();
    conformance::generate_sign_verify(&s, &KeyAlgorithm::ALL);
}

#[test]
fn import_every_pem_form() {
    let (_d, s) = store();
    conformance::import_sign_verify(
        &s,
        &[
            (KeyAlgorithm::EcP256, "pkcs8"),
            (KeyAlgorithm::EcP256, "sec1"),
            (KeyAlgorithm::EcP384, "sec1"),
            (KeyAlgorithm::Rsa2048, "pkcs1"),
            (KeyAlgorithm::Rsa3072, "pkcs8"),
        ],
    );
}

#[test]
fn lifecycle() {
    let (_d, s) = store();
    conformance::lifecycle(&s);
}

#[test]
fn key_files_are_private() {
    let (dir, s) = store();
    let label = "k".parse().unwrap();
    s.generate(&label, KeyAlgorithm::EcP256).unwrap();
    let keys = dir.path().join("keys");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let file = keys.join("k.pem");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn bad_pem_input_is_refused_clearly() {
    let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let e = PrivateKeyMaterial::from_pem(cert).unwrap_err();
    assert!(matches!(e, KeyStoreError::BadPrivateKey { .. }), "{e}");
    assert!(e.to_string().contains("CERTIFICATE"), "{e}");

    let e = PrivateKeyMaterial::from_pem("not a pem at all").unwrap_err();
    assert!(e.to_string().contains("PEM could not be parsed"), "{e}");

    let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let e = PrivateKeyMaterial::from_pem(garbage).unwrap_err();
    assert!(matches!(e, KeyStoreError::BadPrivateKey { .. }), "{e}");

    // RSA-1024 is an unsupported algorithm, named as such.
    use pkcs8::{EncodePrivateKey, LineEnding};
    let small = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
    let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
    let e = PrivateKeyMaterial::from_pem(&pem).unwrap_err();
    assert!(
        matches!(e, KeyStoreError::UnsupportedAlgorithm { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("RSA-1024"), "{e}");
}

#[test]
fn debug_output_holds_no_secret() {
    let (pem, _) = conformance::software_key_pem(KeyAlgorithm::EcP256, "pkcs8");
    let material = PrivateKeyMaterial::from_pem(&pem).unwrap();
    let shown = format!("{material:?}");
    assert_eq!(shown, "PrivateKeyMaterial(ec-p256, <secret>)");
}
