use std::borrow::Cow;
use std::path::PathBuf;

use super::{Backend, KeyAlgorithm, SignatureScheme};

pub type Result<T, E = KeyStoreError> = std::result::Result<T, E>;

/// Errors of the key store layer. Each variant keeps what the hardware said
/// (return code, failing call) and says whether trying again can help.
///
/// The daemon's store ([`super::helper::HelperKeyStore`]) gets these from
/// its helper process as the very same variants, fields and messages, so a
/// caller matches them the same way in and out of the helper. Text fields
/// that are literals in this process (`op`, `hint`, `what`, `feature`) are
/// [`Cow`]s because those that came over the pipe are owned.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("invalid key label {label:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with a dot)")]
    InvalidLabel { label: String },

    #[error("key {label} not found in {backend} key store ({reference}): {hint}")]
    NotFound {
        label: String,
        backend: Backend,
        reference: String,
        hint: Cow<'static, str>,
    },

    #[error("key {label} already exists in {backend} key store ({reference}): delete it first or choose another label")]
    AlreadyExists {
        label: String,
        backend: Backend,
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

    /// A public key (as the hardware returned it, or from a key file) that
    /// does not make a SubjectPublicKeyInfo.
    #[error("public key: {op} failed: {detail}")]
    BadPublicKey {
        op: Cow<'static, str>,
        detail: String,
    },

    #[error("signature does not verify with the key's public key")]
    BadSignature,

    #[error("{backend} key store refused the PIN: {detail}. Check the PIN source in the [PKCS11] section")]
    BadPin { backend: Backend, detail: String },

    #[error("{backend} key store is unavailable: {detail}")]
    Unavailable {
        backend: Backend,
        detail: String,
        /// A device that is busy or still starting may answer later.
        retryable: bool,
        /// What the hardware returned, when the hardware said it.
        code: Option<HardwareCode>,
    },

    #[error("{backend}: {op} failed: {detail}")]
    Backend {
        backend: Backend,
        op: Cow<'static, str>,
        detail: String,
        /// What the hardware returned, when the hardware said it.
        code: Option<HardwareCode>,
    },

    /// The store makes keys only inside itself and refuses to create a
    /// private key object from outside (tpm2-pkcs11's C_CreateObject takes
    /// public keys and data objects only). Nothing was created.
    #[error("{backend} key store cannot import private keys ({detail})")]
    ImportRefused { backend: Backend, detail: String },

    #[error(
        "key store was built without the {backend} backend: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        backend: Backend,
        feature: Cow<'static, str>,
    },

    /// The key helper process (`prov-agent run` keeps the hardware in a
    /// short-lived child) cannot load the configuration the daemon handed
    /// it (the file changed under the daemon, or the environment differs).
    /// `message` is the helper's configuration error, which crossed the
    /// pipe as text. Errors of the store it serves come back as their own
    /// variants.
    #[error("key helper: {message}")]
    HelperConfig { message: String },

    /// The daemon and its key helper speak different versions of their
    /// protocol: they are different builds (see `keystore::helper`).
    #[error(
        "the key helper {} speaks protocol version {helper} and the daemon version {daemon}: \
         they are different builds of prov-agent; restart the daemon so that both are the \
         installed one",
        program.display()
    )]
    HelperVersion {
        /// The executable that ran as the helper.
        program: PathBuf,
        daemon: u32,
        helper: u32,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: Cow<'static, str>,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The return code the hardware stack gave for a failed call, as the
/// number it returned: callers match on it, it crosses the key helper's
/// pipe unchanged, and the error's message names it (`TPM_RC_INTEGRITY: ...
/// (rc 0x0000099f)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HardwareCode {
    /// A TSS2_RC from tpm2-tss: the TPM's own TPM_RC, or the TSS layer
    /// (bits 16..24) that failed, 0x0A being the TCTI, i.e. the connection.
    Tpm(u32),
}

impl HardwareCode {
    /// The TPM response code as tss-esapi names it; `None` for a code of
    /// another layer or one tss-esapi does not know.
    #[cfg(feature = "tpm")]
    pub fn tpm_kind(self) -> Option<tss_esapi::constants::Tss2ResponseCodeKind> {
        match self {
            HardwareCode::Tpm(rc) => tss_esapi::constants::Tss2ResponseCode::from(rc).kind(),
        }
    }
}

impl KeyStoreError {
    /// What kind of failure this is: a wrong PIN is the configuration's
    /// (its PIN source), which no retry or restart mends and each attempt
    /// of which costs one of the token's few tries, and so is a
    /// configuration the key helper cannot load; everything else is the
    /// key store's.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            KeyStoreError::BadPin { .. } | KeyStoreError::HelperConfig { .. } => {
                crate::error::ErrorKind::Config
            }
            _ => crate::error::ErrorKind::KeyStore,
        }
    }

    /// Whether the same call may succeed later without anyone changing
    /// anything (a busy device, a resource manager that is restarting, a
    /// key helper that died).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KeyStoreError::Unavailable {
                retryable: true,
                ..
            }
        )
    }

    /// Whether the key asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KeyStoreError::NotFound { .. })
    }

    /// What the hardware returned, for an error the hardware reported.
    pub fn hardware_code(&self) -> Option<HardwareCode> {
        match self {
            KeyStoreError::Unavailable { code, .. } | KeyStoreError::Backend { code, .. } => *code,
            _ => None,
        }
    }
}
