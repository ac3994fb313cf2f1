//! The PKCS#11 key store on SoftHSM: the conformance suite, and what is
//! PKCS#11's own (RFC 7512 URIs, CKA attributes of the objects on the token,
//! PIN handling and login, crash recovery of promote, other programs on the
//! same token). Every test initialises its own token.
#![cfg(feature = "pkcs11")]

mod common;

use std::sync::Arc;

use common::conformance::{Caps, Subject};
use common::softhsm::{self, SoftHsm};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use prov_agent::keystore::pkcs11::{Pkcs11KeyStore, Pkcs11Uri, UriError};
use prov_agent::keystore::{
    Backend, KeyAlgorithm, KeyLabel, KeyStore, KeyStoreError, KeyStoreSettings, PrivateKeyMaterial,
    PublicKey, SignatureScheme,
};

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn open(hsm: &SoftHsm) -> Pkcs11KeyStore {
    Pkcs11KeyStore::open(&hsm.settings()).expect("open key store")
}

/// A fresh token, opened as the agent opens its key store (through
/// `keystore::open`, which must dispatch to PKCS#11).
fn subject() -> Subject {
    let hsm = SoftHsm::new("conformance");
    let settings = KeyStoreSettings::Pkcs11(hsm.settings());
    Subject::new(hsm, move || {
        prov_agent::keystore::open(&settings).expect("open key store")
    })
}

const CAPS: Caps = Caps::all(Backend::Pkcs11);

mod conformance {
    use super::*;
    crate::keystore_suite!(subject(), CAPS);
}

/// A key made in software, as a PEM in `format`, with its public key.
fn software_key(alg: KeyAlgorithm, format: &str) -> (String, PublicKey) {
    let (pem, spki) = common::conformance::software_key_pem(alg, format);
    (pem.to_string(), PublicKey::from_spki_der(&spki).unwrap())
}

fn objects(session: &Session, class: ObjectClass, l: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(l.as_bytes().to_vec()),
        ])
        .unwrap()
}

/// C_GetAttributeValue of `attr` answers CKR_ATTRIBUTE_SENSITIVE.
fn is_sensitive(session: &Session, h: ObjectHandle, attr: AttributeType) -> bool {
    matches!(
        session.get_attribute_info(h, &[attr]).unwrap().as_slice(),
        [AttributeInfo::Sensitive]
    )
}

/// The private key labelled `l` reads back sensitive and not extractable,
/// and its secret value cannot be read.
fn assert_key_stays_inside(session: &Session, l: &str, secret: AttributeType) {
    let private = objects(session, ObjectClass::PRIVATE_KEY, l);
    assert_eq!(private.len(), 1, "{l}");
    let attrs = session
        .get_attributes(
            private[0],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
            ],
        )
        .unwrap();
    // Signing only: a generated key loses CKA_DECRYPT after
    // C_GenerateKeyPair (tpm2-pkcs11 refuses it in the template).
    for expected in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
    ] {
        assert!(
            attrs.contains(&expected),
            "{l}: {expected:?} not in {attrs:?}"
        );
    }
    assert!(is_sensitive(session, private[0], secret), "{l}: {secret:?}");
    let read = session.get_attributes(private[0], &[secret]).unwrap();
    assert!(
        read.is_empty(),
        "{l}: {secret:?} was readable: {} attributes",
        read.len()
    );
    // The public half is there, with the same CKA_ID.
    let public = objects(session, ObjectClass::PUBLIC_KEY, l);
    assert_eq!(public.len(), 1, "{l}");
    let id = |h| {
        session
            .get_attributes(h, &[AttributeType::Id])
            .unwrap()
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(id) => Some(id),
                _ => None,
            })
            .unwrap()
    };
    let id_private = id(private[0]);
    assert_eq!(id_private.len(), 16, "{l}");
    assert_eq!(id_private, id(public[0]), "{l}");
}

#[test]
fn private_keys_read_back_sensitive_and_not_extractable() {
    let hsm = SoftHsm::new("sensitive");
    let store = open(&hsm);
    store
        .generate(&label("gen-ec"), KeyAlgorithm::EcP256)
        .unwrap();
    store
        .generate(&label("gen-rsa"), KeyAlgorithm::Rsa2048)
        .unwrap();
    let (pem, _) = software_key(KeyAlgorithm::EcP384, "pkcs8");
    store
        .import(
            &label("imp-ec"),
            &PrivateKeyMaterial::from_pem(&pem).unwrap(),
        )
        .unwrap();
    let (pem, _) = software_key(KeyAlgorithm::Rsa2048, "pkcs1");
    store
        .import(
            &label("imp-rsa"),
            &PrivateKeyMaterial::from_pem(&pem).unwrap(),
        )
        .unwrap();

    let session = hsm.user_session();
    assert_key_stays_inside(&session, "gen-ec", AttributeType::Value);
    assert_key_stays_inside(&session, "imp-ec", AttributeType::Value);
    assert_key_stays_inside(&session, "gen-rsa", AttributeType::PrivateExponent);
    assert_key_stays_inside(&session, "imp-rsa", AttributeType::PrivateExponent);
    for rsa in ["gen-rsa", "imp-rsa"] {
        let h = objects(&session, ObjectClass::PRIVATE_KEY, rsa)[0];
        for secret in [
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Coefficient,
        ] {
            assert!(is_sensitive(&session, h, secret), "{rsa}: {secret:?}");
        }
    }
}

#[test]
fn wrong_pin_is_bad_pin() {
    let hsm = SoftHsm::new("badpin");
    let err = Pkcs11KeyStore::open(&hsm.settings_with_pin("not-the-pin")).unwrap_err();
    assert!(matches!(err, KeyStoreError::BadPin { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
    assert!(text.contains("C_Login"), "{text}");
    assert!(!text.contains("not-the-pin"), "the PIN leaked: {text}");
    assert!(!format!("{err:?}").contains("not-the-pin"));
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), prov_agent::error::ErrorKind::Config);
    // The token now says a wrong PIN was given: the agent does not try
    // again, even with the right PIN, so that a wrong PIN source cannot
    // spend the token's tries one restart at a time.
    let refused = Pkcs11KeyStore::open(&hsm.settings()).unwrap_err();
    assert!(matches!(refused, KeyStoreError::BadPin { .. }), "{refused}");
    let text = refused.to_string();
    assert!(text.contains("did not try to log in"), "{text}");
    assert!(text.contains("pkcs11-tool"), "{text}");
    // A login by hand with the right PIN clears the count; then it opens.
    drop(hsm.user_session());
    open(&hsm);
}

#[test]
fn missing_pin_file_is_a_clear_error() {
    let hsm = SoftHsm::new("nopinfile");
    let mut settings = hsm.settings();
    settings.pin = prov_agent::keystore::SecretSource::File("/nonexistent/gw.pin".into());
    let err = Pkcs11KeyStore::open(&settings).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/gw.pin"), "{err}");
}

#[test]
fn missing_token_names_the_label_and_the_tokens_present() {
    let hsm = SoftHsm::new("present");
    let mut settings = hsm.settings();
    settings.token_label = "no-such-token".into();
    let err = Pkcs11KeyStore::open(&settings).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unavailable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("\"no-such-token\""), "{text}");
    assert!(text.contains(&format!("\"{}\"", hsm.token_label)), "{text}");
    assert!(text.contains("token_label"), "no hint: {text}");
    // A wrong label does not fix itself: no point retrying.
    assert!(!err.is_retryable());
}

#[test]
fn missing_module_is_a_clear_error() {
    let hsm = SoftHsm::new("nomodule");
    let mut settings = hsm.settings();
    settings.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11KeyStore::open(&settings).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/libpkcs11.so"),
        "{err}"
    );
}

/// A missing key is `NotFound` (see the conformance suite); here: its
/// message names the key's URI and how to fix it.
#[test]
fn missing_key_names_its_uri_with_a_hint() {
    let hsm = SoftHsm::new("nokey");
    let store = open(&hsm);
    let l = label("claim");
    for err in [
        store.info(&l).unwrap_err(),
        store
            .sign(&l, SignatureScheme::EcdsaSha256, b"x")
            .unwrap_err(),
        store.delete(&l).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "pkcs11:token={};object=claim;type=private",
                hsm.token_label
            )),
            "{text}"
        );
    }
    let err = store.info(&l).unwrap_err().to_string();
    assert!(err.contains("import"), "no hint: {err}");
}

/// Generate and import refuse a taken label (`AlreadyExists`, see the
/// conformance suite); here: neither leaves an object behind on the token.
#[test]
fn a_refused_generate_or_import_adds_no_object() {
    let hsm = SoftHsm::new("taken");
    let store = open(&hsm);
    let l = label("device");
    store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    store.generate(&l, KeyAlgorithm::EcP256).unwrap_err();
    let (pem, _) = software_key(KeyAlgorithm::EcP256, "pkcs8");
    store
        .import(&l, &PrivateKeyMaterial::from_pem(&pem).unwrap())
        .unwrap_err();
    // Nothing was added.
    let session = hsm.user_session();
    assert_eq!(
        objects(&session, ObjectClass::PRIVATE_KEY, "device").len(),
        1
    );
    assert_eq!(
        objects(&session, ObjectClass::PUBLIC_KEY, "device").len(),
        1
    );
}

#[test]
fn reference_is_an_rfc7512_uri_of_the_key() {
    let hsm = SoftHsm::new("uri");
    let store = open(&hsm);
    let info = store
        .generate(&label("device.pending"), KeyAlgorithm::EcP256)
        .unwrap();
    assert_eq!(
        info.reference,
        format!(
            "pkcs11:token={};object=device.pending;type=private",
            hsm.token_label
        )
    );
    let uri = Pkcs11Uri::parse(&info.reference).unwrap();
    assert_eq!(uri.token.as_deref(), Some(hsm.token_label.as_str()));
    assert_eq!(uri.object.as_deref(), Some("device.pending"));
}

#[test]
fn uri_parser_rejects_pin_value() {
    let err =
        Pkcs11Uri::parse("pkcs11:token=gw;object=claim;type=private?pin-value=123456").unwrap_err();
    assert_eq!(err, UriError::PinValue);
    let text = err.to_string();
    assert!(!text.contains("123456"), "{text}");
    assert!(text.contains("PIN source"), "{text}");
}

/// What promote does through the trait is in the conformance suite; here:
/// what it leaves on the token.
#[test]
fn promote_leaves_one_object_pair_under_the_label() {
    let hsm = SoftHsm::new("promote");
    let store = open(&hsm);
    let current = label("device");
    let pending = current.pending();
    store.generate(&current, KeyAlgorithm::EcP256).unwrap();
    store.generate(&pending, KeyAlgorithm::EcP384).unwrap();
    store.promote(&pending, &current).unwrap();

    // The old key is gone from the token, both halves; the new one carries
    // the label on both halves.
    let session = hsm.user_session();
    assert_eq!(
        objects(&session, ObjectClass::PRIVATE_KEY, "device").len(),
        1
    );
    assert_eq!(
        objects(&session, ObjectClass::PUBLIC_KEY, "device").len(),
        1
    );
    for gone in ["device.pending", "device.old"] {
        assert!(objects(&session, ObjectClass::PRIVATE_KEY, gone).is_empty());
        assert!(objects(&session, ObjectClass::PUBLIC_KEY, gone).is_empty());
    }
}

#[test]
fn promotion_interrupted_before_the_new_key_got_its_label_rolls_back() {
    let hsm = SoftHsm::new("crash1");
    let store = open(&hsm);
    // State after "current -> current.old", before "pending -> current".
    let old = store
        .generate(&label("device.old"), KeyAlgorithm::EcP256)
        .unwrap();
    let new = store
        .generate(&label("device.pending"), KeyAlgorithm::EcP256)
        .unwrap();
    let current = label("device");
    // Still the old key under `device`, for every reader.
    let info = store.info(&current).unwrap();
    assert_eq!(info.public_key, old.public_key);
    let sig = store
        .sign(&current, SignatureScheme::EcdsaSha256, b"m")
        .unwrap();
    old.public_key
        .verify(SignatureScheme::EcdsaSha256, b"m", &sig)
        .unwrap();
    let listed: Vec<_> = store.list().unwrap().into_iter().map(|k| k.label).collect();
    assert_eq!(listed, vec![current.clone(), label("device.pending")]);
    drop(store);

    // Reopening rolls back: the old key has its label again, the pending
    // key waits for another attempt, which then succeeds.
    let store = open(&hsm);
    let session = hsm.user_session();
    assert_eq!(
        objects(&session, ObjectClass::PRIVATE_KEY, "device").len(),
        1
    );
    assert!(objects(&session, ObjectClass::PRIVATE_KEY, "device.old").is_empty());
    assert_eq!(store.info(&current).unwrap().public_key, old.public_key);
    store.promote(&current.pending(), &current).unwrap();
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
}

#[test]
fn promotion_interrupted_before_the_old_key_was_destroyed_completes() {
    let hsm = SoftHsm::new("crash2");
    let store = open(&hsm);
    // State after "pending -> current", before the old key was destroyed.
    let new = store
        .generate(&label("device"), KeyAlgorithm::EcP256)
        .unwrap();
    store
        .generate(&label("device.old"), KeyAlgorithm::EcP256)
        .unwrap();
    let current = label("device");
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
    let listed: Vec<_> = store.list().unwrap().into_iter().map(|k| k.label).collect();
    assert_eq!(listed, vec![current.clone()]);
    drop(store);

    let store = open(&hsm);
    let session = hsm.user_session();
    assert!(objects(&session, ObjectClass::PRIVATE_KEY, "device.old").is_empty());
    assert!(objects(&session, ObjectClass::PUBLIC_KEY, "device.old").is_empty());
    assert_eq!(store.info(&current).unwrap().public_key, new.public_key);
}

/// What delete does through the trait is in the conformance suite; here:
/// both halves leave the token, and only those.
#[test]
fn delete_destroys_both_halves() {
    let hsm = SoftHsm::new("delete");
    let store = open(&hsm);
    let l = label("device");
    store.generate(&l, KeyAlgorithm::Rsa2048).unwrap();
    store
        .generate(&label("keep"), KeyAlgorithm::EcP256)
        .unwrap();
    store.delete(&l).unwrap();
    let session = hsm.user_session();
    assert!(objects(&session, ObjectClass::PRIVATE_KEY, "device").is_empty());
    assert!(objects(&session, ObjectClass::PUBLIC_KEY, "device").is_empty());
    assert_eq!(objects(&session, ObjectClass::PRIVATE_KEY, "keep").len(), 1);
    assert_eq!(objects(&session, ObjectClass::PUBLIC_KEY, "keep").len(), 1);
}

#[test]
fn list_reports_the_agents_keys_only() {
    use cryptoki::mechanism::Mechanism;
    let hsm = SoftHsm::new("list");
    let store = open(&hsm);
    let a = store
        .generate(&label("claim"), KeyAlgorithm::EcP256)
        .unwrap();
    let b = store
        .generate(&label("device"), KeyAlgorithm::Rsa2048)
        .unwrap();
    // A key someone else put on the token, under a label that is not a
    // key label of the agent.
    {
        let ctx = softhsm::context();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == hsm.token_label)
            .unwrap();
        let session = ctx.open_rw_session(slot).unwrap();
        let l = b"someone else's key".to_vec();
        session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::Label(l.clone()),
                    Attribute::EcParams(vec![
                        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                    ]),
                ],
                &[Attribute::Token(true), Attribute::Label(l)],
            )
            .unwrap();
    }
    let listed = store.list().unwrap();
    let labels: Vec<_> = listed.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, vec!["claim", "device"]);
    assert_eq!(listed[0].public_key, a.public_key);
    assert_eq!(listed[1].public_key, b.public_key);
    assert!(listed
        .iter()
        .all(|k| k.backend == prov_agent::keystore::Backend::Pkcs11));
}

/// Signing from many threads is in the conformance suite; here: a second
/// store in the same process shares the token (and its login) with the
/// first.
#[test]
fn two_stores_in_one_process_share_a_token() {
    let hsm = SoftHsm::new("threads");
    let store = Arc::new(open(&hsm));
    let l = label("device");
    let public = store.generate(&l, KeyAlgorithm::EcP256).unwrap().public_key;
    // A second store in the same process: the token is already logged in.
    let second = open(&hsm);
    assert_eq!(second.info(&l).unwrap().public_key, public);
    for (i, s) in [&*store, &second].into_iter().enumerate() {
        let msg = format!("store {i}");
        let sig = s
            .sign(&l, SignatureScheme::EcdsaSha256, msg.as_bytes())
            .unwrap();
        public
            .verify(SignatureScheme::EcdsaSha256, msg.as_bytes(), &sig)
            .unwrap();
    }
}

#[test]
fn sign_follows_a_key_replaced_behind_the_stores_back() {
    let hsm = SoftHsm::new("replaced");
    let store = open(&hsm);
    let l = label("device");
    let first = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    // Signing once puts the key's handle in the store's cache.
    let sig = store.sign(&l, SignatureScheme::EcdsaSha256, b"1").unwrap();
    first
        .public_key
        .verify(SignatureScheme::EcdsaSha256, b"1", &sig)
        .unwrap();
    // Another store (another program, as far as this one knows) replaces it.
    let other = open(&hsm);
    other.delete(&l).unwrap();
    let second = other.generate(&l, KeyAlgorithm::EcP256).unwrap();
    let sig = store.sign(&l, SignatureScheme::EcdsaSha256, b"2").unwrap();
    second
        .public_key
        .verify(SignatureScheme::EcdsaSha256, b"2", &sig)
        .unwrap();
    // And once it is deleted for good, signing says so.
    other.delete(&l).unwrap();
    let err = store
        .sign(&l, SignatureScheme::EcdsaSha256, b"3")
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::NotFound { .. }), "{err}");
}

#[test]
fn import_of_a_key_that_does_not_match_its_public_key_is_undone() {
    let hsm = SoftHsm::new("mismatch");
    let store = open(&hsm);
    let (pem_a, _) = software_key(KeyAlgorithm::EcP256, "pkcs8");
    let (pem_b, _) = software_key(KeyAlgorithm::EcP256, "pkcs8");
    let a = PrivateKeyMaterial::from_pem(&pem_a).unwrap();
    let b = PrivateKeyMaterial::from_pem(&pem_b).unwrap();
    // A's private scalar with B's public point.
    let (
        PrivateKeyMaterial::Ec {
            algorithm,
            scalar,
            pkcs8_der,
            ..
        },
        PrivateKeyMaterial::Ec { public_point, .. },
    ) = (a, b)
    else {
        unreachable!()
    };
    let broken = PrivateKeyMaterial::Ec {
        algorithm,
        scalar,
        public_point,
        pkcs8_der,
    };
    let l = label("claim");
    let err = store.import(&l, &broken).unwrap_err();
    assert!(matches!(err, KeyStoreError::BadSignature), "{err}");
    // Nothing half done: no object under the label, and the label is free.
    let session = hsm.user_session();
    assert!(objects(&session, ObjectClass::PRIVATE_KEY, "claim").is_empty());
    assert!(objects(&session, ObjectClass::PUBLIC_KEY, "claim").is_empty());
    let (pem, original) = software_key(KeyAlgorithm::EcP256, "pkcs8");
    let info = store
        .import(&l, &PrivateKeyMaterial::from_pem(&pem).unwrap())
        .unwrap();
    assert_eq!(info.public_key, original);
}

#[test]
fn store_logs_in_again_after_the_token_logged_out() {
    let hsm = SoftHsm::new("relogin");
    let store = open(&hsm);
    let l = label("device");
    let info = store.generate(&l, KeyAlgorithm::EcP256).unwrap();
    store
        .sign(&l, SignatureScheme::EcdsaSha256, b"before")
        .unwrap();
    // A login is per process and token: logging out anywhere logs the
    // store's session out too.
    hsm.user_session().logout().unwrap();
    for scheme_msg in [&b"after"[..], &b"again"[..]] {
        let sig = store
            .sign(&l, SignatureScheme::EcdsaSha256, scheme_msg)
            .unwrap();
        info.public_key
            .verify(SignatureScheme::EcdsaSha256, scheme_msg, &sig)
            .unwrap();
    }
    hsm.user_session().logout().unwrap();
    assert_eq!(store.info(&l).unwrap().public_key, info.public_key);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn public_half_left_with_the_pending_label_is_fixed_at_open() {
    let hsm = SoftHsm::new("halfway");
    let store = open(&hsm);
    // A promotion that crashed between relabelling the private half and
    // the public half; the current label is as long as labels get.
    let long = "d".repeat(64);
    let info = store.generate(&label(&long), KeyAlgorithm::EcP256).unwrap();
    let session = hsm.user_session();
    let public = objects(&session, ObjectClass::PUBLIC_KEY, &long)[0];
    let pending = format!("{long}.pending");
    session
        .update_attributes(public, &[Attribute::Label(pending.as_bytes().to_vec())])
        .unwrap();
    // And an old key left behind under `<label>.old` (68 characters).
    store.generate(&label("tmp"), KeyAlgorithm::EcP256).unwrap();
    let tmp = objects(&session, ObjectClass::PRIVATE_KEY, "tmp")[0];
    let old = format!("{long}.old");
    session
        .update_attributes(tmp, &[Attribute::Label(old.as_bytes().to_vec())])
        .unwrap();
    drop(store);

    let store = open(&hsm);
    assert_eq!(objects(&session, ObjectClass::PUBLIC_KEY, &long).len(), 1);
    assert!(objects(&session, ObjectClass::PUBLIC_KEY, &pending).is_empty());
    assert!(objects(&session, ObjectClass::PRIVATE_KEY, &old).is_empty());
    assert_eq!(
        store.info(&label(&long)).unwrap().public_key,
        info.public_key
    );
}

/// Puts a P-256 private key labelled `claim` on `hsm`'s token as another
/// tool might, with the protection attributes given; returns its scalar.
fn plant_claim_key(
    hsm: &SoftHsm,
    id: u8,
    private: bool,
    sensitive: bool,
    extractable: bool,
) -> p256::SecretKey {
    let scalar = p256::SecretKey::random(&mut rand::thread_rng());
    let _exclusive = common::token_store_exclusive();
    let session = hsm.user_session();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(extractable),
            Attribute::Sign(true),
            Attribute::Label(b"claim".to_vec()),
            Attribute::Id(vec![id]),
            // DER OID of P-256.
            Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]),
            Attribute::Value(scalar.to_bytes().to_vec()),
        ])
        .unwrap();
    scalar
}

/// A private key on the token whose value can be read in clear (not
/// CKA_SENSITIVE, CKA_EXTRACTABLE: made by a careless tool) is refused by
/// name when the agent looks it up, and signs nothing.
#[test]
fn a_key_whose_value_can_be_read_is_refused() {
    let hsm = SoftHsm::new("unprotected");
    plant_claim_key(&hsm, 7, true, false, true);
    let store = open(&hsm);
    let label = KeyLabel::new("claim").unwrap();
    let err = store.info(&label).unwrap_err().to_string();
    assert!(err.contains("\"claim\""), "{err}");
    assert!(err.contains("not CKA_SENSITIVE"), "{err}");
    assert!(err.contains("CKA_EXTRACTABLE"), "{err}");
    assert!(store
        .sign(&label, SignatureScheme::EcdsaSha256, b"message")
        .is_err());
}

/// A private key on the token that cannot be read but is not CKA_PRIVATE
/// (usable without a login, made by another tool) is used, with a warning
/// that names the key and what is weaker.
#[test]
fn a_key_usable_without_a_login_is_used_with_a_warning() {
    let hsm = SoftHsm::new("not-private");
    let scalar = plant_claim_key(&hsm, 8, false, true, false);
    let store = open(&hsm);
    let label = KeyLabel::new("claim").unwrap();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogBuffer(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let signature = tracing::subscriber::with_default(subscriber, || {
        store.sign(&label, SignatureScheme::EcdsaSha256, b"message")
    })
    .unwrap();
    let public = PublicKey::from_spki_der(
        p256::pkcs8::EncodePublicKey::to_public_key_der(&scalar.public_key())
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    public
        .verify(SignatureScheme::EcdsaSha256, b"message", &signature)
        .unwrap();
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("not CKA_PRIVATE"), "{logs}");
    assert!(logs.contains("claim"), "{logs}");
}

/// A log sink for [`a_key_usable_without_a_login_is_used_with_a_warning`].
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
