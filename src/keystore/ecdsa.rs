//! ECDSA signature formats.
//!
//! PKCS#11 (`CKM_ECDSA`) returns `r || s`, each as long as the curve order;
//! a TPM returns `r` and `s` as separate big-endian integers that may be
//! shorter. TLS and X.509 want the DER `Ecdsa-Sig-Value`:
//! `SEQUENCE { r INTEGER, s INTEGER }`.

/// Converts a raw `r || s` signature (both halves of equal length) to DER.
pub fn raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(rs_to_der(r, s))
}

/// Converts separate big-endian `r` and `s` to DER.
pub fn rs_to_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let r = der_integer(r);
    let s = der_integer(s);
    let mut out = Vec::with_capacity(r.len() + s.len() + 4);
    out.push(0x30);
    push_len(&mut out, r.len() + s.len());
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    out
}

/// A non-negative DER INTEGER: minimal length, with a 0x00 byte in front
/// when the top bit is set.
fn der_integer(v: &[u8]) -> Vec<u8> {
    let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let v = &v[first..];
    let mut body = Vec::with_capacity(v.len() + 1);
    if v.is_empty() || v[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(v);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x02);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_trimmed_and_high_bits_padded() {
        let mut raw = vec![0u8; 64];
        raw[1] = 0x01; // r = 0x0001.. -> 31 significant bytes
        raw[32] = 0x80; // s has its top bit set -> 33 bytes with a 0x00
        let der = raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..4], &[0x02, 31]);
        assert_eq!(der[4], 0x01);
        let s_at = 4 + 31;
        assert_eq!(&der[s_at..s_at + 3], &[0x02, 33, 0x00]);
        assert_eq!(der[1] as usize, der.len() - 2);
    }

    #[test]
    fn zero_is_encoded_as_one_byte() {
        assert_eq!(rs_to_der(&[0, 0], &[0]), vec![0x30, 6, 2, 1, 0, 2, 1, 0]);
    }

    #[test]
    fn long_form_length_for_p521_sized_values() {
        let der = rs_to_der(&[0xff; 66], &[0xff; 66]);
        assert_eq!(&der[..3], &[0x30, 0x81, 2 * (2 + 67)]);
    }

    #[test]
    fn odd_raw_length_is_refused() {
        assert!(raw_to_der(&[1, 2, 3]).is_none());
        assert!(raw_to_der(&[]).is_none());
    }

    #[test]
    fn verifies_with_ring_after_conversion() {
        // A P-256 signature made by p256 in raw form, converted here, must
        // verify with ring's ASN.1 verifier.
        use p256::ecdsa::signature::Signer;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let sig: p256::ecdsa::Signature = sk.sign(b"hello");
        let der = raw_to_der(&sig.to_bytes()).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            point.as_bytes(),
        )
        .verify(b"hello", &der)
        .unwrap();
    }

    #[test]
    fn p384_sized_values_match_p384_crate() {
        // Full width r with the high bit set (49-byte INTEGER) and a short s.
        let mut r = [0x11u8; 48];
        r[0] = 0x91;
        let mut s = [0u8; 48];
        s[47] = 5;
        let sig = p384::ecdsa::Signature::from_scalars(
            p384::FieldBytes::from(r),
            p384::FieldBytes::from(s),
        )
        .unwrap();
        let der = rs_to_der(&r, &s);
        assert_eq!(der[..2], [0x30, 2 + 49 + 2 + 1]);
        assert_eq!(der, sig.to_der().as_bytes());
    }

    #[test]
    fn matches_p256_crate_on_random_values() {
        use rand::RngCore;
        let mut rng = rand::rngs::OsRng;
        for i in 0..200 {
            let mut r = [0u8; 32];
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut r);
            rng.fill_bytes(&mut s);
            // Keep below the group order and exercise short values too.
            r[0] &= 0x7f | if i % 2 == 0 { 0x80 } else { 0 };
            r[0] %= 0xf0;
            s[0] %= 0xf0;
            if i % 7 == 0 {
                r[..3].fill(0);
            }
            let Ok(sig) = p256::ecdsa::Signature::from_scalars(
                p256::FieldBytes::from(r),
                p256::FieldBytes::from(s),
            ) else {
                continue;
            };
            assert_eq!(rs_to_der(&r, &s), sig.to_der().as_bytes());
        }
    }
}
