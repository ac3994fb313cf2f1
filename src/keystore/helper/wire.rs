//! The key helper's wire format: frames, the messages of each protocol
//! version, and the mirror of [`KeyStoreError`] that crosses the pipe.
//!
//! A message is two frames, each a 4-byte big-endian length and that many
//! bytes: a JSON header, then a binary body (a message to sign, a
//! signature, the PKCS#8 of a key to import, or nothing). Bodies live in
//! `Zeroizing` buffers and no buffered reader or writer keeps a copy.
//!
//! Every header is an envelope `{"v<N>": <message of version N>}`
//! ([`RequestFrame`], [`ReplyFrame`]). The rules, pinned by the tests below:
//! - the framing and the envelope never change, so a peer of any version
//!   is recognised from its first frame and named in the error;
//! - a peer answers a hello of a version it does not speak with an error in
//!   its own version and ends (the other side sees the version from the
//!   envelope alone);
//! - within a version, a header may gain a field only if it is optional
//!   (`#[serde(default)]`): unknown fields are ignored. Any other change (a
//!   new request, reply or error variant, a renamed or removed field, a new
//!   required field, another meaning for a field) is a new version;
//! - the snapshots below are what version 1 is: never edit one to make a
//!   test pass.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keystore::{
    Backend, HardwareCode, KeyAlgorithm, KeyInfo, KeyLabel, KeyStoreError, PublicKey,
    SignatureScheme,
};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Largest frame either side accepts (the hello carries the config text).
pub const MAX_FRAME: usize = 1 << 20;

/// A header from the daemon to its helper.
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequestFrame {
    #[serde(rename = "v1")]
    V1(Request),
}

/// A header from the helper to its daemon.
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReplyFrame {
    #[serde(rename = "v1")]
    V1(Reply),
}

/// Version 1 requests. The first is a hello, and only the first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The configuration the daemon runs with, as it read it. The body is
    /// empty, or the PIN of `PIN_SOURCE = env:NAME`, which the helper's
    /// environment does not hold (`helper::sealed`); a helper that does not
    /// need it ignores it.
    Hello {
        config_path: PathBuf,
        config_text: String,
    },
    Generate {
        label: String,
        algorithm: KeyAlgorithm,
    },
    /// Body: the key's PKCS#8 DER.
    Import {
        label: String,
    },
    Info {
        label: String,
    },
    /// Body: the message to sign.
    Sign {
        label: String,
        scheme: SignatureScheme,
    },
    Promote {
        pending: String,
        current: String,
    },
    Delete {
        label: String,
    },
    List,
    HardwareId,
    /// TPM2_Certify of `key` by `by`; `qualifying` in hex on the wire
    /// (a frame whose hex does not decode is a malformed frame).
    Certify {
        key: String,
        by: String,
        #[serde(with = "hex_bytes")]
        qualifying: Vec<u8>,
    },
}

/// Version 1 replies, one for each request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The helper opened the store and serves it.
    Hello {
        backend: Backend,
    },
    Done,
    Key {
        key: WireKey,
    },
    Keys {
        keys: Vec<WireKey>,
    },
    /// Body: the signature.
    Signature,
    HardwareId {
        id: Option<String>,
    },
    /// A [`crate::keystore::Certification`], each part in hex.
    Certification {
        attest: String,
        signature: String,
        public: String,
    },
    Error {
        error: WireError,
    },
}

/// A [`KeyInfo`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireKey {
    label: String,
    backend: Backend,
    reference: String,
    /// Hex of the DER SubjectPublicKeyInfo.
    spki: String,
}

impl From<&KeyInfo> for WireKey {
    fn from(info: &KeyInfo) -> Self {
        Self {
            label: info.label.as_str().to_string(),
            backend: info.backend,
            reference: info.reference.clone(),
            spki: hex::encode(info.public_key.spki_der()),
        }
    }
}

impl WireKey {
    pub fn into_info(self) -> Result<KeyInfo, String> {
        let der = hex::decode(&self.spki).map_err(|e| format!("public key is not hex: {e}"))?;
        Ok(KeyInfo {
            label: KeyLabel::new(self.label).map_err(|e| e.to_string())?,
            backend: self.backend,
            reference: self.reference,
            public_key: PublicKey::from_spki_der(&der).map_err(|e| e.to_string())?,
        })
    }
}

/// [`KeyStoreError`] on the wire: one variant for each of its variants,
/// with the same fields, so that the daemon gets back the variant the
/// helper's store returned, its message and its retryability. Every field
/// is one the error's message prints (or `retryable`, or the hardware
/// code), so nothing crosses that the message would not show; and no
/// variant holds a PIN, a key or a token.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WireError {
    InvalidLabel {
        label: String,
    },
    NotFound {
        label: String,
        backend: Backend,
        reference: String,
        hint: String,
    },
    AlreadyExists {
        label: String,
        backend: Backend,
        reference: String,
    },
    UnsupportedAlgorithm {
        what: String,
    },
    SchemeMismatch {
        algorithm: KeyAlgorithm,
        scheme: SignatureScheme,
    },
    BadPrivateKey {
        detail: String,
    },
    BadPublicKey {
        op: String,
        detail: String,
    },
    BadSignature,
    BadPin {
        backend: Backend,
        detail: String,
    },
    Unavailable {
        backend: Backend,
        detail: String,
        retryable: bool,
        code: Option<HardwareCode>,
    },
    Backend {
        backend: Backend,
        op: String,
        detail: String,
        code: Option<HardwareCode>,
        /// [`KeyStoreError::ImportRefused`], added within version 1 as an
        /// optional field: a peer that predates it reads a `Backend` error
        /// with the same detail.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        import_refused: bool,
    },
    NotCompiled {
        backend: Backend,
        feature: String,
    },
    /// `KeyStoreError::HelperConfig` (its wire name kept from before the
    /// rename: version 1 is unchanged).
    Helper {
        message: String,
    },
    HelperVersion {
        program: PathBuf,
        daemon: u32,
        helper: u32,
    },
    Io {
        what: String,
        path: PathBuf,
        /// The errno, when the failure was the operating system's.
        os_error: Option<i32>,
        /// The error's text, for one that was not.
        message: String,
    },
}

impl From<&KeyStoreError> for WireError {
    fn from(e: &KeyStoreError) -> Self {
        use KeyStoreError as E;
        // No `_` arm: a new KeyStoreError variant must get its mirror here
        // (and, being a new error variant, a new protocol version).
        match e {
            E::InvalidLabel { label } => Self::InvalidLabel {
                label: label.clone(),
            },
            E::NotFound {
                label,
                backend,
                reference,
                hint,
            } => Self::NotFound {
                label: label.clone(),
                backend: *backend,
                reference: reference.clone(),
                hint: hint.to_string(),
            },
            E::AlreadyExists {
                label,
                backend,
                reference,
            } => Self::AlreadyExists {
                label: label.clone(),
                backend: *backend,
                reference: reference.clone(),
            },
            E::UnsupportedAlgorithm { what } => Self::UnsupportedAlgorithm { what: what.clone() },
            E::SchemeMismatch { algorithm, scheme } => Self::SchemeMismatch {
                algorithm: *algorithm,
                scheme: *scheme,
            },
            E::BadPrivateKey { detail } => Self::BadPrivateKey {
                detail: detail.clone(),
            },
            E::BadPublicKey { op, detail } => Self::BadPublicKey {
                op: op.to_string(),
                detail: detail.clone(),
            },
            E::BadSignature => Self::BadSignature,
            E::BadPin { backend, detail } => Self::BadPin {
                backend: *backend,
                detail: detail.clone(),
            },
            E::Unavailable {
                backend,
                detail,
                retryable,
                code,
            } => Self::Unavailable {
                backend: *backend,
                detail: detail.clone(),
                retryable: *retryable,
                code: *code,
            },
            E::Backend {
                backend,
                op,
                detail,
                code,
            } => Self::Backend {
                backend: *backend,
                op: op.to_string(),
                detail: detail.clone(),
                code: *code,
                import_refused: false,
            },
            E::ImportRefused { backend, detail } => Self::Backend {
                backend: *backend,
                op: "import key".into(),
                detail: detail.clone(),
                code: None,
                import_refused: true,
            },
            E::NotCompiled { backend, feature } => Self::NotCompiled {
                backend: *backend,
                feature: feature.to_string(),
            },
            E::HelperConfig { message } => Self::Helper {
                message: message.clone(),
            },
            E::HelperVersion {
                program,
                daemon,
                helper,
            } => Self::HelperVersion {
                program: program.clone(),
                daemon: *daemon,
                helper: *helper,
            },
            E::Io { what, path, source } => Self::Io {
                what: what.to_string(),
                path: path.clone(),
                os_error: source.raw_os_error(),
                message: source.to_string(),
            },
        }
    }
}

impl From<WireError> for KeyStoreError {
    fn from(e: WireError) -> Self {
        use WireError as W;
        match e {
            W::InvalidLabel { label } => Self::InvalidLabel { label },
            W::NotFound {
                label,
                backend,
                reference,
                hint,
            } => Self::NotFound {
                label,
                backend,
                reference,
                hint: hint.into(),
            },
            W::AlreadyExists {
                label,
                backend,
                reference,
            } => Self::AlreadyExists {
                label,
                backend,
                reference,
            },
            W::UnsupportedAlgorithm { what } => Self::UnsupportedAlgorithm { what },
            W::SchemeMismatch { algorithm, scheme } => Self::SchemeMismatch { algorithm, scheme },
            W::BadPrivateKey { detail } => Self::BadPrivateKey { detail },
            W::BadPublicKey { op, detail } => Self::BadPublicKey {
                op: op.into(),
                detail,
            },
            W::BadSignature => Self::BadSignature,
            W::BadPin { backend, detail } => Self::BadPin { backend, detail },
            W::Unavailable {
                backend,
                detail,
                retryable,
                code,
            } => Self::Unavailable {
                backend,
                detail,
                retryable,
                code,
            },
            W::Backend {
                backend,
                detail,
                import_refused: true,
                ..
            } => Self::ImportRefused { backend, detail },
            W::Backend {
                backend,
                op,
                detail,
                code,
                import_refused: false,
            } => Self::Backend {
                backend,
                op: op.into(),
                detail,
                code,
            },
            W::NotCompiled { backend, feature } => Self::NotCompiled {
                backend,
                feature: feature.into(),
            },
            W::Helper { message } => Self::HelperConfig { message },
            W::HelperVersion {
                program,
                daemon,
                helper,
            } => Self::HelperVersion {
                program,
                daemon,
                helper,
            },
            W::Io {
                what,
                path,
                os_error,
                message,
            } => Self::Io {
                what: what.into(),
                path,
                // An errno makes the same io::Error again, message and kind.
                source: match os_error {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(message),
                },
            },
        }
    }
}

impl Reply {
    pub fn error(e: &KeyStoreError) -> Self {
        Reply::Error { error: e.into() }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A header in an envelope of another version: the peer is another
    /// build.
    #[error("the peer speaks protocol version {0}, this build version {VERSION}")]
    Version(u32),
    /// Not JSON.
    #[error("bad message header: {0}")]
    Garbled(#[source] serde_json::Error),
    /// JSON, but no message of this version.
    #[error("unknown message: {0}")]
    Unknown(#[source] serde_json::Error),
}

/// Writes one message: header frame, then body frame. The body goes
/// straight to the pipe, never through a buffer of our own.
pub fn write_message(
    w: &mut impl Write,
    header: &impl Serialize,
    body: &[u8],
) -> std::io::Result<()> {
    let json = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    if json.len() > MAX_FRAME || body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "message of {} + {} bytes is over the {MAX_FRAME}-byte frame limit",
            json.len(),
            body.len()
        )));
    }
    let mut head = Vec::with_capacity(json.len() + 8);
    head.extend_from_slice(&(json.len() as u32).to_be_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one frame; `None` when the peer closed the pipe before it.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// A header and its body.
pub type Message<T> = (T, Zeroizing<Vec<u8>>);

/// Reads one message; `None` on a clean end of input.
pub fn read_message<T: DeserializeOwned>(
    r: &mut impl Read,
) -> Result<Option<Message<T>>, ReadError> {
    let Some(header) = read_frame(r)? else {
        return Ok(None);
    };
    let header = decode(&header)?;
    let body = read_frame(r)?.ok_or(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    Ok(Some((header, body)))
}

/// A header as a frame of this version, or why not.
pub fn decode<T: DeserializeOwned>(header: &[u8]) -> Result<T, ReadError> {
    serde_json::from_slice(header).map_err(|e| {
        if !e.is_data() {
            return ReadError::Garbled(e);
        }
        match envelope_version(header) {
            Some(v) if v != VERSION => ReadError::Version(v),
            _ => ReadError::Unknown(e),
        }
    })
}

/// N of a `{"v<N>": ...}` envelope, without reading what is inside.
fn envelope_version(header: &[u8]) -> Option<u32> {
    let fields: BTreeMap<String, IgnoredAny> = serde_json::from_slice(header).ok()?;
    let mut keys = fields.keys();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return None;
    };
    let digits = key.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes as a hex string in a frame.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(frame: &impl Serialize) -> String {
        serde_json::to_string(frame).unwrap()
    }

    /// Version 1 as it is on the wire. Each snapshot must decode to its
    /// message and each message encode to its snapshot, whatever this build
    /// changes: a change that breaks one is a new protocol version.
    #[test]
    fn version_1_requests_are_pinned() {
        let cases: Vec<(Request, &str)> = vec![
            (
                Request::Hello {
                    config_path: "/etc/prov-agent/config.ini".into(),
                    config_text: "[SETTINGS]\n".into(),
                },
                r#"{"v1":{"op":"hello","config_path":"/etc/prov-agent/config.ini","config_text":"[SETTINGS]\n"}}"#,
            ),
            (
                Request::Generate {
                    label: "device".into(),
                    algorithm: KeyAlgorithm::EcP256,
                },
                r#"{"v1":{"op":"generate","label":"device","algorithm":"ec-p256"}}"#,
            ),
            (
                Request::Import {
                    label: "claim".into(),
                },
                r#"{"v1":{"op":"import","label":"claim"}}"#,
            ),
            (
                Request::Info {
                    label: "device".into(),
                },
                r#"{"v1":{"op":"info","label":"device"}}"#,
            ),
            (
                Request::Sign {
                    label: "device".into(),
                    scheme: SignatureScheme::EcdsaSha256,
                },
                r#"{"v1":{"op":"sign","label":"device","scheme":"ecdsa-sha256"}}"#,
            ),
            (
                Request::Promote {
                    pending: "device.alt".into(),
                    current: "device".into(),
                },
                r#"{"v1":{"op":"promote","pending":"device.alt","current":"device"}}"#,
            ),
            (
                Request::Delete {
                    label: "device".into(),
                },
                r#"{"v1":{"op":"delete","label":"device"}}"#,
            ),
            (Request::List, r#"{"v1":{"op":"list"}}"#),
            (Request::HardwareId, r#"{"v1":{"op":"hardware-id"}}"#),
            (
                Request::Certify {
                    key: "device.alt".into(),
                    by: "attest".into(),
                    qualifying: b"ab".to_vec(),
                },
                r#"{"v1":{"op":"certify","key":"device.alt","by":"attest","qualifying":"6162"}}"#,
            ),
        ];
        for (request, snapshot) in cases {
            let RequestFrame::V1(back) = decode::<RequestFrame>(snapshot.as_bytes()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{request:?}"), "{snapshot}");
            assert_eq!(json(&RequestFrame::V1(request)), snapshot);
        }
    }

    #[test]
    fn version_1_replies_are_pinned() {
        let spki = "3059301306072a8648ce3d020106082a8648ce3d03010703420004";
        let cases: Vec<(Reply, String)> = vec![
            (
                Reply::Hello {
                    backend: Backend::Tpm,
                },
                r#"{"v1":{"reply":"hello","backend":"tpm"}}"#.into(),
            ),
            (Reply::Done, r#"{"v1":{"reply":"done"}}"#.into()),
            (
                Reply::Key {
                    key: WireKey {
                        label: "device".into(),
                        backend: Backend::Pkcs11,
                        reference: "pkcs11:token=gw;object=device;type=private".into(),
                        spki: spki.into(),
                    },
                },
                format!(
                    r#"{{"v1":{{"reply":"key","key":{{"label":"device","backend":"pkcs11","reference":"pkcs11:token=gw;object=device;type=private","spki":"{spki}"}}}}}}"#
                ),
            ),
            (
                Reply::Keys { keys: vec![] },
                r#"{"v1":{"reply":"keys","keys":[]}}"#.into(),
            ),
            (Reply::Signature, r#"{"v1":{"reply":"signature"}}"#.into()),
            (
                Reply::HardwareId {
                    id: Some("0a1b".into()),
                },
                r#"{"v1":{"reply":"hardware-id","id":"0a1b"}}"#.into(),
            ),
            (
                Reply::Certification {
                    attest: "ff544347".into(),
                    signature: "0018".into(),
                    public: "0023".into(),
                },
                r#"{"v1":{"reply":"certification","attest":"ff544347","signature":"0018","public":"0023"}}"#
                    .into(),
            ),
            (
                Reply::Error {
                    error: WireError::NotFound {
                        label: "device".into(),
                        backend: Backend::Tpm,
                        reference: "tpm:handle=0x81000100".into(),
                        hint: "enroll first".into(),
                    },
                },
                r#"{"v1":{"reply":"error","error":{"kind":"not-found","label":"device","backend":"tpm","reference":"tpm:handle=0x81000100","hint":"enroll first"}}}"#.into(),
            ),
            (
                Reply::Error {
                    error: WireError::Backend {
                        backend: Backend::Tpm,
                        op: "sign (TPM2_Sign)".into(),
                        detail: "TPM_RC_INTEGRITY".into(),
                        code: Some(HardwareCode::Tpm(0x99f)),
                        import_refused: false,
                    },
                },
                r#"{"v1":{"reply":"error","error":{"kind":"backend","backend":"tpm","op":"sign (TPM2_Sign)","detail":"TPM_RC_INTEGRITY","code":{"tpm":2463}}}}"#.into(),
            ),
            // Optional field added within version 1 (KeyStoreError::ImportRefused).
            (
                Reply::Error {
                    error: WireError::Backend {
                        backend: Backend::Pkcs11,
                        op: "import key".into(),
                        detail: "C_CreateObject of a private key refused with CKR_ATTRIBUTE_VALUE_INVALID".into(),
                        code: None,
                        import_refused: true,
                    },
                },
                r#"{"v1":{"reply":"error","error":{"kind":"backend","backend":"pkcs11","op":"import key","detail":"C_CreateObject of a private key refused with CKR_ATTRIBUTE_VALUE_INVALID","code":null,"import_refused":true}}}"#.into(),
            ),
            (
                Reply::Error {
                    error: WireError::Io {
                        what: "cannot read PIN file".into(),
                        path: "/run/pin".into(),
                        os_error: Some(2),
                        message: "No such file or directory (os error 2)".into(),
                    },
                },
                r#"{"v1":{"reply":"error","error":{"kind":"io","what":"cannot read PIN file","path":"/run/pin","os_error":2,"message":"No such file or directory (os error 2)"}}}"#.into(),
            ),
        ];
        for (reply, snapshot) in cases {
            let ReplyFrame::V1(back) = decode::<ReplyFrame>(snapshot.as_bytes()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{reply:?}"), "{snapshot}");
            assert_eq!(json(&ReplyFrame::V1(reply)), snapshot);
        }
    }

    #[test]
    fn an_optional_field_added_within_a_version_is_ignored() {
        let newer =
            br#"{"v1":{"op":"sign","label":"device","scheme":"ecdsa-sha256","deadline_ms":50}}"#;
        let RequestFrame::V1(request) = decode::<RequestFrame>(newer).unwrap();
        assert!(matches!(request, Request::Sign { ref label, .. } if label == "device"));
    }

    #[test]
    fn another_version_is_named_from_the_envelope_alone() {
        // Whatever version 2 holds, version 1 reads only its number.
        for other in [
            &br#"{"v2":{"op":"hello","something":["new"]}}"#[..],
            br#"{"v2":"anything"}"#,
            br#"{"v17":{}}"#,
        ] {
            let err = decode::<RequestFrame>(other).unwrap_err();
            assert!(matches!(err, ReadError::Version(2 | 17)), "{err}");
            assert!(matches!(
                decode::<ReplyFrame>(other),
                Err(ReadError::Version(2 | 17))
            ));
        }
        let err = decode::<ReplyFrame>(br#"{"v2":{}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer speaks protocol version 2, this build version 1"
        );
        // Not an envelope, or an unknown message of this version: not a
        // version problem.
        for unknown in [
            &br#"{"op":"list"}"#[..],
            br#"{"v1":{"op":"format-the-disk"}}"#,
            br#"{"v1":{},"v2":{}}"#,
            br#"{"vx":{}}"#,
        ] {
            let err = decode::<RequestFrame>(unknown).unwrap_err();
            assert!(matches!(err, ReadError::Unknown(_)), "{err}");
        }
        // Not JSON, or JSON that is no envelope at all.
        for garbled in [&b"{oops"[..], b"[1]", b""] {
            let err = decode::<RequestFrame>(garbled).unwrap_err();
            assert!(matches!(err, ReadError::Garbled(_)), "{err}");
        }
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        let request = RequestFrame::V1(Request::Sign {
            label: "device".into(),
            scheme: SignatureScheme::EcdsaSha256,
        });
        write_message(&mut buf, &request, b"to be signed").unwrap();
        let mut r = &buf[..];
        let (RequestFrame::V1(back), body) = read_message::<RequestFrame>(&mut r).unwrap().unwrap();
        assert!(matches!(
            back,
            Request::Sign { ref label, scheme: SignatureScheme::EcdsaSha256 } if label == "device"
        ));
        assert_eq!(&body[..], b"to be signed");
        // A clean end of input between messages is not an error ...
        assert!(read_message::<RequestFrame>(&mut r).unwrap().is_none());
        // ... but one in the middle of a message is.
        let mut cut = &buf[..buf.len() - 3];
        assert!(read_message::<RequestFrame>(&mut cut).is_err());
    }

    #[test]
    fn oversized_and_garbled_frames_are_refused() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let err = read_frame(&mut &huge[..]).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");

        let mut garbled = Vec::new();
        garbled.extend_from_slice(&5u32.to_be_bytes());
        garbled.extend_from_slice(b"{oops");
        garbled.extend_from_slice(&0u32.to_be_bytes());
        let err = read_message::<RequestFrame>(&mut &garbled[..]).unwrap_err();
        assert!(err.to_string().contains("bad message header"), "{err}");
    }

    /// One error of each variant. The match makes a new variant a compile
    /// error here until it has a sample.
    fn one_of_each() -> Vec<KeyStoreError> {
        let all = vec![
            KeyStoreError::InvalidLabel { label: ".x".into() },
            KeyStoreError::NotFound {
                label: "device".into(),
                backend: Backend::Tpm,
                reference: "tpm:handle=0x81000100".into(),
                hint: "enroll first".into(),
            },
            KeyStoreError::AlreadyExists {
                label: "device".into(),
                backend: Backend::Pkcs11,
                reference: "pkcs11:token=gw;object=device;type=private".into(),
            },
            KeyStoreError::UnsupportedAlgorithm {
                what: "ed25519".into(),
            },
            KeyStoreError::SchemeMismatch {
                algorithm: KeyAlgorithm::EcP256,
                scheme: SignatureScheme::RsaPssSha256,
            },
            KeyStoreError::BadPrivateKey {
                detail: "no PEM block".into(),
            },
            KeyStoreError::BadPublicKey {
                op: "decode EC point".into(),
                detail: "point not on curve".into(),
            },
            KeyStoreError::BadSignature,
            KeyStoreError::BadPin {
                backend: Backend::Pkcs11,
                detail: "log in: C_Login returned CKR_PIN_INCORRECT".into(),
            },
            KeyStoreError::Unavailable {
                backend: Backend::Tpm,
                detail: "sign: the TPM is busy: TPM_RC_RETRY".into(),
                retryable: true,
                code: Some(HardwareCode::Tpm(0x922)),
            },
            KeyStoreError::Backend {
                backend: Backend::Tpm,
                op: "load key blob".into(),
                detail: "TPM_RC_INTEGRITY: integrity check failed (rc 0x0000099f)".into(),
                code: Some(HardwareCode::Tpm(0x99f)),
            },
            KeyStoreError::ImportRefused {
                backend: Backend::Pkcs11,
                detail: "C_CreateObject of a private key refused with CKR_ATTRIBUTE_VALUE_INVALID"
                    .into(),
            },
            KeyStoreError::NotCompiled {
                backend: Backend::Pkcs11,
                feature: "pkcs11".into(),
            },
            KeyStoreError::HelperConfig {
                message: "config.ini line 3: unknown key NO_SUCH_KEY".into(),
            },
            KeyStoreError::HelperVersion {
                program: "/usr/bin/prov-agent".into(),
                daemon: 1,
                helper: 2,
            },
            KeyStoreError::Io {
                what: "cannot read PIN file".into(),
                path: "/run/pin".into(),
                source: std::io::Error::from_raw_os_error(2),
            },
        ];
        for e in &all {
            match e {
                KeyStoreError::InvalidLabel { .. }
                | KeyStoreError::NotFound { .. }
                | KeyStoreError::AlreadyExists { .. }
                | KeyStoreError::UnsupportedAlgorithm { .. }
                | KeyStoreError::SchemeMismatch { .. }
                | KeyStoreError::BadPrivateKey { .. }
                | KeyStoreError::BadPublicKey { .. }
                | KeyStoreError::BadSignature
                | KeyStoreError::BadPin { .. }
                | KeyStoreError::Unavailable { .. }
                | KeyStoreError::Backend { .. }
                | KeyStoreError::ImportRefused { .. }
                | KeyStoreError::NotCompiled { .. }
                | KeyStoreError::HelperConfig { .. }
                | KeyStoreError::HelperVersion { .. }
                | KeyStoreError::Io { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_error_comes_back_as_itself() {
        for e in one_of_each() {
            let mut pipe = Vec::new();
            write_message(&mut pipe, &ReplyFrame::V1(Reply::error(&e)), &[]).unwrap();
            let (ReplyFrame::V1(reply), _) =
                read_message::<ReplyFrame>(&mut &pipe[..]).unwrap().unwrap();
            let Reply::Error { error } = reply else {
                panic!("not an error reply: {reply:?}");
            };
            let back = KeyStoreError::from(error);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} came back as {back:?}"
            );
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.is_retryable(), e.is_retryable(), "{e}");
            assert_eq!(back.is_not_found(), e.is_not_found(), "{e}");
            assert_eq!(back.hardware_code(), e.hardware_code(), "{e}");
            assert_eq!(
                std::error::Error::source(&back).map(|s| s.to_string()),
                std::error::Error::source(&e).map(|s| s.to_string()),
            );
            // And once more over the wire, unchanged.
            assert_eq!(WireError::from(&back), WireError::from(&e));
        }
        let io = KeyStoreError::from(WireError::Io {
            what: "cannot read PIN file".into(),
            path: "/run/pin".into(),
            os_error: Some(13),
            message: String::new(),
        });
        let KeyStoreError::Io { source, .. } = io else {
            panic!("{io:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
