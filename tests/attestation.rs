//! Hardware-attested enrollment (docs/attestation.md), end to end against
//! the emulator with the shipped pre-provisioning hook checking the proof
//! (`ATTESTATION_CA`): swtpms manufactured with an endorsement key
//! certificate, the manufacturer's CA tool (`factory/manufacturer_ca.py`),
//! `prov-agent attest init|activate`, then enroll and rotate.
//!
//! As an attacker: the claim credential is on every gateway, so each way of
//! enrolling without a genuine TPM proof is tried, and each is refused with
//! the device's exit code 3, nothing registered and nothing left behind.
#![cfg(feature = "tpm")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::{python_bin, TestCloud};
use common::swtpm::Swtpm;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A manufacturer's CA made with the shipped tool.
struct Factory {
    dir: tempfile::TempDir,
}

impl Factory {
    fn new(subject: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let factory = Factory { dir };
        let out = factory.tool(&[
            "init",
            "--dir",
            factory.ca().to_str().unwrap(),
            "--subject",
            subject,
        ]);
        assert!(out.status.success(), "manufacturer_ca init: {}", text(&out));
        factory
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// The CA certificate the hook trusts (`ATTESTATION_CA`).
    fn certificate(&self) -> PathBuf {
        let dir = self.ca();
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "pem")
                    && std::fs::read_to_string(p).is_ok_and(|t| t.contains("BEGIN CERTIFICATE"))
            })
            .unwrap_or_else(|| panic!("no CA certificate in {}", dir.display()))
    }

    fn tool(&self, args: &[&str]) -> Output {
        std::process::Command::new(format!("{}/python3", python_bin()))
            .arg(repo("factory/manufacturer_ca.py"))
            .args(args)
            .output()
            .unwrap()
    }

    /// The CA's answer to `request`, trusting the EK CA in `ek_ca`.
    fn challenge(&self, request: &Path, ek_ca: &Path, out: &Path) -> Output {
        self.tool(&[
            "challenge",
            "--ca",
            self.ca().to_str().unwrap(),
            "--ek-ca",
            ek_ca.join("issuercert.pem").to_str().unwrap(),
            "--ek-ca",
            ek_ca
                .join("swtpm-localca-rootca-cert.pem")
                .to_str()
                .unwrap(),
            "--request",
            request.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    }
}

/// An emulator whose hook requires attestation by `factory`'s CA.
async fn attested_cloud(factory: &Factory, check_serial: bool) -> TestCloud {
    let ca = factory.certificate();
    TestCloud::start_with(|c| {
        c.hook_environment
            .push(("ATTESTATION_CA".into(), ca.display().to_string()));
        if check_serial {
            c.hook_environment
                .push(("ATTESTATION_CHECK_SERIAL".into(), "1".into()));
        }
    })
    .await
}

const ATTESTED: &str = "MODE = csr\n[ATTESTATION]\nMODE = tpm\n";

/// A gateway off the production line: a TPM with an EK certificate, the
/// claim key imported, the attestation key made and certified by `factory`.
async fn manufactured(cloud: &TestCloud, factory: &Factory, extra: &str) -> Device {
    let tpm = Swtpm::start_with_ek_cert();
    let ek_ca = tpm.ek_ca_dir();
    let device = Device::new(cloud, Backend::Tpm(tpm), extra);
    device.import_claim().await;
    activate(&device, factory, &ek_ca).await;
    device
}

async fn activate(device: &Device, factory: &Factory, ek_ca: &Path) {
    let request = device.path("attest-request.json");
    let out = device
        .run(&["attest", "init", "--out", request.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "attest init: {}", text(&out));
    let challenge = device.path("attest-challenge.json");
    let out = factory.challenge(&request, ek_ca, &challenge);
    assert!(out.status.success(), "challenge: {}", text(&out));
    let out = device
        .run(&[
            "attest",
            "activate",
            "--challenge",
            challenge.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "attest activate: {}", text(&out));
}

/// The hook's reason for the last refusal (logged, never sent to the
/// device) names `why`.
fn refused_because(cloud: &TestCloud, why: &str) {
    let refusals = cloud.handle.hook_refusals();
    let last = refusals.last().expect("the hook refused nothing");
    eprintln!("hook refusal: {last}");
    assert!(
        last.contains(why),
        "the hook refused for another reason: {last}"
    );
}

/// Nothing of an enrollment the hook refused is left: no identity, no
/// journal, no key but the claim key and the attestation key.
async fn nothing_left(device: &Device, cloud: &TestCloud) {
    assert!(device.identity().is_none());
    assert!(!device.state_dir().join("journal.json").exists());
    let out = device.run(&["keys", "list", "--json"]).await;
    assert!(out.status.success(), "keys list: {}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut labels: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    labels.sort();
    labels.retain(|l| *l != "attest");
    assert_eq!(labels, ["claim"], "{doc}");
    assert!(cloud.handle.registry().things().unwrap().is_empty());
}

/// `enroll` (with `env`) is refused by the hook for `why`: exit 3 with
/// AccessDenied, the hook's logged reason, and nothing left behind.
async fn enroll_refused(device: &Device, cloud: &TestCloud, env: &[(&str, &str)], why: &str) {
    let out = device.run_env(&["enroll"], env).await;
    let stderr = failed_with(&out, 3);
    assert!(stderr.contains("AccessDenied"), "{why}: {stderr}");
    refused_because(cloud, why);
    nothing_left(device, cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_genuine_gateway_enrolls_and_rotates_with_its_tpms_proof() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, true).await;
    let device = manufactured(&cloud, &factory, ATTESTED).await;

    let out = device.run(&["check"]).await;
    assert!(
        out.status.success() && text(&out).contains("attestation"),
        "check: {}",
        text(&out)
    );
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let identity = device.identity().unwrap();
    let active = cloud.active_certificates(&identity.thing_name, 1).await;
    assert_eq!(active, vec![identity.certificate_id.clone()]);

    let out = device.run(&["rotate"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let rotated = device.identity().unwrap();
    assert_ne!(rotated.certificate_id, identity.certificate_id);
    let active = cloud.active_certificates(&rotated.thing_name, 1).await;
    assert_eq!(active, vec![rotated.certificate_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_its_certificate_a_gateway_asks_the_service_for_nothing() {
    let cloud = TestCloud::start_with(|c| c.record_packets = true).await;
    let device = Device::new(&cloud, Backend::Tpm(Swtpm::start_with_ek_cert()), ATTESTED);
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(
        stderr.contains("attest init") && stderr.contains("attest activate"),
        "{stderr}"
    );
    assert!(cloud.handle.packet_log().is_empty(), "it connected");
    let out = device.run(&["check"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("attest init"), "{}", text(&out));
}

/// Each forged or borrowed proof, sent by an agent that tampers with it
/// (`PROV_AGENT_FAULT`), is refused by the hook.
#[tokio::test(flavor = "multi_thread")]
async fn forged_proofs_are_refused() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, false).await;
    let device = manufactured(&cloud, &factory, ATTESTED).await;
    for (tampering, why) in [
        ("attest-replay", "qualifying data"),
        ("attest-other-key", "is not the key of the new certificate"),
        // The signature covers every byte of the attestation.
        (
            "attest-flip-attest",
            "does not verify with the attestation key",
        ),
        (
            "attest-flip-signature",
            "does not verify with the attestation key",
        ),
    ] {
        enroll_refused(&device, &cloud, &[("PROV_AGENT_FAULT", tampering)], why).await;
    }
    // The same gateway, untampered, enrolls.
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
}

/// Keys mode forced despite attestation: the key the service made, imported
/// into the TPM and certified there, is not sensitiveDataOrigin.
#[tokio::test(flavor = "multi_thread")]
async fn an_imported_key_is_refused() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, false).await;
    let device = manufactured(&cloud, &factory, ATTESTED).await;
    let config = std::fs::read_to_string(&device.config).unwrap();
    std::fs::write(
        &device.config,
        config.replace("MODE = csr\n", "MODE = keys\n"),
    )
    .unwrap();
    // Without the forcing, the agent refuses this config itself.
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("MODE = keys"), "{stderr}");
    let out = device
        .run_env(&["enroll"], &[("PROV_AGENT_FAULT", "attest-keys-mode")])
        .await;
    let stderr = failed_with(&out, 3);
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    refused_because(
        &cloud,
        "lacks the attributes fixedTPM, fixedParent, sensitiveDataOrigin",
    );
    std::fs::write(&device.config, config).unwrap();
    nothing_left(&device, &cloud).await;
}

/// The claim credential on a machine without a TPM: software keys, no
/// proof.
#[tokio::test(flavor = "multi_thread")]
async fn the_claim_credential_without_a_tpm_is_refused() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, false).await;
    let thief = Device::new(&cloud, Backend::File, "MODE = csr\n");
    thief.import_claim().await;
    enroll_refused(&thief, &cloud, &[], "TpmAkCertificate is missing").await;
}

/// A TPM certified by another manufacturer's CA (or by an attacker's).
#[tokio::test(flavor = "multi_thread")]
async fn an_attestation_key_of_another_ca_is_refused() {
    let trusted = Factory::new("Gateway Maker Manufacturing CA");
    let other = Factory::new("Someone Else's CA");
    let cloud = attested_cloud(&trusted, false).await;
    let device = manufactured(&cloud, &other, ATTESTED).await;
    enroll_refused(&device, &cloud, &[], "does not chain to a configured CA").await;
}

/// With the serial check on, a gateway enrolls only under the serial its
/// attestation key certificate names.
#[tokio::test(flavor = "multi_thread")]
async fn a_serial_other_than_the_certified_one_is_refused() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, true).await;
    let device = manufactured(&cloud, &factory, ATTESTED).await;
    let config = std::fs::read_to_string(&device.config).unwrap();
    let other = format!("{}X", device.serial);
    std::fs::write(
        &device.config,
        config.replace(
            &format!("SERIAL_NUMBER = {}\n", device.serial),
            &format!("SERIAL_NUMBER = {other}\n"),
        ),
    )
    .unwrap();
    enroll_refused(&device, &cloud, &[], "is not the serial number").await;
}

/// The CA's challenge opens only in the TPM that holds both the endorsement
/// key it was made for and the attestation key: a request naming another
/// TPM's EK certificate gets a challenge this TPM cannot activate.
#[tokio::test(flavor = "multi_thread")]
async fn the_challenge_fails_for_an_attestation_key_outside_the_eks_tpm() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = TestCloud::start().await;
    let genuine = Swtpm::start_with_ek_cert();
    let genuine_ek = genuine.ek_ca_dir();
    // The genuine TPM's EK certificate, read by tpm2-tools.
    let ek_cert = genuine.ek_ca_dir().parent().unwrap().join("genuine-ek.der");
    let out = common::clean_command("tpm2_nvread")
        .env("TPM2TOOLS_TCTI", genuine.tcti())
        .args(["0x01c00002", "-o"])
        .arg(&ek_cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "tpm2_nvread: {}", text(&out));

    // The attestation key in another TPM, claiming the genuine TPM's EK.
    // That TPM has no EK certificate of its own: without --ek-cert, init
    // says so and writes nothing.
    let device = Device::new(&cloud, Backend::Tpm(Swtpm::start()), ATTESTED);
    let request = device.path("attest-request.json");
    let out = device
        .run(&["attest", "init", "--out", request.to_str().unwrap()])
        .await;
    let stderr = failed_with(&out, 5);
    assert!(
        stderr.contains("0x01c00002") && stderr.contains("--ek-cert"),
        "{stderr}"
    );
    assert!(!request.exists());
    let out = device
        .run(&[
            "attest",
            "init",
            "--out",
            request.to_str().unwrap(),
            "--ek-cert",
            ek_cert.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "attest init: {}", text(&out));
    let challenge = device.path("attest-challenge.json");
    let out = factory.challenge(&request, &genuine_ek, &challenge);
    assert!(out.status.success(), "challenge: {}", text(&out));
    let out = device
        .run(&[
            "attest",
            "activate",
            "--challenge",
            challenge.to_str().unwrap(),
        ])
        .await;
    let stderr = failed_with(&out, 5);
    assert!(
        stderr.contains("TPM2_ActivateCredential") && stderr.contains("not made for this TPM"),
        "{stderr}"
    );
    let out = device.run(&["check"]).await;
    assert!(
        text(&out).contains("no attestation key certificate"),
        "{}",
        text(&out)
    );
    drop(genuine);
}

/// The daemon's rotation (on a job) has the TPM certify the new key through
/// its key helper, and the hook admits it.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_rotates_with_the_tpms_proof() {
    use common::daemon::{create_rotation_job, wait_job_succeeded, wait_rotated, Daemon};
    use std::time::Duration;

    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = attested_cloud(&factory, true).await;
    let device = manufactured(&cloud, &factory, ATTESTED).await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let before = device.identity().unwrap();
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    create_rotation_job(&cloud, "rotate-attested", &before.thing_name);
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    wait_job_succeeded(&cloud, "rotate-attested", &before.thing_name).await;
    assert_eq!(
        cloud.active_certificates(&before.thing_name, 1).await,
        vec![new]
    );
    assert!(cloud.handle.hook_refusals().is_empty());
    daemon.stop().await;
}

/// A challenge altered on its way (the sealed certificate) does not open,
/// stores nothing, and the genuine one still activates afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn an_altered_challenge_stores_nothing() {
    let factory = Factory::new("Gateway Maker Manufacturing CA");
    let cloud = TestCloud::start().await;
    let tpm = Swtpm::start_with_ek_cert();
    let ek_ca = tpm.ek_ca_dir();
    let device = Device::new(&cloud, Backend::Tpm(tpm), ATTESTED);
    let request = device.path("attest-request.json");
    let out = device
        .run(&["attest", "init", "--out", request.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "attest init: {}", text(&out));
    let challenge = device.path("attest-challenge.json");
    let out = factory.challenge(&request, &ek_ca, &challenge);
    assert!(out.status.success(), "challenge: {}", text(&out));
    let genuine: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&challenge).unwrap()).unwrap();
    let mut altered = genuine.clone();
    let sealed = altered["encryptedCertificate"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = if sealed.starts_with('A') { "B" } else { "A" };
    altered["encryptedCertificate"] = format!("{flipped}{}", &sealed[1..]).into();
    let altered_path = device.path("attest-altered.json");
    std::fs::write(&altered_path, altered.to_string()).unwrap();
    let out = device
        .run(&[
            "attest",
            "activate",
            "--challenge",
            altered_path.to_str().unwrap(),
        ])
        .await;
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("does not decrypt"), "{stderr}");
    let out = device.run(&["check"]).await;
    assert!(
        text(&out).contains("no attestation key certificate"),
        "{}",
        text(&out)
    );

    let out = device
        .run(&[
            "attest",
            "activate",
            "--challenge",
            challenge.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "attest activate: {}", text(&out));
}
