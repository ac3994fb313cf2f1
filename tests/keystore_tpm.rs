//! The TPM key store against a swtpm of its own per test: the conformance
//! suite for blob and persistent storage, and what is the TPM's own (the
//! reference and key files of each storage, fixedTPM and the other object
//! attributes, blobs bound to their TPM, evicted handles, leaked handles
//! flushed at open, what crosses the bus, a TPM that goes away or resets,
//! the endorsement id).
#![cfg(feature = "tpm")]

mod common;

use std::path::PathBuf;
use std::str::FromStr;

use common::conformance::{software_key_pem, Caps, Subject};
use common::swtpm::Swtpm;
use prov_agent::keystore::tpm::TpmKeyStore;
use prov_agent::keystore::{
    Backend, KeyAlgorithm, KeyLabel, KeyStore, KeyStoreError, KeyStoreSettings, PrivateKeyMaterial,
    PublicKey, SignatureScheme, TpmKeyStorage, TpmSettings,
};

const BASE: u32 = 0x8100_0100;

/// A store on its own simulator. Fields drop in order: the store (and its
/// TPM context) before the simulator.
struct Fixture {
    store: TpmKeyStore,
    dir: tempfile::TempDir,
    tpm: Swtpm,
    storage: TpmKeyStorage,
}

impl Fixture {
    fn new(storage: TpmKeyStorage) -> Self {
        let tpm = Swtpm::start();
        let dir = tempfile::tempdir().unwrap();
        let store = TpmKeyStore::open(&settings(&tpm, dir.path().join("keys"), storage)).unwrap();
        Fixture {
            store,
            dir,
            tpm,
            storage,
        }
    }

    fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Closes the store (its context) and runs `f` with a raw context on the
    /// same simulator, then reopens the store.
    fn with_raw_context<T>(self, f: impl FnOnce(&mut tss_esapi::Context) -> T) -> (Self, T) {
        let Fixture {
            store,
            dir,
            tpm,
            storage,
        } = self;
        drop(store);
        let out = {
            let mut ctx = raw_context(&tpm);
            f(&mut ctx)
        };
        let store = TpmKeyStore::open(&settings(&tpm, dir.path().join("keys"), storage)).unwrap();
        (
            Fixture {
                store,
                dir,
                tpm,
                storage,
            },
            out,
        )
    }
}

fn settings(tpm: &Swtpm, key_dir: PathBuf, storage: TpmKeyStorage) -> TpmSettings {
    TpmSettings {
        tcti: tpm.tcti(),
        storage,
        persistent_base: BASE,
        key_dir,
        allow_unwrapped_import: false,
    }
}

fn raw_context(tpm: &Swtpm) -> tss_esapi::Context {
    let conf = tss_esapi::tcti_ldr::TctiNameConf::from_str(&tpm.tcti()).unwrap();
    tss_esapi::Context::new(conf).unwrap()
}

fn handles(ctx: &mut tss_esapi::Context, first: u32) -> Vec<u32> {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, first, 64))
        .unwrap();
    let CapabilityData::Handles(list) = data else {
        panic!("not a handle list")
    };
    list.iter()
        .map(|h| u32::from(*h))
        .filter(|h| h >> 24 == first >> 24)
        .collect()
}

/// The key files in `dir` (besides them it holds the pinned storage
/// primary's name), sorted.
fn key_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tpmkey"))
        .collect();
    files.sort();
    files
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

/// A fresh swtpm, opened as the agent opens its key store (through
/// `keystore::open`, which must dispatch to the TPM).
fn subject(storage: TpmKeyStorage) -> Subject {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = KeyStoreSettings::Tpm(settings(&tpm, dir.path().join("keys"), storage));
    // The store goes first, then the key files, then the simulator.
    Subject::new((dir, tpm), move || {
        prov_agent::keystore::open(&settings).expect("open key store")
    })
}

/// Every algorithm; a TPM has an endorsement key to name it by.
const CAPS: Caps = Caps {
    hardware_id: true,
    ..Caps::all(Backend::Tpm)
};

mod blob {
    use super::*;
    crate::keystore_suite!(subject(TpmKeyStorage::Blob), CAPS);
}

mod persistent {
    use super::*;
    crate::keystore_suite!(subject(TpmKeyStorage::Persistent), CAPS);
}

/// Generated keys (signing is in the conformance suite): the reference
/// names the storage, the TPM made them (fixedTPM, fixedParent,
/// sensitiveDataOrigin), and the key files are private.
fn generated_keys_are_the_tpms_own(storage: TpmKeyStorage) {
    let f = Fixture::new(storage);
    for alg in KeyAlgorithm::ALL {
        let l = label(&format!("gen-{alg}"));
        let info = f.store.generate(&l, alg).unwrap();
        match storage {
            TpmKeyStorage::Blob => assert!(info.reference.starts_with("tpm:blob="), "{info:?}"),
            TpmKeyStorage::Persistent => {
                assert!(info.reference.starts_with("tpm:handle=0x8100"), "{info:?}")
            }
        }
        let attrs = f.store.key_attributes(&l).unwrap();
        assert!(attrs.fixed_tpm && attrs.fixed_parent && attrs.sensitive_data_origin);
        assert!(!attrs.imported);
    }
    // Key files 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.key_dir()), 0o700);
    for entry in std::fs::read_dir(f.key_dir()).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
}

#[test]
fn generated_keys_are_the_tpms_own_blob() {
    generated_keys_are_the_tpms_own(TpmKeyStorage::Blob);
}

#[test]
fn generated_keys_are_the_tpms_own_persistent() {
    generated_keys_are_the_tpms_own(TpmKeyStorage::Persistent);
}

/// Imported keys (signing is in the conformance suite): marked imported,
/// without fixedTPM/fixedParent, and TPM-wrapped on disk.
fn imported_keys_are_wrapped_by_the_tpm(storage: TpmKeyStorage) {
    let f = Fixture::new(storage);
    for (i, alg) in KeyAlgorithm::ALL.into_iter().enumerate() {
        // Both PEM forms over the two storages.
        let form = common::conformance::pem_forms(alg)[(i + storage as usize) % 2];
        let (pem, _) = software_key_pem(alg, form);
        let material = PrivateKeyMaterial::from_pem(&pem).unwrap();
        let l = label(&format!("imp-{alg}"));
        f.store.import(&l, &material).unwrap();
        drop(material);
        // TPM2_Import only takes objects without fixedTPM/fixedParent.
        let attrs = f.store.key_attributes(&l).unwrap();
        assert!(attrs.imported);
        assert!(!attrs.fixed_tpm && !attrs.fixed_parent && !attrs.sensitive_data_origin);
    }
    // Nothing on disk holds the plaintext: every key file is TPM-wrapped.
    for path in key_files(&f.key_dir()) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.contains("PRIVATE KEY"));
        assert!(text.contains("\"origin\": \"imported\""));
        // swtpm has TPM2_EncryptDecrypt2: the key went in inner-wrapped.
        assert!(
            text.contains("\"import_wrapper\": \"aes-128-cfb-inner\""),
            "{text}"
        );
    }
}

#[test]
fn imported_keys_are_wrapped_by_the_tpm_blob() {
    imported_keys_are_wrapped_by_the_tpm(TpmKeyStorage::Blob);
}

#[test]
fn imported_keys_are_wrapped_by_the_tpm_persistent() {
    imported_keys_are_wrapped_by_the_tpm(TpmKeyStorage::Persistent);
}

#[test]
fn blob_from_another_tpm_does_not_load() {
    let a = Fixture::new(TpmKeyStorage::Blob);
    let b = Fixture::new(TpmKeyStorage::Blob);
    let l = label("device");
    a.store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let (pem, _) = software_key_pem(KeyAlgorithm::EcP384, "sec1");
    let imported = label("imported");
    a.store
        .import(&imported, &PrivateKeyMaterial::from_pem(&pem).unwrap())
        .unwrap();
    for l in [&l, &imported] {
        let name = format!("{l}.tpmkey");
        std::fs::copy(a.key_dir().join(&name), b.key_dir().join(&name)).unwrap();
        // It still signs where it was made...
        let scheme = a.store.info(l).unwrap().algorithm().default_scheme();
        a.store.sign(l, scheme, b"x").unwrap();
        // ...and not on the other TPM, with an error naming the file.
        let err = b.store.sign(l, scheme, b"x").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KeyStoreError::Backend { .. }), "{msg}");
        assert!(msg.contains(&name), "{msg}");
        assert!(msg.contains("another TPM"), "{msg}");
        assert!(msg.contains("TPM_RC_") && msg.contains("(rc 0x"), "{msg}");
        eprintln!("blob from another TPM: {msg}");
    }
}

#[test]
fn corrupted_blob_gives_a_clear_error() {
    let f = Fixture::new(TpmKeyStorage::Blob);
    let l = label("device");
    f.store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let path = f.key_dir().join("device.tpmkey");
    let good = std::fs::read_to_string(&path).unwrap();

    // Not JSON any more.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = f
        .store
        .sign(&l, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("corrupted") && msg.contains("device.tpmkey"),
        "{msg}"
    );
    assert!(f.store.list().is_err());

    // Well-formed, but one byte of the wrapped private part flipped: the
    // TPM's integrity check catches it.
    let meta: serde_json::Value = serde_json::from_str(&good).unwrap();
    let private = meta["private"].as_str().unwrap();
    let mut bytes = hex::decode(private).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    let bad = good.replace(private, &hex::encode(&bytes));
    std::fs::write(&path, bad).unwrap();
    let err = f
        .store
        .sign(&l, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("device.tpmkey") && msg.contains("TPM_RC_"),
        "{msg}"
    );

    // Deleting is the fix, and works on the corrupted file.
    f.store.delete(&l).unwrap();
    assert!(!path.exists());
}

#[test]
fn missing_persistent_handle_is_not_found() {
    let f = Fixture::new(TpmKeyStorage::Persistent);
    let l = label("device");
    let info = f.store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    assert_eq!(info.reference, "tpm:handle=0x81000100");
    // Someone evicts the handle behind the agent's back.
    let (f, ()) = f.with_raw_context(|ctx| {
        use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
        use tss_esapi::interface_types::{
            dynamic_handles::Persistent, resource_handles::Provision, session_handles::AuthSession,
        };
        let h = PersistentTpmHandle::new(0x8100_0100).unwrap();
        let obj = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(h)))
            .unwrap();
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(Provision::Owner, obj, Persistent::Persistent(h))
        })
        .unwrap();
    });
    for err in [
        f.store
            .sign(&l, SignatureScheme::EcdsaSha256, b"x")
            .unwrap_err(),
        f.store.info(&l).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, KeyStoreError::NotFound { .. }), "{msg}");
        assert!(msg.contains("0x81000100") && msg.contains("gone"), "{msg}");
    }
    // list still shows what the files say; delete cleans up.
    assert_eq!(f.store.list().unwrap().len(), 1);
    f.store.delete(&l).unwrap();
    assert!(f.store.list().unwrap().is_empty());
}

#[test]
fn stale_key_file_of_an_evicted_handle_is_not_found() {
    // A key file restored from a backup after its handle was evicted (by
    // delete, in the same store that had the handle open): NotFound, not a
    // bare TPM error.
    let f = Fixture::new(TpmKeyStorage::Persistent);
    let l = label("device");
    f.store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    f.store
        .sign(&l, SignatureScheme::EcdsaSha256, b"x")
        .unwrap();
    let saved = std::fs::read(f.key_dir().join("device.tpmkey")).unwrap();
    f.store.delete(&l).unwrap();
    std::fs::write(f.key_dir().join("device.tpmkey"), saved).unwrap();
    let err = f
        .store
        .sign(&l, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::NotFound { .. }), "{err}");
}

/// What promote and delete do through the trait is in the conformance
/// suite; here: what they leave in the key directory and, for persistent
/// storage, in the TPM's NV handles.
fn promote_and_delete_leave_only_the_live_key(storage: TpmKeyStorage) {
    let f = Fixture::new(storage);
    let current = label("device");
    let pending = current.pending();
    f.store.generate(&current, KeyAlgorithm::EcP256).unwrap();
    f.store.generate(&pending, KeyAlgorithm::EcP384).unwrap();
    let other = f
        .store
        .generate(&label("claim"), KeyAlgorithm::EcP256)
        .unwrap();
    f.store.promote(&pending, &current).unwrap();
    f.store.delete(&current).unwrap();
    let files: Vec<_> = key_files(&f.key_dir())
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["claim.tpmkey"]);

    if storage == TpmKeyStorage::Persistent {
        // The old current key was evicted by promote, the new one by delete:
        // only "claim" holds an NV handle now.
        let claim_ref = other.reference.clone();
        let (f, persistent) = f.with_raw_context(|ctx| handles(ctx, 0x8100_0000));
        assert_eq!(persistent.len(), 1, "{persistent:x?}");
        assert_eq!(claim_ref, format!("tpm:handle=0x{:08x}", persistent[0]));
        // Reopened with the storage it had.
        assert_eq!(f.storage, storage);
    }
}

#[test]
fn promote_and_delete_leave_only_the_live_key_blob() {
    promote_and_delete_leave_only_the_live_key(TpmKeyStorage::Blob);
}

#[test]
fn promote_and_delete_leave_only_the_live_key_persistent() {
    promote_and_delete_leave_only_the_live_key(TpmKeyStorage::Persistent);
}

#[test]
fn leaked_transient_handles_are_flushed_at_open() {
    let tpm = Swtpm::start();
    // A "crashed run": two transient objects created and the connection
    // dropped without TPM2_FlushContext. Done with raw TPM commands on the
    // socket, because a tss-esapi Context flushes what it made when dropped.
    for _ in 0..2 {
        leak_transient_object(&tpm);
    }
    {
        let mut ctx = raw_context(&tpm);
        assert_eq!(handles(&mut ctx, 0x8000_0000).len(), 2, "no leak to test");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TpmKeyStore::open(&settings(
        &tpm,
        dir.path().to_path_buf(),
        TpmKeyStorage::Blob,
    ))
    .unwrap();
    // With the leaked objects gone, the store has room to work (swtpm has
    // three object slots: two leaked plus the SRK would leave none).
    let l = label("k");
    let info = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let sig = store.sign(&l, SignatureScheme::EcdsaSha256, b"m").unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
        .unwrap();
    drop(store);
    let mut ctx = raw_context(&tpm);
    assert!(handles(&mut ctx, 0x8000_0000).is_empty());
}

/// Sends TPM2_CreatePrimary straight to the simulator's command port (the
/// swtpm TCTI speaks bare TPM commands) and hangs up without flushing.
fn leak_transient_object(tpm: &Swtpm) {
    use tss_esapi::traits::Marshall;
    let public = prov_agent_test_template().marshall().unwrap();
    let mut params = Vec::new();
    params.extend_from_slice(&4u16.to_be_bytes()); // inSensitive: size 4
    params.extend_from_slice(&[0, 0, 0, 0]); //       empty userAuth, data
    params.extend_from_slice(&(public.len() as u16).to_be_bytes());
    params.extend_from_slice(&public);
    params.extend_from_slice(&0u16.to_be_bytes()); // outsideInfo
    params.extend_from_slice(&0u32.to_be_bytes()); // creationPCR: none
    let auth = [
        0x40, 0x00, 0x00, 0x09, // TPM_RS_PW
        0x00, 0x00, // nonce
        0x00, // session attributes
        0x00, 0x00, // empty password
    ];
    let mut cmd = Vec::new();
    cmd.extend_from_slice(&0x8002u16.to_be_bytes()); // TPM_ST_SESSIONS
    cmd.extend_from_slice(&[0; 4]); // size, below
    cmd.extend_from_slice(&0x0000_0131u32.to_be_bytes()); // TPM_CC_CreatePrimary
    cmd.extend_from_slice(&0x4000_0001u32.to_be_bytes()); // TPM_RH_OWNER
    cmd.extend_from_slice(&(auth.len() as u32).to_be_bytes());
    cmd.extend_from_slice(&auth);
    cmd.extend_from_slice(&params);
    let len = cmd.len() as u32;
    cmd[2..6].copy_from_slice(&len.to_be_bytes());
    send_and_hang_up(tpm, &cmd);
}

/// Sends one raw TPM command to the simulator's command port (the swtpm
/// TCTI speaks bare TPM commands), checks it succeeded, and closes the
/// connection without cleaning up: the "crash".
fn send_and_hang_up(tpm: &Swtpm, cmd: &[u8]) {
    use std::io::{Read, Write};
    let port: u16 = tpm.tcti().rsplit('=').next().unwrap().parse().unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.write_all(cmd).unwrap();
    let mut header = [0u8; 10];
    sock.read_exact(&mut header).unwrap();
    let rc = u32::from_be_bytes(header[6..10].try_into().unwrap());
    assert_eq!(rc, 0, "raw TPM command failed: 0x{rc:08x}");
    let size = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size - 10];
    sock.read_exact(&mut rest).unwrap();
}

/// Starts an HMAC session with raw TPM2_StartAuthSession and hangs up.
fn leak_session(tpm: &Swtpm) {
    let mut cmd = Vec::new();
    cmd.extend_from_slice(&0x8001u16.to_be_bytes()); // TPM_ST_NO_SESSIONS
    cmd.extend_from_slice(&[0; 4]); // size, below
    cmd.extend_from_slice(&0x0000_0176u32.to_be_bytes()); // TPM_CC_StartAuthSession
    cmd.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // tpmKey: TPM_RH_NULL
    cmd.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // bind: TPM_RH_NULL
    cmd.extend_from_slice(&32u16.to_be_bytes()); // nonceCaller
    cmd.extend_from_slice(&[0x5a; 32]);
    cmd.extend_from_slice(&0u16.to_be_bytes()); // encryptedSalt: none
    cmd.push(0x00); // TPM_SE_HMAC
    cmd.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: TPM_ALG_NULL
    cmd.extend_from_slice(&0x000Bu16.to_be_bytes()); // authHash: SHA-256
    let len = cmd.len() as u32;
    cmd[2..6].copy_from_slice(&len.to_be_bytes());
    send_and_hang_up(tpm, &cmd);
}

#[test]
fn leaked_sessions_are_flushed_at_open() {
    let tpm = Swtpm::start();
    // swtpm keeps at most three sessions loaded: three crashed runs would
    // leave no room for the store's own session.
    for _ in 0..3 {
        leak_session(&tpm);
    }
    {
        let mut ctx = raw_context(&tpm);
        assert_eq!(handles(&mut ctx, 0x0200_0000).len(), 3, "no leak to test");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TpmKeyStore::open(&settings(
        &tpm,
        dir.path().to_path_buf(),
        TpmKeyStorage::Blob,
    ))
    .unwrap();
    let l = label("k");
    let info = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let sig = store.sign(&l, SignatureScheme::EcdsaSha256, b"m").unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
        .unwrap();
    drop(store);
    let mut ctx = raw_context(&tpm);
    assert!(handles(&mut ctx, 0x0200_0000).is_empty());
}

/// A small primary (ECC P-256 signing key) for the leak test.
fn prov_agent_test_template() -> tss_esapi::structures::Public {
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
    };
    use tss_esapi::structures::{
        EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, PublicBuilder,
        PublicEccParametersBuilder,
    };
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .unwrap();
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .build()
            .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap()
}

#[test]
fn unreachable_tcti_is_retryable_unavailable() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = TpmKeyStore::open(&TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        storage: TpmKeyStorage::Blob,
        persistent_base: BASE,
        key_dir: dir.path().to_path_buf(),
        allow_unwrapped_import: false,
    })
    .err()
    .unwrap();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("swtpm:host=127.0.0.1"), "{err}");
}

#[test]
fn malformed_tcti_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = TpmKeyStore::open(&TpmSettings {
        tcti: "carrier-pigeon:coop=3".into(),
        storage: TpmKeyStorage::Blob,
        persistent_base: BASE,
        key_dir: dir.path().to_path_buf(),
        allow_unwrapped_import: false,
    })
    .err()
    .unwrap();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("device:/dev/tpmrm0"), "{err}");
}

/// A TCP proxy in front of a swtpm (command and control ports) that
/// records every byte sent towards the TPM.
struct BusTap {
    port: u16,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl BusTap {
    fn new(tpm: &Swtpm) -> Self {
        use std::net::{TcpListener, TcpStream};
        let target: u16 = tpm.tcti().rsplit('=').next().unwrap().parse().unwrap();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Two adjacent free ports, like the simulator's.
        let (cmd, ctrl) = loop {
            let a = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let p = a.local_addr().unwrap().port();
            if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)) {
                break (a, b);
            }
        };
        let port = cmd.local_addr().unwrap().port();
        for (listener, to) in [(cmd, target), (ctrl, target + 1)] {
            let sent = sent.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let sent = sent.clone();
                    // TPM -> client: plain copy.
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    // client -> TPM: copy and record.
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut client, mut server) = (client, server);
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = client.read(&mut buf) {
                            if n == 0 || server.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = server.shutdown(std::net::Shutdown::Both);
                    });
                }
            });
        }
        BusTap { port, sent }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn saw(&self, needle: &[u8]) -> bool {
        self.sent
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

#[test]
fn imported_private_key_never_crosses_the_bus_in_the_clear() {
    let tpm = Swtpm::start();
    let tap = BusTap::new(&tpm);
    let dir = tempfile::tempdir().unwrap();
    let store = TpmKeyStore::open(&TpmSettings {
        tcti: tap.tcti(),
        storage: TpmKeyStorage::Blob,
        persistent_base: BASE,
        key_dir: dir.path().to_path_buf(),
        allow_unwrapped_import: false,
    })
    .unwrap();
    for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048] {
        // The forms of the flavour this test always used: PKCS#8 for EC,
        // PKCS#1 for RSA.
        let (pem, spki) = software_key_pem(alg, if alg.is_ec() { "pkcs8" } else { "pkcs1" });
        let material = PrivateKeyMaterial::from_pem(&pem).unwrap();
        let (secret, public_part) = match &material {
            PrivateKeyMaterial::Ec {
                scalar,
                public_point,
                ..
            } => (scalar.to_vec(), public_point[1..33].to_vec()),
            PrivateKeyMaterial::Rsa {
                prime1, modulus, ..
            } => (prime1.to_vec(), modulus[..32].to_vec()),
        };
        let l = label(&format!("tap-{alg}"));
        store.import(&l, &material).unwrap();
        let original = PublicKey::from_spki_der(&spki).unwrap();
        let sig = store.sign(&l, alg.default_scheme(), b"m").unwrap();
        original.verify(alg.default_scheme(), b"m", &sig).unwrap();
        // The tap did see the import (its public part travels in the clear)...
        assert!(tap.saw(&public_part), "{alg}: tap saw nothing");
        // ...but never the private part.
        assert!(!tap.saw(&secret), "{alg}: private key seen on the bus");
    }
    drop(store);
    drop(tpm);
}

#[test]
fn tpm_gone_mid_run_is_retryable_unavailable() {
    let Fixture {
        store, dir, tpm, ..
    } = Fixture::new(TpmKeyStorage::Blob);
    let l = label("device");
    store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    drop(tpm); // the simulator stops; the store's context stays
    let err = store
        .sign(&l, SignatureScheme::EcdsaSha256, b"m")
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, KeyStoreError::Unavailable { .. }), "{err}");
    // Dropping a store whose TPM is gone must not panic.
    drop(store);
    drop(dir);
}

#[test]
fn store_reconnects_after_a_tpm_reset() {
    // A daemon keeps its store for months; a reset TPM (or a restarted
    // resource manager) must not need a restarted agent. The first call
    // after the reset reports a retryable error; a retry works.
    for storage in [TpmKeyStorage::Blob, TpmKeyStorage::Persistent] {
        let Fixture {
            store, dir, tpm, ..
        } = Fixture::new(storage);
        let l = label("device");
        let info = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
        store.sign(&l, SignatureScheme::EcdsaSha256, b"m").unwrap();
        tpm.reset();
        let first = store
            .sign(&l, SignatureScheme::EcdsaSha256, b"m")
            .unwrap_err();
        assert!(first.is_retryable(), "{first}");
        let sig = store.sign(&l, SignatureScheme::EcdsaSha256, b"m").unwrap();
        info.public_key
            .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
            .unwrap();
        drop(store);
        drop(dir);
        drop(tpm);
    }
}

#[test]
fn endorsement_id_is_stable_per_tpm_and_differs_between_tpms() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let open = |tpm: &Swtpm, sub: &str| {
        TpmKeyStore::open(&settings(tpm, dir.path().join(sub), TpmKeyStorage::Blob)).unwrap()
    };
    let id_a = open(&a, "a").endorsement_id().unwrap();
    assert_eq!(id_a.len(), 20);
    assert!(id_a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(open(&a, "a2").endorsement_id().unwrap(), id_a, "not stable");
    assert_ne!(
        open(&b, "b").endorsement_id().unwrap(),
        id_a,
        "two TPMs, one id"
    );
}

/// The storage primary keys were made under before the TSS2 key file
/// export: the TCG SRK template with a unique field of 32 zero bytes per
/// coordinate (the store now makes new keys under the key file tools'
/// primary, whose unique field is empty).
fn zero_unique_srk_template() -> tss_esapi::structures::Public {
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
    };
    use tss_esapi::structures::{
        EccParameter, EccPoint, EccScheme, KeyDerivationFunctionScheme, PublicBuilder,
        PublicEccParameters, SymmetricDefinitionObject,
    };
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .unwrap();
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(PublicEccParameters::new(
            SymmetricDefinitionObject::AES_128_CFB,
            EccScheme::Null,
            EccCurve::NistP256,
            KeyDerivationFunctionScheme::Null,
        ))
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; 32]).unwrap(),
            EccParameter::try_from(vec![0u8; 32]).unwrap(),
        ))
        .build()
        .unwrap()
}

/// A key file as the store wrote it before: a P-256 signing key under the
/// zero-unique SRK, format 1, no `parent` field. It still signs (the store
/// makes the older primary for the moment it loads it), other programs are
/// told it has no standard key file yet, and a key made now has one.
#[test]
fn keys_under_the_older_storage_primary_keep_working() {
    use prov_agent::keystore::ConsumerKey;
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        resource_handles::Hierarchy,
        session_handles::AuthSession,
    };
    use tss_esapi::structures::{
        EccPoint, EccScheme, KeyDerivationFunctionScheme, PublicBuilder, PublicEccParameters,
        SymmetricDefinitionObject,
    };
    use tss_esapi::traits::Marshall;

    let fixture = Fixture::new(TpmKeyStorage::Blob);
    let key_dir = fixture.key_dir();
    let (fixture, (public, private)) = fixture.with_raw_context(|ctx| {
        let srk = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(
                    Hierarchy::Owner,
                    zero_unique_srk_template(),
                    None,
                    None,
                    None,
                    None,
                )
            })
            .unwrap()
            .key_handle;
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap();
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(PublicEccParameters::new(
                SymmetricDefinitionObject::Null,
                EccScheme::Null,
                EccCurve::NistP256,
                KeyDerivationFunctionScheme::Null,
            ))
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .unwrap();
        let created = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create(srk, template, None, None, None, None)
            })
            .unwrap();
        ctx.flush_context(srk.into()).unwrap();
        let tpm2b = |body: Vec<u8>| {
            let mut out = (body.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            hex::encode(out)
        };
        (
            tpm2b(created.out_public.marshall().unwrap()),
            tpm2b(created.out_private.value().to_vec()),
        )
    });
    std::fs::create_dir_all(&key_dir).unwrap();
    std::fs::write(
        key_dir.join("device.tpmkey"),
        format!(
            "{{\"format\":1,\"algorithm\":\"ec-p256\",\"origin\":\"generated\",\
             \"fixed_tpm\":true,\"fixed_parent\":true,\"storage\":\"blob\",\
             \"public\":\"{public}\",\"private\":\"{private}\"}}\n"
        ),
    )
    .unwrap();

    let old = fixture.store.info(&label("device")).unwrap();
    common::conformance::sign_and_verify_all(
        &fixture.store,
        &label("device"),
        &old.public_key,
        "a key under the older primary",
    );
    assert!(matches!(
        ConsumerKey::of_reference(&old.reference).unwrap(),
        ConsumerKey::TpmOlderBlob { .. }
    ));

    // A key made now, beside it: under the key file tools' primary. Both
    // keep signing, one after the other (the store switches primaries).
    let new = fixture
        .store
        .generate(&label("device.alt"), KeyAlgorithm::EcP256)
        .unwrap();
    let ConsumerKey::TpmKeyFile { pem } = ConsumerKey::of_reference(&new.reference).unwrap() else {
        panic!("a new key has no TSS2 key file")
    };
    assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"));
    for (l, info) in [("device", &old), ("device.alt", &new), ("device", &old)] {
        common::conformance::sign_and_verify_all(&fixture.store, &label(l), &info.public_key, l);
    }
}

/// A persistent key's handle evicted behind the store's back and reused
/// for another program's key: deleting the key removes the stale key file
/// and leaves the other key in the TPM.
#[test]
fn delete_never_evicts_another_key_at_a_reused_handle() {
    use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle, TpmHandle};
    use tss_esapi::interface_types::dynamic_handles::Persistent;
    use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
    use tss_esapi::interface_types::session_handles::AuthSession;

    let f = Fixture::new(TpmKeyStorage::Persistent);
    let l = label("device");
    let info = f.store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let handle =
        u32::from_str_radix(info.reference.strip_prefix("tpm:handle=0x").unwrap(), 16).unwrap();
    // Another program evicts it and persists a key of its own there.
    let (f, ()) = f.with_raw_context(|ctx| {
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle).unwrap());
        let ours = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
            .unwrap();
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(
                Provision::Owner,
                ours,
                Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap()),
            )
        })
        .unwrap();
        let theirs = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(
                    Hierarchy::Owner,
                    prov_agent_test_template(),
                    None,
                    None,
                    None,
                    None,
                )
            })
            .unwrap()
            .key_handle;
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(
                Provision::Owner,
                ObjectHandle::from(theirs),
                Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap()),
            )
        })
        .unwrap();
        ctx.flush_context(theirs.into()).unwrap();
    });
    f.store.delete(&l).unwrap();
    assert!(!f.key_dir().join("device.tpmkey").exists());
    let (_f, present) = f.with_raw_context(|ctx| handles(ctx, handle).contains(&handle));
    assert!(
        present,
        "the other program's key at 0x{handle:08x} was evicted"
    );
}

/// The storage primary (which salts the sessions that protect what crosses
/// the bus) is pinned at first use: the same key directory on another TPM
/// (another seed: as a replaced TPM, or something answering in its place)
/// is refused, naming the pin file and what to do, and changes nothing; a
/// reset of the same TPM is not a change.
#[test]
fn the_storage_primary_is_pinned_at_first_use() {
    let first = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    let store = TpmKeyStore::open(&settings(&first, key_dir.clone(), TpmKeyStorage::Blob)).unwrap();
    let info = store
        .generate(&label("device"), KeyAlgorithm::EcP256)
        .unwrap();
    drop(store);
    let pin = key_dir.join("storage-primary.name");
    let pinned = std::fs::read_to_string(&pin).unwrap();
    assert_eq!(pinned.trim().len(), 2 * 34, "a SHA-256 name: {pinned}");

    // The same TPM after a reset: the same primary.
    first.reset();
    let store = TpmKeyStore::open(&settings(&first, key_dir.clone(), TpmKeyStorage::Blob)).unwrap();
    let sig = store
        .sign(&label("device"), SignatureScheme::EcdsaSha256, b"m")
        .unwrap();
    info.public_key
        .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
        .unwrap();
    drop(store);

    // Another TPM: refused before any key is touched.
    let other = Swtpm::start();
    let err = TpmKeyStore::open(&settings(&other, key_dir.clone(), TpmKeyStorage::Blob))
        .err()
        .expect("another TPM's primary is refused");
    let text = err.to_string();
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains("storage primary"), "{text}");
    assert!(text.contains(&pin.display().to_string()), "{text}");
    assert!(text.contains("enroll --force"), "{text}");
    assert_eq!(std::fs::read_to_string(&pin).unwrap(), pinned);
    assert!(key_dir.join("device.tpmkey").exists());
    drop(other);
    drop(first);
}
