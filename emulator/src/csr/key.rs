//! The CSR's public key: its kind, and whether this emulator can check it
//! and let its device connect. ring verifies both the CSR here and the
//! device's TLS handshake later, so a key that ring refuses is refused
//! here, naming the reason, rather than issued a certificate its device
//! could never use.

use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};

use super::{names, CsrError, KeyKind, MAX_RSA_BITS, MIN_RSA_BITS};

/// Largest RSA public exponent ring verifies with (2^33 - 1).
pub const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

pub(super) fn key_kind(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let parsed = spki.parsed().map_err(CsrError::UnreadableKey)?;
        let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
            return Err(CsrError::KeyType(names::key(alg)));
        };
        let bits = bit_length(rsa.modulus);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::RsaKeySize(bits));
        }
        check_exponent(rsa.exponent)?;
        return Ok(KeyKind::Rsa(bits));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        // The curve is the algorithm's parameter; a point's length alone
        // does not tell P-256 from a compressed point of a larger curve.
        let curve: Option<Oid<'_>> = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let kind = match curve {
            Some(c) if c == OID_EC_P256 => KeyKind::P256,
            Some(c) if c == OID_NIST_EC_P384 => KeyKind::P384,
            Some(c) if c == OID_NIST_EC_P521 => return Err(CsrError::P521NotEmulated),
            Some(c) => return Err(CsrError::EcCurve(names::curve(&c))),
            None => return Err(CsrError::EcCurve("(not a named curve)".to_owned())),
        };
        check_point_format(kind, &spki.subject_public_key.data)?;
        return Ok(kind);
    }
    Err(CsrError::KeyType(names::key(alg)))
}

/// The exact bit length of a big-endian unsigned integer (x509-parser's
/// `key_size` counts whole bytes, so it calls an 8193-bit modulus 8192).
fn bit_length(be: &[u8]) -> usize {
    let digits = match be.iter().position(|&b| b != 0) {
        Some(first) => &be[first..],
        None => return 0,
    };
    digits.len() * 8 - digits[0].leading_zeros() as usize
}

/// ring verifies with odd exponents from 3 to 2^33 - 1 only; AWS documents
/// no limit. 65537, what every key generator uses, passes.
fn check_exponent(be: &[u8]) -> Result<(), CsrError> {
    let digits = match be.iter().position(|&b| b != 0) {
        Some(first) => &be[first..],
        None => &[][..],
    };
    let value = (digits.len() <= 8).then(|| {
        digits
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    });
    match value {
        Some(e) if (3..=MAX_RSA_EXPONENT).contains(&e) && e % 2 == 1 => Ok(()),
        Some(e) => Err(CsrError::RsaExponent(e.to_string())),
        None => Err(CsrError::RsaExponent(format!(
            "of {} bits",
            bit_length(digits)
        ))),
    }
}

/// ring takes only uncompressed points (0x04, X, Y) in a SubjectPublicKeyInfo;
/// AWS documents no point format. A compressed point would get a
/// certificate that the device's TLS handshake could never use here.
fn check_point_format(kind: KeyKind, point: &[u8]) -> Result<(), CsrError> {
    let (curve, coordinate) = match kind {
        KeyKind::P256 => ("P-256", 32),
        KeyKind::P384 => ("P-384", 48),
        KeyKind::Rsa(_) => return Ok(()),
    };
    let form = match point.first() {
        Some(0x04) if point.len() == 1 + 2 * coordinate => return Ok(()),
        Some(0x02 | 0x03) if point.len() == 1 + coordinate => "compressed",
        Some(0x06 | 0x07) if point.len() == 1 + 2 * coordinate => "hybrid",
        _ => "malformed",
    };
    Err(CsrError::EcPointFormat {
        curve,
        form,
        len: point.len(),
        uncompressed_len: 1 + 2 * coordinate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_is_exact() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        // 8193 bits: one bit above a whole number of bytes.
        let mut n = vec![0x01];
        n.extend([0xff; 1024]);
        assert_eq!(bit_length(&n), 8193);
        // 2047 bits, as DER writes it (no leading zero: the top bit is 0).
        let mut n = vec![0x7f];
        n.extend([0xff; 255]);
        assert_eq!(bit_length(&n), 2047);
    }

    #[test]
    fn exponents_ring_refuses_are_refused() {
        assert!(check_exponent(&[0x01, 0x00, 0x01]).is_ok());
        assert!(check_exponent(&[0x03]).is_ok());
        assert!(check_exponent(&[0x01, 0xff, 0xff, 0xff, 0xff]).is_ok());
        for bad in [&[0x01][..], &[0x01, 0x00, 0x00], &[0x02, 0, 0, 0, 1], &[]] {
            assert!(
                matches!(check_exponent(bad), Err(CsrError::RsaExponent(_))),
                "{bad:?}"
            );
        }
        let e = check_exponent(&[0x01; 9]).unwrap_err();
        assert!(e.to_string().contains("of 65 bits"), "{e}");
    }

    #[test]
    fn only_uncompressed_points_of_the_curves_length_pass() {
        let mut p = vec![0x04];
        p.extend([1; 64]);
        assert!(check_point_format(KeyKind::P256, &p).is_ok());
        assert!(matches!(
            check_point_format(KeyKind::P384, &p),
            Err(CsrError::EcPointFormat {
                form: "malformed",
                ..
            })
        ));
        let mut c = vec![0x02];
        c.extend([1; 48]);
        let e = check_point_format(KeyKind::P384, &c).unwrap_err();
        assert!(
            matches!(
                e,
                CsrError::EcPointFormat {
                    form: "compressed",
                    len: 49,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(check_point_format(KeyKind::P256, &[]).is_err());
    }
}
