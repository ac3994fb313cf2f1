//! TPM2_Import of an external private key: the public area and the
//! duplication blob handed to the TPM, which returns a TPM2B_PRIVATE
//! wrapped under the storage primary.
//!
//! The blob carries neither an inner wrapper (symmetricAlg TPM_ALG_NULL)
//! nor an outer one (empty inSymSeed), so it is the plain TPM2B_SENSITIVE
//! (TPM 2.0 Part 1, 23.3 "Duplication"): the TPM accepts that for objects
//! without encryptedDuplication. It means the key crosses the TPM's bus in
//! the clear once; it never touches disk, and every buffer that holds it
//! here is zeroized.

use rand::RngCore;
use tss_esapi::structures::{EccParameter, EccPoint, Public, PublicKeyRsa, RsaExponent};
use zeroize::Zeroizing;

use super::keys;
use crate::keystore::{KeyStoreError, PrivateKeyMaterial, Result};

/// TPM_ALG_RSA and TPM_ALG_ECC (TPM 2.0 Part 2, table 9).
const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_ECC: u16 = 0x0023;
/// Digest size of the key's nameAlg (SHA-256); the size of the seed value a
/// TPM gives the keys it creates.
const SEED_LEN: usize = 32;

/// The public area of the imported key and the duplication blob.
pub(super) fn import_parts(key: &PrivateKeyMaterial) -> Result<(Public, Zeroizing<Vec<u8>>)> {
    let attributes = keys::imported_attributes()
        .map_err(|e| super::context::tpm_err("build import attributes", e))?;
    let bad = |what: &str, e: tss_esapi::Error| KeyStoreError::BadPrivateKey {
        detail: format!("{what} does not fit a TPM structure ({e})"),
    };
    match key {
        PrivateKeyMaterial::Ec {
            algorithm,
            scalar,
            public_point,
            ..
        } => {
            let coord = (public_point.len().saturating_sub(1)) / 2;
            if public_point.first() != Some(&0x04) || public_point.len() != 1 + 2 * coord {
                return Err(KeyStoreError::BadPrivateKey {
                    detail: "EC public point is not uncompressed".into(),
                });
            }
            let x = EccParameter::try_from(&public_point[1..1 + coord])
                .map_err(|e| bad("EC point", e))?;
            let y = EccParameter::try_from(&public_point[1 + coord..])
                .map_err(|e| bad("EC point", e))?;
            let public =
                keys::public_area(*algorithm, attributes, Some(EccPoint::new(x, y)), None)?;
            Ok((public, sensitive(TPM_ALG_ECC, scalar)))
        }
        PrivateKeyMaterial::Rsa {
            algorithm,
            modulus,
            public_exponent,
            prime1,
            ..
        } => {
            let e = exponent(public_exponent)?;
            let n = PublicKeyRsa::try_from(modulus.clone()).map_err(|e| bad("RSA modulus", e))?;
            let public = keys::public_area(*algorithm, attributes, None, Some((n, e)))?;
            // The TPM keeps one prime as the RSA sensitive value and derives
            // the rest from it and the modulus.
            Ok((public, sensitive(TPM_ALG_RSA, prime1)))
        }
    }
}

/// The RSA public exponent as the TPM wants it: 0 for 65537 (the default),
/// the value itself otherwise.
fn exponent(e: &[u8]) -> Result<RsaExponent> {
    let first = e.iter().position(|b| *b != 0).unwrap_or(e.len());
    let e = &e[first..];
    if e.len() > 4 {
        return Err(KeyStoreError::UnsupportedAlgorithm {
            what: "RSA key with a public exponent wider than 32 bits".into(),
        });
    }
    let mut v = 0u32;
    for b in e {
        v = (v << 8) | u32::from(*b);
    }
    let v = if v == 65537 { 0 } else { v };
    RsaExponent::create(v).map_err(|err| KeyStoreError::UnsupportedAlgorithm {
        what: format!("RSA public exponent {v} ({err})"),
    })
}

/// Marshals a TPM2B_SENSITIVE by hand into a zeroizing buffer:
/// `size | TPMT_SENSITIVE { sensitiveType, authValue, seedValue, sensitive }`.
/// tss-esapi's `Sensitive::marshall` would leave copies in plain `Vec`s.
fn sensitive(alg: u16, secret: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    let body_len = 2 + 2 + (2 + SEED_LEN) + (2 + secret.len());
    let mut out = Zeroizing::new(Vec::with_capacity(2 + body_len));
    out.extend_from_slice(&(body_len as u16).to_be_bytes());
    out.extend_from_slice(&alg.to_be_bytes());
    // authValue: empty, like the generated keys.
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(SEED_LEN as u16).to_be_bytes());
    out.extend_from_slice(&seed[..]);
    out.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    out.extend_from_slice(secret);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_layout() {
        let s = sensitive(TPM_ALG_ECC, &[0xAA; 3]);
        assert_eq!(s.len(), 2 + 2 + 2 + 2 + SEED_LEN + 2 + 3);
        assert_eq!(u16::from_be_bytes([s[0], s[1]]) as usize, s.len() - 2);
        assert_eq!(&s[2..4], &[0x00, 0x23]);
        assert_eq!(&s[4..6], &[0, 0]);
        assert_eq!(&s[6..8], &[0, SEED_LEN as u8]);
        assert_eq!(&s[s.len() - 5..], &[0, 3, 0xAA, 0xAA, 0xAA]);
    }

    #[test]
    fn exponent_default_is_zero() {
        assert_eq!(u32::from(exponent(&[1, 0, 1]).unwrap()), 0);
        assert_eq!(u32::from(exponent(&[0, 0, 0, 3]).unwrap()), 3);
        assert!(exponent(&[1, 0, 0, 0, 1]).is_err());
    }
}
