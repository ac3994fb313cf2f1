//! Templates of the signing keys, and their public keys read back from the
//! TPM's public area.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder, PublicEccParameters,
    PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme, SymmetricDefinitionObject,
};

use super::context::tpm_err;
use crate::keystore::{KeyAlgorithm, KeyStoreError, PublicKey, Result};

/// Attributes of a key made inside the TPM: it never leaves this TPM
/// (fixedTPM) nor its parent (fixedParent), and only the TPM ever knew its
/// private part (sensitiveDataOrigin). Unrestricted signing, no decrypt.
pub(super) fn generated_attributes() -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
}

/// Attributes of an imported key. TPM2_Import refuses objects with
/// fixedTPM or fixedParent set (TPM_RC_ATTRIBUTES on objectPublic, checked
/// on swtpm), and sensitiveDataOrigin would be a lie. The key still cannot
/// leave: TPM2_Duplicate needs a policy session satisfying the object's
/// authPolicy, and an empty authPolicy is satisfied by none; the blob only
/// loads under this TPM's storage primary.
pub(super) fn imported_attributes() -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
}

/// Template (or, with `unique` filled, the public area) of a signing key.
/// The scheme is TPM_ALG_NULL so that each TPM2_Sign picks it: one RSA key
/// serves PKCS#1 v1.5 and PSS with any hash, as TLS asks.
pub(super) fn public_area(
    algorithm: KeyAlgorithm,
    attributes: ObjectAttributes,
    ecc_unique: Option<EccPoint>,
    rsa_unique: Option<(PublicKeyRsa, RsaExponent)>,
) -> Result<Public> {
    let build = || -> tss_esapi::Result<Public> {
        let builder = PublicBuilder::new()
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes);
        match algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let curve = if algorithm == KeyAlgorithm::EcP256 {
                    EccCurve::NistP256
                } else {
                    EccCurve::NistP384
                };
                // PublicEccParameters::new, not the builder: the builder
                // rejects a signing key whose scheme is NULL.
                builder
                    .with_public_algorithm(PublicAlgorithm::Ecc)
                    .with_ecc_parameters(PublicEccParameters::new(
                        SymmetricDefinitionObject::Null,
                        EccScheme::Null,
                        curve,
                        KeyDerivationFunctionScheme::Null,
                    ))
                    .with_ecc_unique_identifier(ecc_unique.unwrap_or_default())
                    .build()
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                let bits = if algorithm == KeyAlgorithm::Rsa2048 {
                    RsaKeyBits::Rsa2048
                } else {
                    RsaKeyBits::Rsa3072
                };
                let (unique, exponent) = rsa_unique.unwrap_or_default();
                let params = PublicRsaParametersBuilder::new()
                    .with_scheme(RsaScheme::Null)
                    .with_key_bits(bits)
                    .with_exponent(exponent)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(false)
                    .build()?;
                builder
                    .with_public_algorithm(PublicAlgorithm::Rsa)
                    .with_rsa_parameters(params)
                    .with_rsa_unique_identifier(unique)
                    .build()
            }
        }
    };
    build().map_err(|e| tpm_err("build key template", e))
}

/// The public key in a TPM public area: the EC point, or the RSA modulus
/// with its exponent (0 in the TPM means the default 65537).
pub(super) fn public_key(public: &Public) -> Result<PublicKey> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let (algorithm, len) = match parameters.ecc_curve() {
                EccCurve::NistP256 => (KeyAlgorithm::EcP256, 32),
                EccCurve::NistP384 => (KeyAlgorithm::EcP384, 48),
                other => {
                    return Err(KeyStoreError::UnsupportedAlgorithm {
                        what: format!("TPM key on curve {other:?}"),
                    })
                }
            };
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&left_pad(unique.x().value(), len)?);
            point.extend_from_slice(&left_pad(unique.y().value(), len)?);
            PublicKey::from_ec_point(algorithm, &point)
        }
        Public::Rsa {
            parameters, unique, ..
        } => {
            let exponent = match u32::from(parameters.exponent()) {
                0 => 65537,
                e => e,
            };
            PublicKey::from_rsa_components(unique.value(), &exponent.to_be_bytes())
        }
        _ => Err(KeyStoreError::UnsupportedAlgorithm {
            what: "TPM object that is neither an ECC nor an RSA key".into(),
        }),
    }
}

/// Big-endian integer left-padded with zeros to `len` bytes (the TPM may
/// drop leading zero bytes of a coordinate).
pub(super) fn left_pad(v: &[u8], len: usize) -> Result<Vec<u8>> {
    let v = {
        let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        &v[first..]
    };
    if v.len() > len {
        return Err(KeyStoreError::Backend {
            backend: super::context::BACKEND,
            op: "decode public key".into(),
            detail: format!("coordinate of {} bytes for a {len}-byte field", v.len()),
            code: None,
        });
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(v);
    Ok(out)
}
