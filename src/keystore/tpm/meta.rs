//! One metadata file per key: `<key_dir>/<label>.tpmkey`, JSON.
//!
//! For blob storage it holds the marshalled TPM2B_PUBLIC and TPM2B_PRIVATE
//! (the same bytes `tpm2_load -u/-r` take); TPM2B_PRIVATE is encrypted and
//! integrity-protected under the storage primary of this TPM only. For
//! persistent storage it holds the handle and the TPM2B_PUBLIC, so that a
//! handle that now holds another key is noticed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tss_esapi::structures::Public;
use tss_esapi::traits::{Marshall, UnMarshall};

use super::context::BACKEND;
use super::parent::Parent;
use crate::durable;
use crate::keystore::{KeyAlgorithm, KeyLabel, KeyStoreError, Result};

pub(super) const EXTENSION: &str = "tpmkey";
const FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Origin {
    /// Made inside the TPM (TPM2_Create): fixedTPM, fixedParent.
    Generated,
    /// Brought in with TPM2_Import. The TPM refuses to import objects with
    /// fixedTPM or fixedParent set, so an imported key is neither; it can
    /// still only be loaded under this TPM's storage primary.
    Imported,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "storage", rename_all = "lowercase")]
pub(super) enum Stored {
    Blob {
        /// Hex of the marshalled TPM2B_PUBLIC.
        public: String,
        /// Hex of the marshalled TPM2B_PRIVATE.
        private: String,
    },
    Persistent {
        /// `0x81000100`.
        handle: String,
        /// Hex of the marshalled TPM2B_PUBLIC.
        public: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct KeyMeta {
    pub format: u32,
    pub algorithm: String,
    pub origin: Origin,
    pub fixed_tpm: bool,
    pub fixed_parent: bool,
    /// How an imported key travelled to the TPM: `aes-128-cfb-inner` (the
    /// TPM encrypted it under a one-time key before TPM2_Import) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_wrapper: Option<String>,
    /// The storage primary the key was made under; absent in the files of
    /// keys made before there was a choice ([`Parent::ZeroUnique`]).
    #[serde(default)]
    pub parent: Parent,
    #[serde(flatten)]
    pub stored: Stored,
}

/// A metadata file, decoded.
pub(super) struct KeyFile {
    pub path: PathBuf,
    pub algorithm: KeyAlgorithm,
    pub origin: Origin,
    pub parent: Parent,
    pub public: Public,
    pub location: Location,
}

pub(super) enum Location {
    /// TPM2B_PRIVATE contents (without the size prefix).
    Blob {
        private: Vec<u8>,
    },
    Persistent {
        handle: u32,
    },
}

impl KeyFile {
    pub fn reference(&self) -> String {
        match self.location {
            Location::Blob { .. } => format!("tpm:blob={}", self.path.display()),
            Location::Persistent { handle } => format!("tpm:handle=0x{handle:08x}"),
        }
    }
}

pub(super) fn path(dir: &Path, label: &KeyLabel) -> PathBuf {
    dir.join(format!("{label}.{EXTENSION}"))
}

/// Builds and durably writes the metadata for a new key.
pub(super) fn write(
    path: &Path,
    algorithm: KeyAlgorithm,
    origin: Origin,
    import_wrapper: Option<&str>,
    parent: Parent,
    public: &Public,
    location: &Location,
) -> Result<()> {
    let public_hex = hex::encode(tpm2b(&marshall_public(public)?));
    let stored = match location {
        Location::Blob { private } => Stored::Blob {
            public: public_hex,
            private: hex::encode(tpm2b(private)),
        },
        Location::Persistent { handle } => Stored::Persistent {
            handle: format!("0x{handle:08x}"),
            public: public_hex,
        },
    };
    let attrs = public.object_attributes();
    let meta = KeyMeta {
        format: FORMAT,
        algorithm: algorithm.as_str().to_string(),
        origin,
        fixed_tpm: attrs.fixed_tpm(),
        fixed_parent: attrs.fixed_parent(),
        import_wrapper: import_wrapper.map(str::to_string),
        parent,
        stored,
    };
    let mut text = serde_json::to_vec_pretty(&meta).map_err(|e| KeyStoreError::Backend {
        backend: BACKEND,
        op: "encode key metadata".into(),
        detail: e.to_string(),
        code: None,
    })?;
    text.push(b'\n');
    durable::write_file(path, &text).map_err(|source| KeyStoreError::Io {
        what: "cannot write TPM key file".into(),
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and decodes a metadata file. `Ok(None)` if there is none.
pub(super) fn read(path: &Path) -> Result<Option<KeyFile>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyStoreError::Io {
                what: "cannot read TPM key file".into(),
                path: path.to_path_buf(),
                source,
            })
        }
    };
    decode(path, &text).map(Some)
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: "read key file".into(),
        detail: format!(
            "TPM key file {} is corrupted ({why}): restore it from a backup, or delete it and \
             generate or import the key again",
            path.display()
        ),
        code: None,
    }
}

fn decode(path: &Path, text: &[u8]) -> Result<KeyFile> {
    let meta: KeyMeta = serde_json::from_slice(text).map_err(|e| corrupt(path, e))?;
    if meta.format != FORMAT {
        return Err(corrupt(
            path,
            format!("unknown format version {}", meta.format),
        ));
    }
    let algorithm: KeyAlgorithm = meta.algorithm.parse().map_err(|e| corrupt(path, e))?;
    let (public_hex, location) = match &meta.stored {
        Stored::Blob { public, private } => {
            let private = hex::decode(private).map_err(|e| corrupt(path, e))?;
            let private = untpm2b(&private).ok_or_else(|| corrupt(path, "bad TPM2B_PRIVATE"))?;
            (
                public,
                Location::Blob {
                    private: private.to_vec(),
                },
            )
        }
        Stored::Persistent { handle, public } => {
            let handle = handle
                .strip_prefix("0x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| corrupt(path, format!("bad persistent handle {handle:?}")))?;
            (public, Location::Persistent { handle })
        }
    };
    let public = hex::decode(public_hex).map_err(|e| corrupt(path, e))?;
    let public = untpm2b(&public).ok_or_else(|| corrupt(path, "bad TPM2B_PUBLIC"))?;
    let public = Public::unmarshall(public).map_err(|e| corrupt(path, e))?;
    let decoded = super::keys::public_key(&public).map_err(|e| corrupt(path, e))?;
    if decoded.algorithm() != algorithm {
        return Err(corrupt(
            path,
            format!(
                "says {algorithm} but its public area is {}",
                decoded.algorithm()
            ),
        ));
    }
    Ok(KeyFile {
        path: path.to_path_buf(),
        algorithm,
        origin: meta.origin,
        parent: meta.parent,
        public,
        location,
    })
}

pub(super) fn marshall_public(public: &Public) -> Result<Vec<u8>> {
    public
        .marshall()
        .map_err(|e| super::context::tpm_err("marshal TPMT_PUBLIC", e))
}

/// Prefixes the big-endian 16-bit size, making a TPM2B.
pub(super) fn tpm2b(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a TPM2B whose size prefix matches the data exactly.
fn untpm2b(data: &[u8]) -> Option<&[u8]> {
    let (size, body) = data.split_first_chunk::<2>()?;
    (u16::from_be_bytes(*size) as usize == body.len()).then_some(body)
}

/// Labels of every metadata file in `dir`.
pub(super) fn labels(dir: &Path) -> Result<Vec<KeyLabel>> {
    let entries = std::fs::read_dir(dir).map_err(|source| KeyStoreError::Io {
        what: "cannot list TPM key directory".into(),
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
        else {
            continue;
        };
        if let Ok(label) = KeyLabel::new(stem) {
            out.push(label);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_round_trip() {
        let b = tpm2b(b"abc");
        assert_eq!(b, [0, 3, b'a', b'b', b'c']);
        assert_eq!(untpm2b(&b), Some(&b"abc"[..]));
        assert_eq!(untpm2b(&b[..4]), None);
        assert_eq!(untpm2b(&[0]), None);
    }
}
