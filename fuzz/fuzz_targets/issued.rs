//! `Issued::parse`: the checks on CreateCertificateFromCsr's and
//! CreateKeysAndCertificate's answers (certificate, its id, its key, the
//! ownership token), after the payload decoding and, for the keys API, the
//! private key's parsing, as the flow does them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prov_agent::config::PayloadFormat;
use prov_agent::crypto::Certificate;
use prov_agent::keystore::PrivateKeyMaterial;
use prov_agent::mqtt::payload;
use prov_agent::provision::fuzz_issued_parse;
use serde_json::Value;

/// Issued by the emulator (tests/fixtures/journal-v1): the key to expect
/// when the input names none that parses.
const FIXTURE: &str = include_str!("../corpus/cert_pem/emulator-device.pem");

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let format = if mode & 1 == 0 {
        PayloadFormat::Json
    } else {
        PayloadFormat::Cbor
    };
    let api = if mode & 2 == 0 {
        "CreateCertificateFromCsr"
    } else {
        "CreateKeysAndCertificate"
    };
    let Ok(mut response) = payload::decode(format, body) else {
        return;
    };
    let cert = response
        .get("certificatePem")
        .and_then(Value::as_str)
        .and_then(|pem| Certificate::from_pem(pem, "certificatePem").ok());
    // The keys API's private key is taken out first, as the flow does; its
    // public half is the key the certificate must be for. Otherwise the key
    // is ours: the certificate's own one (bit 2 clear) or the fixture's.
    let public = match response.get_mut("privateKey").map(Value::take) {
        Some(Value::String(pem)) => match PrivateKeyMaterial::from_pem(&pem) {
            Ok(material) => match material.public_key() {
                Ok(public) => public,
                Err(_) => return,
            },
            Err(_) => return,
        },
        _ => match &cert {
            Some(cert) if mode & 4 == 0 => cert.public_key().clone(),
            _ => Certificate::from_pem(FIXTURE, "fixture")
                .unwrap()
                .public_key()
                .clone(),
        },
    };
    let field = |name: &str| {
        response
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let expected = match (
        field("certificateId"),
        field("certificateOwnershipToken"),
        &cert,
    ) {
        (Some(id), Some(_), Some(cert)) if field("certificatePem").is_some() => {
            (cert.id() == id && *cert.public_key() == public).then(|| cert.id())
        }
        _ => None,
    };
    match fuzz_issued_parse(api, response.clone(), &public) {
        Ok(id) => assert_eq!(Some(id), expected, "accepted {response}"),
        Err(e) => {
            assert_eq!(expected, None, "refused {response}: {e}");
            assert!(e.to_string().starts_with(api), "{e}");
        }
    }
});
