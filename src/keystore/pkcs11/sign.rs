//! Signing inside the token. The message is hashed in software (the
//! token's combined hash-and-sign mechanisms are optional and vary between
//! modules); the token only ever sees the digest.

use std::ffi::c_ulong;

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::session::Session;

use super::super::{HashAlg, KeyStoreError, Result, SignatureScheme};
use super::keys::KeyObject;
use super::{error, BACKEND};

fn pss_params(hash: HashAlg) -> PkcsPssParams {
    let (hash_alg, mgf) = match hash {
        HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    };
    PkcsPssParams {
        hash_alg,
        mgf,
        // Salt as long as the hash: what TLS 1.3 requires. CK_ULONG is C's
        // unsigned long: 32 bits on armhf.
        s_len: (hash.output_len() as c_ulong).into(),
    }
}

/// The key's object handle is no longer valid (the object was destroyed,
/// perhaps by another process): look the key up again.
#[derive(Debug)]
pub struct StaleHandle;

/// Signs `message` with `key` as `scheme` says. ECDSA comes back as DER,
/// RSA as the raw signature.
pub fn sign(
    session: &Session,
    key: &KeyObject,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Result<Vec<u8>, StaleHandle>> {
    match sign_raw(session, key, scheme, message) {
        Ok(signature) => Ok(Ok(signature)),
        Err(Raw::Stale) => Ok(Err(StaleHandle)),
        Err(Raw::Failed(e)) => Err(e),
    }
}

enum Raw {
    Stale,
    Failed(KeyStoreError),
}

impl From<KeyStoreError> for Raw {
    fn from(e: KeyStoreError) -> Self {
        Raw::Failed(e)
    }
}

/// Maps a C_Sign failure, keeping stale handles apart.
fn failed(op: &'static str) -> impl Fn(cryptoki::error::Error) -> Raw {
    move |e| match e {
        cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::KeyHandleInvalid
            | cryptoki::error::RvError::ObjectHandleInvalid,
            _,
        ) => Raw::Stale,
        e => Raw::Failed(error::map(op, e)),
    }
}

fn sign_raw(
    session: &Session,
    key: &KeyObject,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, Raw> {
    if !key.algorithm.supports(scheme) {
        return Err(KeyStoreError::SchemeMismatch {
            algorithm: key.algorithm,
            scheme,
        }
        .into());
    }
    let hash = scheme.hash();
    let digest = hash.digest(message);
    if !scheme.is_rsa() {
        let raw = session
            .sign(&Mechanism::Ecdsa, key.private, &digest)
            .map_err(failed("sign (CKM_ECDSA)"))?;
        let field = if key.algorithm == super::super::KeyAlgorithm::EcP256 {
            32
        } else {
            48
        };
        if raw.len() != 2 * field {
            return Err(Raw::Failed(KeyStoreError::Backend {
                backend: BACKEND,
                op: "sign (CKM_ECDSA)".into(),
                detail: format!(
                    "token returned a {}-byte signature, expected r||s of {} bytes",
                    raw.len(),
                    2 * field
                ),
                code: None,
            }));
        }
        return Ok(crate::keystore::ecdsa::raw_to_der(&raw).expect("length checked above"));
    }
    if scheme.is_pss() {
        session
            .sign(
                &Mechanism::RsaPkcsPss(pss_params(hash)),
                key.private,
                &digest,
            )
            .map_err(failed("sign (CKM_RSA_PKCS_PSS)"))
    } else {
        let mut info = hash.pkcs1_digest_info_prefix().to_vec();
        info.extend_from_slice(&digest);
        session
            .sign(&Mechanism::RsaPkcs, key.private, &info)
            .map_err(failed("sign (CKM_RSA_PKCS)"))
    }
}
