//! The signing adapters over a SoftHSM token: the signing cases of the
//! conformance suite (CSRs signed in the token verify with OpenSSL, mutual
//! TLS completes over TLS 1.2 and 1.3, a certificate of another key is
//! refused).
#![cfg(feature = "pkcs11")]

mod common;

use common::conformance::{Caps, Subject};
use common::softhsm::SoftHsm;
use prov_agent::keystore::{Backend, KeyStoreSettings};

fn subject() -> Subject {
    let hsm = SoftHsm::new("crypto");
    let settings = KeyStoreSettings::Pkcs11(hsm.settings());
    Subject::new(hsm, move || prov_agent::keystore::open(&settings).unwrap())
}

crate::signing_suite!(subject(), Caps::all(Backend::Pkcs11));
