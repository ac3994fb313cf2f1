//! File backend: PEM files, as the reference client keeps its keys.
//!
//! For development and tests only. Every key is a PKCS#8 PEM file
//! `<key_dir>/<label>.pem`, mode 0600, in a 0700 directory. Every use logs a
//! warning, because nothing protects these keys but file permissions.

use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::{
    Backend, FileSettings, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError,
    PrivateKeyMaterial, Result, SignatureScheme,
};
use crate::durable;

pub struct FileKeyStore {
    dir: PathBuf,
}

const BACKEND: Backend = Backend::File;

impl FileKeyStore {
    pub fn open(settings: &FileSettings) -> Result<Self> {
        durable::create_dir_all(&settings.key_dir).map_err(|source| KeyStoreError::Io {
            what: "cannot create key directory".into(),
            path: settings.key_dir.clone(),
            source,
        })?;
        warn_software();
        Ok(Self {
            dir: settings.key_dir.clone(),
        })
    }

    fn path(&self, label: &KeyLabel) -> PathBuf {
        self.dir.join(format!("{label}.pem"))
    }

    fn reference(path: &Path) -> String {
        format!("file:{}", path.display())
    }

    fn load(&self, label: &KeyLabel) -> Result<PrivateKeyMaterial> {
        let path = self.path(label);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyStoreError::NotFound {
                    label: label.to_string(),
                    backend: BACKEND,
                    reference: Self::reference(&path),
                    hint: "generate or import it first".into(),
                })
            }
            Err(source) => {
                return Err(KeyStoreError::Io {
                    what: "cannot read key file".into(),
                    path,
                    source,
                })
            }
        };
        PrivateKeyMaterial::from_pem(&text)
    }

    fn store(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo> {
        let path = self.path(label);
        if path.exists() {
            return Err(KeyStoreError::AlreadyExists {
                label: label.to_string(),
                backend: BACKEND,
                reference: Self::reference(&path),
            });
        }
        let pem = Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            key.pkcs8_der().to_vec(),
        )));
        durable::write_file(&path, pem.as_bytes()).map_err(|source| KeyStoreError::Io {
            what: "cannot write key file".into(),
            path: path.clone(),
            source,
        })?;
        Ok(KeyInfo {
            label: label.clone(),
            backend: Backend::File,
            reference: Self::reference(&path),
            public_key: key.public_key()?,
        })
    }
}

fn warn_software() {
    tracing::warn!(
        "file key store in use: private keys are plain PEM files protected only by file \
         permissions; use the tpm or pkcs11 backend in production"
    );
}

fn generate_material(algorithm: KeyAlgorithm) -> Result<PrivateKeyMaterial> {
    use pkcs8::EncodePrivateKey;
    let der = match algorithm {
        KeyAlgorithm::EcP256 => p256::SecretKey::random(&mut OsRng).to_pkcs8_der(),
        KeyAlgorithm::EcP384 => p384::SecretKey::random(&mut OsRng).to_pkcs8_der(),
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
            let bits = algorithm.rsa_bits().unwrap_or(2048);
            rsa::RsaPrivateKey::new(&mut OsRng, bits)
                .map_err(|e| KeyStoreError::Backend {
                    backend: BACKEND,
                    op: "generate RSA key".into(),
                    detail: e.to_string(),
                    code: None,
                })?
                .to_pkcs8_der()
        }
    }
    .map_err(|e| KeyStoreError::Backend {
        backend: BACKEND,
        op: "encode generated key".into(),
        detail: e.to_string(),
        code: None,
    })?;
    PrivateKeyMaterial::from_pkcs8_der(der.as_bytes())
}

/// Signs in software with a parsed key. Shared with nothing else: the
/// hardware backends sign inside the hardware.
fn sign_material(key: &PrivateKeyMaterial, scheme: SignatureScheme, msg: &[u8]) -> Result<Vec<u8>> {
    use pkcs8::DecodePrivateKey;
    let algorithm = key.algorithm();
    if !algorithm.supports(scheme) {
        return Err(KeyStoreError::SchemeMismatch { algorithm, scheme });
    }
    let fail = |e: &dyn std::fmt::Display| KeyStoreError::Backend {
        backend: BACKEND,
        op: "sign".into(),
        detail: e.to_string(),
        code: None,
    };
    let der = key.pkcs8_der();
    match scheme {
        SignatureScheme::EcdsaSha256 => {
            use p256::ecdsa::signature::Signer;
            let sk = p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| fail(&e))?;
            let sig: p256::ecdsa::Signature = sk.try_sign(msg).map_err(|e| fail(&e))?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        SignatureScheme::EcdsaSha384 => {
            use p384::ecdsa::signature::Signer;
            let sk = p384::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| fail(&e))?;
            let sig: p384::ecdsa::Signature = sk.try_sign(msg).map_err(|e| fail(&e))?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        _ => {
            let sk = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|e| fail(&e))?;
            let digest = scheme.hash().digest(msg);
            let padding_pss = |h| match h {
                super::HashAlg::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(32),
                super::HashAlg::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(48),
                super::HashAlg::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(64),
            };
            let result = if scheme.is_pss() {
                sk.sign_with_rng(&mut OsRng, padding_pss(scheme.hash()), &digest)
            } else {
                let padding = match scheme.hash() {
                    super::HashAlg::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    super::HashAlg::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    super::HashAlg::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                };
                sk.sign(padding, &digest)
            };
            result.map_err(|e| fail(&e))
        }
    }
}

impl KeyStore for FileKeyStore {
    fn backend(&self) -> Backend {
        Backend::File
    }

    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        warn_software();
        let key = generate_material(algorithm)?;
        self.store(label, &key)
    }

    fn import(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo> {
        warn_software();
        self.store(label, key)
    }

    fn info(&self, label: &KeyLabel) -> Result<KeyInfo> {
        let key = self.load(label)?;
        Ok(KeyInfo {
            label: label.clone(),
            backend: Backend::File,
            reference: Self::reference(&self.path(label)),
            public_key: key.public_key()?,
        })
    }

    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        let key = self.load(label)?;
        sign_material(&key, scheme, message)
    }

    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo> {
        let from = self.path(pending);
        // Prove the pending key is there and sound before replacing anything.
        self.load(pending)?;
        let to = self.path(current);
        durable::rename(&from, &to).map_err(|source| KeyStoreError::Io {
            what: "cannot promote key file".into(),
            path: from,
            source,
        })?;
        self.info(current)
    }

    fn delete(&self, label: &KeyLabel) -> Result<()> {
        let path = self.path(label);
        if !path.exists() {
            return Err(KeyStoreError::NotFound {
                label: label.to_string(),
                backend: BACKEND,
                reference: Self::reference(&path),
                hint: "nothing to delete".into(),
            });
        }
        durable::shred(&path).map_err(|source| KeyStoreError::Io {
            what: "cannot delete key file".into(),
            path,
            source,
        })
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| KeyStoreError::Io {
            what: "cannot list key directory".into(),
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pem")) else {
                continue;
            };
            let Ok(label) = KeyLabel::new(stem) else {
                continue;
            };
            out.push(self.info(&label)?);
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }
}
