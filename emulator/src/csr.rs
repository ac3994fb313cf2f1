//! What CreateCertificateFromCsr accepts: the CSR's key kind and size, its
//! signature algorithm, and its signature, checked here before the CA signs
//! anything.
//!
//! AWS documents (CreateCertificateFromCsr API reference): "The CSR must
//! include a public key that is either an RSA key with a length of at least
//! 2048 bits or an ECC key from NIST P-256, NIST P-384, or NIST P-521
//! curves", signed with one of the algorithms of "Certificate signing
//! algorithms supported by AWS IoT" (SHA256/384/512WITHRSA, their RSASSA-PSS
//! forms SHA256/384/512WITHRSAANDMGF1 in the current list, ECDSA-WITH-SHA256/
//! 384/512; DSA_WITH_SHA256 is on that list too, but a CSR's key must be RSA
//! or EC, so DSA is refused). Where the emulator departs from that, and why:
//!
//! - RSA keys above 8192 bits are refused: AWS names no upper bound, but
//!   ring (the emulator's only crypto provider, TLS included) verifies RSA
//!   signatures of 2048 to 8192 bits only, so such a device could never
//!   finish a TLS handshake here.
//! - P-521 is refused, naming the limitation: ring has no P-521, so the
//!   emulator could neither check such a CSR nor let its device connect.
//! - SHA-1 and MD5 signatures (not on AWS's list) are refused, although the
//!   X.509 library would verify a SHA-1 one.
//!
//! The certificate is issued for the CSR's SubjectPublicKeyInfo exactly as
//! sent: the key kind is read from the key itself, never guessed from the
//! signature algorithm (a P-384 key may sign with SHA-256).

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rcgen::string::{BmpString, UniversalString};
use rcgen::{DistinguishedName, DnType, DnValue};
use sha2::{Digest, Sha512};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Smallest RSA key AWS accepts, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA key the emulator accepts, in bits (ring's limit; AWS names none).
pub const MAX_RSA_BITS: usize = 8192;

/// Why a certificate signing request is refused; the message is what the
/// client is told (after "certificate signing request is invalid: ").
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("not PEM: {0}")]
    NotPem(#[source] pem::PemError),
    #[error("not a PKCS#10 request: {0}")]
    NotPkcs10(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("unreadable public key: {0}")]
    UnreadableKey(#[source] x509_parser::error::X509Error),
    #[error("RSA key of {0} bits: AWS IoT accepts RSA keys of {MIN_RSA_BITS} bits or more (this emulator up to {MAX_RSA_BITS}); make a key of 2048, 3072 or 4096 bits")]
    RsaKeySize(usize),
    #[error("EC key on P-521: AWS IoT accepts it, but this emulator cannot check it or let its device connect (its TLS library, ring, has no P-521); use P-256 or P-384 here")]
    P521NotEmulated,
    #[error("EC key on curve {0}: AWS IoT accepts only NIST P-256, P-384 and P-521")]
    EcCurve(String),
    #[error(
        "public key of algorithm {0}: AWS IoT accepts only RSA and EC (P-256, P-384, P-521) keys"
    )]
    KeyType(String),
    #[error(
        "signature algorithm {algorithm} is not one AWS IoT accepts for {key} keys ({accepted})"
    )]
    SignatureAlgorithm {
        algorithm: String,
        key: &'static str,
        accepted: &'static str,
    },
    #[error("RSASSA-PSS parameters are missing or unreadable")]
    PssParameters,
    #[error("RSASSA-PSS with a salt of {salt} bytes: this emulator (ring) verifies PSS only with a salt as long as the digest ({digest} bytes); sign with `-sigopt rsa_pss_saltlen:digest`")]
    PssSaltLength { salt: u32, digest: u32 },
    #[error("the signature does not verify with the request's own public key: the CSR was changed after it was signed, or signed with another key")]
    Signature,
    /// A subject the CA cannot copy into the certificate.
    #[error("subject cannot be copied into a certificate: {0}")]
    Subject(String),
}

/// The kind of a public key the provisioning APIs accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA of this many bits.
    Rsa(usize),
    P256,
    P384,
}

/// A request whose key, signature algorithm and signature were accepted.
pub(crate) struct CheckedCsr {
    pub(crate) kind: KeyKind,
    /// The request's SubjectPublicKeyInfo, DER, as sent.
    pub(crate) spki_der: Vec<u8>,
    pub(crate) subject: DistinguishedName,
}

const RSA_ALGORITHMS: &str =
    "SHA256WITHRSA, SHA384WITHRSA, SHA512WITHRSA, or RSASSA-PSS with SHA-256/384/512";
const EC_ALGORITHMS: &str = "ECDSA-WITH-SHA256, ECDSA-WITH-SHA384, ECDSA-WITH-SHA512";

/// Checks a PKCS#10 request (DER) as CreateCertificateFromCsr does.
pub(crate) fn check(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(CsrError::NotPkcs10)?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let kind = key_kind(spki)?;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let algorithm = sig_oid.to_id_string();
    match kind {
        KeyKind::Rsa(_) => {
            let known = [
                OID_PKCS1_SHA256WITHRSA,
                OID_PKCS1_SHA384WITHRSA,
                OID_PKCS1_SHA512WITHRSA,
                OID_PKCS1_RSASSAPSS,
            ];
            if !known.contains(sig_oid) {
                return Err(CsrError::SignatureAlgorithm {
                    algorithm,
                    key: "RSA",
                    accepted: RSA_ALGORITHMS,
                });
            }
            if *sig_oid == OID_PKCS1_RSASSAPSS {
                check_pss_salt(csr.signature_algorithm.parameters.as_ref())?;
            }
            // ring, through x509-parser; PSS with another hash than
            // SHA-256/384/512 is refused there, and reported as a bad
            // signature algorithm below.
            csr.verify_signature().map_err(|e| match e {
                x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                    CsrError::SignatureAlgorithm {
                        algorithm,
                        key: "RSA",
                        accepted: RSA_ALGORITHMS,
                    }
                }
                _ => CsrError::Signature,
            })?;
        }
        KeyKind::P256 | KeyKind::P384 => {
            if *sig_oid == OID_SIG_ECDSA_WITH_SHA512 {
                // ring has no ECDSA with SHA-512: RustCrypto's curves verify it.
                verify_ecdsa_sha512(
                    kind,
                    &spki.subject_public_key.data,
                    &csr.signature_value.data,
                    info.raw,
                )?;
            } else if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 || *sig_oid == OID_SIG_ECDSA_WITH_SHA384
            {
                csr.verify_signature().map_err(|_| CsrError::Signature)?;
            } else {
                return Err(CsrError::SignatureAlgorithm {
                    algorithm,
                    key: "EC",
                    accepted: EC_ALGORITHMS,
                });
            }
        }
    }
    Ok(CheckedCsr {
        kind,
        spki_der: spki.raw.to_vec(),
        subject: subject_of(&info.subject)?,
    })
}

/// ring verifies RSASSA-PSS only with a salt as long as the digest (the
/// form TLS 1.3 uses, and `openssl req -sigopt rsa_pss_saltlen:digest`);
/// AWS documents no salt length. A CSR with another salt length is refused
/// with a message saying so, rather than as a bad signature.
fn check_pss_salt(
    params: Option<&x509_parser::der_parser::asn1_rs::Any<'_>>,
) -> Result<(), CsrError> {
    use x509_parser::oid_registry::{
        OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512,
    };
    let params = params
        .and_then(|p| x509_parser::signature_algorithm::RsaSsaPssParams::try_from(p).ok())
        .ok_or(CsrError::PssParameters)?;
    let hash = params.hash_algorithm_oid();
    let digest_len = if *hash == OID_NIST_HASH_SHA256 {
        32
    } else if *hash == OID_NIST_HASH_SHA384 {
        48
    } else if *hash == OID_NIST_HASH_SHA512 {
        64
    } else {
        return Err(CsrError::SignatureAlgorithm {
            algorithm: format!("RSASSA-PSS with hash {}", hash.to_id_string()),
            key: "RSA",
            accepted: RSA_ALGORITHMS,
        });
    };
    match params.salt_length() {
        n if n == digest_len => Ok(()),
        n => Err(CsrError::PssSaltLength {
            salt: n,
            digest: digest_len,
        }),
    }
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let parsed = spki.parsed().map_err(CsrError::UnreadableKey)?;
        let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
            return Err(CsrError::KeyType(alg.to_id_string()));
        };
        let bits = rsa.key_size();
        return if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            Ok(KeyKind::Rsa(bits))
        } else {
            Err(CsrError::RsaKeySize(bits))
        };
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        // The curve is the algorithm's parameter; a point's length alone
        // does not tell P-256 from a compressed point of a larger curve.
        let curve: Option<Oid<'_>> = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::P256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::P384),
            Some(c) if c == OID_NIST_EC_P521 => Err(CsrError::P521NotEmulated),
            Some(c) => Err(CsrError::EcCurve(c.to_id_string())),
            None => Err(CsrError::EcCurve("(not a named curve)".to_owned())),
        };
    }
    Err(CsrError::KeyType(alg.to_id_string()))
}

/// ECDSA with SHA-512 over `message` (the request info's DER).
fn verify_ecdsa_sha512(
    kind: KeyKind,
    point: &[u8],
    signature: &[u8],
    message: &[u8],
) -> Result<(), CsrError> {
    let digest = Sha512::digest(message);
    let ok = match kind {
        KeyKind::P256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point);
            let sig = p256::ecdsa::Signature::from_der(signature);
            matches!((key, sig), (Ok(k), Ok(s)) if k.verify_prehash(&digest, &s).is_ok())
        }
        KeyKind::P384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point);
            let sig = p384::ecdsa::Signature::from_der(signature);
            matches!((key, sig), (Ok(k), Ok(s)) if k.verify_prehash(&digest, &s).is_ok())
        }
        KeyKind::Rsa(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CsrError::Signature)
    }
}

/// The request's subject as rcgen writes it: every attribute in order, with
/// its string type kept (a multi-valued RDN becomes one RDN per attribute).
fn subject_of(name: &X509Name<'_>) -> Result<DistinguishedName, CsrError> {
    let bad = |what: String| CsrError::Subject(what);
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let arcs: Vec<u64> = oid
            .iter()
            .ok_or_else(|| bad(format!("attribute type {oid} has an arc too large")))?
            .collect();
        let value = attr.attr_value();
        let data = value.data;
        let text = || {
            std::str::from_utf8(data).map_err(|_| bad(format!("attribute {oid} is not valid text")))
        };
        let typed = |e: rcgen::Error| bad(format!("attribute {oid}: {e}"));
        let v = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(typed)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(typed)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(typed)?),
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(typed)?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                UniversalString::from_utf32be(data.to_vec()).map_err(typed)?,
            ),
            other => {
                return Err(bad(format!(
                    "attribute {oid} has a value of ASN.1 type {other}, not a string"
                )))
            }
        };
        dn.push(DnType::from_oid(&arcs), v);
    }
    Ok(dn)
}
