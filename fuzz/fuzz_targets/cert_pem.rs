//! `Certificate::from_pem`: the service's certificates, ROOT_CERT,
//! CLAIM_CERT and the identity's certificate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prov_agent::crypto::Certificate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cert) = Certificate::from_pem(text, "fuzz") else {
        return;
    };
    // What the agent writes back (identity.json, device.pem.crt) reads the
    // same.
    let again = Certificate::from_pem(&cert.to_pem(), "again").expect("to_pem reads back");
    assert_eq!(again.chain(), cert.chain());
    assert_eq!(again.id(), cert.id());
    assert_eq!(again.public_key(), cert.public_key());
    assert_eq!(again.subject(), cert.subject());
    assert_eq!(again.not_before(), cert.not_before());
    assert_eq!(again.not_after(), cert.not_after());
});
