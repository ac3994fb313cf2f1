//! The PKCS#11 PIN encrypted at rest with `systemd-creds` (host key: the
//! machine has no TPM device), as systemd/encrypted-pin.conf has systemd
//! load it: decrypted into `$CREDENTIALS_DIRECTORY` at start, read by
//! `PIN_SOURCE = credential:pkcs11-pin`. The encrypted file holds no PIN,
//! and the agent opens the token with what systemd decrypts.
#![cfg(feature = "pkcs11")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

#[tokio::test(flavor = "multi_thread")]
async fn a_pin_encrypted_with_systemd_creds_opens_the_token() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("encrypted-pin"), "").await;
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let encrypted = dir.path().join("pkcs11-pin.cred");
    let out = Command::new("systemd-creds")
        .args(["encrypt", "--with-key=host", "--name=pkcs11-pin"])
        .arg(&hsm.pin_file)
        .arg(&encrypted)
        .output()
        .expect("systemd-creds (systemd)");
    assert!(
        out.status.success(),
        "systemd-creds encrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = std::fs::read(&encrypted).unwrap();
    assert!(
        !String::from_utf8_lossy(&sealed).contains(common::softhsm::USER_PIN),
        "the encrypted credential holds the PIN in clear"
    );
    // What systemd does at start: decrypt into the unit's credentials
    // directory, readable by the service only.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new("systemd-creds")
        .args(["decrypt", "--name=pkcs11-pin"])
        .arg(&encrypted)
        .arg(credentials.join("pkcs11-pin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-creds decrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The plain PIN file is gone; only the credential remains.
    std::fs::remove_file(&hsm.pin_file).unwrap();
    let out = device
        .run_env(
            &["check"],
            &[
                ("PROV_AGENT_PKCS11_PIN_SOURCE", "credential:pkcs11-pin"),
                ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
            ],
        )
        .await;
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CONNACK 0"),
        "{}",
        text(&out)
    );
    // A credential of another name (or another machine's) does not open.
    let out = Command::new("systemd-creds")
        .args(["decrypt", "--name=other"])
        .arg(&encrypted)
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "decrypted under another name");
}
