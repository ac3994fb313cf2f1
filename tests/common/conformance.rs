//! Checks every KeyStore backend must pass; each backend's test file runs
//! them against its own store (file, a fresh swtpm, a fresh SoftHSM token).

use std::sync::Arc;

use prov_agent::keystore::{
    KeyAlgorithm, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial, SignatureScheme,
};

pub fn schemes_for(alg: KeyAlgorithm) -> Vec<SignatureScheme> {
    use SignatureScheme::*;
    [
        EcdsaSha256,
        EcdsaSha384,
        RsaPkcs1Sha256,
        RsaPkcs1Sha384,
        RsaPkcs1Sha512,
        RsaPssSha256,
        RsaPssSha384,
        RsaPssSha512,
    ]
    .into_iter()
    .filter(|s| alg.supports(*s))
    .collect()
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

/// Generate a key of each algorithm, sign with every scheme it supports and
/// verify with ring against the public key the store reports.
pub fn generate_sign_verify(store: &Arc<dyn KeyStore>, algorithms: &[KeyAlgorithm]) {
    for &alg in algorithms {
        let label = KeyLabel::new(format!("gen-{alg}")).unwrap();
        let info = store.generate(&label, alg).unwrap();
        assert_eq!(info.algorithm(), alg);
        assert_eq!(info.backend, store.backend());
        for scheme in schemes_for(alg) {
            let msg = format!("message for {alg} {scheme:?}");
            let sig = store.sign(&label, scheme, msg.as_bytes()).unwrap();
            info.public_key
                .verify(scheme, msg.as_bytes(), &sig)
                .unwrap_or_else(|e| panic!("{alg} {scheme:?}: {e}"));
            // And a signature over other bytes must not verify.
            assert!(info.public_key.verify(scheme, b"other", &sig).is_err());
        }
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
pub fn import_sign_verify(store: &Arc<dyn KeyStore>, cases: &[(KeyAlgorithm, &str)]) {
    for &(alg, form) in cases {
        let (pem, original_spki) = software_key_pem(alg, form);
        let material = PrivateKeyMaterial::from_pem(&pem).unwrap();
        let label = KeyLabel::new(format!("imp-{alg}-{form}")).unwrap();
        let info = store.import(&label, &material).unwrap();
        drop(material);
        assert_eq!(
            info.public_key.spki_der(),
            &original_spki[..],
            "{alg} {form}"
        );
        let original = prov_agent::keystore::PublicKey::from_spki_der(&original_spki).unwrap();
        for scheme in schemes_for(alg) {
            let sig = store.sign(&label, scheme, b"imported").unwrap();
            original
                .verify(scheme, b"imported", &sig)
                .unwrap_or_else(|e| panic!("{alg} {form} {scheme:?}: {e}"));
        }
        store.delete(&label).unwrap();
    }
}

/// Lifecycle: AlreadyExists, promote, list, delete, NotFound.
pub fn lifecycle(store: &Arc<dyn KeyStore>) {
    let current = KeyLabel::new("device").unwrap();
    let pending = current.pending();
    let old = store.generate(&current, KeyAlgorithm::EcP256).unwrap();
    let err = store.generate(&current, KeyAlgorithm::EcP256).unwrap_err();
    assert!(matches!(err, KeyStoreError::AlreadyExists { .. }), "{err}");
    let new = store.generate(&pending, KeyAlgorithm::EcP256).unwrap();
    let labels: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|k| k.label.to_string())
        .collect();
    assert!(
        labels.contains(&"device".to_string()) && labels.contains(&"device.pending".to_string()),
        "{labels:?}"
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
    let labels: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|k| k.label.to_string())
        .collect();
    assert_eq!(
        labels.iter().filter(|l| l.starts_with("device")).count(),
        1,
        "{labels:?}"
    );

    store.delete(&current).unwrap();
    assert!(store.info(&current).unwrap_err().is_not_found());
    assert!(store.delete(&current).unwrap_err().is_not_found());
    assert!(store
        .sign(&current, SignatureScheme::EcdsaSha256, b"x")
        .unwrap_err()
        .is_not_found());
}
