//! The journal: a durable record of how far an enrollment or a rotation
//! got, so that a run after a crash finishes the job instead of starting a
//! second one.
//!
//! One JSON file, `STATE_DIR/journal.json`, replaced atomically at every
//! phase (temp file, fsync, rename, fsync dir; mode 0600). Each phase
//! carries exactly the data it needs ([`State`]), so a phase without its
//! data cannot be written down: a `Registered` journal always names its
//! thing. It holds the certificate ownership token while RegisterThing is
//! outstanding; the token never appears in `Debug` output or logs.
//!
//! Format version 2. A version-1 journal (one flat object of optional
//! fields, written by releases before 0.2) is read and converted
//! ([`v1`]), so that an upgrade in the middle of an operation finishes it.

mod v1;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::durable;

/// What the journal is recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Enroll,
    Rotate,
}

/// How far the operation got (the name of a [`State`]). Each phase is
/// written only once the step it names is done.
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

/// The certificate the service issued for the pending key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificate {
    /// Its certificate id (the SHA-256 of its DER).
    pub id: String,
    pub pem: String,
}

/// A certificate ownership token: wiped when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnershipToken(Zeroizing<String>);

impl Serialize for OwnershipToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OwnershipToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self(Zeroizing::new(s)))
    }
}

impl OwnershipToken {
    pub fn new(token: Zeroizing<String>) -> Self {
        Self(token)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OwnershipToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What RegisterThing answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub certificate: IssuedCertificate,
    pub thing_name: String,
    pub device_configuration: BTreeMap<String, String>,
}

/// The phase an operation reached, with exactly the data of that phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// `recertify_pending_key`: the next certificate is to be issued for
    /// the pending key already in the key store (CreateCertificateFromCsr,
    /// whatever the mode): an earlier attempt's RegisterThing may have gone
    /// through, and a certificate for the same key is what proves to the
    /// pre-provisioning hook that the request comes from the device that
    /// owns the thing.
    #[serde(rename_all = "camelCase")]
    Started {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recertify_pending_key: bool,
    },
    /// `register_sent`: RegisterThing was published with this token, so
    /// after a crash or a lost answer the certificate may be registered.
    /// `recertified`: the certificate is for a pending key kept from an
    /// earlier attempt (the key stays the proof if this attempt is given up
    /// too).
    #[serde(rename_all = "camelCase")]
    CertIssued {
        certificate: IssuedCertificate,
        token: OwnershipToken,
        /// Unix seconds after which the token is no longer worth presenting.
        token_expires_at: u64,
        #[serde(default)]
        register_sent: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recertified: bool,
    },
    Registered(Registration),
    Verified(Registration),
    Committed,
}

impl State {
    pub fn phase(&self) -> Phase {
        match self {
            State::Started { .. } => Phase::Started,
            State::CertIssued { .. } => Phase::CertIssued,
            State::Registered(_) => Phase::Registered,
            State::Verified(_) => Phase::Verified,
            State::Committed => Phase::Committed,
        }
    }

    /// The certificate issued in this attempt, once there is one.
    pub fn certificate(&self) -> Option<&IssuedCertificate> {
        match self {
            State::CertIssued { certificate, .. } => Some(certificate),
            State::Registered(r) | State::Verified(r) => Some(&r.certificate),
            State::Started { .. } | State::Committed => None,
        }
    }

    /// Whether RegisterThing may have activated this attempt's certificate.
    pub fn register_sent(&self) -> bool {
        match self {
            State::CertIssued { register_sent, .. } => *register_sent,
            State::Registered(_) | State::Verified(_) | State::Committed => true,
            State::Started { .. } => false,
        }
    }
}

/// The key-store labels of an operation, fixed when it starts: after the
/// commit identity.json names the new key, so they could not be worked out
/// again (see `Flow::next_slot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySlots {
    /// The label of the new key.
    pub pending: String,
    /// The label of the replaced identity's key, deleted after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub version: u32,
    pub operation: Operation,
    /// Unix seconds of the last change.
    pub updated_at: u64,
    pub keys: KeySlots,
    /// Certificate id of the identity being replaced (rotation, `--force`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_certificate_id: Option<String>,
    /// Certificates this device obtained but gave up on (their registration
    /// may have gone through); reported once the new identity works so that
    /// the backend can deactivate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned_certificate_ids: Vec<String>,
    pub state: State,
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
    /// Not the JSON of a journal.
    #[error("journal {path} is damaged ({source}); move it aside to start over")]
    Unparsable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub const FILE_NAME: &str = "journal.json";
pub const VERSION: u32 = 2;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    pub fn new(operation: Operation, keys: KeySlots) -> Self {
        Self {
            version: VERSION,
            operation,
            updated_at: now(),
            keys,
            previous_certificate_id: None,
            abandoned_certificate_ids: Vec::new(),
            state: State::Started {
                recertify_pending_key: false,
            },
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// The journal in `state_dir`, or `None` when there is none. A version-1
    /// journal is converted.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, JournalError> {
        let path = Self::path(state_dir);
        // It may hold an ownership token: wiped once parsed.
        let bytes = match std::fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let corrupt = |detail: String| JournalError::Corrupt {
            path: path.clone(),
            detail,
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let unparsable = |source| JournalError::Unparsable {
            path: path.clone(),
            source,
        };
        let version: Version = serde_json::from_slice(&bytes).map_err(unparsable)?;
        match version.version {
            VERSION => serde_json::from_slice(&bytes).map(Some).map_err(unparsable),
            1 => {
                let old: v1::JournalV1 = serde_json::from_slice(&bytes).map_err(unparsable)?;
                let journal = Journal::try_from(old).map_err(corrupt)?;
                tracing::info!(phase = ?journal.phase(), "read a version-1 journal");
                Ok(Some(journal))
            }
            other => Err(corrupt(format!(
                "format version {other} is not {VERSION} or 1: was it written by a newer \
                 prov-agent?"
            ))),
        }
    }

    /// Writes the journal durably with `state` as its new state.
    pub fn advance(&mut self, state_dir: &Path, state: State) -> Result<(), JournalError> {
        self.state = state;
        self.save(state_dir)
    }

    pub fn save(&mut self, state_dir: &Path) -> Result<(), JournalError> {
        self.version = VERSION;
        self.updated_at = now();
        let path = Self::path(state_dir);
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(self).expect("journal serialises"));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn keys() -> KeySlots {
        KeySlots {
            pending: "device".into(),
            retired: None,
        }
    }

    fn certificate() -> IssuedCertificate {
        IssuedCertificate {
            id: "ab".repeat(32),
            pem: "-----BEGIN CERTIFICATE-----\n...".into(),
        }
    }

    #[test]
    fn survives_a_reload_and_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::load(dir.path()).unwrap().is_none());
        let mut j = Journal::new(Operation::Enroll, keys());
        j.advance(
            dir.path(),
            State::CertIssued {
                certificate: certificate(),
                token: OwnershipToken::new(Zeroizing::new("secret-token".into())),
                token_expires_at: now() + 3000,
                register_sent: false,
                recertified: false,
            },
        )
        .unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.phase(), Phase::CertIssued);
        assert_eq!(back.state.certificate(), Some(&certificate()));
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
    fn a_phase_without_its_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::new(Operation::Enroll, keys());
        j.advance(
            dir.path(),
            State::Registered(Registration {
                certificate: certificate(),
                thing_name: "gw_1".into(),
                device_configuration: BTreeMap::new(),
            }),
        )
        .unwrap();
        let path = Journal::path(dir.path());
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["state"].as_object_mut().unwrap().remove("thingName");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("thingName"), "{e}");
    }

    #[test]
    fn damaged_or_future_journal_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Journal::path(dir.path()), b"{\"version\": 2, \"state\": ").unwrap();
        let e = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("move it aside"), "{e}");
        std::fs::write(Journal::path(dir.path()), b"{\"version\": 3}").unwrap();
        let e = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 3") && e.contains("newer"), "{e}");
    }
}
