//! Names for the object identifiers a refused CSR may carry, so that a
//! message says `SHA1WITHRSA` rather than `1.2.840.113549.1.1.5`. Signature
//! algorithms use AWS's spelling where AWS lists them ("Certificate signing
//! algorithms supported by AWS IoT"); the others use the usual OpenSSL-like
//! names. An identifier not listed here is printed as it is.

use x509_parser::oid_registry::Oid;

/// Signature algorithms.
const SIGNATURES: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.2", "MD2WITHRSA"),
    ("1.2.840.113549.1.1.4", "MD5WITHRSA"),
    ("1.2.840.113549.1.1.5", "SHA1WITHRSA"),
    ("1.2.840.113549.1.1.14", "SHA224WITHRSA"),
    ("1.2.840.113549.1.1.11", "SHA256WITHRSA"),
    ("1.2.840.113549.1.1.12", "SHA384WITHRSA"),
    ("1.2.840.113549.1.1.13", "SHA512WITHRSA"),
    ("1.2.840.113549.1.1.10", "RSASSA-PSS"),
    ("2.16.840.1.101.3.4.3.13", "SHA3-224WITHRSA"),
    ("2.16.840.1.101.3.4.3.14", "SHA3-256WITHRSA"),
    ("2.16.840.1.101.3.4.3.15", "SHA3-384WITHRSA"),
    ("2.16.840.1.101.3.4.3.16", "SHA3-512WITHRSA"),
    ("1.2.840.10045.4.1", "ECDSA-WITH-SHA1"),
    ("1.2.840.10045.4.3.1", "ECDSA-WITH-SHA224"),
    ("1.2.840.10045.4.3.2", "ECDSA-WITH-SHA256"),
    ("1.2.840.10045.4.3.3", "ECDSA-WITH-SHA384"),
    ("1.2.840.10045.4.3.4", "ECDSA-WITH-SHA512"),
    ("2.16.840.1.101.3.4.3.10", "ECDSA-WITH-SHA3-256"),
    ("2.16.840.1.101.3.4.3.11", "ECDSA-WITH-SHA3-384"),
    ("2.16.840.1.101.3.4.3.12", "ECDSA-WITH-SHA3-512"),
    ("1.2.840.10040.4.3", "DSA_WITH_SHA1"),
    ("2.16.840.1.101.3.4.3.2", "DSA_WITH_SHA256"),
    ("1.3.101.112", "ED25519"),
    ("1.3.101.113", "ED448"),
    ("1.2.156.10197.1.501", "SM2-WITH-SM3"),
];

/// Public key algorithms.
const KEYS: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.1", "RSA"),
    // An RSA key restricted to PSS (`openssl genpkey -algorithm RSA-PSS`).
    ("1.2.840.113549.1.1.10", "RSASSA-PSS"),
    ("1.2.840.10045.2.1", "EC"),
    ("1.2.840.10040.4.1", "DSA"),
    ("1.3.101.110", "X25519"),
    ("1.3.101.111", "X448"),
    ("1.3.101.112", "ED25519"),
    ("1.3.101.113", "ED448"),
];

/// Named elliptic curves.
const CURVES: &[(&str, &str)] = &[
    ("1.2.840.10045.3.1.1", "P-192"),
    ("1.3.132.0.33", "P-224"),
    ("1.2.840.10045.3.1.7", "P-256"),
    ("1.3.132.0.34", "P-384"),
    ("1.3.132.0.35", "P-521"),
    ("1.3.132.0.10", "secp256k1"),
    ("1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1"),
    ("1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1"),
    ("1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1"),
    ("1.2.156.10197.1.301", "SM2"),
];

/// Digests (RSASSA-PSS and MGF1 parameters).
const DIGESTS: &[(&str, &str)] = &[
    ("1.2.840.113549.2.5", "MD5"),
    ("1.3.14.3.2.26", "SHA-1"),
    ("2.16.840.1.101.3.4.2.4", "SHA-224"),
    ("2.16.840.1.101.3.4.2.1", "SHA-256"),
    ("2.16.840.1.101.3.4.2.2", "SHA-384"),
    ("2.16.840.1.101.3.4.2.3", "SHA-512"),
];

/// `NAME (oid)` where the identifier is known, else the identifier.
fn named(table: &[(&str, &str)], oid: &Oid<'_>) -> String {
    let id = oid.to_id_string();
    match table.iter().find(|(o, _)| *o == id) {
        Some((_, name)) => format!("{name} ({id})"),
        None => id,
    }
}

pub(super) fn signature(oid: &Oid<'_>) -> String {
    named(SIGNATURES, oid)
}

pub(super) fn key(oid: &Oid<'_>) -> String {
    named(KEYS, oid)
}

pub(super) fn curve(oid: &Oid<'_>) -> String {
    named(CURVES, oid)
}

pub(super) fn digest(oid: &Oid<'_>) -> String {
    named(DIGESTS, oid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::oid_registry::{OID_EC_P256, OID_PKCS1_SHA1WITHRSA, OID_SIG_ED25519};

    #[test]
    fn known_identifiers_are_named_and_unknown_ones_kept() {
        assert_eq!(
            signature(&OID_PKCS1_SHA1WITHRSA),
            "SHA1WITHRSA (1.2.840.113549.1.1.5)"
        );
        assert_eq!(signature(&OID_SIG_ED25519), "ED25519 (1.3.101.112)");
        assert_eq!(curve(&OID_EC_P256), "P-256 (1.2.840.10045.3.1.7)");
        let unknown = Oid::from(&[1, 2, 3, 4]).unwrap();
        assert_eq!(signature(&unknown), "1.2.3.4");
    }
}
