use super::{KeyAlgorithm, SignatureScheme};

pub type Result<T, E = KeyStoreError> = std::result::Result<T, E>;

/// Errors of the key store layer. Each variant keeps what the hardware said
/// (return code, failing call) and says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("invalid key label {label:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with a dot)")]
    InvalidLabel { label: String },

    #[error("key {label} not found in {backend} key store ({reference}): {hint}")]
    NotFound {
        label: String,
        backend: &'static str,
        reference: String,
        hint: &'static str,
    },

    #[error("key {label} already exists in {backend} key store ({reference}): delete it first or choose another label")]
    AlreadyExists {
        label: String,
        backend: &'static str,
        reference: String,
    },

    #[error(
        "unsupported algorithm: {what}; supported are ec-p256, ec-p384, rsa-2048 and rsa-3072"
    )]
    UnsupportedAlgorithm { what: String },

    #[error("a {algorithm} key cannot make {scheme:?} signatures")]
    SchemeMismatch {
        algorithm: KeyAlgorithm,
        scheme: SignatureScheme,
    },

    #[error("not a private key: {detail}. Give a PEM file holding a PKCS#8 (BEGIN PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY) key")]
    BadPrivateKey { detail: String },

    #[error("signature does not verify with the key's public key")]
    BadSignature,

    #[error("{backend} key store refused the PIN: {detail}. Check the PIN source in the [PKCS11] section")]
    BadPin {
        backend: &'static str,
        detail: String,
    },

    #[error("{backend} key store is unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
        /// A device that is busy or still starting may answer later.
        retryable: bool,
    },

    #[error("{backend}: {op} failed: {detail}")]
    Backend {
        backend: &'static str,
        op: &'static str,
        detail: String,
    },

    #[error(
        "key store was built without the {backend} backend: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        backend: &'static str,
        feature: &'static str,
    },

    /// An error the key helper process reported (`prov-agent run` keeps
    /// the hardware in a short-lived child process): its message as the
    /// helper wrote it, and the facts callers branch on.
    #[error("{message}")]
    Helper {
        kind: HelperErrorKind,
        message: String,
        retryable: bool,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of error the key helper process reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HelperErrorKind {
    NotFound,
    AlreadyExists,
    BadPin,
    Other,
}

impl KeyStoreError {
    /// Whether the same call may succeed later without anyone changing
    /// anything (a busy device, a resource manager that is restarting).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KeyStoreError::Unavailable {
                retryable: true,
                ..
            } | KeyStoreError::Helper {
                retryable: true,
                ..
            }
        )
    }

    /// Whether the key asked for does not exist, in this process's store or
    /// in the key helper's.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            KeyStoreError::NotFound { .. }
                | KeyStoreError::Helper {
                    kind: HelperErrorKind::NotFound,
                    ..
                }
        )
    }

    /// The kind the key helper reports this error as.
    pub fn helper_kind(&self) -> HelperErrorKind {
        match self {
            KeyStoreError::NotFound { .. } => HelperErrorKind::NotFound,
            KeyStoreError::AlreadyExists { .. } => HelperErrorKind::AlreadyExists,
            KeyStoreError::BadPin { .. } => HelperErrorKind::BadPin,
            KeyStoreError::Helper { kind, .. } => *kind,
            _ => HelperErrorKind::Other,
        }
    }
}
