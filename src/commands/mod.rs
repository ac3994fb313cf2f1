//! The subcommands. Each returns a [`CommandError`] that knows its exit
//! code, so `main` stays a thin shell.

pub mod attest;
pub mod check;
pub mod claim;
pub mod enroll;
pub mod key_helper;
pub mod keys;
pub mod outcome;
pub mod rotate;
pub mod run;
pub mod status;

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::error::ErrorKind;
use crate::keystore::{KeyStoreError, KeyStoreSettings};

/// Exit codes, documented in the README.
pub mod exit {
    use crate::error::ErrorKind;

    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const KEYSTORE: u8 = 5;
    /// `status`: the device has no identity (run `prov-agent enroll`).
    pub const NOT_ENROLLED: u8 = 6;
    /// `status`: the identity's certificate has expired.
    pub const EXPIRED: u8 = 7;

    /// The exit code of a kind of failure: the only place kinds become
    /// exit codes.
    pub fn code(kind: ErrorKind) -> u8 {
        match kind {
            ErrorKind::Config => CONFIG,
            ErrorKind::Refused => REFUSED,
            ErrorKind::Unreachable => UNREACHABLE,
            ErrorKind::KeyStore => KEYSTORE,
            ErrorKind::Other => OTHER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    /// The command's arguments (or the config settings it reads) do not
    /// make sense together; found by the command itself, there is no
    /// underlying error to keep.
    #[error("{0}")]
    Input(String),
    /// An input (an attestation challenge, an EK certificate: `what`
    /// names the file or the TPM's NV index) holds something the command
    /// cannot use: `problem` says what, `source` is the parser's error
    /// where there is one.
    #[error("{what}: {problem}")]
    Unusable {
        what: String,
        problem: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An input certificate file cannot be used.
    #[error(transparent)]
    Certificate(#[from] crate::crypto::CertError),
    /// An input private-key file cannot be used.
    #[error("{}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: KeyStoreError,
    },
    /// `claim import`: the key in the store does not sign for the claim
    /// certificate (the import was undone).
    #[error(
        "the imported key {key} made a signature that does not verify with the claim \
         certificate; the import was undone"
    )]
    ImportUnproven { key: String },
    /// `claim import` into a store that cannot import private keys
    /// (tpm2-pkcs11); nothing was changed.
    #[error("{source}; nothing was changed. {instead}")]
    ClaimImportRefused {
        #[source]
        source: KeyStoreError,
        instead: Box<claim::ClaimKeyInstead>,
    },
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The key helper's conversation with the daemon broke.
    #[error(transparent)]
    KeyHelper(#[from] crate::keystore::helper::ServeError),
    /// Already reported on stdout (`check`): exit 1 without more words.
    #[error("one or more checks failed")]
    Failed,
    /// `status`, after printing what it found: no identity.
    #[error("not enrolled: run `prov-agent enroll`")]
    NotEnrolled,
    /// `status`, after printing what it found: the certificate expired.
    #[error("the identity's certificate expired at {not_after}: the gateway cannot connect with it; re-enroll (`prov-agent enroll --force`, once an operator opened the thing for it: templates/README.md)")]
    Expired { not_after: String },
}

impl CommandError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommandError::Config(e) => e.kind(),
            CommandError::Input(_)
            | CommandError::Unusable { .. }
            | CommandError::Certificate(_)
            | CommandError::KeyFile { .. } => ErrorKind::Config,
            CommandError::KeyStore(e) => e.kind(),
            CommandError::ImportUnproven { .. } | CommandError::ClaimImportRefused { .. } => {
                ErrorKind::KeyStore
            }
            CommandError::Provision(e) => e.kind(),
            CommandError::Io { .. }
            | CommandError::Runtime(_)
            | CommandError::KeyHelper(_)
            | CommandError::Failed
            | CommandError::NotEnrolled
            | CommandError::Expired { .. } => ErrorKind::Other,
        }
    }

    /// The process's exit code: the kind's ([`exit::code`]), but for
    /// `status`'s own two answers, which are not failures of the command.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::NotEnrolled => exit::NOT_ENROLLED,
            CommandError::Expired { .. } => exit::EXPIRED,
            _ => exit::code(self.kind()),
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CommandError::Io { what, path, source }
    }
}

/// `PIN_SOURCE = env:NAME`: the PIN taken out of this process's
/// environment and sealed outside its memory
/// ([`KeyStoreSettings::take_pin_from_environment`]), for the daemon,
/// which hands it to its key helpers. Call while the process has one
/// thread.
pub fn take_pin(
    settings: &KeyStoreSettings,
) -> Result<Option<std::sync::Arc<crate::keystore::helper::SealedSecret>>, CommandError> {
    settings
        .take_pin_from_environment()
        .map_err(CommandError::io("seal the PIN of", pin_source(settings)))
}

/// [`take_pin`] for every other command, which opens the store itself:
/// its settings then read the PIN from the memfd
/// ([`KeyStoreSettings::seal_pin_from_environment`]), so that neither the
/// environment block nor the process's memory keeps it for the command's
/// whole run.
pub fn seal_pin(settings: &mut KeyStoreSettings) -> Result<(), CommandError> {
    let source = pin_source(settings);
    settings
        .seal_pin_from_environment()
        .map_err(CommandError::io("seal the PIN of", source))
}

fn pin_source(settings: &KeyStoreSettings) -> String {
    format!("env:{}", settings.pin_variable().unwrap_or_default())
}

/// The async runtime of every command that talks to the network: one
/// thread (the agent does one thing at a time; the hardware calls block).
pub fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    crate::runtime::current_thread().map_err(CommandError::Runtime)
}
