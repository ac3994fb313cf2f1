//! Key stores: where every private key of the agent lives.
//!
//! A [`KeyStore`] is small and synchronous on purpose: the C libraries behind
//! it (tpm2-tss, a PKCS#11 module) block, and rustls asks for signatures
//! synchronously in the middle of a handshake. Keys are named by a
//! [`KeyLabel`] (`claim`, `device`, `device.pending`, ...); each backend maps
//! the label onto its own storage and reports a human-readable reference
//! (`tpm:handle=0x81000100`, `pkcs11:token=gw;object=device;type=private`).
//!
//! Backends: `tpm` (tss-esapi, cargo feature `tpm`), `pkcs11` (cryptoki,
//! cargo feature `pkcs11`) and `file` (PEM files, always built, development
//! only).

mod consumer;
pub mod ecdsa;
mod error;
pub mod file;
pub mod helper;
mod material;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
mod settings;
#[cfg(feature = "tpm")]
pub mod tpm;
mod types;

pub use consumer::ConsumerKey;
pub use error::{HardwareCode, KeyStoreError, Result};
pub use material::PrivateKeyMaterial;
pub use settings::{
    FileSettings, GivenSecret, KeyStoreSettings, Pkcs11Settings, SealedPin, SecretSource,
    TpmKeyStorage, TpmSettings,
};
pub use types::{
    Backend, Certification, HardwareFact, HashAlg, KeyAlgorithm, KeyInfo, KeyLabel, PublicKey,
    SignatureScheme,
};

/// Storage for private keys that never hands them out.
///
/// Every method is synchronous and may block on hardware. Implementations
/// keep one long-lived context (TPM) or module (PKCS#11) and are
/// `Send + Sync` so that a TLS signer running on any thread can use them.
pub trait KeyStore: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Creates a new key inside the store under `label`. Fails with
    /// [`KeyStoreError::AlreadyExists`] if the label is taken.
    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo>;

    /// Moves an external private key into the store under `label`
    /// (TPM2_Import, C_CreateObject). The key becomes non-extractable; the
    /// caller's copy is wiped when `key` is dropped.
    fn import(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo>;

    /// Describes the key under `label`, including its public key.
    fn info(&self, label: &KeyLabel) -> Result<KeyInfo>;

    /// Signs `message` (not a digest: the store hashes it as `scheme` says).
    /// ECDSA signatures come back DER-encoded (`Ecdsa-Sig-Value`), RSA ones
    /// as the raw big-endian signature of the modulus' length.
    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>>;

    /// Makes the key under `pending` the key under `current`, replacing any
    /// key that was there. Afterwards `pending` no longer exists. A crash
    /// part-way leaves either the old or the new key under `current`.
    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo>;

    /// Destroys the key under `label`. Deleting a key that does not exist
    /// is [`KeyStoreError::NotFound`].
    fn delete(&self, label: &KeyLabel) -> Result<()>;

    /// Every key this store holds for the agent.
    fn list(&self) -> Result<Vec<KeyInfo>>;

    /// A stable identifier of the hardware itself (a TPM's endorsement key
    /// digest), for `SERIAL_NUMBER = tpm-ek`. `None` when the backend has
    /// none.
    fn hardware_id(&self) -> Option<Result<String>> {
        None
    }

    /// Lets go of the hardware until the next operation. The daemon calls
    /// it when a handshake or a rotation is over; a store that runs its
    /// hardware in a helper process ([`helper::HelperKeyStore`]) ends the
    /// process. Stores that keep one context for their lifetime ignore it.
    fn release(&self) {}

    /// Stops at once, from any thread and without waiting for an operation
    /// in progress, whatever this store runs outside this process (the key
    /// helper, which is killed): for a daemon that stops while an
    /// operation may hang in the hardware. The operation in progress then
    /// fails. Stores without such a process ignore it.
    fn abandon(&self) {}

    /// Whether the store takes a private key made elsewhere
    /// ([`KeyStore::import`]), found out without changing anything:
    /// `Err(KeyStoreError::ImportRefused)` when it is known not to (a
    /// PKCS#11 module that makes keys only inside itself, such as
    /// tpm2-pkcs11), `Ok` when it does or cannot tell beforehand (the
    /// import then says so).
    fn probe_import(&self) -> Result<()> {
        Ok(())
    }

    /// What the store knows of its hardware and what it can do (a PKCS#11
    /// module's mechanisms, flags, import, copy and relabel), for `check`.
    /// May try things on throwaway objects; nothing for a store with
    /// nothing to say.
    fn hardware_facts(&self) -> Result<Vec<HardwareFact>> {
        Ok(Vec::new())
    }

    /// TPM2_Certify: the attestation key under `by` signs that the key
    /// under `key` is in this TPM, with its attributes, and `qualifying`
    /// (at most 64 bytes) as the attestation's extraData. Only a TPM can;
    /// the other stores refuse, saying what to configure.
    fn certify(&self, key: &KeyLabel, by: &KeyLabel, qualifying: &[u8]) -> Result<Certification> {
        let _ = (key, by, qualifying);
        Err(KeyStoreError::Backend {
            backend: self.backend(),
            op: "certify a key".into(),
            detail: "only a TPM can attest its keys: set [KEYSTORE] BACKEND = tpm, or \
                     [ATTESTATION] MODE = none"
                .into(),
            code: None,
        })
    }
}

impl<T: KeyStore + ?Sized> KeyStore for std::sync::Arc<T> {
    fn backend(&self) -> Backend {
        (**self).backend()
    }
    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        (**self).generate(label, algorithm)
    }
    fn import(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo> {
        (**self).import(label, key)
    }
    fn info(&self, label: &KeyLabel) -> Result<KeyInfo> {
        (**self).info(label)
    }
    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        (**self).sign(label, scheme, message)
    }
    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo> {
        (**self).promote(pending, current)
    }
    fn delete(&self, label: &KeyLabel) -> Result<()> {
        (**self).delete(label)
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        (**self).list()
    }
    fn hardware_id(&self) -> Option<Result<String>> {
        (**self).hardware_id()
    }
    fn release(&self) {
        (**self).release()
    }
    fn abandon(&self) {
        (**self).abandon()
    }
    fn probe_import(&self) -> Result<()> {
        (**self).probe_import()
    }
    fn hardware_facts(&self) -> Result<Vec<HardwareFact>> {
        (**self).hardware_facts()
    }
    fn certify(&self, key: &KeyLabel, by: &KeyLabel, qualifying: &[u8]) -> Result<Certification> {
        (**self).certify(key, by, qualifying)
    }
}

/// Opens the configured key store. A backend this binary was built without
/// is refused with a message naming the cargo feature.
pub fn open(settings: &KeyStoreSettings) -> Result<std::sync::Arc<dyn KeyStore>> {
    match settings {
        KeyStoreSettings::File(s) => Ok(std::sync::Arc::new(file::FileKeyStore::open(s)?)),
        #[cfg(feature = "tpm")]
        KeyStoreSettings::Tpm(s) => Ok(std::sync::Arc::new(tpm::TpmKeyStore::open(s)?)),
        #[cfg(not(feature = "tpm"))]
        KeyStoreSettings::Tpm(_) => Err(KeyStoreError::NotCompiled {
            backend: Backend::Tpm,
            feature: "tpm".into(),
        }),
        #[cfg(feature = "pkcs11")]
        KeyStoreSettings::Pkcs11(s) => Ok(std::sync::Arc::new(pkcs11::Pkcs11KeyStore::open(s)?)),
        #[cfg(not(feature = "pkcs11"))]
        KeyStoreSettings::Pkcs11(_) => Err(KeyStoreError::NotCompiled {
            backend: Backend::Pkcs11,
            feature: "pkcs11".into(),
        }),
    }
}
