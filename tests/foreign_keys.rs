//! Keys made by other tools (a factory's provisioning station writes the
//! claim key into the token under a CKA_ID and a label of its own):
//! `[PKCS11] CLAIM_KEY_ID` finds the claim key by CKA_ID, enrollment signs
//! with it, and the agent refuses to make, replace or delete it.
#![cfg(feature = "pkcs11")]

mod common;

use std::process::Command;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;

/// Writes `pem` (a private key) and its public half into the device's
/// token with pkcs11-tool, under CKA_ID `id` and label `label`.
fn write_with_pkcs11_tool(device: &Device, pem: &std::path::Path, id: &str, label: &str) {
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key.der");
    let public = dir.path().join("pub.der");
    for (out, extra) in [(&private, None), (&public, Some("-pubout"))] {
        let mut cmd = Command::new("openssl");
        cmd.args(["pkey", "-in"])
            .arg(pem)
            .args(["-outform", "DER", "-out"])
            .arg(out);
        if let Some(flag) = extra {
            cmd.arg(flag);
        }
        assert!(cmd.status().unwrap().success(), "openssl pkey");
    }
    let _shared = common::token_store_shared();
    for (file, kind) in [(&private, "privkey"), (&public, "pubkey")] {
        let out = Command::new("pkcs11-tool")
            .envs(hsm.env())
            .arg("--module")
            .arg(&hsm.module)
            .args(["--token-label", &hsm.token_label, "--login", "--pin"])
            .arg(common::softhsm::USER_PIN)
            .arg("--write-object")
            .arg(file)
            .args(["--type", kind, "--id", id, "--label", label])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pkcs11-tool --write-object {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_key_made_by_other_tools_is_found_by_its_cka_id() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::pkcs11("foreign"), "MODE = csr\n");
    write_with_pkcs11_tool(
        &device,
        &device.path("claim.private.pem.key"),
        "0a0b0c",
        "factory-claim",
    );
    let config = device.load_config();
    let cert = &config.settings.claim_cert;
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::copy(device.path("claim.pem.crt"), cert).unwrap();
    let by_id = [("PROV_AGENT_PKCS11_CLAIM_KEY_ID", "0a:0b:0c")];

    // `check` finds it, by id, and says so.
    let out = device.run_env(&["check"], &by_id).await;
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("id=%0a%0b%0c"),
        "{}",
        text(&out)
    );
    // Without the id the agent looks for the label `claim`, which the
    // factory did not use.
    let out = device.run(&["enroll"]).await;
    failed_with(&out, 2);
    assert!(text(&out).contains("claim"), "{}", text(&out));

    // Enrollment signs the claim connection's handshake with it.
    let out = device.run_env(&["enroll"], &by_id).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    assert!(device.identity().is_some());

    // The agent neither replaces nor makes a claim key in its place.
    let out = device
        .run_env(
            &[
                "claim",
                "import",
                "--cert",
                device.path("claim.pem.crt").to_str().unwrap(),
            ],
            &by_id,
        )
        .await;
    let err = failed_with(&out, 2);
    assert!(err.contains("CLAIM_KEY_ID"), "{err}");
    let csr = device.path("claim.csr");
    let out = device
        .run_env(
            &["claim", "generate", "--csr", csr.to_str().unwrap()],
            &by_id,
        )
        .await;
    let err = failed_with(&out, 2);
    assert!(err.contains("CLAIM_KEY_ID"), "{err}");
    assert!(!csr.exists());
    // The factory's key is still there, under its own label.
    let out = device.run_env(&["keys", "list"], &by_id).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("factory-claim")
            || String::from_utf8_lossy(&out.stdout).contains("id=%0a%0b%0c"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_claim_key_id_that_is_not_on_the_token_is_named() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::pkcs11("foreign-missing"), "MODE = csr\n");
    let cert = device.load_config().settings.claim_cert;
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::copy(device.path("claim.pem.crt"), &cert).unwrap();
    let out = device
        .run_env(&["enroll"], &[("PROV_AGENT_PKCS11_CLAIM_KEY_ID", "%de%ad")])
        .await;
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CKA_ID"), "{err}");
    assert!(err.contains("dead"), "{err}");
}
