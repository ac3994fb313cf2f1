//! rcgen signing with a key that stays in the key store: CSRs (and, in
//! tests, certificates) are signed inside the hardware.

use std::sync::{Arc, Mutex};

use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::keystore::{
    KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, PublicKey, SignatureScheme,
};

/// An rcgen [`SigningKey`] over a key-store key.
pub struct HardwareCsrKey {
    store: Arc<dyn KeyStore>,
    label: KeyLabel,
    public_key: PublicKey,
    /// rcgen's error type cannot carry ours: keep it here for the caller.
    last_error: Mutex<Option<KeyStoreError>>,
}

impl HardwareCsrKey {
    pub fn new(store: Arc<dyn KeyStore>, info: &KeyInfo) -> Self {
        Self {
            store,
            label: info.label.clone(),
            public_key: info.public_key.clone(),
            last_error: Mutex::new(None),
        }
    }

    /// The key store error behind the last `RemoteKeyError`, if any.
    pub fn take_error(&self) -> Option<KeyStoreError> {
        self.last_error.lock().ok()?.take()
    }

    fn scheme(&self) -> SignatureScheme {
        self.public_key.algorithm().default_scheme()
    }
}

impl PublicKeyData for HardwareCsrKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_key.subject_public_key()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.public_key.algorithm() {
            KeyAlgorithm::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl SigningKey for HardwareCsrKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        tracing::debug!(key = %self.label, "hardware signature: certificate request");
        self.store
            .sign(&self.label, self.scheme(), msg)
            .map_err(|e| {
                if let Ok(mut slot) = self.last_error.lock() {
                    *slot = Some(e);
                }
                rcgen::Error::RemoteKeyError
            })
    }
}

/// Makes a PEM CSR for `info`'s key with subject CN `common_name`, signed
/// inside the key store.
pub fn make_csr(
    store: Arc<dyn KeyStore>,
    info: &KeyInfo,
    common_name: &str,
) -> Result<String, CsrError> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(CsrError::Params)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = HardwareCsrKey::new(store, info);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| match key.take_error() {
            Some(ks) => CsrError::KeyStore(ks),
            None => CsrError::Params(e),
        })?;
    csr.pem().map_err(CsrError::Params)
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("cannot build the CSR: {0}")]
    Params(#[source] rcgen::Error),
    #[error("the key store could not sign the CSR: {0}")]
    KeyStore(#[from] crate::keystore::KeyStoreError),
}
