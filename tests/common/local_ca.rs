//! The emulator's sample certificate provider
//! (`emulator/providers/local_ca.py`) as a cloud's provider, and OpenSSL's
//! view of what it signs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use iotcore_emulator::CREATE_CERTIFICATE_FROM_CSR;

use super::emulator::{python_bin, TestCloud};

/// The sample provider, `emulator/providers/local_ca.py`.
pub fn sample_provider() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("emulator/providers/local_ca.py")
        .canonicalize()
        .unwrap()
}

/// Makes a local CA in `dir` with the sample provider and makes it the
/// cloud's certificate provider, signing for `lifetime`.
pub fn use_local_ca(cloud: &TestCloud, dir: &Path, lifetime: Duration) {
    let python = Path::new(python_bin()).join("python");
    let out = Command::new(&python)
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
    let command = [
        sample_provider().to_string_lossy().into_owned(),
        "--ca-dir".into(),
        dir.to_string_lossy().into_owned(),
        "--seconds".into(),
        lifetime.as_secs().to_string(),
    ];
    cloud
        .handle
        .registry()
        .create_certificate_provider(
            "LocalCa",
            &command,
            "arn:aws:lambda:us-east-1:123456789012:function:LocalCa",
            &[CREATE_CERTIFICATE_FROM_CSR.to_owned()],
        )
        .unwrap();
}

/// True when OpenSSL verifies `cert_pem` as a client certificate issued by
/// the root `ca_pem`.
pub fn openssl_verifies(dir: &Path, ca_pem: &Path, cert_pem: &str) -> bool {
    let cert = dir.join("verify.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(ca_pem)
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success()
}
