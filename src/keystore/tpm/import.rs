//! TPM2_Import of an external private key: the public area and the
//! duplication blob handed to the TPM, which returns a TPM2B_PRIVATE
//! wrapped under the storage primary.
//!
//! The blob has no outer wrapper (empty inSymSeed; the TPM accepts that for
//! objects without encryptedDuplication). It does have an inner wrapper
//! (TPM 2.0 Part 1, 23.3.2.3): `AES-128-CFB_K(TPM2B_DIGEST(H(sensitive ||
//! name)) || TPM2B_SENSITIVE)` with a one-time key K. So that the plaintext
//! never crosses the TPM's bus, the AES is done by the TPM itself
//! (TPM2_EncryptDecrypt2 under a temporary TPM2_LoadExternal of K) with
//! parameter encryption of the salted session protecting K and the
//! plaintext on the way in; TPM2_Import then receives K the same way. This
//! needs no AES code on our side. A TPM without TPM2_EncryptDecrypt2 falls
//! back to an unwrapped blob, with a warning. The key never touches disk,
//! and every buffer of ours that holds it is zeroized.

use rand::RngCore;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, Public, PublicBuilder, PublicKeyRsa, RsaExponent,
    Sensitive, SymmetricCipherParameters, SymmetricDefinitionObject, SymmetricKey,
};
use tss_esapi::traits::Marshall;
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

/// Length of the one-time inner wrapper key (AES-128).
pub(super) const INNER_KEY_LEN: usize = 16;

/// The inner wrapper's plaintext: `TPM2B_DIGEST(SHA-256(sensitive ||
/// name)) || sensitive`, where `sensitive` is the marshalled
/// TPM2B_SENSITIVE and `name` the object's Name (nameAlg || H(TPMT_PUBLIC)).
pub(super) fn inner_plaintext(public: &Public, sensitive: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    use sha2::Digest as _;
    let marshalled = public
        .marshall()
        .map_err(|e| super::context::tpm_err("marshal TPMT_PUBLIC", e))?;
    let mut name = vec![0x00, 0x0b]; // TPM_ALG_SHA256
    name.extend_from_slice(&sha2::Sha256::digest(&marshalled));
    let mut h = sha2::Sha256::new();
    h.update(sensitive);
    h.update(&name);
    let integrity = h.finalize();
    let mut out = Zeroizing::new(Vec::with_capacity(2 + integrity.len() + sensitive.len()));
    out.extend_from_slice(&(integrity.len() as u16).to_be_bytes());
    out.extend_from_slice(&integrity);
    out.extend_from_slice(sensitive);
    Ok(out)
}

/// A fresh one-time AES-128 key for the inner wrapper, and the public and
/// sensitive areas to load it into the TPM (NULL hierarchy, temporary).
pub(super) fn inner_key() -> Result<(Zeroizing<Vec<u8>>, Public, Sensitive)> {
    use sha2::Digest as _;
    let err = |e| super::context::tpm_err("build inner wrapper key", e);
    let mut rng = rand::rngs::OsRng;
    let mut key = Zeroizing::new(vec![0u8; INNER_KEY_LEN]);
    rng.fill_bytes(&mut key);
    let mut seed = Zeroizing::new(vec![0u8; SEED_LEN]);
    rng.fill_bytes(&mut seed);
    // A loaded symmetric key's unique is H(seedValue || key): the TPM
    // checks it.
    let mut h = sha2::Sha256::new();
    h.update(&seed[..]);
    h.update(&key[..]);
    let unique = Digest::try_from(h.finalize().to_vec()).map_err(err)?;
    let attributes = ObjectAttributesBuilder::new()
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(true)
        .build()
        .map_err(err)?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::SymCipher)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_symmetric_cipher_parameters(SymmetricCipherParameters::new(
            SymmetricDefinitionObject::AES_128_CFB,
        ))
        .with_symmetric_cipher_unique_identifier(unique)
        .build()
        .map_err(err)?;
    let sensitive = Sensitive::Symmetric {
        auth_value: Auth::default(),
        seed_value: Digest::try_from(&seed[..]).map_err(err)?,
        sensitive: SymmetricKey::try_from(&key[..]).map_err(err)?,
    };
    Ok((key, public, sensitive))
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
