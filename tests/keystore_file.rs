//! The file backend (development only): the conformance suite, and what
//! is its own: its files are private and every use warns. PEM parsing is
//! checked here too.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::conformance::{self, Caps, Subject};
use prov_agent::keystore::{
    file::FileKeyStore, Backend, FileSettings, KeyAlgorithm, KeyStore, KeyStoreError,
    KeyStoreSettings, PrivateKeyMaterial,
};

fn store() -> (tempfile::TempDir, Arc<dyn KeyStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileKeyStore::open(&FileSettings {
        key_dir: dir.path().join("keys"),
    })
    .unwrap();
    (dir, Arc::new(store))
}

/// A file store in a temp dir of its own, opened as the agent opens it.
fn subject() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::File(FileSettings {
        key_dir: dir.path().join("keys"),
    });
    Subject::new(dir, move || prov_agent::keystore::open(&settings).unwrap())
}

const CAPS: Caps = Caps::all(Backend::File);

mod suite {
    use super::*;
    crate::keystore_suite!(subject(), CAPS);
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

/// A `tracing` writer into a buffer the test reads.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opening the store, and every key it makes or takes in, warns that
/// nothing but file permissions protects the keys.
#[test]
fn every_use_warns_that_the_keys_are_plain_files() {
    // A global subscriber, not a scoped one: a callsite that another test
    // thread reached first with no subscriber may stay disabled for a
    // scoped one. The lines of this test are those in its span.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("no other test of this binary sets a subscriber");
    let span = tracing::warn_span!("file_store_warnings").entered();
    let (_dir, s) = store();
    s.generate(&"gen".parse().unwrap(), KeyAlgorithm::EcP256)
        .unwrap();
    let (pem, _) = conformance::software_key_pem(KeyAlgorithm::EcP256, "pkcs8");
    s.import(
        &"imp".parse().unwrap(),
        &PrivateKeyMaterial::from_pem(&pem).unwrap(),
    )
    .unwrap();
    drop(span);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<_> = log
        .lines()
        .filter(|l| l.contains("file_store_warnings"))
        .filter(|l| l.contains("WARN") && l.contains("file key store in use"))
        .collect();
    assert_eq!(warnings.len(), 3, "open, generate, import: {log}");
    assert!(
        warnings[0].contains("use the tpm or pkcs11 backend in production"),
        "{log}"
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
