//! The signing adapters over a swtpm: the signing cases of the conformance
//! suite (CSRs signed in the TPM verify with OpenSSL, mutual TLS completes
//! over TLS 1.2 and 1.3, a certificate of another key is refused).
#![cfg(feature = "tpm")]

mod common;

use common::conformance::{Caps, Subject};
use common::swtpm::Swtpm;
use prov_agent::keystore::{Backend, KeyStoreSettings, TpmKeyStorage, TpmSettings};

fn subject() -> Subject {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::Tpm(TpmSettings {
        tcti: tpm.tcti(),
        storage: TpmKeyStorage::Blob,
        persistent_base: 0x8100_0100,
        key_dir: dir.path().join("tpm"),
        allow_unwrapped_import: false,
    });
    // The store goes first, then the directory, then the simulator.
    Subject::new((dir, tpm), move || {
        prov_agent::keystore::open(&settings).unwrap()
    })
}

crate::signing_suite!(
    subject(),
    Caps {
        hardware_id: true,
        ..Caps::all(Backend::Tpm)
    }
);
