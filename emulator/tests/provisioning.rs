//! Fleet Provisioning APIs over real TLS and MQTT 3.1.1: accepted and
//! rejected paths, JSON and CBOR.

mod common;

use std::time::Duration;

use common::*;
use iotcore_emulator::{CertStatus, Rate, TokenReuse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn assert_rejected(body: &Value, status: u64, code: &str) {
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["errorCode"], code, "{body}");
    assert!(
        body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn csr_then_register_thing_activates_certificate_and_device_connects() {
    let emu = start().await;
    let mut claim = claim_client(&emu, "claim-1", "prod").await;
    let (device, token) = create_from_csr(&mut claim).await;

    // Certificate id is the SHA-256 of the DER; new certificates wait for RegisterThing.
    let der = pem::parse(&device.certificate_pem).unwrap().into_contents();
    assert_eq!(device.certificate_id, hex::encode(Sha256::digest(&der)));
    let rec = emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CertStatus::PendingActivation);
    // PENDING_ACTIVATION cannot connect yet.
    assert!(connect(&emu, &device, "dev-SN1").await.is_err());

    let (ok, body) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "SN1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(
        body,
        json!({"thingName": "dev-SN1", "deviceConfiguration": {"mode": "prod", "model": "gw-1"}})
    );

    let thing = emu.registry().thing("dev-SN1").unwrap().unwrap();
    assert_eq!(
        thing.attributes.get("serial").map(String::as_str),
        Some("SN1")
    );
    assert_eq!(thing.certificates, vec![device.certificate_id.clone()]);
    let rec = emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CertStatus::Active);
    assert_eq!(rec.policies, vec!["device".to_owned()]);

    // The device connects with its thing name and may use its own topics only.
    let mut dev = connect(&emu, &device, "dev-SN1").await.unwrap();
    let codes = dev
        .subscribe(&["devices/dev-SN1/cmd", "devices/other/cmd"])
        .await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
    assert_eq!(codes[1], rumqttc::SubscribeReasonCode::Failure);
    dev.publish("devices/dev-SN1/cmd", "hello").await;
    let (t, p) = dev.next_message(WAIT).await.unwrap();
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("devices/dev-SN1/cmd", b"hello".as_slice())
    );
    // Another client id than its thing name is refused.
    assert!(connect(&emu, &device, "someone-else")
        .await
        .unwrap_err()
        .contains("NotAuthorized"));
}

#[tokio::test]
async fn create_keys_and_certificate_json_accepts_empty_and_braces() {
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut c = connect(&emu, &claim, "claim-keys").await.unwrap();
    c.subscribe_responses(KEYS_TOPIC).await;
    for payload in [Vec::new(), b"{}".to_vec()] {
        c.publish(KEYS_TOPIC, payload).await;
        let (t, body) = c.next_message(WAIT).await.unwrap();
        assert_eq!(t, format!("{KEYS_TOPIC}/accepted"));
        let body: Value = serde_json::from_slice(&body).unwrap();
        let key = body["privateKey"].as_str().unwrap();
        assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY"));
        // The key matches the certificate: rustls accepts the pair for client auth
        // once the certificate is active.
        let id = body["certificateId"].as_str().unwrap();
        assert!(body["certificateOwnershipToken"].as_str().is_some());
        emu.registry()
            .set_certificate_status(id, CertStatus::Active)
            .unwrap();
        emu.registry().attach_policy("pubsub", id).unwrap();
        let cred = iotcore_emulator::Credential {
            certificate_id: id.to_owned(),
            certificate_pem: body["certificatePem"].as_str().unwrap().to_owned(),
            private_key_pem: key.to_owned(),
        };
        connect(&emu, &cred, &format!("rsa-{}", &id[..8]))
            .await
            .unwrap();
    }
    // A body that is not an object is rejected.
    c.publish(KEYS_TOPIC, "[1]").await;
    let (t, body) = c.next_message(WAIT).await.unwrap();
    assert_eq!(t, format!("{KEYS_TOPIC}/rejected"));
    assert_rejected(
        &serde_json::from_slice(&body).unwrap(),
        400,
        "InvalidRequestException",
    );
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn uncbor(b: &[u8]) -> Value {
    ciborium::from_reader(b).unwrap()
}

#[tokio::test]
async fn cbor_csr_keys_and_register_thing() {
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut c = connect(&emu, &claim, "claim-cbor").await.unwrap();
    let csr_topic = "$aws/certificates/create-from-csr/cbor";
    let keys_topic = "$aws/certificates/create/cbor";
    let reg_topic = "$aws/provisioning-templates/prod/provision/cbor";
    for t in [csr_topic, keys_topic, reg_topic] {
        c.subscribe_responses(t).await;
    }

    // CreateKeysAndCertificate with an empty CBOR map.
    c.publish(keys_topic, cbor(&json!({}))).await;
    let (t, body) = c.next_message(WAIT).await.unwrap();
    assert_eq!(t, format!("{keys_topic}/accepted"));
    assert!(uncbor(&body)["privateKey"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));

    let (_key, csr) = p256_csr();
    c.publish(csr_topic, cbor(&json!({"certificateSigningRequest": csr})))
        .await;
    let (t, body) = c.next_message(WAIT).await.unwrap();
    assert_eq!(t, format!("{csr_topic}/accepted"));
    let body = uncbor(&body);
    let token = body["certificateOwnershipToken"].as_str().unwrap();

    c.publish(
        reg_topic,
        cbor(&json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "C1"}})),
    )
    .await;
    let (t, body) = c.next_message(WAIT).await.unwrap();
    assert_eq!(t, format!("{reg_topic}/accepted"));
    assert_eq!(uncbor(&body)["thingName"], "dev-C1");

    // Rejected in CBOR too: not a CBOR map.
    c.publish(csr_topic, vec![0xff, 0x00]).await;
    let (t, body) = c.next_message(WAIT).await.unwrap();
    assert_eq!(t, format!("{csr_topic}/rejected"));
    assert_rejected(&uncbor(&body), 400, "InvalidRequestException");
}

#[tokio::test]
async fn csr_rejections_missing_field_and_bad_signature() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-bad", "prod").await;
    let (ok, body) = c.call(CSR_TOPIC, &json!({})).await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");

    // Flip a bit in the signature of a valid CSR.
    let (_, csr) = p256_csr();
    let mut der = pem::parse(&csr).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let bad = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let (ok, body) = c
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": bad}))
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");
    assert!(
        body["errorMessage"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    let (ok, body) = c
        .call(
            CSR_TOPIC,
            &json!({"certificateSigningRequest": "not a csr"}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");
    // Nothing was registered by the failures.
    assert_eq!(emu.registry().certificates().unwrap().len(), 1);
    // And the connection still works.
    let (_, _) = create_from_csr(&mut c).await;
}

#[tokio::test]
async fn csr_key_types_p384_and_rsa2048_accepted() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-keys", "prod").await;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let rsa_key = {
        use rsa::pkcs8::EncodePrivateKey;
        let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = k.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    };
    for key in [p384, rsa_key] {
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (ok, body) = c
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
            .await;
        assert!(ok, "{body}");
        // The issued certificate carries the CSR's public key.
        let der = pem::parse(body["certificatePem"].as_str().unwrap())
            .unwrap()
            .into_contents();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }
}

#[tokio::test]
async fn register_thing_rejections() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-reg", "prod").await;
    let (_, token) = create_from_csr(&mut c).await;
    let (other, other_token) = create_from_csr(&mut c).await;

    // Missing template.
    let missing = register_topic("nope");
    c.subscribe_responses(&missing).await;
    let (ok, body) = c
        .call(&missing, &json!({"certificateOwnershipToken": token}))
        .await;
    assert!(!ok);
    assert_rejected(&body, 404, "ResourceNotFoundException");

    // Disabled template.
    emu.registry().set_template_enabled("prod", false).unwrap();
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "X"}}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 404, "ResourceNotFoundException");
    emu.registry().set_template_enabled("prod", true).unwrap();

    // Missing token, forged token, token re-bound to another certificate.
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"parameters": {"SerialNumber": "X"}}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");
    let (ok, body) = c
        .call(&register_topic("prod"), &json!({"certificateOwnershipToken": "forged.token", "parameters": {"SerialNumber": "X"}}))
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (claims, tag) = token.split_once('.').unwrap();
    let claims = String::from_utf8(b64.decode(claims).unwrap()).unwrap();
    let expiry = claims.split_once('.').unwrap().1;
    let rebound = format!(
        "{}.{tag}",
        b64.encode(format!("{}.{expiry}", other.certificate_id))
    );
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": rebound, "parameters": {"SerialNumber": "X"}}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
    assert_eq!(
        emu.registry()
            .certificate(&other.certificate_id)
            .unwrap()
            .unwrap()
            .status,
        CertStatus::PendingActivation
    );

    // Parameters must be strings; a required parameter must be given.
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": other_token, "parameters": {"SerialNumber": 5}}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": other_token}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");

    // A thing name AWS would refuse.
    let (ok, body) = c
        .call(&register_topic("prod"), &json!({"certificateOwnershipToken": other_token, "parameters": {"SerialNumber": "a b"}}))
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidRequestException");

    // OverrideSettings FAIL on an existing thing with other attributes.
    let (ok, _) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "S9"}}),
        )
        .await;
    assert!(ok);
    let strict = register_topic("strict");
    c.subscribe_responses(&strict).await;
    let (ok, body) = c
        .call(&strict, &json!({"certificateOwnershipToken": other_token, "parameters": {"SerialNumber": "S9"}}))
        .await;
    assert!(!ok);
    assert_eq!(body["errorCode"], "ResourceConflictsException", "{body}");
}

#[tokio::test]
async fn token_reuse_rejected_by_default() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-reuse", "prod").await;
    let (_, token) = create_from_csr(&mut c).await;
    let req = json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "R1"}});
    assert!(c.call(&register_topic("prod"), &req).await.0);
    let (ok, body) = c.call(&register_topic("prod"), &req).await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
}

#[tokio::test]
async fn token_reuse_replay_setting_answers_again() {
    let emu = start_with(|c| c.token_reuse = TokenReuse::Replay).await;
    let mut c = claim_client(&emu, "claim-replay", "prod").await;
    let (_, token) = create_from_csr(&mut c).await;
    let req = json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "R2"}});
    let first = c.call(&register_topic("prod"), &req).await;
    let second = c.call(&register_topic("prod"), &req).await;
    assert!(first.0 && second.0);
    assert_eq!(first.1, second.1);
    assert_eq!(emu.registry().things().unwrap().len(), 1);
}

/// A token activates only the certificate it came with while that is still
/// PENDING_ACTIVATION: not once revoked, deactivated or activated by other
/// means. Nothing is written: the status stays, no thing appears.
#[tokio::test]
async fn token_of_a_certificate_no_longer_pending_is_rejected() {
    let emu = start().await;
    let mut c = claim_client(&emu, "claim-not-pending", "prod").await;
    for status in [
        CertStatus::Revoked,
        CertStatus::Inactive,
        CertStatus::Active,
    ] {
        let (cred, token) = create_from_csr(&mut c).await;
        emu.registry()
            .set_certificate_status(&cred.certificate_id, status)
            .unwrap();
        let serial = format!("NP-{}", status.as_str());
        let (ok, body) = c
            .call(
                &register_topic("prod"),
                &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}),
            )
            .await;
        assert!(!ok, "{status:?}: {body}");
        assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
        assert!(
            body["errorMessage"]
                .as_str()
                .unwrap()
                .contains(status.as_str()),
            "{body}"
        );
        let rec = emu
            .registry()
            .certificate(&cred.certificate_id)
            .unwrap()
            .unwrap();
        assert_eq!(rec.status, status);
        assert!(!rec.registered);
        assert!(rec.things.is_empty() && rec.policies.is_empty(), "{rec:?}");
        assert!(emu
            .registry()
            .thing(&format!("dev-{serial}"))
            .unwrap()
            .is_none());
    }
}

/// Replaying a used token repeats the registration, but never brings back
/// a certificate revoked since.
#[tokio::test]
async fn token_replay_does_not_reactivate_a_revoked_certificate() {
    let emu = start_with(|c| c.token_reuse = TokenReuse::Replay).await;
    let mut c = claim_client(&emu, "claim-replay-revoked", "prod").await;
    let (cred, token) = create_from_csr(&mut c).await;
    let req = json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "RV1"}});
    assert!(c.call(&register_topic("prod"), &req).await.0);
    emu.registry()
        .set_certificate_status(&cred.certificate_id, CertStatus::Revoked)
        .unwrap();
    let (ok, body) = c.call(&register_topic("prod"), &req).await;
    assert!(!ok, "{body}");
    assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
    let rec = emu
        .registry()
        .certificate(&cred.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CertStatus::Revoked);
}

#[tokio::test]
async fn expired_token_rejected_and_unregistered_certificate_deleted() {
    let emu = start_with(|c| {
        c.token_ttl = Duration::from_secs(1);
        c.poll_interval = Duration::from_millis(200);
    })
    .await;
    let mut c = claim_client(&emu, "claim-exp", "prod").await;
    let (cred, token) = create_from_csr(&mut c).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "E"}}),
        )
        .await;
    assert!(!ok);
    assert_rejected(&body, 400, "InvalidCertificateOwnershipToken");
    assert!(body["errorMessage"].as_str().unwrap().contains("expired"));
    assert!(emu
        .registry()
        .certificate(&cred.certificate_id)
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn response_goes_only_to_the_requester() {
    let emu = start().await;
    let mut a = claim_client(&emu, "claim-a", "prod").await;
    let mut b = claim_client(&emu, "claim-b", "prod").await;
    let (_, _) = create_from_csr(&mut a).await;
    assert!(
        b.next_message(Duration::from_secs(1)).await.is_none(),
        "b saw a's response"
    );
    let (_, _) = create_from_csr(&mut b).await;
    assert!(
        a.next_message(Duration::from_secs(1)).await.is_none(),
        "a saw b's response"
    );
}

#[tokio::test]
async fn throttling_answers_throttling_exception() {
    let emu = start_with(|c| c.throttle.create_certificate_from_csr = Rate::new(0.01, 1)).await;
    let mut c = claim_client(&emu, "claim-thr", "prod").await;
    let _ = create_from_csr(&mut c).await;
    let (_, csr) = p256_csr();
    let (ok, body) = c
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(!ok);
    assert_rejected(&body, 429, "ThrottlingException");
}

fn hook_script(dir: &std::path::Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn pre_provisioning_hook_allow_refuse_timeout() {
    let emu = start_with(|c| c.hook_timeout = Duration::from_secs(1)).await;
    let body = std::fs::read_to_string(fixtures().join("templates/prod.json")).unwrap();
    let dir = emu.dir.path();
    // The hook sees the request and overrides a parameter.
    let allow = hook_script(
        dir,
        "allow.sh",
        &format!("cat > {}/hook-input.json; echo '{{\"allowProvisioning\": true, \"parameterOverrides\": {{\"Model\": \"hooked\"}}}}'", dir.display()),
    );
    let refuse = hook_script(
        dir,
        "refuse.sh",
        "cat >/dev/null; echo '{\"allowProvisioning\": false}'",
    );
    let slow = hook_script(
        dir,
        "slow.sh",
        "sleep 5; echo '{\"allowProvisioning\": true}'",
    );
    for (name, hook) in [("hallow", &allow), ("hrefuse", &refuse), ("hslow", &slow)] {
        emu.registry()
            .create_template(name, &body, true, Some(hook))
            .unwrap();
    }
    let mut c = claim_client(&emu, "claim-hook", "hallow").await;
    c.subscribe_responses(&register_topic("hrefuse")).await;
    c.subscribe_responses(&register_topic("hslow")).await;

    let (cred, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &register_topic("hallow"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "H1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(body["deviceConfiguration"]["model"], "hooked");
    let input: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hook-input.json")).unwrap())
            .unwrap();
    assert_eq!(input["certificateId"], cred.certificate_id.as_str());
    assert_eq!(input["parameters"]["SerialNumber"], "H1");
    assert_eq!(input["clientId"], "claim-hook");

    for (template, serial) in [("hrefuse", "H2"), ("hslow", "H3")] {
        let (_, token) = create_from_csr(&mut c).await;
        let started = std::time::Instant::now();
        let (ok, body) = c
            .call(&register_topic(template), &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}))
            .await;
        assert!(!ok);
        assert_rejected(&body, 403, "AccessDenied");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(emu
            .registry()
            .thing(&format!("dev-{serial}"))
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn rotation_by_reprovisioning_attaches_new_certificate_to_existing_thing() {
    let emu = start().await;
    let mut claim = claim_client(&emu, "claim-rot", "prod").await;
    let (old, token) = create_from_csr(&mut claim).await;
    let (ok, _) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "ROT1"}}),
        )
        .await;
    assert!(ok);
    emu.registry()
        .attach_policy("rotation", &old.certificate_id)
        .unwrap();

    // Connected with its production certificate, the device provisions again.
    let mut dev = connect(&emu, &old, "dev-ROT1").await.unwrap();
    dev.subscribe_responses(CSR_TOPIC).await;
    dev.subscribe_responses(&register_topic("rotate")).await;
    let (new, token) = create_from_csr(&mut dev).await;
    let (ok, body) = dev
        .call(
            &register_topic("rotate"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "ROT1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(
        body,
        json!({"thingName": "dev-ROT1", "deviceConfiguration": {"rotated": "true"}})
    );
    let thing = emu.registry().thing("dev-ROT1").unwrap().unwrap();
    let mut expected = vec![old.certificate_id.clone(), new.certificate_id.clone()];
    expected.sort();
    assert_eq!(thing.certificates, expected);
    // Attributes were kept (DO_NOTHING).
    assert_eq!(
        thing.attributes.get("serial").map(String::as_str),
        Some("ROT1")
    );

    // The new certificate connects as the thing; then the old one is retired.
    let mut dev2 = connect(&emu, &new, "dev-ROT1").await.unwrap();
    assert!(
        dev.closed_within(Duration::from_secs(2)).await,
        "same client id must drop the old session"
    );
    emu.registry()
        .set_certificate_status(&old.certificate_id, CertStatus::Inactive)
        .unwrap();
    assert!(connect(&emu, &old, "dev-ROT1-old").await.is_err());
    dev2.subscribe(&["devices/dev-ROT1/ok"]).await;
    dev2.publish("devices/dev-ROT1/ok", "rotated").await;
    assert!(dev2.next_message(WAIT).await.is_some());
}
