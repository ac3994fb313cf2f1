//! Kill `prov-agent enroll` at every point of the flow (fault injection,
//! an abort: no destructors, no flushing), run it again, and check that the
//! device ends with exactly one working identity, the registry with one
//! thing and one active certificate for it, and the key store without
//! orphaned keys.
#![cfg(feature = "fault-injection")]

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use iotcore_emulator::CertStatus;
use prov_agent::provision::fault::POINTS;

async fn crash_everywhere(make_backend: fn() -> Backend, mode: &str) {
    let cloud = TestCloud::start().await;
    let skip = if mode == "csr" {
        "key-imported"
    } else {
        "key-generated"
    };
    for point in POINTS.iter().copied().filter(|p| *p != skip) {
        let device = Device::new(&cloud, make_backend(), &format!("MODE = {mode}\n"));
        device.import_claim().await;
        let crashed = device
            .run_env(&["enroll"], &[("PROV_AGENT_FAULT", point)])
            .await;
        assert!(
            !crashed.status.success(),
            "{point}: did not crash: {}",
            text(&crashed)
        );
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("dying at {point}")),
            "{point}: crashed elsewhere: {}",
            text(&crashed)
        );

        // While RegisterThing is outstanding the journal holds the
        // ownership token; it must never reach the output or the logs.
        let token = std::fs::read(device.state_dir().join("journal.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["state"]["token"].as_str().map(str::to_string));
        if point == "cert-issued" {
            assert!(
                token.is_some(),
                "the journal should hold the token at {point}"
            );
        }
        let done = device.run(&["enroll", "--json"]).await;
        assert!(
            done.status.success(),
            "{point}: second enroll: {}",
            text(&done)
        );
        if let Some(token) = token {
            for out in [&crashed, &done] {
                assert!(
                    !text(out).contains(&token),
                    "{point}: the ownership token was printed"
                );
            }
        }
        let result: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
        let thing_name = format!("gw_{}", device.serial);
        assert_eq!(result["thingName"], thing_name.as_str(), "{point}");

        // One thing, one active certificate, and it is the device's.
        let registry = cloud.handle.registry();
        let thing = registry.thing(&thing_name).unwrap().expect("thing");
        let active: Vec<_> = thing
            .certificates
            .iter()
            .filter(|id| registry.certificate_status(id).unwrap() == Some(CertStatus::Active))
            .cloned()
            .collect();
        let identity = device.identity().expect("identity");
        assert_eq!(active, vec![identity.certificate_id.clone()], "{point}");

        // The identity works, the journal is gone, no pending key is left.
        device
            .round_trip(&cloud)
            .await
            .unwrap_or_else(|e| panic!("{point}: {e}"));
        assert!(!device.state_dir().join("journal.json").exists(), "{point}");
        let labels: Vec<String> = device
            .store()
            .list()
            .unwrap()
            .into_iter()
            .map(|k| k.label.to_string())
            .collect();
        assert_eq!(
            labels,
            vec!["claim".to_string(), "device".to_string()],
            "{point}"
        );
    }
    // Every device made exactly one thing.
    let things = cloud.handle.registry().things().unwrap();
    assert_eq!(things.len(), POINTS.len() - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_csr() {
    crash_everywhere(|| Backend::File, "csr").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_csr() {
    crash_everywhere(|| Backend::pkcs11("crash"), "csr").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_keys() {
    crash_everywhere(|| Backend::pkcs11("crash"), "keys").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_csr() {
    crash_everywhere(Backend::tpm, "csr").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_keys() {
    crash_everywhere(Backend::tpm, "keys").await;
}

/// The device dies after the certificate was issued; the next run's
/// RegisterThing goes through but its answer is lost. Whether the service
/// refuses the token a second time (Reject, the emulator's default) or
/// answers again (Replay), the device ends with one working identity and
/// the thing with exactly one active certificate: with Reject, the agent
/// starts over and reports the abandoned certificate, which the backend
/// rule deactivates.
async fn lost_register_answer(reuse: iotcore_emulator::TokenReuse, mode: &str) {
    let cloud = TestCloud::start_with(|c| c.token_reuse = reuse).await;
    let device = Device::new(&cloud, Backend::File, &format!("MODE = {mode}\n"));
    device.import_claim().await;
    let crashed = device
        .run_env(&["enroll"], &[("PROV_AGENT_FAULT", "cert-issued")])
        .await;
    assert!(!crashed.status.success());

    cloud
        .handle
        .set_response_fault(Some(iotcore_emulator::ResponseFault::DropResponses(1)));
    let done = device
        .run_env(
            &["enroll", "--json"],
            // Long enough for the pre-provisioning hook (Python, boto3) on
            // a loaded machine: a registration that merely took longer than
            // the timeout would be given up as well, and abandon one more
            // certificate than the lost answer did.
            &[("PROV_AGENT_PROVISIONING_RESPONSE_TIMEOUT", "5s")],
        )
        .await;
    assert!(done.status.success(), "{reuse:?}: {}", text(&done));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("no answer within"), "{stderr}");

    let thing_name = format!("gw_{}", device.serial);
    let registry = cloud.handle.registry();
    let identity = device.identity().unwrap();
    // The backend rule acts on the report asynchronously: give it a moment.
    let mut active = Vec::new();
    for _ in 0..30 {
        let thing = registry.thing(&thing_name).unwrap().unwrap();
        active = thing
            .certificates
            .iter()
            .filter(|id| registry.certificate_status(id).unwrap() == Some(CertStatus::Active))
            .cloned()
            .collect();
        if active.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(active, vec![identity.certificate_id.clone()], "{reuse:?}");
    let all_active = registry
        .certificates()
        .unwrap()
        .into_iter()
        .filter(|c| c.status == CertStatus::Active)
        .count();
    assert_eq!(all_active, 2, "{reuse:?}: claim + device only");
    if reuse == iotcore_emulator::TokenReuse::Reject {
        assert!(stderr.contains("starting over"), "{stderr}");
        // The thing existed already (the lost registration went through):
        // the new certificate is for the same key as the abandoned one,
        // which is what the pre-provisioning hook accepted as proof.
        let public_key = |pem: &str| {
            prov_agent::crypto::Certificate::from_pem(pem, "certificate")
                .unwrap()
                .public_key()
                .clone()
        };
        let abandoned: Vec<_> = registry
            .certificates()
            .unwrap()
            .into_iter()
            .filter(|c| c.status == CertStatus::Inactive)
            .collect();
        assert_eq!(abandoned.len(), 1, "{mode}");
        assert!(
            public_key(&abandoned[0].certificate_pem) == public_key(&identity.certificate_pem),
            "{mode}: the new certificate is for another key"
        );
    }
    device.round_trip(&cloud).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_register_answer_with_token_reuse_rejected() {
    lost_register_answer(iotcore_emulator::TokenReuse::Reject, "csr").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_register_answer_in_keys_mode_with_token_reuse_rejected() {
    lost_register_answer(iotcore_emulator::TokenReuse::Reject, "keys").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_register_answer_with_token_reuse_replayed() {
    lost_register_answer(iotcore_emulator::TokenReuse::Replay, "csr").await;
}

/// The persistent handles in the agent's range (from 0x81000100) that the
/// TPM holds, read with tpm2-tools.
#[cfg(feature = "tpm")]
fn persistent_handles(device: &Device) -> Vec<String> {
    let Backend::Tpm(tpm) = &device.backend else {
        panic!("a TPM device")
    };
    let _shared = common::token_store_shared();
    let out = common::clean_command("tpm2_getcap")
        .arg("handles-persistent")
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(out.status.success(), "tpm2_getcap: {}", text(&out));
    let mut handles: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| h.as_str() >= "0x81000100")
        .collect();
    handles.sort();
    handles
}

/// The persistent handles the device's key files name.
#[cfg(feature = "tpm")]
fn named_handles(device: &Device) -> Vec<String> {
    let mut handles: Vec<String> = device
        .store()
        .list()
        .unwrap()
        .into_iter()
        .filter_map(|k| {
            k.reference
                .strip_prefix("tpm:handle=")
                .map(|h| h.to_ascii_lowercase())
        })
        .collect();
    handles.sort();
    handles
}

/// With persistent TPM storage, a crash between a new key's file and its
/// TPM2_EvictControl leaves no persistent object that no key file names
/// (each such crash would take one of the TPM's few persistent slots for
/// good), and the next enroll completes with exactly its keys persistent.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_persistent_key_half_stored() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::tpm(), "");
    let config = std::fs::read_to_string(&device.config)
        .unwrap()
        .replace("KEY_STORAGE = blob", "KEY_STORAGE = persistent");
    std::fs::write(&device.config, config).unwrap();
    device.import_claim().await;
    let crashed = device
        .run_env(&["enroll"], &[("PROV_AGENT_FAULT", "tpm-key-half-stored")])
        .await;
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("dying at tpm-key-half-stored"),
        "{}",
        text(&crashed)
    );
    let held = persistent_handles(&device);
    let named = named_handles(&device);
    assert!(
        held.iter().all(|h| named.contains(h)),
        "persistent objects no key file names: held {held:?}, named {named:?}"
    );
    let done = device.run(&["enroll"]).await;
    assert!(done.status.success(), "{}", text(&done));
    device.round_trip(&cloud).await.unwrap();
    assert_eq!(persistent_handles(&device), named_handles(&device));
    assert_eq!(named_handles(&device).len(), 2, "claim and device keys");
}
