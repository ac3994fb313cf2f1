//! TPM2_Sign: the digest is computed in software, the TPM signs it with a
//! null validation ticket (allowed because the keys are unrestricted), and
//! the result is put in the format the `KeyStore` trait promises.
//!
//! RSA-PSS salt length: the TPM picks it, not the caller. TPM 2.0 Part 1
//! (B.7) let a TPM use the largest salt that fits; TPMs that follow FIPS
//! 186-4 use a salt as long as the digest, and so does libtpms (swtpm).
//! rustls and ring verify PSS with salt length = digest length only, so a
//! TPM using the largest salt would make PSS signatures they reject. The
//! integration tests verify every PSS signature with ring (SHA-256/384/512,
//! RSA-2048 and RSA-3072) against swtpm; on real hardware, `prov-agent`
//! should prove PSS the same way before offering it to TLS.

use tss_esapi::constants::StructureTag;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Digest, HashScheme, HashcheckTicket, Signature, SignatureScheme as TpmScheme,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::context::{tpm_err, BACKEND};
use super::keys::left_pad;
use crate::keystore::{HashAlg, KeyStoreError, PublicKey, Result, SignatureScheme};

pub(super) fn tpm_hash(h: HashAlg) -> HashingAlgorithm {
    match h {
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// The TPM2_Sign scheme for one of ours.
pub(super) fn tpm_scheme(scheme: SignatureScheme) -> TpmScheme {
    let hash_scheme = HashScheme::new(tpm_hash(scheme.hash()));
    if !scheme.is_rsa() {
        TpmScheme::EcDsa { hash_scheme }
    } else if scheme.is_pss() {
        TpmScheme::RsaPss { hash_scheme }
    } else {
        TpmScheme::RsaSsa { hash_scheme }
    }
}

/// The digest to sign, as the TPM takes it.
pub(super) fn digest(scheme: SignatureScheme, message: &[u8]) -> Result<Digest> {
    Digest::try_from(scheme.hash().digest(message)).map_err(|e| tpm_err("wrap digest", e))
}

/// A hashcheck ticket for TPM_RH_NULL: "this digest was not made by the
/// TPM". Enough for an unrestricted key; a restricted key would refuse it.
pub(super) fn null_ticket() -> Result<HashcheckTicket> {
    let raw = TPMT_TK_HASHCHECK {
        tag: StructureTag::Hashcheck.into(),
        hierarchy: tss_esapi::handles::TpmHandle::from(Hierarchy::Null).into(),
        digest: Default::default(),
    };
    HashcheckTicket::try_from(raw).map_err(|e| tpm_err("build null hashcheck ticket", e))
}

/// The TPM's signature in the trait's format: DER `Ecdsa-Sig-Value` for
/// ECDSA, the raw big-endian signature of the modulus' length for RSA.
pub(super) fn encode(signature: Signature, public: &PublicKey) -> Result<Vec<u8>> {
    let unexpected = |what: &str| KeyStoreError::Backend {
        backend: BACKEND,
        op: "sign",
        detail: format!("the TPM returned a {what} signature"),
    };
    match signature {
        Signature::EcDsa(sig) => Ok(ecdsa_rs_to_der(
            sig.signature_r().value(),
            sig.signature_s().value(),
        )),
        Signature::RsaSsa(sig) | Signature::RsaPss(sig) => {
            let len = public
                .algorithm()
                .rsa_bits()
                .map(|b| b / 8)
                .ok_or_else(|| unexpected("RSA signature for a non-RSA key; a"))?;
            left_pad(sig.signature().value(), len)
        }
        other => Err(unexpected(&format!("{:?}", other.algorithm()))),
    }
}

/// Encodes an ECDSA signature given as big-endian `r` and `s` (any length,
/// leading zeros allowed) as DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER,
/// s INTEGER }` (RFC 3279, 2.2.3).
pub fn ecdsa_rs_to_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let r = der_uint(r);
    let s = der_uint(s);
    let mut out = Vec::with_capacity(r.len() + s.len() + 4);
    out.push(0x30);
    der_len(&mut out, r.len() + s.len());
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    out
}

/// A DER INTEGER of a non-negative big-endian number: minimal length, with a
/// zero byte in front when the top bit is set (else it would be negative).
fn der_uint(v: &[u8]) -> Vec<u8> {
    let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    let v = &v[first..];
    let pad = v.first().is_none_or(|b| b & 0x80 != 0);
    let len = v.len() + usize::from(pad);
    let mut out = Vec::with_capacity(len + 4);
    out.push(0x02);
    der_len(&mut out, len);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.push(0x82);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        assert_eq!(
            ecdsa_rs_to_der(&[0x01], &[0x7f]),
            [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f]
        );
    }

    #[test]
    fn leading_zero_bytes_are_stripped() {
        assert_eq!(
            ecdsa_rs_to_der(&[0x00, 0x00, 0x12, 0x34], &[0x00, 0x01]),
            [0x30, 0x07, 0x02, 0x02, 0x12, 0x34, 0x02, 0x01, 0x01]
        );
    }

    #[test]
    fn high_bit_gets_a_zero_byte() {
        assert_eq!(
            ecdsa_rs_to_der(&[0x80], &[0x00, 0xff, 0x01]),
            [0x30, 0x09, 0x02, 0x02, 0x00, 0x80, 0x02, 0x03, 0x00, 0xff, 0x01]
        );
    }

    #[test]
    fn zero_is_one_zero_byte() {
        assert_eq!(
            ecdsa_rs_to_der(&[0, 0], &[]),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
    }

    #[test]
    fn p384_sized_values_match_p384_crate() {
        // Full width r with the high bit set (49-byte INTEGER) and a short s.
        let mut r = [0x11u8; 48];
        r[0] = 0x91;
        let mut s = [0u8; 48];
        s[47] = 5;
        let sig = p384::ecdsa::Signature::from_scalars(
            p384::FieldBytes::from(r),
            p384::FieldBytes::from(s),
        )
        .unwrap();
        let der = ecdsa_rs_to_der(&r, &s);
        assert_eq!(der[..2], [0x30, 2 + 49 + 2 + 1]);
        assert_eq!(der, sig.to_der().as_bytes());
    }

    #[test]
    fn long_form_length_when_content_exceeds_127_bytes() {
        let der = ecdsa_rs_to_der(&[0xff; 66], &[0xff; 66]);
        // 2 * (2 + 67) = 138 content bytes.
        assert_eq!(der[..3], [0x30, 0x81, 138]);
        assert_eq!(der.len(), 3 + 138);
    }

    #[test]
    fn matches_p256_crate_on_random_values() {
        use rand::RngCore;
        let mut rng = rand::rngs::OsRng;
        for i in 0..200 {
            let mut r = [0u8; 32];
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut r);
            rng.fill_bytes(&mut s);
            // Keep below the group order and exercise short values too.
            r[0] &= 0x7f | if i % 2 == 0 { 0x80 } else { 0 };
            r[0] %= 0xf0;
            s[0] %= 0xf0;
            if i % 7 == 0 {
                r[..3].fill(0);
            }
            let Ok(sig) = p256::ecdsa::Signature::from_scalars(
                p256::FieldBytes::from(r),
                p256::FieldBytes::from(s),
            ) else {
                continue;
            };
            assert_eq!(ecdsa_rs_to_der(&r, &s), sig.to_der().as_bytes());
        }
    }
}
