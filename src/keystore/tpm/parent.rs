//! The storage primary keys this store makes its keys under.
//!
//! A primary is derived from the owner hierarchy's seed and its template,
//! so the same template gives the same key on every start and nothing has
//! to be persisted. Two templates are in use, differing only in the
//! template's `unique` field, which goes into the derivation:
//!
//! - [`Parent::Owner`] (unique empty): the primary that the tools reading
//!   the standard TPM 2.0 key file (`-----BEGIN TSS2 PRIVATE KEY-----`)
//!   make for a key whose parent is TPM_RH_OWNER (0x40000001): tpm2-openssl
//!   and tpm2-tss-engine use exactly this template. Every key made since
//!   the key file export uses it, so that `openssl -provider tpm2 -key
//!   device.tss2.pem` loads it (checked on swtpm with Debian's tpm2-openssl
//!   1.1.1; a key under the other primary fails there with
//!   TPM_RC_INTEGRITY).
//! - [`Parent::ZeroUnique`] (unique: 32 zero bytes for x and y): the TCG
//!   Provisioning Guidance's ECC SRK, which keys made before had as parent.
//!   They keep working: the store makes this primary only for the moment
//!   it loads such a key, and the key moves to [`Parent::Owner`] at the
//!   next rotation.
//!
//! Both: ECC NIST P-256, restricted decrypt, AES-128-CFB, fixedTPM,
//! fixedParent, sensitiveDataOrigin, userWithAuth, noDA, empty auth value
//! and policy.

use serde::{Deserialize, Serialize};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    EccParameter, EccPoint, EccScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParameters, SymmetricDefinitionObject,
};

/// Which primary a key was made under (recorded in its key file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Parent {
    /// The key file tools' primary for TPM_RH_OWNER; every new key's.
    Owner,
    /// The TCG SRK with a zero-filled unique field; a key file without a
    /// `parent` field was made under it.
    #[default]
    ZeroUnique,
}

impl Parent {
    /// The parent new keys are made under.
    pub const NEW_KEYS: Parent = Parent::Owner;

    /// The parent handle a TSS2 key file names for this primary, if the
    /// key file tools can recreate it from that handle alone.
    pub fn key_file_handle(self) -> Option<u32> {
        match self {
            Parent::Owner => Some(TPM_RH_OWNER),
            Parent::ZeroUnique => None,
        }
    }

    /// The primary's template.
    pub fn template(self) -> tss_esapi::Result<Public> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()?;
        let unique = match self {
            Parent::Owner => EccPoint::default(),
            Parent::ZeroUnique => EccPoint::new(
                EccParameter::try_from(vec![0u8; 32])?,
                EccParameter::try_from(vec![0u8; 32])?,
            ),
        };
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(PublicEccParameters::new(
                SymmetricDefinitionObject::AES_128_CFB,
                EccScheme::Null,
                EccCurve::NistP256,
                KeyDerivationFunctionScheme::Null,
            ))
            .with_ecc_unique_identifier(unique)
            .build()
    }
}

/// TPM_RH_OWNER, the owner hierarchy's permanent handle.
pub(super) const TPM_RH_OWNER: u32 = 0x4000_0001;
