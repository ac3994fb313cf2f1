//! `prov-agent enroll` end to end against the emulator, on every key store
//! backend, in csr and keys mode.

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use iotcore_emulator::CertStatus;

async fn enroll_end_to_end(backend: Backend, mode: &str, format: &str) {
    let cloud = TestCloud::start().await;
    let hardware = backend.name() != "file";
    let device = Device::new(
        &cloud,
        backend,
        &format!("MODE = {mode}\nPAYLOAD_FORMAT = {format}\n"),
    );
    device.import_claim().await;

    let out = device.run(&["enroll", "--json"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let thing_name = format!("gw_{}", device.serial);
    assert_eq!(result["thingName"], thing_name.as_str());
    assert_eq!(result["changed"], true);
    assert_eq!(
        result["deviceConfiguration"]["thingName"],
        thing_name.as_str()
    );
    let cert_id = result["certificateId"].as_str().unwrap().to_string();

    // The registry has the thing, with the template's attributes, and its
    // certificate is ACTIVE and the only active one attached to it.
    let registry = cloud.handle.registry();
    let thing = registry.thing(&thing_name).unwrap().expect("thing exists");
    assert_eq!(thing.attributes["serialNumber"], device.serial);
    assert_eq!(thing.attributes["site"], "plant-a");
    assert_eq!(thing.attributes["hardwareRevision"], "r2");
    assert!(thing.thing_groups.contains(&"gateways-plant-a".to_string()));
    let cert = registry
        .certificate(&cert_id)
        .unwrap()
        .expect("certificate exists");
    assert_eq!(cert.status, CertStatus::Active);
    assert!(cert.things.contains(&thing_name));
    let active: Vec<_> = thing
        .certificates
        .iter()
        .filter(|id| registry.certificate_status(id).unwrap() == Some(CertStatus::Active))
        .collect();
    assert_eq!(active, vec![&cert_id]);

    // The identity works on a connection of our own.
    device.round_trip(&cloud).await.unwrap();
    let identity = device.identity().unwrap();
    assert_eq!(identity.certificate_id, cert_id);
    assert_eq!(result["keyReference"], identity.key_reference.as_str());

    // No private key material in the state directory (hardware backends)
    // nor in the output. The TPM's standard key file published for other
    // programs holds the TPM-wrapped blob, which loads on this TPM only.
    if hardware {
        for (path, bytes) in device.state_files() {
            let s = String::from_utf8_lossy(&bytes).replace("TSS2 PRIVATE KEY", "TSS2 KEY");
            assert!(
                !s.contains("PRIVATE KEY"),
                "{} holds a private key",
                path.display()
            );
        }
    }
    for stream in [&out.stdout, &out.stderr] {
        let s = String::from_utf8_lossy(stream);
        assert!(
            !s.contains("PRIVATE KEY"),
            "output holds a private key: {s}"
        );
        assert!(!s.contains("Token\""), "output mentions a token: {s}");
    }
    // The journal is gone: the enrollment is complete.
    assert!(!device.state_dir().join("journal.json").exists());

    // A second enroll says so and changes nothing.
    let again = device.run(&["enroll"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already enrolled"));
    assert_eq!(device.identity().unwrap().certificate_id, cert_id);
    assert_eq!(registry.things().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_csr_json() {
    enroll_end_to_end(Backend::File, "csr", "json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_keys_cbor() {
    enroll_end_to_end(Backend::File, "keys", "cbor").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_csr() {
    enroll_end_to_end(Backend::pkcs11("enroll"), "csr", "json").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_keys() {
    enroll_end_to_end(Backend::pkcs11("enroll"), "keys", "cbor").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_csr() {
    enroll_end_to_end(Backend::tpm(), "csr", "json").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_keys() {
    enroll_end_to_end(Backend::tpm(), "keys", "json").await;
}

/// `SERIAL_NUMBER = tpm-ek`: the serial is the TPM's endorsement key digest.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_serial_from_endorsement_key() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::tpm(), "");
    device.import_claim().await;
    let out = device
        .run_env(
            &["enroll", "--json"],
            &[("PROV_AGENT_PROVISIONING_SERIAL_NUMBER", "tpm-ek")],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ek_id = match &device.backend {
        Backend::Tpm(_) => {
            let store = device.store();
            store.hardware_id().unwrap().unwrap()
        }
        _ => unreachable!(),
    };
    assert_eq!(result["thingName"], format!("gw_{ek_id}").as_str());
}

/// Port 443 style: the emulator's ALPN listener refuses clients that do
/// not offer `x-amzn-mqtt-ca`; with ALPN on, enrollment goes through it.
#[tokio::test(flavor = "multi_thread")]
async fn enroll_over_the_alpn_listener() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "ALPN = true\n");
    device.import_claim().await;
    let alpn_port = cloud.handle.alpn_addr().port().to_string();
    let without = device
        .run_env(
            &["enroll"],
            &[
                ("PROV_AGENT_PROVISIONING_PORT", &alpn_port),
                ("PROV_AGENT_PROVISIONING_ALPN", "false"),
                ("PROV_AGENT_PROVISIONING_MAX_RETRIES", "0"),
            ],
        )
        .await;
    assert!(!without.status.success(), "{}", text(&without));
    let with = device
        .run_env(
            &["enroll", "--json"],
            &[("PROV_AGENT_PROVISIONING_PORT", &alpn_port)],
        )
        .await;
    assert!(with.status.success(), "{}", text(&with));
}

/// `DECOMMISSION_CLAIM = true`: once enrolled, the claim key and
/// certificate are gone from the device.
#[tokio::test(flavor = "multi_thread")]
async fn decommission_claim_after_commit() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "DECOMMISSION_CLAIM = true\n");
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let labels: Vec<String> = device
        .store()
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label.to_string())
        .collect();
    assert_eq!(labels, vec!["device".to_string()]);
    assert!(!device.path("certs/claim.pem.crt").exists());
    device.round_trip(&cloud).await.unwrap();
}

/// `enroll --force`: a new identity replaces the old one only once it
/// works; the old certificate is reported and deactivated by the backend.
#[tokio::test(flavor = "multi_thread")]
async fn force_replaces_the_identity_and_retires_the_old_certificate() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    assert!(device.run(&["enroll"]).await.status.success());
    let old = device.identity().unwrap();
    let out = device.run(&["enroll", "--force", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let new = device.identity().unwrap();
    assert_ne!(new.certificate_id, old.certificate_id);
    assert_eq!(
        new.previous_certificate_id.as_deref(),
        Some(old.certificate_id.as_str())
    );
    assert_eq!(new.thing_name, old.thing_name);
    let registry = cloud.handle.registry();
    let mut status = None;
    for _ in 0..30 {
        status = registry.certificate_status(&old.certificate_id).unwrap();
        if status == Some(CertStatus::Inactive) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(CertStatus::Inactive));
    assert_eq!(
        registry.certificate_status(&new.certificate_id).unwrap(),
        Some(CertStatus::Active)
    );
    device.round_trip(&cloud).await.unwrap();
}

/// A config written the reference client's way (its `[SETTINGS]` keys, the
/// `PROVISIONING_TEMPLATE_NAME` spelling, no template parameters) enrolls
/// with the shipped templates, hook and policies.
#[tokio::test(flavor = "multi_thread")]
async fn reference_client_config_enrolls_with_the_shipped_files() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    std::fs::write(
        &device.config,
        format!(
            "[SETTINGS]\n\
             # Set the path to the location containing your certificates (root, private, claim certificate)\n\
             SECURE_CERT_PATH = {dir}\n\
             ROOT_CERT = certs/root-ca.pem\n\
             CLAIM_CERT = claim.pem.crt\n\
             SECURE_KEY = claim.private.pem.key\n\
             IOT_ENDPOINT = localhost\n\
             PROVISIONING_TEMPLATE_NAME = ProdTemplate\n\
             [AGENT]\nSTATE_DIR = state\n[KEYSTORE]\nBACKEND = file\n\
             [PROVISIONING]\nPORT = {port}\nSERIAL_NUMBER = {serial}\n",
            dir = device.dir.path().display(),
            port = cloud.handle.addr().port(),
            serial = device.serial,
        ),
    )
    .unwrap();
    // `claim import` takes the key from SECURE_KEY.
    let out = device
        .run(&[
            "claim",
            "import",
            "--cert",
            device.path("claim.pem.crt").to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = device.run(&["enroll", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let identity = device.identity().unwrap();
    assert_eq!(identity.thing_name, format!("gw_{}", device.serial));
    let thing = cloud
        .handle
        .registry()
        .thing(&identity.thing_name)
        .unwrap()
        .unwrap();
    assert_eq!(thing.attributes["site"], "default");
    assert_eq!(thing.certificates, vec![identity.certificate_id.clone()]);
    device.round_trip(&cloud).await.unwrap();
}
