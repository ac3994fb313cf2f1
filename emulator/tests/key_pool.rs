//! CreateKeysAndCertificate with the RSA key pool: every answer carries a
//! key no other answer carried, and its certificate is for that key, both
//! while the pool has keys and once it is empty.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use iotcore_emulator::ResponseFault;
use serde_json::Value;

/// SubjectPublicKeyInfo DER of a certificate.
fn cert_spki(pem_str: &str) -> Vec<u8> {
    let der = pem::parse(pem_str).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().raw.to_vec()
}

/// SubjectPublicKeyInfo DER of the public half of a PKCS#1 RSA key.
fn rsa_key_spki(key_pem: &str) -> Vec<u8> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::EncodePublicKey;
    rsa::RsaPrivateKey::from_pkcs1_pem(key_pem)
        .unwrap()
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

async fn wait_for_pool(emu: &TestEmulator, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while emu.rsa_keys_pooled() < n {
        assert!(Instant::now() < deadline, "the pool never held {n} keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One CreateKeysAndCertificate: (certificate PEM, private key PEM).
async fn create_keys(c: &mut Client) -> (String, String) {
    c.publish(KEYS_TOPIC, Vec::new()).await;
    let (t, body) = c.next_message(WAIT).await.expect("no answer");
    assert_eq!(t, format!("{KEYS_TOPIC}/accepted"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    (
        body["certificatePem"].as_str().unwrap().to_owned(),
        body["privateKey"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn pooled_and_unpooled_keys_are_distinct_and_match_their_certificates() {
    let emu = start_with(|c| c.rsa_key_pool = 3).await;
    wait_for_pool(&emu, 3).await;
    let mut c = claim_client(&emu, "claim-pool", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;
    // Three from the full pool, then more than it holds: the rest are made
    // in their requests or by the refill thread, whichever comes first.
    let mut keys = HashSet::new();
    for i in 0..6 {
        let started = Instant::now();
        let (cert, key) = create_keys(&mut c).await;
        eprintln!("request {i}: {:?}", started.elapsed());
        let spki = rsa_key_spki(&key);
        assert_eq!(
            cert_spki(&cert),
            spki,
            "request {i}: certificate not for the key"
        );
        assert!(keys.insert(spki), "request {i}: a key handed out twice");
    }
    emu.handle.shutdown().await;
}

#[tokio::test]
async fn no_pool_still_answers() {
    let emu = start_with(|c| c.rsa_key_pool = 0).await;
    assert_eq!(emu.rsa_keys_pooled(), 0);
    let mut c = claim_client(&emu, "claim-nopool", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;
    let (a_cert, a_key) = create_keys(&mut c).await;
    let (b_cert, b_key) = create_keys(&mut c).await;
    assert_eq!(cert_spki(&a_cert), rsa_key_spki(&a_key));
    assert_eq!(cert_spki(&b_cert), rsa_key_spki(&b_key));
    assert_ne!(rsa_key_spki(&a_key), rsa_key_spki(&b_key));
}

#[tokio::test]
async fn another_key_fault_takes_its_second_key_from_the_pool() {
    let emu = start_with(|c| {
        c.rsa_key_pool = 4;
        c.response_fault = Some(ResponseFault::CertificateForAnotherKey);
    })
    .await;
    wait_for_pool(&emu, 4).await;
    let mut c = claim_client(&emu, "claim-pool-fault", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let (cert, key) = create_keys(&mut c).await;
        let (cert_key, key) = (cert_spki(&cert), rsa_key_spki(&key));
        assert_ne!(cert_key, key, "the fault certifies another key");
        // Neither key was used by another answer.
        assert!(seen.insert(cert_key));
        assert!(seen.insert(key));
    }
}
