//! RSASSA-PSS parameters: what ring verifies, checked before it does so
//! that a refusal names the parameter rather than "does not verify".
//!
//! ring verifies PSS only with MGF1 over the signature's own hash and a salt
//! as long as the digest (the form TLS 1.3 uses, and
//! `openssl req -sigopt rsa_pss_saltlen:digest`). AWS lists PSS as
//! SHA256/384/512WITHRSAANDMGF1, which names one hash for both; it
//! documents no salt length.

use x509_parser::der_parser::asn1_rs::Any;
use x509_parser::oid_registry::{OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512};
use x509_parser::signature_algorithm::RsaSsaPssParams;

use super::{names, CsrError, RSA_ALGORITHMS};

/// id-mgf1 (RFC 8017), the only mask generation function there is.
const ID_MGF1: &str = "1.2.840.113549.1.1.8";

pub(super) fn check(params: Option<&Any<'_>>) -> Result<(), CsrError> {
    let params = params
        .and_then(|p| RsaSsaPssParams::try_from(p).ok())
        .ok_or(CsrError::PssParameters)?;
    let hash = params.hash_algorithm_oid();
    let (digest_len, md) = if *hash == OID_NIST_HASH_SHA256 {
        (32, "sha256")
    } else if *hash == OID_NIST_HASH_SHA384 {
        (48, "sha384")
    } else if *hash == OID_NIST_HASH_SHA512 {
        (64, "sha512")
    } else {
        return Err(CsrError::SignatureAlgorithm {
            algorithm: format!("RSASSA-PSS with hash {}", names::digest(hash)),
            key: "RSA",
            accepted: RSA_ALGORITHMS,
        });
    };
    // An absent maskGenAlgorithm is MGF1 with SHA-1 (RFC 4055's default),
    // which x509-parser reports as such.
    let mgf = params
        .mask_gen_algorithm()
        .map_err(|_| CsrError::PssParameters)?;
    if mgf.mgf.to_id_string() != ID_MGF1 || mgf.hash != *hash {
        return Err(CsrError::PssMgf1 {
            hash: names::digest(hash),
            mgf1: if mgf.mgf.to_id_string() == ID_MGF1 {
                format!("MGF1 with {}", names::digest(&mgf.hash))
            } else {
                format!("mask generation function {}", mgf.mgf.to_id_string())
            },
            md,
        });
    }
    match params.salt_length() {
        n if n == digest_len => Ok(()),
        n => Err(CsrError::PssSaltLength {
            salt: n,
            digest: digest_len,
        }),
    }
}
