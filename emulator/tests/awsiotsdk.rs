//! A current AWS device SDK (awsiotsdk for Python, `awsiot.iotidentity`)
//! provisions against the emulator unchanged but for endpoint, port and CA:
//! MQTT 3.1.1 and 5, keys and CSR flows.
//!
//! The interpreter is `$AWSIOTSDK_PYTHON` (default `python3`). When it lacks
//! the `awsiot` module the test says so and passes, unless
//! `IOTCORE_REQUIRE_AWSIOTSDK=1`, which `emulator/scripts/awsiotsdk-test.sh`
//! sets after installing the SDK into a virtualenv.

mod common;

use std::path::Path;

use common::*;
use iotcore_emulator::CertStatus;
use serde_json::Value;

fn python() -> String {
    std::env::var("AWSIOTSDK_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sdk_available() -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", "import awsiot.iotidentity, awscrt"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("IOTCORE_REQUIRE_AWSIOTSDK").as_deref() != Ok("1"),
            "awsiotsdk is required but `{} -c 'import awsiot'` fails: run emulator/scripts/awsiotsdk-test.sh",
            python()
        );
        eprintln!(
            "SKIPPED: awsiotsdk not installed for {}; run emulator/scripts/awsiotsdk-test.sh",
            python()
        );
    }
    ok
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_provisions_over_mqtt3_and_mqtt5_with_keys_and_csr() {
    if !sdk_available() {
        return;
    }
    let emu = start().await;
    let dir = emu.dir.path().join("sdk");
    std::fs::create_dir_all(&dir).unwrap();
    let claim = emu.create_claim_credential("claim").unwrap();
    let ca = write(&dir, "root-ca.pem", &emu.root_ca_pem());
    let cert = write(&dir, "claim.pem.crt", &claim.certificate_pem);
    let key = write(&dir, "claim.private.pem.key", &claim.private_key_pem);
    let (_, csr) = p256_csr();
    let csr = write(&dir, "device.csr", &csr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/awsiotsdk/provision.py");

    for (mqtt, mode, port) in [
        ("3", "keys", emu.addr().port()),
        ("3", "csr", emu.addr().port()),
        ("5", "keys", emu.addr().port()),
        ("5", "csr", emu.addr().port()),
    ] {
        let serial = format!("SDK{mqtt}{mode}");
        let out = tokio::process::Command::new(python())
            .arg(&script)
            .args([
                "--endpoint",
                "localhost",
                "--port",
                &port.to_string(),
                "--ca",
                &ca,
                "--cert",
                &cert,
            ])
            .args([
                "--key",
                &key,
                "--client-id",
                &format!("claim-sdk-{mqtt}-{mode}"),
                "--template",
                "prod",
            ])
            .args([
                "--serial", &serial, "--mqtt", mqtt, "--mode", mode, "--csr", &csr,
            ])
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
