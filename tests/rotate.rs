//! `prov-agent rotate` against the emulator on every key store backend:
//! the new certificate works and is the only active one, the old one is
//! retired by the backend after the report, the old key is gone; a
//! rotation that fails before the commit leaves the old identity working;
//! a rotation killed at any point finishes on the next run.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;
use iotcore_emulator::CertStatus;

fn labels(device: &Device) -> Vec<String> {
    device
        .store()
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label.to_string())
        .collect()
}

async fn rotate_end_to_end(backend: Backend, mode: &str) {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, backend, &format!("MODE = {mode}\n")).await;
    let old = device.identity().unwrap();
    let old_key = device
        .store()
        .info(&old.key_label.parse().unwrap())
        .unwrap()
        .public_key;

    let out = device.run(&["rotate", "--json"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = device.identity().unwrap();
    assert_eq!(result["certificateId"], new.certificate_id.as_str());
    assert_eq!(result["previousCertificateId"], old.certificate_id.as_str());
    assert_ne!(new.certificate_id, old.certificate_id);
    assert_eq!(new.thing_name, old.thing_name, "same thing");

    // Exactly one active certificate, the new one; the old one INACTIVE.
    let active = cloud.active_certificates(&new.thing_name, 1).await;
    assert_eq!(active, vec![new.certificate_id.clone()]);
    let registry = cloud.handle.registry();
    assert_eq!(
        registry.certificate_status(&old.certificate_id).unwrap(),
        Some(CertStatus::Inactive)
    );
    // The old key is gone from the store; the new one signs.
    let keys = device.store().list().unwrap();
    assert!(
        keys.iter().all(|k| k.public_key != old_key),
        "the old key is still there"
    );
    assert_eq!(
        labels(&device),
        vec!["claim".to_string(), new.key_label.clone()]
    );
    assert_ne!(
        new.key_label, old.key_label,
        "the new key took the other slot"
    );
    device.round_trip(&cloud).await.unwrap();
    assert!(!device.state_dir().join("journal.json").exists());

    // And once more: back to the first slot.
    let out = device.run(&["rotate"]).await;
    assert!(out.status.success(), "second rotate: {}", text(&out));
    let third = device.identity().unwrap();
    assert_eq!(third.key_label, old.key_label);
    assert_eq!(
        labels(&device),
        vec!["claim".to_string(), third.key_label.clone()]
    );
    device.round_trip(&cloud).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn file_rotate() {
    rotate_end_to_end(Backend::File, "csr").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_rotate_csr() {
    rotate_end_to_end(Backend::pkcs11("rotate"), "csr").await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_rotate_keys() {
    rotate_end_to_end(Backend::pkcs11("rotate"), "keys").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_rotate_csr() {
    rotate_end_to_end(Backend::tpm(), "csr").await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_rotate_keys() {
    rotate_end_to_end(Backend::tpm(), "keys").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn if_due_leaves_a_young_certificate_alone() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let out = device.run(&["rotate", "--if-due"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not due until"),
        "{}",
        text(&out)
    );
    assert_eq!(device.identity().unwrap(), before);
}

/// A certificate due by the schedule is rotated by `--if-due`. It is due
/// (THRESHOLD 10% of its lifetime, no random delay) within a second of its
/// issuance, and still valid for most of a minute when it is rotated: AWS
/// refuses an expired certificate at the TLS handshake (and so does the
/// emulator), so a rotation must happen before notAfter, as the schedule
/// is there to make sure of. The time is taken from the certificate.
#[tokio::test(flavor = "multi_thread")]
async fn if_due_rotates_a_short_lived_certificate() {
    use prov_agent::provision::rotate::scheduled_at;
    use std::time::SystemTime;
    let cloud = TestCloud::start_with(|c| c.certificate_validity = Duration::from_secs(60)).await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config.push_str("[ROTATION]\nTHRESHOLD = 10%\nRANDOM_DELAY = 0s\n");
    std::fs::write(&device.config, config).unwrap();
    let before = device.identity().unwrap();
    let cert =
        prov_agent::crypto::Certificate::from_pem(&before.certificate_pem, "identity").unwrap();
    let scheduled = scheduled_at(&cert, &device.load_config().rotation);
    let wait = scheduled
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    // Due by the schedule, and far from expired.
    assert!(SystemTime::now() > scheduled);
    assert!(
        SystemTime::now() + Duration::from_secs(20) < cert.not_after(),
        "the certificate is close to its notAfter already: the machine is too slow for this test"
    );
    let out = device.run(&["rotate", "--if-due", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
}

/// `--if-due` honours RANDOM_DELAY like the daemon: past THRESHOLD but
/// before the certificate's own delay it waits; the delay never takes more
/// than half the time left, so the certificate is still rotated in time.
/// The times are taken from the certificate, not from the test's clock, so
/// that a slow enrollment on a loaded machine cannot make it due early.
#[tokio::test(flavor = "multi_thread")]
async fn if_due_waits_for_the_random_delay() {
    use prov_agent::provision::rotate::{due_at, scheduled_at};
    use std::time::SystemTime;
    let cloud = TestCloud::start_with(|c| c.certificate_validity = Duration::from_secs(24)).await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config.push_str("[ROTATION]\nTHRESHOLD = 10%\nRANDOM_DELAY = 1d\n");
    std::fs::write(&device.config, config).unwrap();
    let before = device.identity().unwrap();
    let cert =
        prov_agent::crypto::Certificate::from_pem(&before.certificate_pem, "identity").unwrap();
    let rotation = device.load_config().rotation;
    let threshold = due_at(&cert, rotation.threshold);
    let scheduled = scheduled_at(&cert, &rotation);
    // A day's delay is capped at half the time left after THRESHOLD.
    let half_left = cert.not_after().duration_since(threshold).unwrap() / 2;
    assert!(scheduled > threshold + half_left - Duration::from_secs(2));
    assert!(scheduled <= threshold + half_left);
    let until = |t: SystemTime| {
        t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };

    // Past THRESHOLD, before the delay: not due.
    tokio::time::sleep(until(threshold) + Duration::from_millis(500)).await;
    assert!(SystemTime::now() + Duration::from_secs(2) < scheduled);
    let out = device.run(&["rotate", "--if-due"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not due until"),
        "{}",
        text(&out)
    );
    assert_eq!(device.identity().unwrap(), before);

    // Past the delay: rotated.
    tokio::time::sleep(until(scheduled) + Duration::from_millis(1500)).await;
    let out = device.run(&["rotate", "--if-due"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_before_enroll_says_so() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    let out = device.run(&["rotate"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prov-agent enroll"));
}

/// The shipped device policy, and the same policy with every `things/`
/// topic denied (no verification round trip, no rotation report).
fn device_policy_and_crippled() -> (String, String) {
    let device_policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/device.json"),
    )
    .unwrap();
    let crippled = device_policy
        .replace("topic/things/", "topic/nothing/")
        .replace("topicfilter/things/", "topicfilter/nothing/");
    assert_ne!(crippled, device_policy);
    (device_policy, crippled)
}

/// The rotation template hands the new certificate a policy that denies
/// the verification topic: the rotation fails at verification and rolls
/// back; the device keeps its old, working identity, and the certificate
/// that was activated for nothing is retired.
async fn rollback(backend: Backend) {
    let cloud = TestCloud::start().await;
    let registry = cloud.handle.registry();
    let (_, crippled) = device_policy_and_crippled();
    registry
        .create_policy("device-noverify", &crippled)
        .unwrap();
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/RotationTemplate.json"),
    )
    .unwrap()
    .replace(
        "\"PolicyName\": \"device\"",
        "\"PolicyName\": \"device-noverify\"",
    );
    registry
        .create_template("RotationTemplate", &template, true, None)
        .unwrap();

    let device = Device::enrolled(&cloud, backend, "MAX_RETRIES = 1\n").await;
    let before = device.identity().unwrap();
    let before_key = device
        .store()
        .info(&"device".parse().unwrap())
        .unwrap()
        .public_key;
    let out = device.run(&["rotate"]).await;
    let stderr = failed_with(&out, 3);
    assert!(stderr.contains("refused"), "{}", text(&out));

    assert_eq!(device.identity().unwrap(), before, "the identity changed");
    assert_eq!(
        device
            .store()
            .info(&"device".parse().unwrap())
            .unwrap()
            .public_key,
        before_key
    );
    assert_eq!(
        labels(&device),
        vec!["claim".to_string(), before.key_label.clone()]
    );
    assert!(!device.state_dir().join("journal.json").exists());
    device.round_trip(&cloud).await.unwrap();
    let active = cloud.active_certificates(&before.thing_name, 1).await;
    assert_eq!(active, vec![before.certificate_id.clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_rollback() {
    rollback(Backend::File).await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_rollback() {
    rollback(Backend::pkcs11("rollback")).await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_rollback() {
    rollback(Backend::tpm()).await;
}

/// The certificate published for other programs (`export/current`) belongs
/// to a key that is in the store.
#[cfg(feature = "fault-injection")]
fn assert_published_key_exists(device: &Device, point: &str) {
    let current = device.state_dir().join("export/current/certificate.pem");
    let pem = std::fs::read_to_string(&current)
        .unwrap_or_else(|e| panic!("{point}: {}: {e}", current.display()));
    let cert = prov_agent::crypto::Certificate::from_pem(&pem, "published").unwrap();
    let keys = device.store().list().unwrap();
    assert!(
        keys.iter().any(|k| k.public_key == *cert.public_key()),
        "{point}: the published certificate {} names a key that is not in the store",
        cert.id()
    );
}

/// kill -9 (an abort) at every point of a rotation, then `rotate` again:
/// the device always has one working identity and the registry agrees.
#[cfg(feature = "fault-injection")]
async fn crash_everywhere(make_backend: fn() -> Backend) {
    use prov_agent::provision::fault::POINTS;
    let cloud = TestCloud::start().await;
    for point in POINTS.iter().copied().filter(|p| *p != "key-imported") {
        let device = Device::enrolled(&cloud, make_backend(), "").await;
        let crashed = device
            .run_env(&["rotate"], &[("PROV_AGENT_FAULT", point)])
            .await;
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("dying at {point}")),
            "{point}: {}",
            text(&crashed)
        );
        // Whatever the phase, the device has a working identity now.
        device
            .round_trip(&cloud)
            .await
            .unwrap_or_else(|e| panic!("{point}: no working identity after the crash: {e}"));
        // And other programs never see a certificate whose key is gone: the
        // published one's key is in the store at every crash point.
        assert_published_key_exists(&device, point);
        let done = device.run(&["rotate"]).await;
        assert!(done.status.success(), "{point}: {}", text(&done));
        assert_published_key_exists(&device, point);
        let versions = std::fs::read_dir(device.state_dir().join("export"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("id-"))
            .count();
        assert_eq!(
            versions, 1,
            "{point}: published versions left after the next run"
        );
        let identity = device.identity().unwrap();
        let active = cloud.active_certificates(&identity.thing_name, 1).await;
        assert_eq!(active, vec![identity.certificate_id.clone()], "{point}");
        device
            .round_trip(&cloud)
            .await
            .unwrap_or_else(|e| panic!("{point}: {e}"));
        assert_eq!(
            labels(&device),
            vec!["claim".to_string(), identity.key_label.clone()],
            "{point}"
        );
        assert!(!device.state_dir().join("journal.json").exists(), "{point}");
    }
}

#[cfg(all(feature = "fault-injection", feature = "pkcs11"))]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_crash_everywhere() {
    crash_everywhere(|| Backend::pkcs11("rcrash")).await;
}

#[cfg(all(feature = "fault-injection", feature = "tpm"))]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_crash_everywhere() {
    crash_everywhere(Backend::tpm).await;
}

/// A rotation template that answers another thing than the gateway's (a
/// mistake in the template, or a service that was told to): the rotation
/// is refused before anything is committed, and the gateway keeps its
/// identity.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_that_answers_another_thing_is_refused() {
    let cloud = TestCloud::start().await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/RotationTemplate.json"
    ))
    .unwrap();
    let mut template: serde_json::Value = serde_json::from_str(&body).unwrap();
    template["Resources"]["thing"]["Properties"]["ThingName"] =
        serde_json::Value::String("someone-elses-thing".into());
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    // The rotation template, as the device's policy allows it, now names
    // another thing (and has no hook).
    cloud
        .handle
        .registry()
        .create_template("RotationTemplate", &template.to_string(), true, None)
        .unwrap();
    let out = device.run(&["rotate"]).await;
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("must re-register the current thing"), "{err}");
    assert_eq!(device.identity().unwrap(), before);
    device.round_trip(&cloud).await.unwrap();
}

/// A rotation whose verification fails while the report of the abandoned
/// certificate cannot go out either (here the policy lets neither the new
/// certificate verify nor the current one report): the journal and the
/// pending key it names stay as they were, and once things work again the
/// next run resumes from them and completes the rotation. (Deleting the
/// pending key before the report left a journal whose key was gone, and
/// the next run failed; found with the TPM killed mid-rotation.)
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_whose_report_fails_keeps_what_the_next_run_resumes_from() {
    let cloud = TestCloud::start().await;
    let registry = cloud.handle.registry();
    let (device_policy, crippled) = device_policy_and_crippled();
    let device = Device::enrolled(&cloud, Backend::File, "MAX_RETRIES = 1\n").await;
    let before = device.identity().unwrap();
    registry.create_policy("device", &crippled).unwrap();

    let out = device.run(&["rotate"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(device.identity().unwrap(), before);
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(device.state_dir().join("journal.json")).expect("the journal is kept"),
    )
    .unwrap();
    assert_eq!(journal["state"]["phase"], "REGISTERED", "{journal}");
    let pending = journal["keys"]["pending"].as_str().unwrap().to_string();
    assert!(
        labels(&device).contains(&pending),
        "the pending key {pending} is gone while the journal names it: {}",
        text(&out)
    );

    registry.create_policy("device", &device_policy).unwrap();
    let again = device.run(&["rotate"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let after = device.identity().unwrap();
    assert_ne!(after.certificate_id, before.certificate_id);
    assert_eq!(after.key_label, pending);
    assert!(!device.state_dir().join("journal.json").exists());
    device.round_trip(&cloud).await.unwrap();
}
