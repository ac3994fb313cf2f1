//! Validity of the certificates the provisioning APIs issue
//! (`EmulatorConfig::certificate_validity`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use iotcore_emulator::AWS_NOT_AFTER_UNIX;
use serde_json::Value;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// (notBefore, notAfter) in Unix seconds.
fn validity(pem_str: &str) -> (i64, i64) {
    let der = pem::parse(pem_str).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

#[tokio::test]
async fn short_validity_ends_after_the_set_seconds_with_a_tenth_for_clock_skew() {
    let emu = start_with(|c| c.certificate_validity = Duration::from_secs(30)).await;
    let mut c = claim_client(&emu, "claim-short", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;

    let issued_at = now();
    let (device, _) = create_from_csr(&mut c).await;
    let (nb, na) = validity(&device.certificate_pem);
    assert_eq!(na - nb, 33, "30 s plus 3 s (a tenth) before issuance");
    assert!(
        (na - (issued_at + 30)).abs() <= 2,
        "notAfter {na}, now {issued_at}"
    );

    // Between the request and the answer (an RSA key made in the request
    // can take seconds on a loaded machine).
    let asked = now();
    c.publish(KEYS_TOPIC, Vec::new()).await;
    let (_, body) = c.next_message(WAIT).await.unwrap();
    let answered = now();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let (nb, na) = validity(body["certificatePem"].as_str().unwrap());
    assert_eq!(na - nb, 33);
    assert!(
        na >= asked + 30 - 1 && na <= answered + 30 + 1,
        "notAfter {na}, asked {asked}, answered {answered}"
    );

    // The claim certificate is not a provisioning API's: it keeps the long default.
    let claim = emu.create_claim_credential("claim").unwrap();
    let (_, na) = validity(&claim.certificate_pem);
    assert!(na > AWS_NOT_AFTER_UNIX);
}

#[tokio::test]
async fn default_validity_ends_on_aws_date_and_starts_a_minute_early() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-default", "prod").await;
    let issued_at = now();
    let (device, _) = create_from_csr(&mut c).await;
    let (nb, na) = validity(&device.certificate_pem);
    assert_eq!(na, AWS_NOT_AFTER_UNIX, "2049-12-31T23:59:59Z");
    assert!((nb - (issued_at - 60)).abs() <= 2, "notBefore {nb}");
}

#[tokio::test]
async fn long_validity_is_capped_at_aws_date() {
    let emu = start_with(|c| c.certificate_validity = Duration::from_secs(200 * 365 * 86400)).await;
    let mut c = claim_client(&emu, "claim-long", "prod").await;
    let (device, _) = create_from_csr(&mut c).await;
    assert_eq!(validity(&device.certificate_pem).1, AWS_NOT_AFTER_UNIX);
}
