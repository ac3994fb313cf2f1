//! The pkcs11 backend on Debian's tpm2-pkcs11 module (tpm2-abrmd on a
//! swtpm, a private session bus), end to end against the emulator. The
//! module cannot import private keys, so the claim key goes in with its
//! own tool, tpm2_ptool, and `claim import` must say so and change nothing.
#![cfg(feature = "pkcs11")]

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::daemon::{
    create_rotation_job, send_rotation_command, wait_job_succeeded, wait_rotated, Daemon,
};
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;
use common::tpm2pkcs11::Tpm2Pkcs11;
use iotcore_emulator::CertStatus;
use prov_agent::keystore::PrivateKeyMaterial;

/// A device on a fresh tpm2-pkcs11 token whose claim key was imported with
/// tpm2_ptool, its claim certificate where CLAIM_CERT says.
fn device(cloud: &TestCloud, extra: &str) -> Device {
    let device = Device::new(cloud, Backend::Tpm2Pkcs11(Tpm2Pkcs11::new("gw")), extra);
    let Backend::Tpm2Pkcs11(token) = &device.backend else {
        unreachable!()
    };
    let key = device.path("claim.private.pem.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    let algorithm = if PrivateKeyMaterial::from_pem(&pem)
        .unwrap()
        .algorithm()
        .is_ec()
    {
        "ecc"
    } else {
        "rsa"
    };
    let config = device.load_config();
    token.import_key(config.keystore.claim_key.as_str(), &key, algorithm);
    let cert = &config.settings.claim_cert;
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::copy(device.path("claim.pem.crt"), cert).unwrap();
    device
}

fn token(device: &Device) -> &Tpm2Pkcs11 {
    match &device.backend {
        Backend::Tpm2Pkcs11(t) => t,
        _ => unreachable!(),
    }
}

fn active(cloud: &TestCloud, cert_id: &str) -> bool {
    cloud.handle.registry().certificate_status(cert_id).unwrap() == Some(CertStatus::Active)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_enroll_and_rotate() {
    let cloud = TestCloud::start().await;
    let device = device(&cloud, "MODE = csr\n");

    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "check before enroll: {}", text(&out));
    // What the module can do, learnt from it: its mechanisms, and that it
    // refuses private-key import (which it does: C_CreateObject).
    let out = device.run(&["check", "--json"]).await;
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = |name: &str| -> String {
        checks["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in check: {checks}"))["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail("PKCS#11 module").contains("tpm2"), "{checks}");
    let mechanisms = detail("mechanisms");
    assert!(mechanisms.contains("CKM_EC_KEY_PAIR_GEN ("), "{mechanisms}");
    assert!(mechanisms.contains("CKM_ECDSA ("), "{mechanisms}");
    assert!(
        detail("private-key import").starts_with("refused"),
        "{checks}"
    );

    // enroll makes the device key in the TPM (C_GenerateKeyPair) and signs
    // the CSR and the TLS handshakes with it.
    let out = device.run(&["enroll", "--json"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let thing_name = format!("gw_{}", device.serial);
    assert_eq!(result["thingName"], thing_name.as_str());
    let cert_id = result["certificateId"].as_str().unwrap().to_string();
    let registry = cloud.handle.registry();
    let thing = registry.thing(&thing_name).unwrap().expect("thing exists");
    assert_eq!(thing.attributes["serialNumber"], device.serial);
    let cert = registry
        .certificate(&cert_id)
        .unwrap()
        .expect("certificate exists");
    assert_eq!(cert.status, CertStatus::Active);
    assert!(cert.things.contains(&thing_name));
    let identity = device.identity().unwrap();
    assert_eq!(identity.certificate_id, cert_id);
    assert!(
        identity.key_reference.starts_with("pkcs11:token=gw;"),
        "{}",
        identity.key_reference
    );

    // check now also connects as the thing with the device key.
    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "check after enroll: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CONNACK 0"),
        "{}",
        text(&out)
    );

    // rotate: a new key in the other slot (generate), the labels moved
    // (promote), the old key destroyed.
    let out = device.run(&["rotate", "--json"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let new = device.identity().unwrap();
    assert_ne!(new.certificate_id, cert_id);
    assert_ne!(new.key_label, identity.key_label);
    assert_eq!(new.thing_name, thing_name);
    let now_active = cloud.active_certificates(&thing_name, 1).await;
    assert_eq!(now_active, vec![new.certificate_id.clone()]);
    assert!(active(&cloud, &new.certificate_id));
    assert!(
        !active(&cloud, &cert_id),
        "the old certificate is still ACTIVE"
    );
    let objects = token(&device).objects();
    assert!(
        !objects.contains(&format!("label:      {}\n", identity.key_label)),
        "the old key is still on the token:\n{objects}"
    );
    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "check after rotate: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_import_is_refused_and_changes_nothing() {
    let cloud = TestCloud::start().await;
    let device = device(&cloud, "");
    let objects = token(&device).objects();
    let claim_cert = std::fs::read(device.load_config().settings.claim_cert).unwrap();
    let key_file = std::fs::read(device.path("claim.private.pem.key")).unwrap();

    let out = device
        .run(&[
            "claim",
            "import",
            "--cert",
            device.path("claim.pem.crt").to_str().unwrap(),
            "--replace",
            "--shred",
        ])
        .await;
    let stderr = failed_with(&out, 5);
    for needle in [
        "cannot import private keys",
        "CKR_ATTRIBUTE_VALUE_INVALID",
        "prov-agent claim generate",
        "tpm2_ptool import",
        "--key-label claim",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }

    // Nothing changed: the token's objects, the certificate, the key file
    // (not shredded), and the claim key still works.
    assert_eq!(token(&device).objects(), objects);
    assert_eq!(
        std::fs::read(device.load_config().settings.claim_cert).unwrap(),
        claim_cert
    );
    assert_eq!(
        std::fs::read(device.path("claim.private.pem.key")).unwrap(),
        key_file
    );
    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "check: {}", text(&out));
}

/// The way out the refusal names: the claim key made in the TPM, with a
/// CSR that OpenSSL verifies and whose key is the one in the token.
#[tokio::test(flavor = "multi_thread")]
async fn claim_generate_makes_the_claim_key_in_the_token() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::Tpm2Pkcs11(Tpm2Pkcs11::new("gw")), "");
    let csr = device.path("claim.csr");
    let out = device
        .run(&[
            "claim",
            "generate",
            "--csr",
            csr.to_str().unwrap(),
            "--subject",
            "factory-7",
        ])
        .await;
    assert!(out.status.success(), "claim generate: {}", text(&out));
    let verified = std::process::Command::new("openssl")
        .args(["req", "-noout", "-verify", "-pubkey", "-in"])
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "openssl req -verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let spki = String::from_utf8_lossy(&verified.stdout);
    let from_csr =
        prov_agent::keystore::PublicKey::from_spki_der(pem::parse(spki.trim()).unwrap().contents())
            .unwrap();

    let out = device.run(&["keys", "list", "--json"]).await;
    assert!(out.status.success(), "keys list: {}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schemaVersion"], 1, "{doc}");
    let rows = &doc["keys"];
    assert_eq!(rows[0]["label"], "claim");
    assert_eq!(rows[0]["algorithm"], "ec-p256");
    assert_eq!(rows[0]["publicKeySha256"], from_csr.fingerprint());
}

/// Device keys of every algorithm the agent offers, made by the module.
#[tokio::test(flavor = "multi_thread")]
async fn enroll_with_rsa_and_p384_device_keys() {
    for algorithm in ["rsa-2048", "ec-p384"] {
        let cloud = TestCloud::start().await;
        let device = device(&cloud, "MODE = csr\n");
        let out = device
            .run_env(
                &["enroll", "--json"],
                &[("PROV_AGENT_KEYSTORE_KEY_ALGORITHM", algorithm)],
            )
            .await;
        assert!(out.status.success(), "enroll {algorithm}: {}", text(&out));
        let identity = device.identity().unwrap();
        assert!(active(&cloud, &identity.certificate_id), "{algorithm}");
        let out = device.run(&["keys", "list", "--json"]).await;
        assert!(out.status.success(), "keys list: {}", text(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = &doc["keys"];
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["label"] == identity.key_label.as_str())
            .unwrap_or_else(|| panic!("no {} in {rows}", identity.key_label));
        assert_eq!(row["algorithm"], algorithm);
        // The TLS handshake of check signs with the new key.
        let out = device.run(&["check"]).await;
        assert!(out.status.success(), "check {algorithm}: {}", text(&out));
    }
}

/// Keys mode needs a key store that imports the key AWS IoT made: the
/// refusal names MODE = csr, and an enroll in csr mode then succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn keys_mode_is_refused_naming_csr_mode() {
    let cloud = TestCloud::start().await;
    let device = device(&cloud, "MODE = keys\n");
    // `check` says so first.
    let out = device.run(&["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check passed: {}", text(&out));
    assert!(
        stdout.contains("key import") && stdout.contains("MODE = csr"),
        "{}",
        text(&out)
    );
    let certificates = || cloud.handle.registry().certificates().unwrap().len();
    let before = certificates();
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    // Refused before any request: the service made no certificate.
    assert_eq!(
        certificates(),
        before,
        "a certificate was issued for nothing"
    );
    for needle in [
        "cannot import private keys",
        "CKR_ATTRIBUTE_VALUE_INVALID",
        "MODE = csr",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert!(device.identity().is_none());

    let out = device
        .run_env(
            &["enroll", "--json"],
            &[("PROV_AGENT_PROVISIONING_MODE", "csr")],
        )
        .await;
    assert!(out.status.success(), "enroll in csr mode: {}", text(&out));
    let identity = device.identity().unwrap();
    assert!(active(&cloud, &identity.certificate_id));
}

/// The daemon on tpm2-pkcs11: its key helper child loads the module for
/// the handshake and for a rotation on command, then for one by an AWS IoT
/// Job (answered SUCCEEDED), and the idle daemon holds none of it.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_rotates_on_command_and_by_job() {
    let cloud = TestCloud::start().await;
    let device = device(&cloud, "MODE = csr\n");
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let before = device.identity().unwrap();

    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    assert_eq!(
        cloud.active_certificates(&before.thing_name, 1).await,
        vec![new.clone()]
    );
    assert!(!active(&cloud, &before.certificate_id));
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;

    // And through an AWS IoT Job, as a fleet backend would.
    create_rotation_job(&cloud, "rotate-tpm2-pkcs11", &before.thing_name);
    let third = wait_rotated(&device, &new, Duration::from_secs(30)).await;
    wait_job_succeeded(&cloud, "rotate-tpm2-pkcs11", &before.thing_name).await;
    assert_eq!(
        cloud.active_certificates(&before.thing_name, 1).await,
        vec![third]
    );
    daemon
        .wait_log("connected", 3, Duration::from_secs(15))
        .await;
    daemon.holds_no_hardware(&device).await;
    daemon.stop().await;
}
