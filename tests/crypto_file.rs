//! The signing adapters over the file backend: the signing cases of the
//! conformance suite (CSRs verify with OpenSSL, mutual TLS completes over
//! TLS 1.2 and 1.3 for every algorithm, a certificate of another key is
//! refused), as on the TPM and PKCS#11 backends in their own test files.

mod common;

use common::conformance::{Caps, Subject};
use prov_agent::keystore::{Backend, FileSettings, KeyStoreSettings};

fn subject() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::File(FileSettings {
        key_dir: dir.path().join("keys"),
    });
    Subject::new(dir, move || prov_agent::keystore::open(&settings).unwrap())
}

crate::signing_suite!(subject(), Caps::all(Backend::File));
