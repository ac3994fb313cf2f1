//! The journal: a durable record of how far an enrollment or a rotation
//! got, so that a run after a crash finishes the job instead of starting a
//! second one.
//!
//! One JSON file, `STATE_DIR/journal.json`, replaced atomically at every
//! phase (temp file, fsync, rename, fsync dir; mode 0600). It holds the
//! certificate ownership token while RegisterThing is outstanding; the token
//! never appears in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable;

/// What the journal is recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Enroll,
    Rotate,
}

/// How far the operation got. Each phase is written only once the step it
/// names is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Nothing irreversible yet; a pending key may exist.
    Started,
    /// The service issued a certificate for the pending key (token valid
    /// for an hour).
    CertIssued,
    /// RegisterThing accepted: the certificate is active and attached.
    Registered,
    /// The new credential connected and made a round trip.
    Verified,
    /// The pending key and certificate are the device's identity.
    Committed,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub version: u32,
    pub operation: Operation,
    pub phase: Phase,
    /// Unix seconds of the last change.
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership_token: Option<String>,
    /// Unix seconds after which the token is no longer worth presenting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_configuration: Option<BTreeMap<String, String>>,
    /// RegisterThing was published with the current token: after a crash
    /// or a lost answer the certificate may already be registered.
    #[serde(default)]
    pub register_sent: bool,
    /// The next certificate is to be issued for the pending key already in
    /// the key store (CreateCertificateFromCsr, whatever the mode): an
    /// earlier attempt's RegisterThing may have gone through, and a
    /// certificate for the same key is what proves to the pre-provisioning
    /// hook that the request comes from the device that owns the thing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recertify_pending_key: bool,
    /// Certificates this device obtained but gave up on (their registration
    /// may have gone through); reported once the new identity works so that
    /// the backend can deactivate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned_certificate_ids: Vec<String>,
    /// The key-store label of the new key (see `Flow::next_slot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key_label: Option<String>,
    /// The label of the replaced identity's key, deleted after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_key_label: Option<String>,
    /// Certificate id of the identity being replaced (rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_certificate_id: Option<String>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("operation", &self.operation)
            .field("phase", &self.phase)
            .field("certificate_id", &self.certificate_id)
            .field(
                "ownership_token",
                &self.ownership_token.as_ref().map(|_| "<redacted>"),
            )
            .field("thing_name", &self.thing_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {what} journal {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} is damaged ({detail}); move it aside to start over")]
    Corrupt { path: PathBuf, detail: String },
}

pub const FILE_NAME: &str = "journal.json";
const VERSION: u32 = 1;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    pub fn new(operation: Operation) -> Self {
        Self {
            version: VERSION,
            operation,
            phase: Phase::Started,
            updated_at: now(),
            certificate_id: None,
            certificate_pem: None,
            ownership_token: None,
            token_expires_at: None,
            thing_name: None,
            device_configuration: None,
            register_sent: false,
            recertify_pending_key: false,
            abandoned_certificate_ids: Vec::new(),
            pending_key_label: None,
            retired_key_label: None,
            previous_certificate_id: None,
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// The journal in `state_dir`, or `None` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, JournalError> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if journal.version != VERSION {
            return Err(JournalError::Corrupt {
                path,
                detail: format!("version {} is not {VERSION}", journal.version),
            });
        }
        Ok(Some(journal))
    }

    /// Writes the journal durably, with `phase` as its new phase.
    pub fn advance(&mut self, state_dir: &Path, phase: Phase) -> Result<(), JournalError> {
        self.phase = phase;
        self.save(state_dir)
    }

    pub fn save(&mut self, state_dir: &Path) -> Result<(), JournalError> {
        self.updated_at = now();
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).expect("journal serialises");
        durable::write_file(&path, &bytes).map_err(|source| JournalError::Io {
            what: "write",
            path,
            source,
        })
    }

    /// Removes the journal once an operation is fully done.
    pub fn clear(state_dir: &Path) -> Result<(), JournalError> {
        let path = Self::path(state_dir);
        durable::remove_file(&path).map_err(|source| JournalError::Io {
            what: "remove",
            path,
            source,
        })
    }

    /// Whether the ownership token can still be presented.
    pub fn token_usable(&self, at: u64) -> bool {
        self.ownership_token.is_some() && self.token_expires_at.is_some_and(|t| at < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn survives_a_reload_and_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::load(dir.path()).unwrap().is_none());
        let mut j = Journal::new(Operation::Enroll);
        j.ownership_token = Some("secret-token".into());
        j.token_expires_at = Some(now() + 3000);
        j.certificate_id = Some("ab".repeat(32));
        j.advance(dir.path(), Phase::CertIssued).unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.phase, Phase::CertIssued);
        assert!(back.token_usable(now()));
        assert!(!back.token_usable(now() + 4000));
        assert!(!format!("{back:?}").contains("secret-token"));
        let mode = std::fs::metadata(Journal::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Journal::clear(dir.path()).unwrap();
        assert!(Journal::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn damaged_journal_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Journal::path(dir.path()), b"{\"version\": 1, \"phase\": ").unwrap();
        let e = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("move it aside"), "{e}");
    }
}
