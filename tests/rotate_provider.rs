//! A fleet on its own CA: the emulator's certificate provider is the
//! sample `emulator/providers/local_ca.py` (a local CA, 120 s
//! certificates), as AWS routes CreateCertificateFromCsr to a customer's
//! certificate provider Lambda. The agent enrolls in csr mode and rotates
//! on schedule (`rotate --if-due` with THRESHOLD); every certificate it
//! gets chains to the local CA, lives 120 s, and works; the old one is
//! retired as in any rotation.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use common::local_ca::{openssl_verifies, use_local_ca};
use iotcore_emulator::CertStatus;
use prov_agent::crypto::Certificate;

const LIFETIME: Duration = Duration::from_secs(120);

/// Unix seconds of `t`, whole (X.509 times have no fractions).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs()
}

/// Checks a certificate the agent holds: by the local CA (and not the
/// emulator's), signed between `requested` and `answered`, for
/// [`LIFETIME`]. The provider's notAfter is its signing time (whole
/// seconds) + LIFETIME, and that time lies between the two instants, so
/// the bounds hold whatever second boundaries fall in between.
fn assert_from_local_ca(
    cloud: &TestCloud,
    ca_dir: &Path,
    pem: &str,
    requested: SystemTime,
    answered: SystemTime,
) {
    assert!(
        openssl_verifies(ca_dir, &ca_dir.join("ca.pem"), pem),
        "not issued by the local CA"
    );
    let emulator_ca = ca_dir.join("emulator-ca.pem");
    std::fs::write(&emulator_ca, cloud.handle.root_ca_pem()).unwrap();
    assert!(!openssl_verifies(ca_dir, &emulator_ca, pem));
    let cert = Certificate::from_pem(pem, "identity").unwrap();
    let not_after = unix_secs(cert.not_after());
    // 1 s of slack below: the provider's clock reading may round down.
    let earliest = unix_secs(requested) + LIFETIME.as_secs() - 1;
    let latest = unix_secs(answered) + LIFETIME.as_secs();
    assert!(
        (earliest..=latest).contains(&not_after),
        "notAfter {not_after} not within [{earliest}, {latest}]: not {LIFETIME:?} after signing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn if_due_rotates_a_certificate_of_the_customers_ca() {
    use prov_agent::provision::rotate::scheduled_at;
    let cloud = TestCloud::start().await;
    let ca_dir = cloud.dir.path().join("local-ca");
    use_local_ca(&cloud, &ca_dir, LIFETIME);

    let enrolling = SystemTime::now();
    let device = Device::enrolled(&cloud, Backend::File, "MODE = csr\n").await;
    let enrolled = SystemTime::now();
    let before = device.identity().unwrap();
    assert_from_local_ca(
        &cloud,
        &ca_dir,
        &before.certificate_pem,
        enrolling,
        enrolled,
    );

    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config.push_str("[ROTATION]\nTHRESHOLD = 10%\nRANDOM_DELAY = 0s\n");
    std::fs::write(&device.config, config).unwrap();
    let cert = Certificate::from_pem(&before.certificate_pem, "identity").unwrap();
    let scheduled = scheduled_at(&cert, &device.load_config().rotation);
    let wait = scheduled
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    assert!(
        SystemTime::now() + Duration::from_secs(30) < cert.not_after(),
        "the certificate is close to its notAfter already: the machine is too slow for this test"
    );

    let rotating = SystemTime::now();
    let out = device.run(&["rotate", "--if-due", "--json"]).await;
    let rotated = SystemTime::now();
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after = device.identity().unwrap();
    assert_ne!(after.certificate_id, before.certificate_id);
    assert_eq!(result["certificateId"], after.certificate_id.as_str());
    assert_eq!(after.thing_name, before.thing_name);
    assert_from_local_ca(&cloud, &ca_dir, &after.certificate_pem, rotating, rotated);

    // The new certificate is the thing's only ACTIVE one and works; the old
    // one is retired (INACTIVE) as in any rotation.
    let active = cloud.active_certificates(&after.thing_name, 1).await;
    assert_eq!(active, vec![after.certificate_id.clone()]);
    let registry = cloud.handle.registry();
    assert_eq!(
        registry.certificate_status(&before.certificate_id).unwrap(),
        Some(CertStatus::Inactive)
    );
    device.round_trip(&cloud).await.unwrap();
    // The local CA is registered nowhere: the certificates connect as
    // registered by CreateCertificateFromCsr, as with AWS's providers.
    assert!(registry.ca_certificates().unwrap().is_empty());
}
