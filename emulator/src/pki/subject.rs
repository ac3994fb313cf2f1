//! A device certificate whose subject is the CSR's subject, byte for byte.
//!
//! AWS keeps the CSR's subject. rcgen 0.14 cannot write it: its
//! `DistinguishedName` holds one value per attribute type (`push` replaces
//! an existing one, so `DC=example,DC=com` or two OUs would become one), makes
//! a multi-valued RDN into several, and takes no raw subject. So rcgen
//! writes the certificate with an empty subject, and here the subject Name
//! is put in its place and the TBSCertificate signed again with the CA's
//! key; everything else (serial, validity, key, extensions, the signature
//! algorithm) is rcgen's, untouched.

use rcgen::SigningKey;

use super::PkiError;

/// One DER element: (the whole element, its content, what follows it).
/// Definite lengths only, as DER requires.
fn element(input: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first_len = *input.get(1)?;
    let (header, len) = if first_len < 0x80 {
        (2, usize::from(first_len))
    } else {
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + n, len)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
}

/// A DER element of `tag` around `content`.
fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// `cert_der` (rcgen's, signed by `key`) with its subject replaced by
/// `subject_der` (a Name, DER) and signed again by `key`.
pub(super) fn with_subject(
    cert_der: &[u8],
    subject_der: &[u8],
    key: &impl SigningKey,
) -> Result<Vec<u8>, PkiError> {
    let layout = |what: &'static str| PkiError::CertificateLayout(what);
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (_, cert, _) = element(cert_der).ok_or(layout("certificate"))?;
    let (tbs, tbs_content, rest) = element(cert).ok_or(layout("tbsCertificate"))?;
    let (signature_algorithm, _, _) = element(rest).ok_or(layout("signatureAlgorithm"))?;
    debug_assert_eq!(tbs.first(), Some(&0x30));

    // TBSCertificate ::= SEQUENCE { [0] version (rcgen writes v3), serial,
    // signature, issuer, validity, subject, ... }
    let mut at = tbs_content;
    if at.first() == Some(&0xa0) {
        at = element(at).ok_or(layout("version"))?.2;
    }
    for what in ["serialNumber", "signature", "issuer", "validity"] {
        at = element(at).ok_or(layout(what))?.2;
    }
    let (subject, _, after) = element(at).ok_or(layout("subject"))?;
    let before = &tbs_content[..tbs_content.len() - at.len()];
    if subject != [0x30, 0x00] {
        return Err(layout("subject (not the empty one rcgen was given)"));
    }

    let mut content = Vec::with_capacity(tbs_content.len() + subject_der.len());
    content.extend_from_slice(before);
    content.extend_from_slice(subject_der);
    content.extend_from_slice(after);
    let new_tbs = encode(0x30, &content);

    let signature = key.sign(&new_tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);

    let mut out = new_tbs;
    out.extend_from_slice(signature_algorithm);
    out.extend_from_slice(&encode(0x03, &bits));
    Ok(encode(0x30, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let der = encode(0x04, &content);
            let (whole, inner, rest) = element(&der).unwrap();
            assert_eq!(
                (whole.len(), inner, rest),
                (der.len(), &content[..], &[][..])
            );
        }
        // Truncated or indefinite lengths are not elements.
        assert!(element(&[0x30, 0x82, 0x01]).is_none());
        assert!(element(&[0x30, 0x80]).is_none());
        assert!(element(&[0x30, 0x05, 0x00]).is_none());
    }
}
