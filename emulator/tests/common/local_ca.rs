//! The sample certificate provider (`providers/local_ca.py`) and checks of
//! what it signs, for the provider tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::venv_bin;

/// The sample provider, `emulator/providers/local_ca.py`.
pub fn sample_provider() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("providers/local_ca.py")
        .canonicalize()
        .unwrap()
}

/// A local CA made by the sample provider: `DIR/ca.pem`, `DIR/ca.key`.
pub fn make_local_ca(dir: &Path) {
    let out = Command::new(venv_bin().join("python"))
        .arg(sample_provider())
        .arg("make-ca")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when OpenSSL verifies `cert_pem` against the root `ca_pem` alone.
pub fn openssl_verifies(dir: &Path, ca_pem: &str, cert_pem: &str) -> bool {
    let ca = dir.join("verify-ca.pem");
    let cert = dir.join("verify-cert.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success()
}
