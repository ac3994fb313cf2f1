//! `PrivateKeyMaterial::from_pem`: `claim import --key` and
//! CreateKeysAndCertificate's privateKey (PKCS#8, SEC1, PKCS#1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prov_agent::keystore::PrivateKeyMaterial;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(material) = PrivateKeyMaterial::from_pem(text) else {
        return;
    };
    // The PKCS#8 that goes to the key store reads as the same key.
    let public = material.public_key();
    let again =
        PrivateKeyMaterial::from_pkcs8_der(material.pkcs8_der()).expect("our PKCS#8 reads back");
    assert_eq!(again.algorithm(), material.algorithm());
    assert_eq!(again.public_key().ok(), public.ok());
});
