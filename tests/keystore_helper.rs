//! The daemon's key store: `HelperKeyStore` runs the real `prov-agent
//! key-helper` against a file store, a fresh SoftHSM token and a fresh
//! swtpm, passes the conformance suite (key store and signing cases) in
//! front of each, keeps keys across helpers, gives back the
//! store's own errors, survives its helper dying, reports a key store that
//! cannot be opened at start, refuses a helper of another protocol version
//! (and keeps its own build across a package upgrade), and the helper
//! refuses malformed input on its pipe.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::conformance::{Caps, Subject};
use prov_agent::keystore::helper::{wire, HelperKeyStore};
use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStore, KeyStoreError, SignatureScheme};

const AGENT: &str = env!("CARGO_BIN_EXE_prov-agent");

/// A configuration for `backend` in `dir`, as the daemon would hand it to
/// its helper.
fn config_text(backend: &Backend, dir: &Path) -> String {
    config_with_section(&backend.config_section(&dir.join("state")))
}

fn config_with_section(section: &str) -> String {
    format!(
        "[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\nCLAIM_CERT = claim.pem.crt\n\
         IOT_ENDPOINT = localhost\nPRODUCTION_TEMPLATE = ProdTemplate\n\
         [AGENT]\nSTATE_DIR = state\n{section}"
    )
}

fn helper_store(backend: &Backend, dir: &Path) -> HelperKeyStore {
    HelperKeyStore::new(
        backend.program(AGENT, dir),
        backend.keystore_backend(),
        dir.join("config.ini"),
        config_text(backend, dir),
    )
}

/// The store the helper would open, opened in this process.
fn direct_store(config: &str, dir: &Path) -> prov_agent::keystore::Result<Arc<dyn KeyStore>> {
    let config = prov_agent::config::Config::from_str_with_env(
        &dir.join("config.ini"),
        config,
        std::iter::empty(),
    )
    .unwrap();
    prov_agent::keystore::open(&config.keystore.settings)
}

/// The same error, whichever side of the pipe made it.
fn assert_same(through_helper: &KeyStoreError, in_process: &KeyStoreError) {
    assert_eq!(
        std::mem::discriminant(through_helper),
        std::mem::discriminant(in_process),
        "{through_helper:?} / {in_process:?}"
    );
    assert_eq!(through_helper.to_string(), in_process.to_string());
    assert_eq!(through_helper.is_retryable(), in_process.is_retryable());
    assert_eq!(through_helper.hardware_code(), in_process.hardware_code());
}

/// A helper in front of `backend`'s store, started at once, as the daemon
/// runs it. The token-store lock is held while the helper runs, as for any
/// child; it is taken after the token was made (which takes it
/// exclusively). A helper over SoftHSM holds it alone, as in-process use
/// of a token does: the conformance checks open the same token in this
/// process too. (Each SoftHSM child sees only its own token; see
/// `common::softhsm`.)
fn subject(backend: Backend) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let kind = backend.keystore_backend();
    let config_path = dir.path().join("config.ini");
    let config = config_text(&backend, dir.path());
    let program = backend.program(AGENT, dir.path());
    let lock: Box<dyn std::any::Any> = match kind {
        prov_agent::keystore::Backend::Pkcs11 => Box::new(common::token_store_exclusive()),
        _ => Box::new(common::token_store_shared()),
    };
    // The helper ends (the store is dropped) before the lock is released,
    // then the directory and the hardware go.
    Subject::new((lock, dir, backend), move || {
        let helper =
            HelperKeyStore::new(program.clone(), kind, config_path.clone(), config.clone());
        helper.start().unwrap();
        Arc::new(helper)
    })
}

/// The capabilities of the store behind the helper: the helper adds none
/// and takes none away.
const fn caps(backend: prov_agent::keystore::Backend) -> Caps {
    Caps {
        hardware_id: matches!(backend, prov_agent::keystore::Backend::Tpm),
        ..Caps::all(backend)
    }
}

mod file {
    use super::*;
    crate::keystore_suite!(
        subject(Backend::File),
        caps(prov_agent::keystore::Backend::File)
    );
    crate::signing_suite!(
        subject(Backend::File),
        caps(prov_agent::keystore::Backend::File)
    );
}

#[cfg(feature = "pkcs11")]
mod pkcs11 {
    use super::*;
    crate::keystore_suite!(
        subject(Backend::pkcs11("helper")),
        caps(prov_agent::keystore::Backend::Pkcs11)
    );
    crate::signing_suite!(
        subject(Backend::pkcs11("helper")),
        caps(prov_agent::keystore::Backend::Pkcs11)
    );
}

#[cfg(feature = "tpm")]
mod tpm {
    use super::*;
    crate::keystore_suite!(
        subject(Backend::tpm()),
        caps(prov_agent::keystore::Backend::Tpm)
    );
    crate::signing_suite!(
        subject(Backend::tpm()),
        caps(prov_agent::keystore::Backend::Tpm)
    );
}

/// A key outlives the helper that made it: release ends the process, the
/// next operation starts another, and the key still signs.
// The token-store lock is held while the helper uses the token, as for any
// child that opens it.
#[allow(clippy::let_unit_value)]
fn a_key_outlives_the_helper_that_made_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let _shared = common::token_store_shared();
    let helper = Arc::new(helper_store(&backend, dir.path()));
    helper.start().unwrap();
    let first = helper.pid().expect("a helper runs after start");
    let store: Arc<dyn KeyStore> = helper.clone();
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
fn pkcs11_key_outlives_the_helper_that_made_it() {
    a_key_outlives_the_helper_that_made_it(Backend::pkcs11("helper"));
}

#[cfg(feature = "tpm")]
#[test]
fn tpm_key_outlives_the_helper_that_made_it() {
    a_key_outlives_the_helper_that_made_it(Backend::tpm());
}

/// A key that is not there, and a label that is taken, are the variants
/// callers match (`NotFound`, `AlreadyExists`) through the helper as in
/// this process, with the same message and retryability.
#[allow(clippy::let_unit_value)]
fn errors_are_the_stores_own(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let missing = KeyLabel::new("no-such-key").unwrap();
    let taken = KeyLabel::new("taken").unwrap();
    let errors = |store: &dyn KeyStore| {
        let not_found = store.info(&missing).unwrap_err();
        let nothing_to_delete = store.delete(&missing).unwrap_err();
        store.generate(&taken, KeyAlgorithm::EcP256).unwrap();
        let exists = store.generate(&taken, KeyAlgorithm::EcP256).unwrap_err();
        store.delete(&taken).unwrap();
        [not_found, nothing_to_delete, exists]
    };
    let through_helper = {
        let _shared = common::token_store_shared();
        let helper = helper_store(&backend, dir.path());
        let errors = errors(&helper);
        helper.release();
        errors
    };
    let [not_found, nothing_to_delete, exists] = &through_helper;
    assert!(
        matches!(not_found, KeyStoreError::NotFound { .. }),
        "{not_found:?}"
    );
    assert!(not_found.is_not_found());
    assert!(
        matches!(nothing_to_delete, KeyStoreError::NotFound { .. }),
        "{nothing_to_delete:?}"
    );
    assert!(
        matches!(exists, KeyStoreError::AlreadyExists { .. }),
        "{exists:?}"
    );
    assert!(!exists.is_not_found() && !exists.is_retryable());

    // The helper has ended: the TPM or token is this process's now.
    let in_process = {
        let _exclusive = common::token_store_exclusive();
        let direct = direct_store(&config_text(&backend, dir.path()), dir.path()).unwrap();
        errors(direct.as_ref())
    };
    for (h, d) in through_helper.iter().zip(&in_process) {
        assert_same(h, d);
    }
    drop(backend);
}

#[test]
fn file_errors_through_the_helper_are_the_stores_own() {
    errors_are_the_stores_own(Backend::File);
}

#[cfg(feature = "pkcs11")]
#[test]
fn pkcs11_errors_through_the_helper_are_the_stores_own() {
    errors_are_the_stores_own(Backend::pkcs11("helper-errors"));
}

#[cfg(feature = "tpm")]
#[test]
fn tpm_errors_through_the_helper_are_the_stores_own() {
    errors_are_the_stores_own(Backend::tpm());
}

/// A TPM that cannot be reached is retryable `Unavailable` through the
/// helper as in this process, with the TPM stack's code.
#[cfg(feature = "tpm")]
#[test]
fn an_unreachable_tpm_is_retryable_through_the_helper_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_section(
        "[KEYSTORE]\nBACKEND = tpm\n[TPM]\nTCTI = device:/nonexistent/tpmrm0\nKEY_STORAGE = blob\n",
    );
    let helper = HelperKeyStore::new(
        AGENT,
        prov_agent::keystore::Backend::Tpm,
        dir.path().join("config.ini"),
        config.clone(),
    );
    let through_helper = helper.start().unwrap_err();
    assert!(
        matches!(
            through_helper,
            KeyStoreError::Unavailable {
                retryable: true,
                ..
            }
        ),
        "{through_helper:?}"
    );
    assert!(through_helper.is_retryable());
    assert!(!helper.is_running());
    let Err(in_process) = direct_store(&config, dir.path()) else {
        panic!("a TPM store opened on a device that does not exist");
    };
    assert_same(&through_helper, &in_process);
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
/// store said, and leaves no process behind. A wrong PIN is `BadPin`
/// through the helper as in this process.
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
    let err = {
        let _shared = common::token_store_shared();
        let helper = helper_store(&backend, dir.path());
        let err = helper.start().unwrap_err();
        assert!(!helper.is_running());
        err
    };
    assert!(matches!(err, KeyStoreError::BadPin { .. }), "{err:?}");
    assert!(err.to_string().contains("PIN"), "{err}");
    assert!(!err.to_string().contains("not-the-pin"), "{err}");
    assert!(!format!("{err:?}").contains("not-the-pin"), "{err:?}");
    let _exclusive = common::token_store_exclusive();
    // The same first wrong attempt in this process: a login by hand with
    // the right PIN clears the token's count of wrong ones first (else the
    // store would not even try; tests/keystore_pkcs11.rs).
    drop(hsm.user_session());
    let Err(in_process) = direct_store(&config_text(&backend, dir.path()), dir.path()) else {
        panic!("the token took the wrong PIN");
    };
    assert_same(&err, &in_process);
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
    assert!(matches!(err, KeyStoreError::HelperConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("NO_SUCH_KEY"), "{err}");
    assert!(!helper.is_running());
}

/// One message as it goes on the pipe: a JSON header and an empty body.
fn frame(header: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(&0u32.to_be_bytes());
    b
}

/// Copies `from` to `to` as an executable, in a child process: a file this
/// process had open for writing could not be run while another test thread
/// forks (ETXTBSY).
fn install(from: &Path, to: &Path) {
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "install {}", from.display());
}

/// A key helper of protocol `version` at `path`: whatever it is sent, it
/// answers with a hello of its version and waits for its input to close.
fn fake_helper(dir: &Path, version: u32, path: &Path) {
    let reply = dir.join(format!("v{version}-hello"));
    std::fs::write(
        &reply,
        frame(
            format!(r#"{{"v{version}":{{"reply":"hello","backend":"file","new":["things"]}}}}"#)
                .as_bytes(),
        ),
    )
    .unwrap();
    let script = dir.join(format!("v{version}-helper.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat '{}'\nexec cat >/dev/null\n",
            reply.display()
        ),
    )
    .unwrap();
    install(&script, path);
}

/// A helper that speaks another protocol version is refused at the hello,
/// with both versions named; nothing is forwarded to it and it is ended.
#[test]
fn a_helper_of_another_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let other = wire::VERSION + 1;
    let program = dir.path().join("prov-agent-next");
    fake_helper(dir.path(), other, &program);
    let helper = HelperKeyStore::new(
        &program,
        prov_agent::keystore::Backend::File,
        dir.path().join("config.ini"),
        config_text(&Backend::File, dir.path()),
    );
    let err = helper.start().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::HelperVersion { daemon, helper, ref program }
            if daemon == wire::VERSION && helper == other && program.ends_with("prov-agent-next")),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {other}"))
            && msg.contains(&format!("version {}", wire::VERSION))
            && msg.contains("restart the daemon"),
        "{msg}"
    );
    assert!(!helper.is_running());
    // Every operation is refused the same way, none reaches the helper.
    let err = helper.list().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::HelperVersion { .. }),
        "{err:?}"
    );
    assert!(!helper.is_running());
}

/// The helper answers a daemon of another version in its own version,
/// naming both, and ends with an error.
#[test]
fn the_helper_refuses_a_daemon_of_another_version() {
    let other = wire::VERSION + 1;
    let mut child = common::clean_command(AGENT)
        .arg("key-helper")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hello = format!(r#"{{"v{other}":{{"op":"hello","what":"version {other} sends"}}}}"#);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&frame(hello.as_bytes()))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("version {other}"))
            && stderr.contains(&format!("version {}", wire::VERSION)),
        "{stderr}"
    );
    let mut stdout = &out.stdout[..];
    let mut len = [0u8; 4];
    stdout.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
    stdout.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let error = &header[format!("v{}", wire::VERSION)]["error"];
    assert_eq!(
        header[format!("v{}", wire::VERSION)]["reply"],
        "error",
        "{header}"
    );
    assert_eq!(error["kind"], "helper-version", "{header}");
    assert_eq!(error["daemon"], other, "{header}");
    assert_eq!(error["helper"], wire::VERSION, "{header}");
}

/// A package upgrade renames a new build over the executable while the
/// daemon runs. The daemon starts its helpers from `/proc/self/exe`, which
/// still is its own build, so they keep working until the daemon restarts;
/// a helper started by path would be the new build, and is refused.
#[test]
fn an_upgrade_under_a_running_daemon_leaves_it_its_own_helper() {
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("prov-agent");
    install(Path::new(AGENT), &installed);
    // The running daemon: any process of the installed file, here one that
    // waits for a hello.
    let mut daemon = common::clean_command(&installed)
        .arg("key-helper")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let exe = PathBuf::from(format!("/proc/{}/exe", daemon.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&exe).ok().as_deref() != Some(&installed) {
        assert!(
            Instant::now() < deadline,
            "{} never ran",
            installed.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The upgrade, as dpkg and rpm do it: the new file beside, renamed over.
    let new = dir.path().join("prov-agent.dpkg-new");
    fake_helper(dir.path(), wire::VERSION + 1, &new);
    std::fs::rename(&new, &installed).unwrap();
    let target = std::fs::read_link(&exe).unwrap();
    assert!(
        target.to_string_lossy().ends_with("(deleted)"),
        "{}",
        target.display()
    );

    let config = config_text(&Backend::File, dir.path());
    let file = prov_agent::keystore::Backend::File;
    let own = HelperKeyStore::new(&exe, file, dir.path().join("config.ini"), config.clone());
    let label = KeyLabel::new("device").unwrap();
    let info = own.generate(&label, KeyAlgorithm::EcP256).unwrap();
    let sig = own
        .sign(&label, SignatureScheme::EcdsaSha256, b"after the upgrade")
        .unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"after the upgrade", &sig)
        .unwrap();
    own.release();

    let by_path = HelperKeyStore::new(&installed, file, dir.path().join("config.ini"), config);
    let err = by_path.start().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::HelperVersion { daemon, helper, .. }
            if daemon == wire::VERSION && helper == wire::VERSION + 1),
        "{err:?}"
    );

    drop(daemon.stdin.take());
    assert!(daemon.wait().unwrap().success());
}

/// The helper refuses bytes that are not its protocol and says so.
#[test]
fn the_helper_refuses_garbage_on_its_pipe() {
    let cases: [(&str, Vec<u8>); 4] = [
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
        ("not a hello", frame(br#"{"v1":{"op":"list"}}"#)),
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
