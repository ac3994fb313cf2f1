//! Key objects on the token: making, importing, finding, relabelling and
//! destroying them.
//!
//! A key is a private key object and a public key object that share a
//! random 16-byte `CKA_ID`; `CKA_LABEL` holds the [`KeyLabel`]. The private
//! object is the one that counts: lookups by label go to private keys, and
//! the public object is found through the `CKA_ID`.

use std::ffi::c_ulong;

use cryptoki::context::Function;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroize;

use super::super::{KeyAlgorithm, KeyStoreError, PrivateKeyMaterial, PublicKey, Result};
use super::{error, BACKEND};

/// DER of the named-curve OID of P-256 (1.2.840.10045.3.1.7), as
/// `CKA_EC_PARAMS` holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the named-curve OID of P-384 (1.3.132.0.34).
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// A private key object found on the token.
#[derive(Clone, Debug)]
pub struct KeyObject {
    /// The `CKA_LABEL` the object carries (may be `<label>.old` during a
    /// promotion).
    pub object_label: String,
    pub private: ObjectHandle,
    pub id: Vec<u8>,
    pub algorithm: KeyAlgorithm,
}

fn ec_params(algorithm: KeyAlgorithm) -> Result<&'static [u8]> {
    match algorithm {
        KeyAlgorithm::EcP256 => Ok(P256_PARAMS),
        KeyAlgorithm::EcP384 => Ok(P384_PARAMS),
        other => Err(KeyStoreError::UnsupportedAlgorithm {
            what: format!("{other} is not an EC algorithm"),
        }),
    }
}

/// Wraps an EC point in a DER OCTET STRING, as `CKA_EC_POINT` wants it.
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the SEC1 point; some
/// modules return the bare point. Accepts both.
pub(super) fn unwrap_ec_point(value: &[u8], algorithm: KeyAlgorithm) -> Option<&[u8]> {
    let field = match algorithm {
        KeyAlgorithm::EcP256 => 32,
        KeyAlgorithm::EcP384 => 48,
        _ => return None,
    };
    let point_len = 2 * field + 1;
    if value.first() == Some(&0x04) && value.len() > 2 {
        let (len, header) = match value[1] {
            n if n < 0x80 => (n as usize, 2),
            0x81 if value.len() > 3 => (value[2] as usize, 3),
            _ => (usize::MAX, 0),
        };
        if len == point_len && value.len() == header + len {
            return Some(&value[header..]);
        }
    }
    (value.len() == point_len && value[0] == 0x04).then_some(value)
}

fn attr_err(op: &'static str, label: &str, what: &str) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: op.into(),
        detail: format!("object {label:?}: {what}"),
        code: None,
    }
}

/// All private key objects labelled exactly `label` on the token.
fn find_private_handles(session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| error::map("find private key", e))
}

/// The private key labelled `label`, if there is one. Two keys under one
/// label is an error: the store never makes that, so someone else did.
pub fn find(session: &Session, label: &str) -> Result<Option<KeyObject>> {
    let handles = find_private_handles(session, label)?;
    let Some(handle) = at_most_one(&handles, "find private key", |n| {
        format!(
            "{n} private keys are labelled {label:?} on the token; delete the extra ones \
             (pkcs11-tool --delete-object) so that the label names one key"
        )
    })?
    else {
        return Ok(None);
    };
    describe(session, handle, label).map(Some)
}

/// The one handle of `handles`, if any; more than one is an error whose
/// detail `too_many` gives for their number.
fn at_most_one(
    handles: &[ObjectHandle],
    op: &'static str,
    too_many: impl FnOnce(usize) -> String,
) -> Result<Option<ObjectHandle>> {
    match handles {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        many => Err(KeyStoreError::Backend {
            backend: BACKEND,
            op: op.into(),
            detail: too_many(many.len()),
            code: None,
        }),
    }
}

/// The private key whose CKA_ID is `id` (a key made by other tools; the
/// store knows it as `label`), if there is one; two is an error.
pub fn find_by_id(session: &Session, id: &[u8], label: &str) -> Result<Option<KeyObject>> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(|e| error::map("find private key by CKA_ID", e))?;
    let Some(handle) = at_most_one(&handles, "find private key by CKA_ID", |n| {
        format!(
            "{n} private keys have CKA_ID {} on the token; give the key {label:?} a CKA_ID of \
             its own",
            hex::encode(id)
        )
    })?
    else {
        return Ok(None);
    };
    let mut key = describe(session, handle, label)?;
    // Its own label, whatever it is, for messages and `keys list`.
    if let Ok(attrs) = session.get_attributes(handle, &[AttributeType::Label]) {
        for a in attrs {
            if let Attribute::Label(l) = a {
                key.object_label = String::from_utf8_lossy(&l).into_owned();
            }
        }
    }
    Ok(Some(key))
}

/// What is wrong with a private key's protection, as the token reports it:
/// not sensitive (the value could be read in clear), extractable (it could
/// leave wrapped), not private (usable without a login); with `made_here`,
/// also not always sensitive or not never extractable, as a key generated
/// in the token must be. An attribute the module does not report is not
/// held against it. The first value: whether the key's value is readable.
fn protection_problems(
    session: &Session,
    handle: ObjectHandle,
    made_here: bool,
) -> Result<(bool, Vec<&'static str>)> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Private,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
            ],
        )
        .map_err(|e| error::map("read private key protection", e))?;
    let mut readable = false;
    let mut wrong = Vec::new();
    for a in attrs {
        let a = if made_here { weakened(a) } else { a };
        match a {
            Attribute::Sensitive(false) => {
                readable = true;
                wrong.push("not CKA_SENSITIVE (its value can be read in clear)");
            }
            Attribute::Extractable(true) => {
                wrong.push("CKA_EXTRACTABLE (it can be exported wrapped)")
            }
            Attribute::Private(false) => wrong.push("not CKA_PRIVATE (usable without a login)"),
            Attribute::AlwaysSensitive(false) if made_here => {
                wrong.push("not CKA_ALWAYS_SENSITIVE")
            }
            Attribute::NeverExtractable(false) if made_here => {
                wrong.push("not CKA_NEVER_EXTRACTABLE")
            }
            _ => {}
        }
    }
    Ok((readable, wrong))
}

/// `a` as a module that let a key it generated be readable or exportable
/// at some point would report it, when a test asks for that
/// (`fault::tampers`; else `a` itself).
fn weakened(a: Attribute) -> Attribute {
    match a {
        Attribute::AlwaysSensitive(true)
            if crate::fault::tampers("pkcs11-generated-not-always-sensitive") =>
        {
            Attribute::AlwaysSensitive(false)
        }
        Attribute::NeverExtractable(true)
            if crate::fault::tampers("pkcs11-generated-not-never-extractable") =>
        {
            Attribute::NeverExtractable(false)
        }
        a => a,
    }
}

fn unprotected(label: &str, wrong: &[&str]) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: "check private key protection".into(),
        detail: format!(
            "private key {label:?} is {}: delete it and make it again (prov-agent claim \
             generate or import, or enroll --force), with a tool that sets CKA_SENSITIVE and \
             clears CKA_EXTRACTABLE",
            wrong.join(", ")
        ),
        code: None,
    }
}

/// A key the token has just generated that is not as protected as it must
/// be: the token is not one that keeps the agent's keys in the hardware.
fn weak_generated(label: &str, wrong: &[&str], destroyed: bool) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: "check private key protection".into(),
        detail: format!(
            "the private key {label:?} the token generated is {}: a key made in the token \
             must never have been readable or exportable; {}. Use a token (or a \
             configuration of it) that keeps generated keys sensitive and unextractable",
            wrong.join(", "),
            if destroyed {
                "the key was destroyed again"
            } else {
                "the key could not be destroyed: delete it by hand"
            }
        ),
        code: None,
    }
}

/// A key found on the token: refused if its value can be read in clear;
/// weaker protection (an extractable key, as tpm2-pkcs11 reports for a key
/// its own tool imported) is said, once per lookup.
fn check_found(session: &Session, handle: ObjectHandle, label: &str) -> Result<()> {
    let (readable, wrong) = protection_problems(session, handle, false)?;
    if readable {
        return Err(unprotected(label, &wrong));
    }
    if !wrong.is_empty() {
        tracing::warn!(
            key = label,
            "the private key is protected less than the agent's own keys: it is {}",
            wrong.join(", ")
        );
    }
    Ok(())
}

/// Reads what the store needs to know about a private key object, and
/// refuses one whose value can be read (see [`check_found`]).
fn describe(session: &Session, handle: ObjectHandle, label: &str) -> Result<KeyObject> {
    check_found(session, handle, label)?;
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::EcParams,
                AttributeType::Modulus,
            ],
        )
        .map_err(|e| error::map("read private key attributes", e))?;
    let (mut key_type, mut id, mut params, mut modulus) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Id(v) => id = Some(v),
            Attribute::EcParams(v) => params = Some(v),
            Attribute::Modulus(v) => modulus = Some(v),
            _ => {}
        }
    }
    let algorithm = match key_type {
        Some(KeyType::EC) => match params.as_deref() {
            Some(P256_PARAMS) => KeyAlgorithm::EcP256,
            Some(P384_PARAMS) => KeyAlgorithm::EcP384,
            _ => {
                return Err(KeyStoreError::UnsupportedAlgorithm {
                    what: format!("EC key {label:?} on a curve other than P-256 or P-384"),
                })
            }
        },
        Some(KeyType::RSA) => {
            let n = modulus
                .ok_or_else(|| attr_err("read key", label, "RSA key without CKA_MODULUS"))?;
            let bytes = n.iter().skip_while(|b| **b == 0).count();
            match bytes {
                256 => KeyAlgorithm::Rsa2048,
                384 => KeyAlgorithm::Rsa3072,
                _ => {
                    return Err(KeyStoreError::UnsupportedAlgorithm {
                        what: format!("RSA key {label:?} of {} bits", bytes * 8),
                    })
                }
            }
        }
        other => {
            return Err(KeyStoreError::UnsupportedAlgorithm {
                what: format!("key {label:?} of PKCS#11 key type {other:?}"),
            })
        }
    };
    Ok(KeyObject {
        object_label: label.to_string(),
        private: handle,
        id: id.unwrap_or_default(),
        algorithm,
    })
}

/// The public key object that belongs to `key` (same `CKA_ID`).
fn find_public(session: &Session, key: &KeyObject) -> Result<Option<ObjectHandle>> {
    if key.id.is_empty() {
        return Ok(None);
    }
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Id(key.id.clone()),
        ])
        .map_err(|e| error::map("find public key", e))?;
    Ok(handles.first().copied())
}

/// Reads the public key of `key` from its public key object.
pub fn public_key(session: &Session, key: &KeyObject) -> Result<PublicKey> {
    let public = find_public(session, key)?.ok_or_else(|| {
        attr_err(
            "read public key",
            &key.object_label,
            "no public key object shares its CKA_ID; re-import or regenerate the key",
        )
    })?;
    if key.algorithm.is_ec() {
        let attrs = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| error::map("read CKA_EC_POINT", e))?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| attr_err("read public key", &key.object_label, "no CKA_EC_POINT"))?;
        let raw = unwrap_ec_point(&point, key.algorithm).ok_or_else(|| {
            attr_err(
                "read public key",
                &key.object_label,
                "CKA_EC_POINT is not an uncompressed point of the key's curve",
            )
        })?;
        PublicKey::from_ec_point(key.algorithm, raw)
    } else {
        let attrs = session
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|e| error::map("read RSA public key", e))?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        match (n, e) {
            (Some(n), Some(e)) => PublicKey::from_rsa_components(&n, &e),
            _ => Err(attr_err(
                "read public key",
                &key.object_label,
                "RSA public key without CKA_MODULUS or CKA_PUBLIC_EXPONENT",
            )),
        }
    }
}

fn new_id() -> Vec<u8> {
    use rand::RngCore;
    let mut id = vec![0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

/// Attributes every private key of the agent carries: on the token, behind
/// the PIN, never readable, able to sign. An imported key also says
/// `CKA_DECRYPT = false` in its template; a generated one cannot (see
/// [`restrict_to_signing`]) and gets it afterwards.
fn private_template(label: &str, id: &[u8], imported: bool) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if imported {
        template.push(Attribute::Decrypt(false));
    }
    template
}

/// The public half: for verifying; `CKA_ENCRYPT = false` as for
/// [`private_template`].
fn public_template(label: &str, id: &[u8], imported: bool) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if imported {
        template.push(Attribute::Encrypt(false));
    }
    template
}

/// Takes encryption and decryption away from a generated key pair, where
/// the module lets us. tpm2-pkcs11 makes every TPM key able to sign and
/// decrypt and fails C_GenerateKeyPair with CKR_GENERAL_ERROR ("User
/// specified and TPM specified attr mismatch") when the template asks for
/// `CKA_DECRYPT` or `CKA_ENCRYPT` false. It takes the same change through
/// C_SetAttributeValue afterwards, but does not enforce it (C_Decrypt still
/// works with 1.9.0); SoftHSM takes and enforces it either way. A module
/// that refuses keeps a key that also decrypts: worth a warning, not a
/// failed enrolment.
fn restrict_to_signing(
    session: &Session,
    label: &str,
    public: ObjectHandle,
    private: ObjectHandle,
) {
    for (handle, attr, what) in [
        (private, Attribute::Decrypt(false), "CKA_DECRYPT"),
        (public, Attribute::Encrypt(false), "CKA_ENCRYPT"),
    ] {
        if let Err(e) = session.update_attributes(handle, &[attr]) {
            tracing::warn!(
                label,
                "the PKCS#11 module did not let {what} be cleared on the new key ({}); \
                 the key can also be used for that operation",
                error::describe(&e)
            );
        }
    }
}

/// Creates a key pair inside the token.
pub fn generate(session: &Session, label: &str, algorithm: KeyAlgorithm) -> Result<KeyObject> {
    let id = new_id();
    let mut public = public_template(label, &id, false);
    let mut private = private_template(label, &id, false);
    let mechanism = if algorithm.is_ec() {
        let params = ec_params(algorithm)?.to_vec();
        public.push(Attribute::KeyType(KeyType::EC));
        public.push(Attribute::EcParams(params));
        private.push(Attribute::KeyType(KeyType::EC));
        Mechanism::EccKeyPairGen
    } else {
        // CK_ULONG is C's unsigned long: 32 bits on armhf.
        let bits = algorithm.rsa_bits().unwrap_or(2048) as c_ulong;
        public.push(Attribute::KeyType(KeyType::RSA));
        public.push(Attribute::ModulusBits(bits.into()));
        public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
        private.push(Attribute::KeyType(KeyType::RSA));
        Mechanism::RsaPkcsKeyPairGen
    };
    let (public, private) = session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| error::map("generate key pair", e))?;
    restrict_to_signing(session, label, public, private);
    // Made here: it must say it never was anything but sensitive. A key
    // that does not, or whose attributes cannot be read, is destroyed
    // again: nothing of it stays on the token.
    let checked = protection_problems(session, private, true);
    if !matches!(&checked, Ok((_, wrong)) if wrong.is_empty()) {
        let left: Vec<String> = [(private, "private"), (public, "public")]
            .into_iter()
            .filter_map(|(handle, half)| {
                session
                    .destroy_object(handle)
                    .err()
                    .map(|e| format!("{half} ({})", error::describe(&e)))
            })
            .collect();
        if !left.is_empty() {
            tracing::error!(
                key = label,
                "the refused key could not be destroyed and stays on the token: {}; \
                 delete it by hand (pkcs11-tool --delete-object --label {label})",
                left.join(", ")
            );
        }
        return Err(match checked {
            Ok((_, wrong)) => weak_generated(label, &wrong, left.is_empty()),
            Err(e) => e,
        });
    }
    Ok(KeyObject {
        object_label: label.to_string(),
        private,
        id,
        algorithm,
    })
}

/// A template holding secret values: wiped when dropped, whatever happens
/// to the C_CreateObject call.
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for attr in &mut self.0 {
            match attr {
                Attribute::Value(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) => v.zeroize(),
                _ => {}
            }
        }
    }
}

/// Creates the private and public objects of an external key. If the
/// public object cannot be made, the private one is destroyed again so
/// that nothing half-made stays on the token.
pub fn import(session: &Session, label: &str, key: &PrivateKeyMaterial) -> Result<KeyObject> {
    import_objects(session, label, key, true)
}

/// Whether the token takes a private key from outside, without leaving
/// anything on it: a throwaway P-256 key made in software is created as a
/// session object (gone with the session, whatever happens) and destroyed
/// at once. `Err(ImportRefused)` for the refusals of modules that make keys
/// only inside themselves.
pub fn probe_import(session: &Session) -> Result<()> {
    let probe_failed = |detail: String| KeyStoreError::Backend {
        backend: BACKEND,
        op: "probe key import".into(),
        detail,
        code: None,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| probe_failed(format!("cannot make the throwaway key: {e}")))?;
    let pem = zeroize::Zeroizing::new(key.serialize_pem());
    let material = PrivateKeyMaterial::from_pem(&pem)?;
    let object = import_objects(session, "prov-agent-import-probe", &material, false)?;
    if let Err(e) = destroy(session, &object) {
        // A session object: it goes with the session anyway.
        tracing::debug!("the import probe's session object stays until the session ends: {e}");
    }
    Ok(())
}

/// [`import`], as token objects or (`token` false) session objects.
fn import_objects(
    session: &Session,
    label: &str,
    key: &PrivateKeyMaterial,
    token: bool,
) -> Result<KeyObject> {
    let id = new_id();
    let algorithm = key.algorithm();
    let mut private = SecretTemplate(private_template(label, &id, true));
    let mut public = public_template(label, &id, true);
    for attribute in private.0.iter_mut().chain(public.iter_mut()) {
        if let Attribute::Token(on_token) = attribute {
            *on_token = token;
        }
    }
    // Each secret is copied exactly once, into a buffer that the
    // SecretTemplate wipes.
    let secret = |v: &[u8]| v.to_vec();
    match key {
        PrivateKeyMaterial::Ec {
            scalar,
            public_point,
            ..
        } => {
            let params = ec_params(algorithm)?;
            private.0.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params.to_vec()),
                Attribute::Value(secret(scalar)),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params.to_vec()),
                Attribute::EcPoint(der_octet_string(public_point)),
            ]);
        }
        PrivateKeyMaterial::Rsa {
            modulus,
            public_exponent,
            private_exponent,
            prime1,
            prime2,
            exponent1,
            exponent2,
            coefficient,
            ..
        } => {
            private.0.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(modulus.clone()),
                Attribute::PublicExponent(public_exponent.clone()),
                Attribute::PrivateExponent(secret(private_exponent)),
                Attribute::Prime1(secret(prime1)),
                Attribute::Prime2(secret(prime2)),
                Attribute::Exponent1(secret(exponent1)),
                Attribute::Exponent2(secret(exponent2)),
                Attribute::Coefficient(secret(coefficient)),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(modulus.clone()),
                Attribute::PublicExponent(public_exponent.clone()),
            ]);
        }
    }
    let handle = session.create_object(&private.0).map_err(|e| match e {
        // What modules that make keys only inside themselves answer (the
        // template itself is the one SoftHSM takes).
        cryptoki::error::Error::Pkcs11(
            rv @ (RvError::AttributeValueInvalid
            | RvError::AttributeTypeInvalid
            | RvError::TemplateInconsistent
            | RvError::FunctionNotSupported),
            Function::CreateObject,
        ) => KeyStoreError::ImportRefused {
            backend: BACKEND,
            detail: format!(
                "C_CreateObject of a private key refused with {}",
                error::ckr_name(rv)
            ),
        },
        e => error::map("create private key object", e),
    })?;
    drop(private);
    if let Err(e) = session.create_object(&public) {
        let err = error::map("create public key object", e);
        if let Err(undo) = session.destroy_object(handle) {
            tracing::error!(
                label,
                "imported private key could not be removed after a failed import: {}",
                error::describe(&undo)
            );
        }
        return Err(err);
    }
    Ok(KeyObject {
        object_label: label.to_string(),
        private: handle,
        id,
        algorithm,
    })
}

/// Gives the private key (first: it is what lookups see) and then its
/// public key the label `to`.
pub fn relabel(session: &Session, key: &KeyObject, to: &str) -> Result<()> {
    session
        .update_attributes(key.private, &[Attribute::Label(to.as_bytes().to_vec())])
        .map_err(|e| error::map("relabel private key", e))?;
    if let Some(public) = find_public(session, key)? {
        session
            .update_attributes(public, &[Attribute::Label(to.as_bytes().to_vec())])
            .map_err(|e| error::map("relabel public key", e))?;
    }
    Ok(())
}

/// Gives the public half of `key` the private half's label, if it lacks it.
pub fn sync_public_label(session: &Session, key: &KeyObject) -> Result<()> {
    let Some(public) = find_public(session, key)? else {
        return Ok(());
    };
    let label = key.object_label.as_bytes().to_vec();
    let current = session
        .get_attributes(public, &[AttributeType::Label])
        .map_err(|e| error::map("read public key label", e))?;
    if current.contains(&Attribute::Label(label.clone())) {
        return Ok(());
    }
    tracing::warn!(
        key = %key.object_label,
        "public key object had another label (interrupted promotion); fixing it"
    );
    session
        .update_attributes(public, &[Attribute::Label(label)])
        .map_err(|e| error::map("relabel public key", e))
}

/// Destroys the public key first, then the private key: a crash in between
/// leaves a private key that is still found and can be deleted again.
pub fn destroy(session: &Session, key: &KeyObject) -> Result<()> {
    if let Some(public) = find_public(session, key)? {
        session
            .destroy_object(public)
            .map_err(|e| error::map("destroy public key", e))?;
    }
    session
        .destroy_object(key.private)
        .map_err(|e| error::map("destroy private key", e))
}

/// The labels of all private keys on the token (valid agent labels or not).
pub fn private_labels(session: &Session) -> Result<Vec<String>> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
        ])
        .map_err(|e| error::map("list private keys", e))?;
    let mut labels = Vec::new();
    for h in handles {
        let attrs = session
            .get_attributes(h, &[AttributeType::Label])
            .map_err(|e| error::map("read key label", e))?;
        for a in attrs {
            if let Attribute::Label(l) = a {
                if let Ok(l) = String::from_utf8(l) {
                    labels.push(l);
                }
            }
        }
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_is_unwrapped_from_its_octet_string() {
        let mut point = vec![0x04];
        point.extend([0xab; 64]);
        let wrapped = der_octet_string(&point);
        assert_eq!(&wrapped[..2], &[0x04, 0x41]);
        assert_eq!(
            unwrap_ec_point(&wrapped, KeyAlgorithm::EcP256),
            Some(&point[..])
        );
        // A bare point is taken as it is.
        assert_eq!(
            unwrap_ec_point(&point, KeyAlgorithm::EcP256),
            Some(&point[..])
        );
        let mut p384 = vec![0x04];
        p384.extend([0x11; 96]);
        let wrapped = der_octet_string(&p384);
        assert_eq!(&wrapped[..2], &[0x04, 0x61]);
        assert_eq!(
            unwrap_ec_point(&wrapped, KeyAlgorithm::EcP384),
            Some(&p384[..])
        );
        assert_eq!(unwrap_ec_point(&p384, KeyAlgorithm::EcP256), None);
    }
}
