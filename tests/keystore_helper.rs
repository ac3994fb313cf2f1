//! The daemon's key store: `HelperKeyStore` runs the real `prov-agent
//! key-helper` against a fresh SoftHSM token and a fresh swtpm, passes the
//! same conformance checks as the stores it forwards to, survives its
//! helper dying, reports a key store that cannot be opened at start, and
//! the helper refuses malformed input on its pipe.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use common::backend::Backend;
use prov_agent::keystore::helper::HelperKeyStore;
use prov_agent::keystore::{
    HelperErrorKind, KeyAlgorithm, KeyLabel, KeyStore, KeyStoreError, SignatureScheme,
};

const AGENT: &str = env!("CARGO_BIN_EXE_prov-agent");

/// A configuration for `backend` in `dir`, as the daemon would hand it to
/// its helper.
fn config_text(backend: &Backend, dir: &Path) -> String {
    format!(
        "[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\nCLAIM_CERT = claim.pem.crt\n\
         IOT_ENDPOINT = localhost\nPRODUCTION_TEMPLATE = ProdTemplate\n\
         [AGENT]\nSTATE_DIR = state\n{}",
        backend.config_section(&dir.join("state"))
    )
}

fn helper_store(backend: &Backend, dir: &Path) -> HelperKeyStore {
    HelperKeyStore::new(
        AGENT,
        backend.keystore_backend(),
        dir.join("config.ini"),
        config_text(backend, dir),
    )
}

// The token-store lock is held while the helper uses the token, as for any
// child that opens it.
#[allow(clippy::let_unit_value)]
fn conformance(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let _shared = common::token_store_shared();
    let helper = Arc::new(helper_store(&backend, dir.path()));
    helper.start().unwrap();
    let first = helper.pid().expect("a helper runs after start");
    let store: Arc<dyn KeyStore> = helper.clone();
    common::conformance::generate_sign_verify(
        &store,
        &[KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048],
    );
    common::conformance::import_sign_verify(
        &store,
        &[
            (KeyAlgorithm::EcP256, "pkcs8"),
            (KeyAlgorithm::EcP384, "sec1"),
        ],
    );
    common::conformance::lifecycle(&store);

    // A key outlives the helper that made it: release ends the process, the
    // next operation starts another, and the key still signs.
    let label = KeyLabel::new("device").unwrap();
    let info = store.generate(&label, KeyAlgorithm::EcP256).unwrap();
    store.release();
    assert!(!helper.is_running());
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "helper {first} was not reaped"
    );
    let sig = store
        .sign(&label, SignatureScheme::EcdsaSha256, b"after release")
        .unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"after release", &sig)
        .unwrap();
    assert_eq!(store.backend(), backend.keystore_backend());
    assert_ne!(helper.pid(), Some(first), "a new helper after release");
    store.delete(&label).unwrap();
    store.release();
}

#[cfg(feature = "pkcs11")]
#[test]
fn pkcs11_through_the_helper_passes_conformance() {
    conformance(Backend::pkcs11("helper"));
}

#[cfg(feature = "tpm")]
#[test]
fn tpm_through_the_helper_passes_conformance() {
    conformance(Backend::tpm());
}

#[cfg(feature = "tpm")]
#[test]
fn tpm_endorsement_id_comes_through_the_helper() {
    let backend = Backend::tpm();
    let dir = tempfile::tempdir().unwrap();
    let helper = helper_store(&backend, dir.path());
    let id = helper.hardware_id().expect("a TPM has an id").unwrap();
    helper.release();
    // The same TPM gives the same id in this process.
    let config = prov_agent::config::Config::from_str_with_env(
        &dir.path().join("config.ini"),
        &config_text(&backend, dir.path()),
        std::iter::empty(),
    )
    .unwrap();
    let direct = prov_agent::keystore::open(&config.keystore.settings).unwrap();
    assert_eq!(direct.hardware_id().unwrap().unwrap(), id);
}

/// A helper that dies (a crashed tpm2-tss, the OOM killer) costs the one
/// operation in flight, reported as retryable; the next one starts a new
/// helper and works.
#[cfg(feature = "pkcs11")]
#[test]
#[allow(clippy::let_unit_value)]
fn a_dead_helper_is_replaced() {
    let backend = Backend::pkcs11("helper-dies");
    let dir = tempfile::tempdir().unwrap();
    let _shared = common::token_store_shared();
    let helper = helper_store(&backend, dir.path());
    let label = KeyLabel::new("device").unwrap();
    let info = helper.generate(&label, KeyAlgorithm::EcP256).unwrap();
    let pid = helper.pid().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = helper
        .sign(&label, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("key helper"), "{err}");
    assert!(!helper.is_running());
    let sig = helper
        .sign(&label, SignatureScheme::EcdsaSha256, b"again")
        .unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"again", &sig)
        .unwrap();
    helper.release();
    assert!(!helper.is_running());
}

/// A key store that cannot be opened is reported by `start`, with what the
/// store said, and leaves no process behind.
#[cfg(feature = "pkcs11")]
#[test]
#[allow(clippy::let_unit_value)]
fn a_wrong_pin_is_reported_at_start() {
    let backend = Backend::pkcs11("helper-pin");
    let dir = tempfile::tempdir().unwrap();
    let Backend::Pkcs11(hsm) = &backend else {
        unreachable!()
    };
    std::fs::write(&hsm.pin_file, "not-the-pin\n").unwrap();
    let _shared = common::token_store_shared();
    let helper = helper_store(&backend, dir.path());
    let err = helper.start().unwrap_err();
    assert_eq!(err.helper_kind(), HelperErrorKind::BadPin, "{err}");
    assert!(err.to_string().contains("PIN"), "{err}");
    assert!(!err.to_string().contains("not-the-pin"), "{err}");
    assert!(!helper.is_running());
}

/// A configuration the helper cannot parse is an error that names the
/// problem, not a hang.
#[test]
fn a_bad_configuration_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let helper = HelperKeyStore::new(
        AGENT,
        prov_agent::keystore::Backend::File,
        dir.path().join("config.ini"),
        "[SETTINGS]\nNO_SUCH_KEY = 1\n".into(),
    );
    let err = helper.start().unwrap_err();
    assert!(matches!(err, KeyStoreError::Helper { .. }), "{err:?}");
    assert!(err.to_string().contains("NO_SUCH_KEY"), "{err}");
    assert!(!helper.is_running());
}

/// The helper refuses bytes that are not its protocol and says so.
#[test]
fn the_helper_refuses_garbage_on_its_pipe() {
    let cases: [(&str, Vec<u8>); 3] = [
        ("bad message header", {
            let mut b = 5u32.to_be_bytes().to_vec();
            b.extend_from_slice(b"{oops");
            b.extend_from_slice(&0u32.to_be_bytes());
            b
        }),
        ("limit", u32::MAX.to_be_bytes().to_vec()),
        ("not a hello", {
            let header = br#"{"op":"list"}"#;
            let mut b = (header.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(header);
            b.extend_from_slice(&0u32.to_be_bytes());
            b
        }),
    ];
    for (expected, bytes) in cases {
        let mut child = common::clean_command(AGENT)
            .arg("key-helper")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
