//! A current AWS device SDK (awsiotsdk for Python, `awsiot.iotidentity`)
//! provisions against the emulator unchanged but for endpoint, port and CA:
//! MQTT 3.1.1 and 5, keys and CSR flows.
//!
//! The interpreter is `$AWSIOTSDK_PYTHON` when set; otherwise the project's
//! virtualenv (`ci/python-venv.sh`, which pins `awsiotsdk`). `IOTCORE_SKIP_AWSIOTSDK=1` skips the test (it says so).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use iotcore_emulator::CertStatus;
use serde_json::Value;

fn has_sdk(python: &str) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import awsiot.iotidentity, awscrt"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Python interpreter with awsiotsdk: `$AWSIOTSDK_PYTHON`, or the
/// project's virtualenv (`ci/python-venv.sh`, awsiotsdk pinned in
/// `ci/requirements-python.txt`), made once under a lock, so tests running
/// at the same time never race to create it.
fn python() -> String {
    if let Ok(p) = std::env::var("AWSIOTSDK_PYTHON") {
        assert!(has_sdk(&p), "AWSIOTSDK_PYTHON={p} cannot import awsiot");
        return p;
    }
    let python = venv_bin().join("python").to_str().unwrap().to_owned();
    assert!(
        has_sdk(&python),
        "{python} cannot import awsiot: is awsiotsdk in ci/requirements-python.txt?"
    );
    python
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

/// The interpreter with awsiotsdk ([`python`]), or `None`, after saying so,
/// when a developer without network access skips the SDK tests with
/// `IOTCORE_SKIP_AWSIOTSDK=1`; CI never does.
fn python_unless_skipped() -> Option<String> {
    if std::env::var("IOTCORE_SKIP_AWSIOTSDK").as_deref() == Ok("1") {
        assert!(
            std::env::var_os("CI").is_none(),
            "IOTCORE_SKIP_AWSIOTSDK is not honoured in CI: the SDK test must run"
        );
        eprintln!("SKIPPED by IOTCORE_SKIP_AWSIOTSDK=1");
        return None;
    }
    Some(python())
}

/// The SDK script and the files it is given, written under the emulator's
/// data directory: the root CA, a new claim credential and a device CSR.
struct Sdk {
    python: String,
    script: PathBuf,
    dir: PathBuf,
    ca: String,
    cert: String,
    key: String,
    csr: String,
}

impl Sdk {
    fn new(python: String, emu: &TestEmulator) -> Sdk {
        let dir = emu.dir.path().join("sdk");
        std::fs::create_dir_all(&dir).unwrap();
        let claim = emu.create_claim_credential("claim").unwrap();
        let (_, csr) = p256_csr();
        Sdk {
            python,
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/awsiotsdk/provision.py"),
            ca: write(&dir, "root-ca.pem", &emu.root_ca_pem()),
            cert: write(&dir, "claim.pem.crt", &claim.certificate_pem),
            key: write(&dir, "claim.private.pem.key", &claim.private_key_pem),
            csr: write(&dir, "device.csr", &csr),
            dir,
        }
    }

    /// The script connecting to localhost:`port` with the CA and the claim
    /// credential as `client_id`; the caller adds template, serial, MQTT
    /// version, mode and CSR.
    fn command(&self, port: u16, client_id: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(&self.script)
            .args(["--endpoint", "localhost", "--port", &port.to_string()])
            .args(["--ca", &self.ca, "--cert", &self.cert, "--key", &self.key])
            .args(["--client-id", client_id]);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_provisions_over_mqtt3_and_mqtt5_with_keys_and_csr() {
    let Some(python) = python_unless_skipped() else {
        return;
    };
    let emu = start().await;
    let sdk = Sdk::new(python, &emu);

    for (mqtt, mode, port) in [
        ("3", "keys", emu.addr().port()),
        ("3", "csr", emu.addr().port()),
        ("5", "keys", emu.addr().port()),
        ("5", "csr", emu.addr().port()),
    ] {
        let serial = format!("SDK{mqtt}{mode}");
        let out = sdk
            .command(port, &format!("claim-sdk-{mqtt}-{mode}"))
            .args(["--template", "prod", "--serial", &serial])
            .args(["--mqtt", mqtt, "--mode", mode, "--csr", &sdk.csr])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "awsiotsdk MQTT {mqtt} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["thingName"], format!("dev-{serial}"));
        assert_eq!(v["deviceConfiguration"]["mode"], "prod");
        let id = v["certificateId"].as_str().unwrap();
        assert_eq!(
            emu.registry().certificate(id).unwrap().unwrap().status,
            CertStatus::Active
        );
        assert!(emu
            .registry()
            .thing(&format!("dev-{serial}"))
            .unwrap()
            .unwrap()
            .certificates
            .contains(&id.to_owned()));
    }
}

/// The SDK as an AWS user would run it with the repository's claim policy,
/// ProdTemplate and pre-provisioning hook: it enrolls as `prov-<serial>`,
/// cannot connect with another client id, and cannot enroll again as a
/// thing that exists.
#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_provisions_with_the_shipped_files() {
    let Some(python) = python_unless_skipped() else {
        return;
    };
    let emu = start_with_shipped_files().await;
    let sdk = Sdk::new(python, &emu);
    let csr = &sdk.csr;
    // Another device's key (the same key would prove the same device).
    let (_, other_csr) = p256_csr();
    let other_csr = write(&sdk.dir, "other.csr", &other_csr);
    let port = emu.addr().port();
    let provision = |client_id: &str, serial: &str, csr: &str| {
        let mut cmd = sdk.command(port, client_id);
        cmd.args(["--template", "ProdTemplate", "--serial", serial])
            .args(["--mqtt", "3", "--mode", "csr", "--csr", csr]);
        cmd.output()
    };

    let out = provision("prov-SDK1", "SDK1", csr).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["thingName"], "gw_SDK1");
    let thing = emu.registry().thing("gw_SDK1").unwrap().unwrap();
    assert_eq!(
        thing.certificates,
        vec![v["certificateId"].as_str().unwrap().to_owned()]
    );

    // The same serial from another key: the thing exists, the hook refuses.
    let out = provision("prov-SDK1", "SDK1", &other_csr).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert_eq!(
        emu.registry()
            .thing("gw_SDK1")
            .unwrap()
            .unwrap()
            .certificates,
        thing.certificates
    );
    // A client id outside the claim sessions' (the thing's name): refused.
    let out = provision("gw_SDK1", "SDK2", &other_csr).await.unwrap();
    assert!(!out.status.success());
    assert!(emu.registry().thing("gw_SDK2").unwrap().is_none());
}
