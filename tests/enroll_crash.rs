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

        let done = device.run(&["enroll", "--json"]).await;
        assert!(
            done.status.success(),
            "{point}: second enroll: {}",
            text(&done)
        );
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
