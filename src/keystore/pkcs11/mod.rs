//! PKCS#11 backend (cryptoki).

use super::{
    Backend, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, Pkcs11Settings,
    PrivateKeyMaterial, Result, SignatureScheme,
};

/// Placeholder until the backend lands.
pub struct Pkcs11KeyStore;

impl Pkcs11KeyStore {
    pub fn open(_settings: &Pkcs11Settings) -> Result<Self> {
        Err(KeyStoreError::Unavailable {
            backend: "pkcs11",
            detail: "backend not implemented yet".into(),
            retryable: false,
        })
    }
}

impl KeyStore for Pkcs11KeyStore {
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
