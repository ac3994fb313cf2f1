//! The conformance suite: what every key store does, written once and run
//! unchanged against the file store, a fresh SoftHSM token (PKCS#11), a
//! fresh swtpm (blob and persistent storage), and the daemon's key helper in
//! front of each of them.
//!
//! A backend's test file opens its store in a [`Subject`], states its
//! [`Caps`], and invokes [`keystore_suite!`](crate::keystore_suite) (and, for
//! the signing adapters, [`signing_suite!`](crate::signing_suite)); that makes
//! one `#[test]` per case, so a failure names the case, and the test binary
//! and module name the backend. Everything else in a backend's file is
//! specific to that backend.
//!
//! Signatures are checked with ring (`PublicKey::verify`), an implementation
//! independent of every store; the signing cases also check CSRs with the
//! OpenSSL command line and complete TLS handshakes with a rustls server.

use std::any::Any;
use std::sync::Arc;

use prov_agent::keystore::{
    Backend, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial,
    PublicKey, SignatureScheme,
};

/// One `#[test]` per key store case, each on a fresh `$subject` (an
/// expression making a [`Subject`]) with the capabilities `$caps`.
#[macro_export]
macro_rules! keystore_suite {
    ($subject:expr, $caps:expr) => {
        $crate::conformance_cases!($subject, $caps;
            generate_sign_verify,
            import_sign_verify,
            rsa_pss_signatures,
            missing_key_is_not_found,
            taken_label_is_already_exists,
            lifecycle,
            promote,
            delete,
            list,
            signs_from_many_threads,
            keys_survive_reopening_the_store,
            hardware_id,
        );
    };
}

/// One `#[test]` per case of the signing adapters (`crypto`) over the store.
#[macro_export]
macro_rules! signing_suite {
    ($subject:expr, $caps:expr) => {
        $crate::conformance_cases!($subject, $caps;
            csr_signed_by_store_verifies_with_openssl,
            mutual_tls_with_store_key_over_tls12_and_tls13,
            certificate_of_another_key_is_refused_before_any_handshake,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! conformance_cases {
    ($subject:expr, $caps:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut subject = $subject;
                $crate::common::conformance::$case(&mut subject, &$caps);
            }
        )*
    };
}

/// What a backend can do, where backends differ. A capability a backend
/// lacks is not skipped: the suite asserts that the store refuses it.
///
/// Today every backend makes and imports every algorithm (swtpm included:
/// it has P-384 and RSA-3072); `algorithms` is there for a store that
/// cannot, which then must answer `UnsupportedAlgorithm`. The cases that
/// rotate and delete keys use EC P-256, P-384 and RSA-2048, the agent's
/// defaults, which every store must have.
pub struct Caps {
    /// The backend the store reports.
    pub backend: Backend,
    /// The algorithms the store generates and imports.
    pub algorithms: &'static [KeyAlgorithm],
    /// Whether the store names its hardware (`KeyStore::hardware_id`): only
    /// a TPM does (its endorsement key); the others answer `None`.
    pub hardware_id: bool,
}

impl Caps {
    /// Every algorithm, no hardware id.
    pub const fn all(backend: Backend) -> Self {
        Caps {
            backend,
            algorithms: &KeyAlgorithm::ALL,
            hardware_id: false,
        }
    }

    fn has(&self, alg: KeyAlgorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// A store under test and what it runs on.
pub struct Subject {
    // Declared first, so dropped first: a store (a TPM context, a token
    // session, a helper process) goes before the simulator or token it uses.
    store: Option<Arc<dyn KeyStore>>,
    open: Box<dyn Fn() -> Arc<dyn KeyStore>>,
    _hardware: Box<dyn Any>,
}

impl Subject {
    /// Opens the store with `open`; `hardware` (a swtpm, a SoftHSM token, a
    /// temp dir, a lock guard) lives as long as the subject, and is dropped
    /// after the store.
    pub fn new(hardware: impl Any, open: impl Fn() -> Arc<dyn KeyStore> + 'static) -> Self {
        Subject {
            store: Some(open()),
            open: Box::new(open),
            _hardware: Box::new(hardware),
        }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        self.store.as_ref().expect("the store is open")
    }

    /// Closes the store and opens it again on the same hardware, as a
    /// restarted agent does. The old store is gone before the new one opens
    /// (a swtpm serves one connection at a time).
    pub fn reopen(&mut self) {
        let old = self.store.take().expect("the store is open");
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "a case still holds the store it reopens"
        );
        drop(old);
        self.store = Some((self.open)());
    }
}

pub const ALL_SCHEMES: [SignatureScheme; 8] = [
    SignatureScheme::EcdsaSha256,
    SignatureScheme::EcdsaSha384,
    SignatureScheme::RsaPkcs1Sha256,
    SignatureScheme::RsaPkcs1Sha384,
    SignatureScheme::RsaPkcs1Sha512,
    SignatureScheme::RsaPssSha256,
    SignatureScheme::RsaPssSha384,
    SignatureScheme::RsaPssSha512,
];

pub fn schemes_for(alg: KeyAlgorithm) -> Vec<SignatureScheme> {
    ALL_SCHEMES
        .into_iter()
        .filter(|s| alg.supports(*s))
        .collect()
}

/// The PEM forms the agent accepts for a key of `alg`.
pub fn pem_forms(alg: KeyAlgorithm) -> [&'static str; 2] {
    if alg.is_ec() {
        ["pkcs8", "sec1"]
    } else {
        ["pkcs8", "pkcs1"]
    }
}

/// A software-made private key in PEM of the given form, and its SPKI DER.
pub fn software_key_pem(alg: KeyAlgorithm, form: &str) -> (zeroize::Zeroizing<String>, Vec<u8>) {
    use pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rand::rngs::OsRng;
    match alg {
        KeyAlgorithm::EcP256 => {
            let k = p256::SecretKey::random(&mut OsRng);
            let pem = match form {
                "sec1" => k.to_sec1_pem(LineEnding::LF).unwrap(),
                _ => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
            };
            (pem, k.public_key().to_public_key_der().unwrap().into_vec())
        }
        KeyAlgorithm::EcP384 => {
            let k = p384::SecretKey::random(&mut OsRng);
            let pem = match form {
                "sec1" => k.to_sec1_pem(LineEnding::LF).unwrap(),
                _ => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
            };
            (pem, k.public_key().to_public_key_der().unwrap().into_vec())
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let k = rsa::RsaPrivateKey::new(&mut OsRng, alg.rsa_bits().unwrap()).unwrap();
            let pem = match form {
                "pkcs1" => k.to_pkcs1_pem(LineEnding::LF).unwrap(),
                _ => k.to_pkcs8_pem(LineEnding::LF).unwrap(),
            };
            let spki = k.to_public_key().to_public_key_der().unwrap().into_vec();
            (pem, spki)
        }
    }
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn labels(store: &dyn KeyStore) -> Vec<String> {
    store
        .list()
        .unwrap()
        .iter()
        .map(|k| k.label.to_string())
        .collect()
}

/// A store without `alg` refuses to make one, rather than making another.
fn assert_refused(store: &dyn KeyStore, alg: KeyAlgorithm) {
    let err = store
        .generate(&label(&format!("refused-{alg}")), alg)
        .unwrap_err();
    assert!(
        matches!(err, KeyStoreError::UnsupportedAlgorithm { .. }),
        "{alg} is not in the backend's capabilities, yet: {err}"
    );
}

/// Signs with every scheme there is: those the key supports must verify
/// against `public` (and not for another message), the others must be
/// refused as `SchemeMismatch`. `what` names the key in messages.
pub fn sign_and_verify_all(store: &dyn KeyStore, l: &KeyLabel, public: &PublicKey, what: &str) {
    let alg = public.algorithm();
    let mut made = 0;
    for scheme in ALL_SCHEMES {
        let msg = format!("message for {what} {scheme:?}");
        if !alg.supports(scheme) {
            let err = store.sign(l, scheme, msg.as_bytes()).unwrap_err();
            assert!(
                matches!(err, KeyStoreError::SchemeMismatch { .. }),
                "{what} {scheme:?}: {err}"
            );
            continue;
        }
        let sig = store
            .sign(l, scheme, msg.as_bytes())
            .unwrap_or_else(|e| panic!("{what} {scheme:?}: {e}"));
        if let Some(bits) = alg.rsa_bits() {
            assert_eq!(
                sig.len(),
                bits / 8,
                "{what} {scheme:?}: not the modulus' length"
            );
        }
        public
            .verify(scheme, msg.as_bytes(), &sig)
            .unwrap_or_else(|e| panic!("{what} {scheme:?}: {e}"));
        assert!(
            public.verify(scheme, b"another message", &sig).is_err(),
            "{what} {scheme:?}: signature verifies for a different message"
        );
        made += 1;
    }
    assert!(made > 0, "{what}: no scheme signed");
}

/// Generate a key of each algorithm, sign with every scheme it supports and
/// verify with ring against the public key the store reports.
pub fn generate_sign_verify(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    assert_eq!(store.backend(), caps.backend);
    for alg in KeyAlgorithm::ALL {
        if !caps.has(alg) {
            assert_refused(store.as_ref(), alg);
            continue;
        }
        let label = KeyLabel::new(format!("gen-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        assert_eq!(info.algorithm(), alg);
        assert_eq!(info.label, label);
        assert_eq!(info.backend, store.backend());
        // What info reads back is what generate reported.
        assert_eq!(store.info(&label).unwrap().public_key, info.public_key);
        sign_and_verify_all(store.as_ref(), &label, &info.public_key, alg.as_str());
        // A scheme of another family is refused, not silently mangled.
        let wrong = if alg.is_ec() {
            SignatureScheme::RsaPkcs1Sha256
        } else {
            SignatureScheme::EcdsaSha256
        };
        let err = store.sign(&label, wrong, b"x").unwrap_err();
        // The same variant through the key helper as in-process.
        assert!(matches!(err, KeyStoreError::SchemeMismatch { .. }), "{err}");
        store.delete(&label).unwrap();
    }
}

/// Import PEM keys in every form, sign, verify against the original
/// public key made in software.
pub fn import_sign_verify(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    for alg in KeyAlgorithm::ALL {
        for form in pem_forms(alg) {
            let (pem, original_spki) = software_key_pem(alg, form);
            let material = PrivateKeyMaterial::from_pem(&pem).unwrap();
            let label = KeyLabel::new(format!("imp-{alg}-{form}")).unwrap();
            if !caps.has(alg) {
                let err = store.import(&label, &material).unwrap_err();
                assert!(
                    matches!(err, KeyStoreError::UnsupportedAlgorithm { .. }),
                    "{alg} is not in the backend's capabilities, yet: {err}"
                );
                continue;
            }
            let info = store.import(&label, &material).unwrap();
            drop(material);
            assert_eq!(
                info.public_key.spki_der(),
                &original_spki[..],
                "{alg} {form}"
            );
            let original = PublicKey::from_spki_der(&original_spki).unwrap();
            assert_eq!(info.public_key, original, "{alg} {form}");
            assert_eq!(info.label, label);
            assert_eq!(info.backend, caps.backend);
            assert_eq!(
                store.info(&label).unwrap().public_key,
                original,
                "{alg} {form}"
            );
            // Verified against the key made in software, not what the store
            // says it holds.
            sign_and_verify_all(store.as_ref(), &label, &original, &format!("{alg} {form}"));
            store.delete(&label).unwrap();
        }
    }
}

/// RSA-PSS signatures (salted, so each one differs) verify with ring, every
/// time, and are as long as the modulus.
pub fn rsa_pss_signatures(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072] {
        if !caps.has(alg) {
            assert_refused(store.as_ref(), alg);
            continue;
        }
        let l = label(&format!("pss-{alg}"));
        let info = store.generate(&l, alg).unwrap();
        for scheme in [
            SignatureScheme::RsaPssSha256,
            SignatureScheme::RsaPssSha384,
            SignatureScheme::RsaPssSha512,
        ] {
            for i in 0..5 {
                let msg = format!("pss {i}");
                let sig = store.sign(&l, scheme, msg.as_bytes()).unwrap();
                assert_eq!(sig.len(), alg.rsa_bits().unwrap() / 8, "{alg} {scheme:?}");
                info.public_key
                    .verify(scheme, msg.as_bytes(), &sig)
                    .unwrap_or_else(|e| panic!("{alg} {scheme:?} #{i}: {e}"));
            }
        }
    }
}

/// Every operation on a key that is not there is `NotFound`, naming it.
pub fn missing_key_is_not_found(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let l = label("claim");
    for (op, err) in [
        ("info", store.info(&l).unwrap_err()),
        (
            "sign",
            store
                .sign(&l, SignatureScheme::EcdsaSha256, b"x")
                .unwrap_err(),
        ),
        ("delete", store.delete(&l).unwrap_err()),
        ("promote", store.promote(&l.pending(), &l).unwrap_err()),
    ] {
        assert!(matches!(err, KeyStoreError::NotFound { .. }), "{op}: {err}");
        assert!(err.is_not_found(), "{op}: {err}");
        assert!(!err.is_retryable(), "{op}: {err}");
        assert!(err.to_string().contains("claim"), "{op}: {err}");
    }
    assert!(store.list().unwrap().is_empty());
}

/// Generate and import refuse a taken label as `AlreadyExists`, and leave
/// the key there alone.
pub fn taken_label_is_already_exists(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let l = label("device");
    let first = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let err = store.generate(&l, KeyAlgorithm::EcP256).unwrap_err();
    assert!(matches!(err, KeyStoreError::AlreadyExists { .. }), "{err}");
    assert!(!err.is_not_found() && !err.is_retryable(), "{err}");
    let (pem, _) = software_key_pem(KeyAlgorithm::EcP256, "pkcs8");
    let err = store
        .import(&l, &PrivateKeyMaterial::from_pem(&pem).unwrap())
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::AlreadyExists { .. }), "{err}");
    // Nothing changed, nothing was added.
    assert_eq!(store.info(&l).unwrap().public_key, first.public_key);
    let sig = store
        .sign(&l, SignatureScheme::EcdsaSha256, b"still the first")
        .unwrap();
    first
        .public_key
        .verify(SignatureScheme::EcdsaSha256, b"still the first", &sig)
        .unwrap();
    assert_eq!(labels(store.as_ref()), ["device"]);
}

/// Lifecycle: AlreadyExists, promote, list, delete, NotFound.
pub fn lifecycle(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let current = KeyLabel::new("device").unwrap();
    let pending = current.pending();
    let old = store.generate(&current, KeyAlgorithm::EcP256).unwrap();
    let err = store.generate(&current, KeyAlgorithm::EcP256).unwrap_err();
    assert!(matches!(err, KeyStoreError::AlreadyExists { .. }), "{err}");
    let new = store.generate(&pending, KeyAlgorithm::EcP256).unwrap();
    let names = labels(store.as_ref());
    assert!(
        names.contains(&"device".to_string()) && names.contains(&"device.pending".to_string()),
        "{names:?}"
    );

    let promoted = store.promote(&pending, &current).unwrap();
    assert_eq!(promoted.public_key, new.public_key);
    assert_ne!(promoted.public_key, old.public_key);
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
    assert!(store.info(&pending).unwrap_err().is_not_found());
    let sig = store
        .sign(&current, SignatureScheme::EcdsaSha256, b"after promote")
        .unwrap();
    new.public_key
        .verify(SignatureScheme::EcdsaSha256, b"after promote", &sig)
        .unwrap();
    let names = labels(store.as_ref());
    assert_eq!(
        names.iter().filter(|l| l.starts_with("device")).count(),
        1,
        "{names:?}"
    );

    store.delete(&current).unwrap();
    assert!(store.info(&current).unwrap_err().is_not_found());
    assert!(store.delete(&current).unwrap_err().is_not_found());
    assert!(store
        .sign(&current, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err()
        .is_not_found());
}

/// Promote replaces the current key with the pending one (of another
/// algorithm here), removes the pending label, leaves other keys alone,
/// works into an empty label, and a missing pending key changes nothing.
pub fn promote(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let current = label("device");
    let pending = current.pending();
    let old = store.generate(&current, KeyAlgorithm::EcP256).unwrap();
    let new = store.generate(&pending, KeyAlgorithm::EcP384).unwrap();
    let other = store
        .generate(&label("claim"), KeyAlgorithm::EcP256)
        .unwrap();
    assert_eq!(
        labels(store.as_ref()),
        ["claim", "device", "device.pending"]
    );

    let promoted = store.promote(&pending, &current).unwrap();
    assert_eq!(promoted.public_key, new.public_key);
    assert_eq!(promoted.label, current);
    assert_ne!(promoted.public_key, old.public_key);
    assert_ne!(old.public_key, new.public_key);
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
    assert!(matches!(
        store.info(&pending).unwrap_err(),
        KeyStoreError::NotFound { .. }
    ));
    let sig = store
        .sign(&current, SignatureScheme::EcdsaSha384, b"after promote")
        .unwrap();
    new.public_key
        .verify(SignatureScheme::EcdsaSha384, b"after promote", &sig)
        .unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].public_key, other.public_key);
    assert_eq!(listed[1].public_key, new.public_key);
    assert_eq!(labels(store.as_ref()), ["claim", "device"]);

    // Promoting into an empty label works too.
    let fresh = store
        .generate(&label("other.pending"), KeyAlgorithm::EcP256)
        .unwrap();
    let promoted = store
        .promote(&label("other.pending"), &label("other"))
        .unwrap();
    assert_eq!(promoted.public_key, fresh.public_key);
    assert!(store
        .info(&label("other.pending"))
        .unwrap_err()
        .is_not_found());

    // Promoting a pending key that is not there is NotFound and leaves the
    // current key alone.
    let err = store.promote(&pending, &current).unwrap_err();
    assert!(matches!(err, KeyStoreError::NotFound { .. }), "{err}");
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
}

/// Delete destroys the key and only that key; deleting it again is
/// `NotFound`, and the label is free for a new key.
pub fn delete(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let l = label("device");
    store.generate(&l, KeyAlgorithm::Rsa2048).unwrap();
    let keep = store
        .generate(&label("keep"), KeyAlgorithm::EcP256)
        .unwrap();
    store.delete(&l).unwrap();
    assert!(matches!(
        store.info(&l).unwrap_err(),
        KeyStoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.delete(&l).unwrap_err(),
        KeyStoreError::NotFound { .. }
    ));
    assert!(matches!(
        store
            .sign(&l, SignatureScheme::RsaPkcs1Sha256, b"x")
            .unwrap_err(),
        KeyStoreError::NotFound { .. }
    ));
    assert_eq!(
        store.info(&label("keep")).unwrap().public_key,
        keep.public_key
    );
    let left = store.list().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].public_key, keep.public_key);

    let again = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let sig = store
        .sign(&l, SignatureScheme::EcdsaSha256, b"a new key")
        .unwrap();
    again
        .public_key
        .verify(SignatureScheme::EcdsaSha256, b"a new key", &sig)
        .unwrap();
}

/// List reports every key, sorted by label, with what generate reported.
pub fn list(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    assert!(store.list().unwrap().is_empty());
    let a = store
        .generate(&label("claim"), KeyAlgorithm::EcP256)
        .unwrap();
    let b = store
        .generate(&label("device"), KeyAlgorithm::Rsa2048)
        .unwrap();
    let listed = store.list().unwrap();
    let names: Vec<_> = listed.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(names, vec!["claim", "device"]);
    for (listed, generated) in listed.iter().zip([&a, &b]) {
        assert_eq!(listed.public_key, generated.public_key, "{}", listed.label);
        assert_eq!(listed.reference, generated.reference, "{}", listed.label);
        assert_eq!(listed.backend, caps.backend, "{}", listed.label);
    }
}

/// Send + Sync: rustls may sign on any thread. Two keys used in turn also
/// make a store that keeps one key loaded (the TPM's blob cache) reload it.
pub fn signs_from_many_threads(s: &mut Subject, _caps: &Caps) {
    let store = Arc::clone(s.store());
    let keys: Vec<(KeyLabel, PublicKey)> = ["a", "b"]
        .iter()
        .map(|n| {
            let l = label(n);
            let info = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
            (l, info.public_key)
        })
        .collect();
    let keys = Arc::new(keys);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            let keys = Arc::clone(&keys);
            std::thread::spawn(move || {
                for i in 0..20 {
                    let (l, public) = &keys[(t + i) % 2];
                    let msg = format!("thread {t} message {i}");
                    let sig = store
                        .sign(l, SignatureScheme::EcdsaSha256, msg.as_bytes())
                        .unwrap();
                    public
                        .verify(SignatureScheme::EcdsaSha256, msg.as_bytes(), &sig)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Generated and imported keys are still there, and sign, after the store
/// is closed and opened again.
pub fn keys_survive_reopening_the_store(s: &mut Subject, _caps: &Caps) {
    let l = label("device");
    let info = s.store().generate(&l, KeyAlgorithm::EcP256).unwrap();
    let claim = label("claim");
    let (pem, spki) = software_key_pem(KeyAlgorithm::EcP256, "pkcs8");
    s.store()
        .import(&claim, &PrivateKeyMaterial::from_pem(&pem).unwrap())
        .unwrap();
    let original = PublicKey::from_spki_der(&spki).unwrap();

    s.reopen();
    let store = s.store();
    for (l, public) in [(&l, &info.public_key), (&claim, &original)] {
        assert_eq!(&store.info(l).unwrap().public_key, public, "{l}");
        let sig = store.sign(l, SignatureScheme::EcdsaSha256, b"m").unwrap();
        public
            .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
            .unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    assert_eq!(labels(store.as_ref()), ["claim", "device"]);
}

/// A store with hardware that has an identity names it, the same after a
/// reopen; the others have none.
pub fn hardware_id(s: &mut Subject, caps: &Caps) {
    match (caps.hardware_id, s.store().hardware_id()) {
        (false, None) => {}
        (true, Some(Ok(id))) => {
            assert!(!id.is_empty());
            s.reopen();
            let again = s.store().hardware_id().expect("still an id").unwrap();
            assert_eq!(again, id, "not stable");
        }
        (expected, got) => panic!(
            "{}: hardware id expected: {expected}, got {got:?}",
            caps.backend
        ),
    }
}

/// A CSR signed by the store for a key of each algorithm passes
/// `openssl req -verify` and carries that key.
pub fn csr_signed_by_store_verifies_with_openssl(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    let dir = tempfile::tempdir().unwrap();
    for &alg in caps.algorithms {
        let label = KeyLabel::new(format!("csr-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        super::pki::assert_csr_carries_store_key(store, dir.path(), &info);
    }
}

/// Mutual TLS completes over TLS 1.2 and 1.3 with a store key of each
/// algorithm as the client key.
pub fn mutual_tls_with_store_key_over_tls12_and_tls13(s: &mut Subject, caps: &Caps) {
    let store = s.store();
    let ca = super::pki::TestCa::new();
    for &alg in caps.algorithms {
        let label = KeyLabel::new(format!("tls-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        super::pki::assert_mutual_tls_both_versions(&ca, store, &info);
    }
}

/// A client certificate of another key is refused when the TLS
/// configuration is made, not in a handshake.
pub fn certificate_of_another_key_is_refused_before_any_handshake(s: &mut Subject, _caps: &Caps) {
    let store = s.store();
    let ca = super::pki::TestCa::new();
    let a: KeyInfo = store
        .generate(&KeyLabel::new("a").unwrap(), KeyAlgorithm::EcP256)
        .unwrap();
    let b = store
        .generate(&KeyLabel::new("b").unwrap(), KeyAlgorithm::EcP256)
        .unwrap();
    let cert_for_a = ca.issue_client(store.clone(), &a);
    let err =
        prov_agent::crypto::client_config(&[ca.der()], vec![cert_for_a], store.clone(), &b, None)
            .unwrap_err();
    assert!(err.to_string().contains("does not match key b"), "{err}");
}
