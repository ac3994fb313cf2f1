//! `ci/bench.sh keystore`: signatures and key generations per second for
//! every backend and algorithm, through the KeyStore trait, release build.
//! Starts its own swtpm and SoftHSM token. Prints numbers; asserts nothing
//! but that the signatures verify.

#[path = "../tests/common/softhsm.rs"]
#[allow(dead_code)]
mod softhsm;
#[path = "../tests/common/swtpm.rs"]
#[allow(dead_code)]
mod swtpm;

use std::sync::Arc;

/// swtpm.rs starts the simulator through this (see tests/common/mod.rs).
fn clean_command(program: &str) -> std::process::Command {
    std::process::Command::new(program)
}
use std::time::{Duration, Instant};

use prov_agent::keystore::{
    self, FileSettings, KeyAlgorithm, KeyLabel, KeyStore, KeyStoreSettings, TpmKeyStorage,
    TpmSettings,
};

/// Keeps each measurement near this long.
const BUDGET: Duration = Duration::from_millis(1500);

fn measure(mut f: impl FnMut()) -> (f64, u32) {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < BUDGET || n < 3 {
        f();
        n += 1;
    }
    (f64::from(n) / start.elapsed().as_secs_f64(), n)
}

fn bench_store(name: &str, store: Arc<dyn KeyStore>, algorithms: &[KeyAlgorithm]) {
    for &alg in algorithms {
        let mut i = 0;
        let (gen_rate, gens) = measure(|| {
            let label = KeyLabel::new(format!("bench-gen-{i}")).unwrap();
            store.generate(&label, alg).unwrap();
            store.delete(&label).unwrap();
            i += 1;
        });
        let label = KeyLabel::new("bench-sign").unwrap();
        let info = store.generate(&label, alg).unwrap();
        let scheme = alg.default_scheme();
        let sig = store.sign(&label, scheme, b"warm-up").unwrap();
        info.public_key.verify(scheme, b"warm-up", &sig).unwrap();
        let (sign_rate, signs) = measure(|| {
            store
                .sign(&label, scheme, b"the TLS handshake transcript")
                .unwrap();
        });
        store.delete(&label).unwrap();
        println!(
            "{name:<16} {:<9} {sign_rate:>9.0} signatures/s ({signs:>5})   {gen_rate:>8.1} key generations/s ({gens})",
            alg.as_str()
        );
    }
}

fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let wanted = |b: &str| only.as_deref().is_none_or(|o| o == b);
    let dir = tempfile::tempdir().unwrap();
    println!("backend          algorithm   signatures per second              key generations per second");

    if wanted("softhsm") {
        let hsm = softhsm::SoftHsm::new("bench");
        let store = keystore::open(&KeyStoreSettings::Pkcs11(hsm.settings())).unwrap();
        bench_store("softhsm", store, &KeyAlgorithm::ALL);
    }
    if wanted("swtpm") {
        let tpm = swtpm::Swtpm::start();
        for (storage, name) in [
            (TpmKeyStorage::Blob, "swtpm blob"),
            (TpmKeyStorage::Persistent, "swtpm persistent"),
        ] {
            let store = keystore::open(&KeyStoreSettings::Tpm(TpmSettings {
                tcti: tpm.tcti(),
                storage,
                persistent_base: 0x8100_0100,
                key_dir: dir.path().join(format!("tpm-{name}")),
                allow_unwrapped_import: false,
            }))
            .unwrap();
            bench_store(name, store, &KeyAlgorithm::ALL);
        }
    }
    if wanted("file") {
        let store = keystore::open(&KeyStoreSettings::File(FileSettings {
            key_dir: dir.path().join("file"),
        }))
        .unwrap();
        bench_store("file", store, &KeyAlgorithm::ALL);
    }
}
