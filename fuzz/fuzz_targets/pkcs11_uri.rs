//! `Pkcs11Uri::parse`: [PKCS11] URIs in config.ini and key references.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prov_agent::keystore::pkcs11::Pkcs11Uri;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = Pkcs11Uri::parse(text) else {
        return;
    };
    // The canonical form parses to the same URI and is its own canonical
    // form; it has no pin-value attribute (a value may hold that text,
    // percent-encoded `=` and all).
    let canonical = uri.to_string();
    let again = Pkcs11Uri::parse(&canonical)
        .unwrap_or_else(|e| panic!("{canonical:?} (from {text:?}) does not parse: {e}"));
    assert_eq!(again, uri, "{canonical:?}");
    assert_eq!(again.to_string(), canonical);
    let (path, query) = canonical["pkcs11:".len()..]
        .split_once('?')
        .unwrap_or((&canonical["pkcs11:".len()..], ""));
    let names = path
        .split(';')
        .chain(query.split('&'))
        .map(|attr| attr.split('=').next().unwrap_or_default());
    assert!(names.into_iter().all(|n| n != "pin-value"), "{canonical:?}");
});
