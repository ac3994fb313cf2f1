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
//! - Where AWS is silent, what ring (which verifies the CSR here and the
//!   device's TLS handshake later) cannot take is refused, naming it, rather
//!   than issued a certificate the device could never connect with: an RSA
//!   public exponent that is even or outside 3 to 2^33-1, an EC point that
//!   is not uncompressed, RSASSA-PSS whose MGF1 hash is not the signature's
//!   hash or whose salt is not as long as the digest ([`pss`]).
//!
//! The certificate is issued for the CSR's SubjectPublicKeyInfo exactly as
//! sent: the key kind is read from the key itself, never guessed from the
//! signature algorithm (a P-384 key may sign with SHA-256). Its subject is
//! the CSR's subject Name, byte for byte (repeated attribute types such as
//! two OUs included; see `pki::subject`).

mod key;
mod names;
mod pss;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha512};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::FromDer;

pub use key::MAX_RSA_EXPONENT;

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
    /// The modulus's exact bit length.
    #[error("RSA key of {0} bits: AWS IoT accepts RSA keys of {MIN_RSA_BITS} bits or more (this emulator up to {MAX_RSA_BITS}); make a key of 2048, 3072 or 4096 bits")]
    RsaKeySize(usize),
    /// The public exponent, in decimal, or its size when it is larger than 64 bits.
    #[error("RSA public exponent {0}: this emulator verifies (with ring, which also checks the device's TLS handshake) only odd exponents from 3 to 2^33-1; AWS documents no limit; make the key with the usual exponent 65537 (what `openssl genpkey -algorithm RSA` uses without `rsa_keygen_pubexp`)")]
    RsaExponent(String),
    #[error("EC key on P-521: AWS IoT accepts it, but this emulator cannot check it or let its device connect (its TLS library, ring, has no P-521); use P-256 or P-384 here")]
    P521NotEmulated,
    #[error("EC key on curve {0}: AWS IoT accepts only NIST P-256, P-384 and P-521")]
    EcCurve(String),
    /// An EC point ring cannot read: compressed, hybrid, or not of the curve's length.
    #[error("EC public key on {curve} is a {form} point of {len} bytes: this emulator (ring, which also checks the device's TLS handshake) reads only uncompressed points (0x04 and {uncompressed_len} bytes), AWS documents no point format; use an uncompressed point, OpenSSL's default (`openssl ec -in KEY -conv_form uncompressed -out KEY` converts a key)")]
    EcPointFormat {
        curve: &'static str,
        /// `compressed`, `hybrid` or `malformed`.
        form: &'static str,
        len: usize,
        uncompressed_len: usize,
    },
    #[error(
        "public key of algorithm {0}: AWS IoT accepts only RSA (rsaEncryption) and EC (P-256, P-384, P-521) keys"
    )]
    KeyType(String),
    /// `algorithm` is AWS's name and the OID where the OID is known, else the OID.
    #[error(
        "signature algorithm {algorithm} is not one AWS IoT accepts for {key} keys ({accepted}); sign with SHA-256, e.g. `openssl req -sha256`"
    )]
    SignatureAlgorithm {
        algorithm: String,
        key: &'static str,
        accepted: &'static str,
    },
    #[error("RSASSA-PSS parameters are missing or unreadable")]
    PssParameters,
    #[error("RSASSA-PSS with hash {hash} and {mgf1}: AWS IoT (SHA256/384/512WITHRSAANDMGF1) and this emulator (ring) take MGF1 over the signature's own hash; sign with `-sigopt rsa_mgf1_md:{md}`, or leave rsa_mgf1_md out (OpenSSL then uses the digest)")]
    PssMgf1 {
        hash: String,
        mgf1: String,
        /// OpenSSL's name of the digest.
        md: &'static str,
    },
    #[error("RSASSA-PSS with a salt of {salt} bytes: this emulator (ring) verifies PSS only with a salt as long as the digest ({digest} bytes); sign with `-sigopt rsa_pss_saltlen:digest`")]
    PssSaltLength { salt: u32, digest: u32 },
    /// The key and every parameter were accepted, and still the signature
    /// does not verify.
    #[error("the signature does not verify with the request's own public key: the CSR was changed after it was signed, or signed with another key")]
    Signature,
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
    /// The request's subject Name, DER, as sent (every RDN and attribute,
    /// in order, with its string type): AWS keeps the CSR's subject.
    pub(crate) subject_der: Vec<u8>,
}

const RSA_ALGORITHMS: &str =
    "SHA256WITHRSA, SHA384WITHRSA, SHA512WITHRSA, or RSASSA-PSS with SHA-256/384/512";
const EC_ALGORITHMS: &str = "ECDSA-WITH-SHA256, ECDSA-WITH-SHA384, ECDSA-WITH-SHA512";

/// Checks a PKCS#10 request (DER) as CreateCertificateFromCsr does.
pub(crate) fn check(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(CsrError::NotPkcs10)?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let kind = key::key_kind(spki)?;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let algorithm = names::signature(sig_oid);
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
                pss::check(csr.signature_algorithm.parameters.as_ref())?;
            }
            // ring, through x509-parser. Key size, exponent and PSS
            // parameters were checked above as ring checks them, so what
            // fails here is the signature itself.
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
        subject_der: info.subject.as_raw().to_vec(),
    })
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
