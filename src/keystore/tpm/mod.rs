//! TPM 2.0 backend (tss-esapi).

use super::{
    Backend, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial, Result,
    SignatureScheme, TpmSettings,
};

/// Placeholder until the backend lands.
pub struct TpmKeyStore;

impl TpmKeyStore {
    pub fn open(_settings: &TpmSettings) -> Result<Self> {
        Err(KeyStoreError::Unavailable {
            backend: "tpm",
            detail: "backend not implemented yet".into(),
            retryable: false,
        })
    }
}

impl KeyStore for TpmKeyStore {
    fn backend(&self) -> Backend {
        unreachable!()
    }
    fn generate(&self, _: &KeyLabel, _: KeyAlgorithm) -> Result<KeyInfo> {
        unreachable!()
    }
    fn import(&self, _: &KeyLabel, _: &PrivateKeyMaterial) -> Result<KeyInfo> {
        unreachable!()
    }
    fn info(&self, _: &KeyLabel) -> Result<KeyInfo> {
        unreachable!()
    }
    fn sign(&self, _: &KeyLabel, _: SignatureScheme, _: &[u8]) -> Result<Vec<u8>> {
        unreachable!()
    }
    fn promote(&self, _: &KeyLabel, _: &KeyLabel) -> Result<KeyInfo> {
        unreachable!()
    }
    fn delete(&self, _: &KeyLabel) -> Result<()> {
        unreachable!()
    }
    fn list(&self) -> Result<Vec<KeyInfo>> {
        unreachable!()
    }
}
