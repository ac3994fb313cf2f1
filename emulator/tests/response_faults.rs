//! Test-only response faults of the provisioning APIs (`ResponseFault`):
//! each does what it says, over real TLS and MQTT 3.1.1.

mod common;

use std::time::Duration;

use common::*;
use iotcore_emulator::{CertStatus, ResponseFault};
use rcgen::PublicKeyData;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CSR_CBOR_TOPIC: &str = "$aws/certificates/create-from-csr/cbor";

fn der(pem_str: &str) -> Vec<u8> {
    pem::parse(pem_str).unwrap().into_contents()
}

/// SubjectPublicKeyInfo DER of a certificate.
fn cert_spki(pem_str: &str) -> Vec<u8> {
    let der = der(pem_str);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().raw.to_vec()
}

/// SubjectPublicKeyInfo DER of a PKCS#8 EC key (what `p256_csr` makes).
fn ec_key_spki(key_pem: &str) -> Vec<u8> {
    rcgen::KeyPair::from_pem(key_pem)
        .unwrap()
        .subject_public_key_info()
}

/// SubjectPublicKeyInfo DER of a PKCS#1 RSA key (what CreateKeysAndCertificate returns).
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

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn pending_count(emu: &TestEmulator) -> usize {
    emu.registry()
        .certificates()
        .unwrap()
        .iter()
        .filter(|c| c.status == CertStatus::PendingActivation)
        .count()
}

/// Publishes and returns the raw response (topic, payload).
async fn raw_call(c: &mut Client, topic: &str, payload: Vec<u8>) -> (String, Vec<u8>) {
    c.publish(topic, payload).await;
    c.next_message(WAIT).await.expect("no response")
}

fn csr_request() -> (String, Vec<u8>) {
    let (key, csr) = p256_csr();
    (
        key,
        serde_json::to_vec(&json!({"certificateSigningRequest": csr})).unwrap(),
    )
}

#[tokio::test]
async fn malformed_json_answers_do_not_parse_and_register_thing_is_untouched() {
    let emu = start_with(|c| c.response_fault = Some(ResponseFault::MalformedJson)).await;
    let mut c = claim_client(&emu, "claim-malformed", "prod").await;
    c.subscribe_responses(CSR_CBOR_TOPIC).await;
    c.subscribe_responses(KEYS_TOPIC).await;

    // CreateCertificateFromCsr, JSON: accepted topic, body is not JSON.
    let (_, req) = csr_request();
    let (t, body) = raw_call(&mut c, CSR_TOPIC, req).await;
    assert_eq!(t, format!("{CSR_TOPIC}/accepted"));
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    // The certificate was issued and registered all the same.
    assert_eq!(pending_count(&emu), 1);

    // CreateCertificateFromCsr, CBOR: body is not CBOR.
    let (_, csr) = p256_csr();
    let mut req = Vec::new();
    ciborium::into_writer(&json!({"certificateSigningRequest": csr}), &mut req).unwrap();
    let (t, body) = raw_call(&mut c, CSR_CBOR_TOPIC, req).await;
    assert_eq!(t, format!("{CSR_CBOR_TOPIC}/accepted"));
    assert!(ciborium::from_reader::<ciborium::Value, _>(body.as_slice()).is_err());

    // CreateKeysAndCertificate, JSON.
    let (t, body) = raw_call(&mut c, KEYS_TOPIC, b"{}".to_vec()).await;
    assert_eq!(t, format!("{KEYS_TOPIC}/accepted"));
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    // Rejections are not altered.
    let (t, body) = raw_call(&mut c, CSR_TOPIC, b"{}".to_vec()).await;
    assert_eq!(t, format!("{CSR_TOPIC}/rejected"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["errorCode"], "InvalidRequestException");

    // RegisterThing's answer is not altered.
    emu.set_response_fault(None);
    let (_, token) = create_from_csr(&mut c).await;
    emu.set_response_fault(Some(ResponseFault::MalformedJson));
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "MJ1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(body["thingName"], "dev-MJ1");
}

#[tokio::test]
async fn certificate_for_another_key_is_registered_but_not_for_the_requested_key() {
    let emu =
        start_with(|c| c.response_fault = Some(ResponseFault::CertificateForAnotherKey)).await;
    let mut c = claim_client(&emu, "claim-otherkey", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;

    // CSR: a valid certificate, registered under its true id, same key kind
    // and subject, but not the CSR's key.
    let (key, req) = csr_request();
    let (t, body) = raw_call(&mut c, CSR_TOPIC, req).await;
    assert_eq!(t, format!("{CSR_TOPIC}/accepted"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    let pem_str = body["certificatePem"].as_str().unwrap();
    let id = body["certificateId"].as_str().unwrap();
    assert_eq!(id, sha256_hex(&der(pem_str)));
    let rec = emu.registry().certificate(id).unwrap().unwrap();
    assert_eq!(rec.certificate_pem, pem_str);
    assert_eq!(rec.status, CertStatus::PendingActivation);
    assert_ne!(cert_spki(pem_str), ec_key_spki(&key));
    let d = der(pem_str);
    let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
    assert!(cert.subject().to_string().contains("CN=device"));
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "still an EC key"
    );
    // The token is good for that certificate.
    let (ok, reg) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": body["certificateOwnershipToken"], "parameters": {"SerialNumber": "OK1"}}),
        )
        .await;
    assert!(ok, "{reg}");
    assert_eq!(
        emu.registry().certificate_status(id).unwrap(),
        Some(CertStatus::Active)
    );

    // CreateKeysAndCertificate: the certificate is not for the returned key.
    let (t, body) = raw_call(&mut c, KEYS_TOPIC, Vec::new()).await;
    assert_eq!(t, format!("{KEYS_TOPIC}/accepted"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    let pem_str = body["certificatePem"].as_str().unwrap();
    let key = body["privateKey"].as_str().unwrap();
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY"));
    assert_ne!(cert_spki(pem_str), rsa_key_spki(key));
    assert!(emu
        .registry()
        .certificate(body["certificateId"].as_str().unwrap())
        .unwrap()
        .is_some());

    // Control: without the fault the keys match.
    emu.set_response_fault(None);
    let (key, req) = csr_request();
    let (_, body) = raw_call(&mut c, CSR_TOPIC, req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        cert_spki(body["certificatePem"].as_str().unwrap()),
        ec_key_spki(&key)
    );
    let (_, body) = raw_call(&mut c, KEYS_TOPIC, Vec::new()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        cert_spki(body["certificatePem"].as_str().unwrap()),
        rsa_key_spki(body["privateKey"].as_str().unwrap())
    );
}

#[tokio::test]
async fn wrong_certificate_id_is_not_the_hash_of_the_certificate() {
    let emu = start_with(|c| c.response_fault = Some(ResponseFault::WrongCertificateId)).await;
    let mut c = claim_client(&emu, "claim-wrongid", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;

    for (topic, req) in [(CSR_TOPIC, csr_request().1), (KEYS_TOPIC, Vec::new())] {
        let (t, body) = raw_call(&mut c, topic, req).await;
        assert_eq!(t, format!("{topic}/accepted"));
        let body: Value = serde_json::from_slice(&body).unwrap();
        let id = body["certificateId"].as_str().unwrap();
        let true_id = sha256_hex(&der(body["certificatePem"].as_str().unwrap()));
        // Looks like an id, is not this certificate's.
        assert_eq!(id.len(), 64);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, true_id);
        assert!(emu.registry().certificate(id).unwrap().is_none());
        assert!(emu.registry().certificate(&true_id).unwrap().is_some());
    }
}

#[tokio::test]
async fn oversized_payload_arrives_over_128_kib_and_a_128_kib_client_drops_it() {
    let emu = start_with(|c| c.response_fault = Some(ResponseFault::OversizedPayload)).await;
    // A client that accepts 256 KiB gets the whole answer.
    let mut c = claim_client(&emu, "claim-big", "prod").await;
    c.subscribe_responses(KEYS_TOPIC).await;
    for (topic, req) in [(CSR_TOPIC, csr_request().1), (KEYS_TOPIC, Vec::new())] {
        let (t, body) = raw_call(&mut c, topic, req).await;
        assert_eq!(t, format!("{topic}/accepted"));
        assert!(body.len() > 128 * 1024, "{} bytes", body.len());
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body["certificatePem"].as_str().is_some());
    }

    // A client whose packet limit is AWS's 128 KiB cannot take it.
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut small = connect_tls_max_packet(
        emu.addr(),
        client_tls(&emu.root_ca_pem(), Some(&claim), false),
        "claim-small",
        128 * 1024,
    )
    .await
    .unwrap();
    small.subscribe_responses(CSR_TOPIC).await;
    small.publish(CSR_TOPIC, csr_request().1).await;
    assert!(
        small.closed_within(WAIT).await,
        "a 128 KiB client survived an oversized answer"
    );
    // rumqttc: "Payload size limit exceeded" (the server sent it anyway).
    let error = small.error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("size"), "{error}");
}

#[tokio::test]
async fn drop_responses_processes_the_first_request_without_answering() {
    let emu = start_with(|c| c.response_fault = Some(ResponseFault::DropResponses(1))).await;
    let mut c = claim_client(&emu, "claim-drop", "prod").await;

    c.publish(CSR_TOPIC, csr_request().1).await;
    assert_eq!(
        c.next_message(Duration::from_secs(2)).await,
        None,
        "the first answer was sent"
    );
    // The side effect happened: a certificate was issued and registered.
    assert_eq!(pending_count(&emu), 1);

    // The second one is answered.
    let (device, _) = create_from_csr(&mut c).await;
    assert_eq!(pending_count(&emu), 2);
    assert!(emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn throttle_first_two_requests_of_any_api_set_while_running() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-throttle", "prod").await;
    emu.set_response_fault(Some(ResponseFault::ThrottleFirst(2)));
    assert_eq!(emu.response_fault(), Some(ResponseFault::ThrottleFirst(2)));

    // RegisterThing with a bogus token: throttled before the token is looked at.
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": "bogus", "parameters": {"SerialNumber": "T1"}}),
        )
        .await;
    assert!(!ok);
    assert_eq!(body["statusCode"], 429, "{body}");
    assert_eq!(body["errorCode"], "ThrottlingException", "{body}");

    // CreateCertificateFromCsr: throttled, nothing issued.
    let (ok, body) = c
        .call(
            CSR_TOPIC,
            &json!({"certificateSigningRequest": p256_csr().1}),
        )
        .await;
    assert!(!ok);
    assert_eq!(body["errorCode"], "ThrottlingException", "{body}");
    assert_eq!(pending_count(&emu), 0);

    // The third request goes through, and so does what follows.
    let (_, token) = create_from_csr(&mut c).await;
    assert_eq!(pending_count(&emu), 1);
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "T1"}}),
        )
        .await;
    assert!(ok, "{body}");

    // Setting the fault again restarts its count.
    emu.set_response_fault(Some(ResponseFault::ThrottleFirst(1)));
    let (ok, body) = c
        .call(
            CSR_TOPIC,
            &json!({"certificateSigningRequest": p256_csr().1}),
        )
        .await;
    assert!(!ok);
    assert_eq!(body["errorCode"], "ThrottlingException", "{body}");
    create_from_csr(&mut c).await;
}

#[tokio::test]
async fn thing_name_with_alters_only_the_register_thing_answer() {
    let emu = start_with(|c| c.response_fault = Some(ResponseFault::ThingNameWith('#'))).await;
    let mut c = claim_client(&emu, "claim-thing-name", "prod").await;
    // The certificate answers are as always.
    let (_, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "TN1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(body["thingName"], "dev-TN1#");
    // The thing is registered under its true name.
    assert!(emu.registry().thing("dev-TN1").unwrap().is_some());
    assert!(emu.registry().thing("dev-TN1#").unwrap().is_none());
    // Rejections are not altered.
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": "bogus", "parameters": {"SerialNumber": "TN2"}}),
        )
        .await;
    assert!(!ok, "{body}");
    assert!(body.get("thingName").is_none(), "{body}");
}

#[test]
fn response_fault_parses_and_prints_its_cli_form() {
    for f in [
        ResponseFault::MalformedJson,
        ResponseFault::CertificateForAnotherKey,
        ResponseFault::WrongCertificateId,
        ResponseFault::OversizedPayload,
        ResponseFault::DropResponses(3),
        ResponseFault::ThrottleFirst(2),
        ResponseFault::ThingNameWith('+'),
        ResponseFault::ThingNameWith('#'),
        ResponseFault::ThingNameWith('/'),
    ] {
        assert_eq!(f.to_string().parse::<ResponseFault>(), Ok(f));
    }
    assert!("drop-responses:x".parse::<ResponseFault>().is_err());
    assert!("thing-name-with:".parse::<ResponseFault>().is_err());
    assert!("thing-name-with:ab".parse::<ResponseFault>().is_err());
    assert!("nonsense".parse::<ResponseFault>().is_err());
}
