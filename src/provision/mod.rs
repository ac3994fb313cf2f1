//! Enrollment and rotation: the journal, the flows, the credential commit.

pub mod attestation;
pub mod enroll;
pub mod export;
/// The fault points of the flow (crate::fault), where the crash tests find them.
pub use crate::fault;
mod flow;
pub mod identity;
pub mod journal;
pub mod retry;
pub mod rotate;
pub mod serial;

#[cfg(fuzzing)]
pub use flow::fuzz_issued_parse;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::keystore::KeyStoreError;
use crate::mqtt::MqttError;

/// What `enroll` or `rotate` did.
#[derive(Debug)]
pub struct Outcome {
    pub identity: identity::Identity,
    /// False when nothing needed doing (enrolled already, rotation not due).
    pub changed: bool,
    /// The phase a crashed run had reached, when this run resumed it.
    pub resumed_from: Option<journal::Phase>,
    pub steps: Vec<StepTiming>,
    /// Committed, but the report of retired certificates is still to be
    /// sent (the next run does it).
    pub report_pending: bool,
    /// `rotate --if-due` when not due: when it will be (Unix seconds).
    pub due_at: Option<u64>,
}

impl Outcome {
    pub fn unchanged(identity: identity::Identity) -> Self {
        Self {
            identity,
            changed: false,
            resumed_from: None,
            steps: Vec::new(),
            report_pending: false,
            due_at: None,
        }
    }
}

/// Takes the state directory's lock (`STATE_DIR/lock`) so that one
/// `enroll`, `rotate` or daemon works on the device at a time. Creates the
/// directory (0700) if needed. The lock goes with the returned file.
pub fn lock_state_dir(state_dir: &std::path::Path) -> Result<std::fs::File, ProvisionError> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::durable::create_dir_all(state_dir)
        .map_err(ProvisionError::io("create state directory", state_dir))?;
    check_state_dir(state_dir)?;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::durable::FILE_MODE)
        // A planted symlink is never followed (the directory was checked
        // above, but a link may be older than that check).
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(ProvisionError::io("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ProvisionError::Locked { lock: path }),
        Err(std::fs::TryLockError::Error(e)) => Err(ProvisionError::Io {
            what: "lock",
            path,
            source: e,
        }),
    }
}

/// The state directory holds the journal (with the ownership token), the
/// identity and the key files: refused unless it is a directory of the
/// agent's own user that no one else may write to (else another user could
/// plant files or symlinks in it).
fn check_state_dir(state_dir: &std::path::Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state_dir)
        .map_err(ProvisionError::io("look at state directory", state_dir))?;
    let me = rustix::process::geteuid().as_raw();
    let problem = if !meta.is_dir() {
        Some("is not a directory".to_string())
    } else if meta.uid() != me {
        Some(format!(
            "belongs to uid {}, not to the agent's user (uid {me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "may be written by its group or others (mode {:04o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(ProvisionError::UnsafeStateDir {
            path: state_dir.to_path_buf(),
            problem,
        }),
    }
}

/// How long one step of a flow took, for the human output.
#[derive(Debug, Clone)]
pub struct StepTiming {
    pub name: &'static str,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// `rotate` or `run` on a device that has no identity yet.
    #[error("the device is not enrolled: run `prov-agent enroll` first")]
    NotEnrolled,
    /// The claim certificate file cannot be read.
    #[error(
        "cannot read the claim certificate {}: {source}; run `prov-agent claim import` first",
        path.display()
    )]
    ClaimCertificate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The claim key is not in the key store.
    #[error("{0}; run `prov-agent claim import` (or `claim generate`) first")]
    ClaimKeyMissing(#[source] KeyStoreError),
    /// A rotation without `[SETTINGS] CERT_ROTATION_TEMPLATE`.
    #[error(
        "rotation needs [SETTINGS] CERT_ROTATION_TEMPLATE: the template that re-registers the \
         thing with a new certificate"
    )]
    NoRotationTemplate,
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    /// `MODE = keys` with a key store that cannot import the key AWS IoT
    /// made (tpm2-pkcs11).
    #[error(
        "{0}: in keys mode AWS IoT makes the device key and the agent imports it, and this key \
         store makes keys only inside itself; set [PROVISIONING] MODE = csr"
    )]
    KeysModeImportRefused(#[source] KeyStoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// ROOT_CERT, or a credential's certificate, cannot be used to connect.
    #[error(transparent)]
    Endpoint(#[from] crate::mqtt::endpoint::EndpointError),
    #[error("{api}: the service's answer is refused: {detail}; nothing was changed")]
    BadResponse { api: String, detail: String },
    /// CreateKeysAndCertificate's `privateKey` cannot be read as a key.
    #[error("{api}: the service's answer is refused: privateKey: {source}; nothing was changed")]
    BadPrivateKey {
        api: &'static str,
        #[source]
        source: Box<KeyStoreError>,
    },
    /// The answer's `certificatePem` cannot be used.
    #[error("{api}: the service's answer is refused: {source}; nothing was changed")]
    BadCertificate {
        api: String,
        #[source]
        source: crate::crypto::CertError,
    },
    /// A retryable failure that lasted through every retry. Its kind is
    /// the key store's when the key store failed (a busy TPM, a key helper
    /// past its deadline: exit 5), otherwise unreachable (a lost or timed
    /// out connection, or a service that kept throttling: exit 4).
    #[error("{step}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        step: String,
        attempts: u32,
        #[source]
        last: Box<ProvisionError>,
    },
    /// The journal says the new identity was committed, and there is none.
    #[error("inconsistent state: the journal says committed but identity.json is missing")]
    CommittedWithoutIdentity,
    /// The verifying connection's echo came back different.
    #[error("inconsistent state: the verification round trip returned another message")]
    EchoMismatch,
    /// The key the flow made is not the key of the certificate it got.
    #[error("inconsistent state: key {key} does not match the new certificate {certificate}")]
    KeyMismatch { key: String, certificate: String },
    /// The committed identity's key in the store is not its certificate's
    /// key any more: another tool replaced it.
    #[error(
        "certificate {certificate} does not belong to the key {key} in the key store (did \
         another tool replace it?): the device cannot authenticate; restore the key, or enroll \
         again (`prov-agent enroll --force`)"
    )]
    IdentityKeyMismatch { certificate: String, key: String },
    /// The committed identity's key is not in the store any more.
    #[error(
        "the key {key} of certificate {certificate} is not in the key store (did another tool \
         delete it?): the device cannot authenticate; restore the key, or enroll again \
         (`prov-agent enroll --force`)"
    )]
    IdentityKeyMissing { certificate: String, key: String },
    /// A certificate the agent stored itself (identity.json, the journal)
    /// does not parse: the state is damaged.
    #[error("inconsistent state: {0}")]
    DamagedCertificate(#[source] crate::crypto::CertError),
    /// The CSR could not be built (a failure of the key store signing it is
    /// [`ProvisionError::KeyStore`]).
    #[error(transparent)]
    Csr(crate::crypto::CsrError),
    /// `[ATTESTATION] MODE = tpm` on a gateway whose attestation key or
    /// its certificate is not ready (found before any request).
    #[error(
        "attestation ([ATTESTATION] MODE = tpm): {detail} ({}); run `prov-agent attest init` \
         and `prov-agent attest activate` with the manufacturer's CA first, or set MODE = none",
        path.display()
    )]
    AttestationNotReady {
        path: PathBuf,
        detail: String,
        /// The error behind `detail`, where there is one (the file's read,
        /// the certificate's parse).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The state directory could be tampered with by another user.
    #[error(
        "the state directory {} {problem}: another user could plant files in it; make it the \
         agent's own and private (chown to the agent's user, chmod 0700)",
        path.display()
    )]
    UnsafeStateDir { path: PathBuf, problem: String },
    /// Another prov-agent holds the state directory's lock.
    #[error(
        "another prov-agent (enroll, rotate or the daemon) is working on this device (lock {}): \
         wait for it or stop it",
        lock.display()
    )]
    Locked { lock: PathBuf },
    /// The journal belongs to the other operation (a rotation left while
    /// enrolling, or the reverse).
    #[error(
        "{} is in progress (journal phase {phase:?}); finish it with `prov-agent {}` first",
        if *running == journal::Operation::Enroll { "an enrollment" } else { "a rotation" },
        if *running == journal::Operation::Enroll { "enroll" } else { "rotate" }
    )]
    OtherOperation {
        running: journal::Operation,
        phase: journal::Phase,
    },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The identity could not be published for other programs; the
    /// committed identity works, the step is retried by the next run.
    #[error("{0}; the new identity is committed and the next run publishes it again")]
    Export(#[from] export::ExportError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::crypto::CsrError> for ProvisionError {
    /// A key store that failed to sign keeps its own kind (and
    /// retryability).
    fn from(e: crate::crypto::CsrError) -> Self {
        match e {
            crate::crypto::CsrError::KeyStore(k) => ProvisionError::KeyStore(k),
            other => ProvisionError::Csr(other),
        }
    }
}

impl ProvisionError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ProvisionError::Io { what, path, source }
    }

    /// Whether trying the same step again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProvisionError::Mqtt(e) => e.is_retryable(),
            ProvisionError::KeyStore(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// What kind of failure this is (the command layer makes the exit
    /// code of it).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProvisionError::NotEnrolled
            | ProvisionError::ClaimCertificate { .. }
            | ProvisionError::ClaimKeyMissing(_)
            | ProvisionError::NoRotationTemplate
            | ProvisionError::Serial(_)
            | ProvisionError::KeysModeImportRefused(_)
            | ProvisionError::Endpoint(_)
            | ProvisionError::UnsafeStateDir { .. }
            | ProvisionError::IdentityKeyMismatch { .. }
            | ProvisionError::IdentityKeyMissing { .. }
            | ProvisionError::AttestationNotReady { .. } => ErrorKind::Config,
            ProvisionError::KeyStore(e) => e.kind(),
            ProvisionError::Mqtt(e) => e.kind(),
            ProvisionError::GaveUp { last, .. } => match last.kind() {
                ErrorKind::KeyStore => ErrorKind::KeyStore,
                _ => ErrorKind::Unreachable,
            },
            ProvisionError::BadResponse { .. }
            | ProvisionError::BadPrivateKey { .. }
            | ProvisionError::BadCertificate { .. }
            | ProvisionError::CommittedWithoutIdentity
            | ProvisionError::EchoMismatch
            | ProvisionError::KeyMismatch { .. }
            | ProvisionError::DamagedCertificate(_)
            | ProvisionError::Csr(_)
            | ProvisionError::Locked { .. }
            | ProvisionError::OtherOperation { .. }
            | ProvisionError::Journal(_)
            | ProvisionError::Identity(_)
            | ProvisionError::Export(_)
            | ProvisionError::Io { .. } => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CsrError;
    use crate::keystore::Backend;

    #[test]
    fn a_key_store_failing_to_sign_a_csr_keeps_its_kind_and_retryability() {
        let busy = KeyStoreError::Unavailable {
            backend: Backend::Tpm,
            detail: "the resource manager is restarting".into(),
            retryable: true,
            code: None,
        };
        let e = ProvisionError::from(CsrError::KeyStore(busy));
        assert!(matches!(e, ProvisionError::KeyStore(_)), "{e}");
        assert_eq!(e.kind(), ErrorKind::KeyStore);
        assert!(e.is_retryable());
    }

    fn gave_up(last: ProvisionError) -> ProvisionError {
        ProvisionError::GaveUp {
            step: "CreateCertificateFromCsr".into(),
            attempts: 3,
            last: Box::new(last),
        }
    }

    #[test]
    fn retries_spent_on_a_busy_key_store_stay_the_key_stores_failure() {
        let busy = KeyStoreError::Unavailable {
            backend: Backend::Tpm,
            detail: "TPM_RC_RETRY".into(),
            retryable: true,
            code: None,
        };
        let e = gave_up(ProvisionError::KeyStore(busy));
        assert_eq!(e.kind(), ErrorKind::KeyStore);
        let source = std::error::Error::source(&e).expect("the last failure is the source");
        assert!(source.to_string().contains("TPM_RC_RETRY"), "{source}");
        assert_eq!(
            crate::error::report(&e).matches("TPM_RC_RETRY").count(),
            1,
            "printed once"
        );
    }

    #[test]
    fn retries_spent_on_the_network_or_throttling_are_unreachable() {
        let timeout = ProvisionError::Mqtt(MqttError::Timeout {
            step: "CreateCertificateFromCsr".into(),
            after: std::time::Duration::from_secs(5),
        });
        assert_eq!(gave_up(timeout).kind(), ErrorKind::Unreachable);
        let throttled = ProvisionError::Mqtt(MqttError::Rejected {
            api: "CreateCertificateFromCsr".into(),
            status_code: 429,
            error_code: "ThrottlingException".into(),
            error_message: "slow down".into(),
        });
        assert_eq!(throttled.kind(), ErrorKind::Refused);
        assert_eq!(gave_up(throttled).kind(), ErrorKind::Unreachable);
    }
}
