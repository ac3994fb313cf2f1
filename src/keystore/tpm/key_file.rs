//! The standard TPM 2.0 key file: `-----BEGIN TSS2 PRIVATE KEY-----`, the
//! ASN.1 `TSSPrivKey` that tpm2-openssl, tpm2-tss-engine, openssl_tpm2_engine,
//! GnuTLS and the Linux kernel read:
//!
//! ```text
//! TSSPrivKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,           -- id-loadablekey 2.23.133.10.1.3
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     parent      INTEGER,                     -- 0x40000001: TPM_RH_OWNER
//!     pubkey      OCTET STRING,                -- TPM2B_PUBLIC
//!     privkey     OCTET STRING                 -- TPM2B_PRIVATE
//! }
//! ```
//!
//! It holds nothing more than the store's own key file: the private part
//! is wrapped under the TPM's storage primary and loads on this TPM only
//! (not a secret in itself, like the store's file: whoever can read it and
//! reach the TPM can use the key, which is why its directory's mode
//! decides who may).
//! Only keys under [`Parent::Owner`] are written this way, since the tools
//! recreate a TPM_RH_OWNER parent from that template.

use super::parent::Parent;

/// id-loadablekey, 2.23.133.10.1.3, DER-encoded content octets.
const ID_LOADABLE_KEY: [u8; 6] = [0x67, 0x81, 0x05, 0x0a, 0x01, 0x03];

/// The PEM key file of a blob whose marshalled TPM2B_PUBLIC and
/// TPM2B_PRIVATE (size prefixes included) are given, made under `parent`,
/// with an empty auth value. `None` for a parent the tools cannot recreate.
pub(super) fn pem(parent: Parent, public: &[u8], private: &[u8]) -> Option<String> {
    let handle = parent.key_file_handle()?;
    let mut body = Vec::with_capacity(public.len() + private.len() + 32);
    der(&mut body, 0x06, &ID_LOADABLE_KEY);
    // emptyAuth [0] EXPLICIT BOOLEAN TRUE: the key has no auth value.
    der(&mut body, 0xa0, &[0x01, 0x01, 0xff]);
    der(&mut body, 0x02, &integer(handle));
    der(&mut body, 0x04, public);
    der(&mut body, 0x04, private);
    let mut seq = Vec::with_capacity(body.len() + 4);
    der(&mut seq, 0x30, &body);
    Some(pem::encode_config(
        &pem::Pem::new("TSS2 PRIVATE KEY", seq),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// Appends a DER TLV with definite length.
fn der(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
    out.extend_from_slice(content);
}

/// The content octets of a non-negative DER INTEGER.
fn integer(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    let mut out = Vec::with_capacity(5);
    if bytes[first] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[first..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_integers() {
        let mut out = Vec::new();
        der(&mut out, 0x04, &[7; 3]);
        assert_eq!(out, [0x04, 3, 7, 7, 7]);
        let mut out = Vec::new();
        der(&mut out, 0x04, &[0; 200]);
        assert_eq!(&out[..3], [0x04, 0x81, 200]);
        let mut out = Vec::new();
        der(&mut out, 0x04, &[0; 300]);
        assert_eq!(&out[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(integer(0x4000_0001), [0x40, 0, 0, 1]);
        assert_eq!(integer(0x8100_0001), [0, 0x81, 0, 0, 1]);
        assert_eq!(integer(0), [0]);
        assert_eq!(integer(0x7f), [0x7f]);
        assert_eq!(integer(0x80), [0, 0x80]);
    }

    #[test]
    fn a_key_file_has_the_loadable_key_shape() {
        let text = pem(Parent::Owner, &[0, 2, 0xaa, 0xbb], &[0, 1, 0xcc]).unwrap();
        let block = ::pem::parse(&text).unwrap();
        assert_eq!(block.tag(), "TSS2 PRIVATE KEY");
        assert_eq!(
            block.contents(),
            [
                0x30, 30, // SEQUENCE
                0x06, 6, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03, // id-loadablekey
                0xa0, 3, 0x01, 0x01, 0xff, // emptyAuth TRUE
                0x02, 4, 0x40, 0, 0, 1, // parent TPM_RH_OWNER
                0x04, 4, 0, 2, 0xaa, 0xbb, // pubkey
                0x04, 3, 0, 1, 0xcc, // privkey
            ]
        );
        assert!(text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"));
        assert!(text.ends_with("-----END TSS2 PRIVATE KEY-----\n"));
        assert!(super::pem(Parent::ZeroUnique, &[0, 0], &[0, 0]).is_none());
    }
}
