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
        op: "sign".into(),
        detail: format!("the TPM returned a {what} signature"),
        code: None,
    };
    match signature {
        Signature::EcDsa(sig) => Ok(crate::keystore::ecdsa::rs_to_der(
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
