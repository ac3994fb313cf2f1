//! Signing inside the token. The message is hashed in software (the
//! token's combined hash-and-sign mechanisms are optional and vary between
//! modules); the token only ever sees the digest.

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
        // Salt as long as the hash: what TLS 1.3 requires.
        s_len: (hash.output_len() as u64).into(),
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
                op: "sign (CKM_ECDSA)",
                detail: format!(
                    "token returned a {}-byte signature, expected r||s of {} bytes",
                    raw.len(),
                    2 * field
                ),
            }));
        }
        return Ok(ecdsa_raw_to_der(&raw));
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

/// Converts a raw ECDSA signature `r || s` (two big-endian integers of the
/// same length, as PKCS#11 CKM_ECDSA returns it) into the DER
/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` that X.509, TLS
/// and ring use.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    let r = der_unsigned_integer(r);
    let s = der_unsigned_integer(s);
    let mut out = Vec::with_capacity(r.len() + s.len() + 4);
    out.push(0x30);
    der_length(r.len() + s.len(), &mut out);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    out
}

/// A DER INTEGER holding the non-negative big-endian `bytes`: leading zeros
/// stripped, one zero put back when the high bit is set (else the value
/// would read as negative).
fn der_unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let trimmed = &bytes[first..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    let mut out = vec![0x02];
    der_length(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        let mut raw = vec![0u8; 64];
        raw[31] = 0x01;
        raw[63] = 0x02;
        // Both values stripped down to one byte each.
        assert_eq!(
            ecdsa_raw_to_der(&raw),
            vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]
        );
    }

    #[test]
    fn high_bit_gets_a_zero_byte() {
        let mut raw = vec![0x80u8; 32];
        raw.extend([0x7fu8; 32]);
        let der = ecdsa_raw_to_der(&raw);
        assert_eq!(&der[..5], &[0x30, 0x45, 0x02, 0x21, 0x00]);
        assert_eq!(&der[5..37], &[0x80; 32][..]);
        assert_eq!(&der[37..39], &[0x02, 0x20]);
        assert_eq!(&der[39..], &[0x7f; 32][..]);
    }

    #[test]
    fn leading_zeros_are_stripped_but_high_bit_is_kept_positive() {
        let mut raw = vec![0x00, 0x00, 0x90];
        raw.extend([0x11; 29]);
        raw.extend([0x00; 32]); // s = 0 (not a valid signature, a valid INTEGER)
        let der = ecdsa_raw_to_der(&raw);
        // r: 0x00 + 0x90 + 29 bytes = 31 content bytes; s: 02 01 00.
        assert_eq!(&der[..5], &[0x30, 0x24, 0x02, 0x1f, 0x00]);
        assert_eq!(der[5], 0x90);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x00]);
    }

    #[test]
    fn p384_all_ones_still_fits_short_form_length() {
        let raw = vec![0xffu8; 96];
        let der = ecdsa_raw_to_der(&raw);
        // 2 * (2 + 1 + 48) = 102 bytes of content: still short form.
        assert_eq!(&der[..2], &[0x30, 102]);
        assert_eq!(der.len(), 104);
    }

    #[test]
    fn agrees_with_the_p256_crate() {
        use p256::ecdsa::signature::Signer;
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        for i in 0..64u8 {
            let sig: p256::ecdsa::Signature = key.sign(&[i]);
            assert_eq!(
                ecdsa_raw_to_der(&sig.to_bytes()),
                sig.to_der().as_bytes(),
                "message {i}"
            );
        }
    }
}
