//! Backend settings, built by the config layer and handed to [`super::open`].
//! Always compiled, so that a config naming a backend this binary lacks can
//! still be read and refused with a message naming the cargo feature.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use super::helper::SealedSecret;
use super::{Backend, KeyStoreError, Result};

/// Where a PIN (or another secret) comes from. Never the command line.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Handed over by the process that started this one, for one use: the
    /// daemon's key helper gets the PIN of `PIN_SOURCE = env:NAME` this
    /// way ([`crate::keystore::helper`]). Never read from a configuration.
    Given(GivenSecret),
    /// A file whose first line is the secret (mode 0600 recommended).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// The PIN of `PIN_SOURCE = env:NAME`, taken out of the environment at
    /// start ([`KeyStoreSettings::seal_pin_from_environment`]) and kept in a
    /// sealed memfd, outside the process's memory: read from there for
    /// every login. Never read from a configuration.
    Sealed(SealedPin),
    /// A systemd credential (`LoadCredential=NAME:...`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl KeyStoreSettings {
    /// The environment variable the store's PIN comes from
    /// (`PIN_SOURCE = env:NAME`), if it does.
    pub fn pin_variable(&self) -> Option<&str> {
        match self {
            KeyStoreSettings::Pkcs11(Pkcs11Settings {
                pin: SecretSource::Env(name) | SecretSource::Sealed(SealedPin { name, .. }),
                ..
            }) => Some(name),
            _ => None,
        }
    }

    /// `PIN_SOURCE = env:NAME`: takes the PIN out of this process's
    /// environment ([`crate::environ::take`], which wipes it from the
    /// environment block: call this while the process has one thread) and
    /// seals it into a memfd ([`SealedSecret`]). `None` for another source,
    /// or when the variable is not set (the store's login then says so);
    /// the PIN already taken when the settings read it from a memfd.
    ///
    /// The settings are left as they are: the daemon hands the sealed PIN
    /// to its key helpers and keeps its configuration as read.
    pub fn take_pin_from_environment(&self) -> std::io::Result<Option<Arc<SealedSecret>>> {
        let KeyStoreSettings::Pkcs11(settings) = self else {
            return Ok(None);
        };
        match &settings.pin {
            SecretSource::Env(name) => match crate::environ::take(name) {
                Some(pin) => Ok(Some(Arc::new(SealedSecret::new(&pin)?))),
                None => Ok(None),
            },
            SecretSource::Sealed(sealed) => Ok(Some(sealed.secret.clone())),
            _ => Ok(None),
        }
    }

    /// [`KeyStoreSettings::take_pin_from_environment`], for a command that
    /// opens the store itself: from then on the store's PIN is read from
    /// the memfd ([`SecretSource::Sealed`]), as often as a login needs it,
    /// and no longer from the environment, which does not hold it any more.
    pub fn seal_pin_from_environment(&mut self) -> std::io::Result<()> {
        let Some(secret) = self.take_pin_from_environment()? else {
            return Ok(());
        };
        if let KeyStoreSettings::Pkcs11(settings) = self {
            if let SecretSource::Env(name) = &settings.pin {
                settings.pin = SecretSource::Sealed(SealedPin {
                    name: name.clone(),
                    secret,
                });
            }
        }
        Ok(())
    }
}

/// A PIN taken out of the environment variable `name` and sealed
/// ([`SecretSource::Sealed`]). Clones share it; two are equal only if they
/// are clones.
#[derive(Clone)]
pub struct SealedPin {
    name: String,
    secret: Arc<SealedSecret>,
}

impl PartialEq for SealedPin {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret)
    }
}

impl Eq for SealedPin {}

impl SecretSource {
    /// Parses `file:/path`, `env:NAME` or `credential:NAME`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        // The value is never echoed: someone may have written the PIN itself.
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            "the value is not a secret source (not shown, in case it is the PIN itself): \
             use file:/path, env:NAME or credential:NAME"
                .to_string()
        })?;
        if rest.is_empty() {
            return Err(format!("{kind}: names no file, variable or credential"));
        }
        match kind {
            "file" => Ok(SecretSource::File(PathBuf::from(rest))),
            "env" => Ok(SecretSource::Env(rest.to_string())),
            "credential" | "systemd-credential" => {
                if rest.contains('/') {
                    Err(format!("credential name {rest:?} must not contain '/'"))
                } else {
                    Ok(SecretSource::Credential(rest.to_string()))
                }
            }
            _ => Err(
                "unknown secret source kind (not shown, in case it is the PIN itself): \
                 use file:/path, env:NAME or credential:NAME"
                    .to_string(),
            ),
        }
    }

    /// Reads the secret of `backend`'s store. Only the first line counts; a
    /// trailing newline is not part of the secret. A [`SecretSource::Given`]
    /// secret can be read once.
    pub fn read(&self, backend: Backend) -> Result<SecretString> {
        use zeroize::Zeroizing;
        let raw: Zeroizing<String> = match self {
            SecretSource::Given(given) => return given.take(backend),
            SecretSource::Env(name) => {
                Zeroizing::new(std::env::var(name).map_err(|_| KeyStoreError::Unavailable {
                    backend,
                    detail: format!("environment variable {name} holding the PIN is not set"),
                    retryable: false,
                    code: None,
                })?)
            }
            SecretSource::Sealed(SealedPin { name, secret }) => {
                let unreadable = |detail: String| KeyStoreError::Unavailable {
                    backend,
                    detail,
                    retryable: false,
                    code: None,
                };
                let bytes = secret.read().map_err(|e| {
                    unreadable(format!(
                        "the PIN taken from environment variable {name} cannot be read back \
                         from its memfd: {e}"
                    ))
                })?;
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    unreadable(format!(
                        "the PIN in environment variable {name} is not UTF-8 text"
                    ))
                })?;
                Zeroizing::new(text.to_string())
            }
            SecretSource::File(path) => read_secret_file(path, backend)?,
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    KeyStoreError::Unavailable {
                        backend,
                        detail: format!(
                            "PIN credential {name} asked for, but CREDENTIALS_DIRECTORY is not set: \
                             run under systemd with LoadCredential={name}:..."
                        ),
                        retryable: false,
                        code: None,
                    }
                })?;
                read_secret_file(&PathBuf::from(dir).join(name), backend)?
            }
        };
        let line = raw.lines().next().unwrap_or("");
        Ok(SecretString::from(line.to_string()))
    }
}

fn read_secret_file(
    path: &std::path::Path,
    backend: Backend,
) -> Result<zeroize::Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| KeyStoreError::Io {
            what: if backend == Backend::Pkcs11 {
                "cannot read PIN file".into()
            } else {
                "cannot read secret file".into()
            },
            path: path.to_path_buf(),
            source,
        })
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Where the secret lives is not secret; the secret itself never is
        // held here.
        match self {
            SecretSource::Given(_) => f.write_str("given by the daemon"),
            SecretSource::File(p) => write!(f, "file:{}", p.display()),
            SecretSource::Env(n) | SecretSource::Sealed(SealedPin { name: n, .. }) => {
                write!(f, "env:{n}")
            }
            SecretSource::Credential(n) => write!(f, "credential:{n}"),
        }
    }
}

/// A secret handed over for one use ([`SecretSource::Given`]): taken out
/// by the first read, so that the process holds no copy after the login it
/// was given for. Clones share it; two are equal only if they are clones.
#[derive(Clone)]
pub struct GivenSecret(std::sync::Arc<std::sync::Mutex<Option<SecretString>>>);

impl GivenSecret {
    pub fn new(secret: SecretString) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(secret))))
    }

    fn take(&self, backend: Backend) -> Result<SecretString> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| KeyStoreError::Unavailable {
                backend,
                detail: "the key helper's PIN was used for its login already; a new login \
                         needs a new key helper"
                    .into(),
                retryable: true,
                code: None,
            })
    }
}

impl PartialEq for GivenSecret {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GivenSecret {}

/// How the TPM backend keeps keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmKeyStorage {
    /// TPM-wrapped blobs (TPM2B_PUBLIC + TPM2B_PRIVATE) in the state
    /// directory, loadable only by this TPM under the storage primary.
    Blob,
    /// Persistent objects in the TPM's NV, at handles from `persistent_base`.
    Persistent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmSettings {
    /// A TCTI string as tpm2-tools take it: `device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, `tabrmd`, `mssim:...`.
    pub tcti: String,
    pub storage: TpmKeyStorage,
    /// First persistent handle the agent may use (0x81000000..0x817FFFFF is
    /// the owner range).
    pub persistent_base: u32,
    /// Directory for key metadata and wrapped blobs (0700).
    pub key_dir: PathBuf,
    /// Whether a key may go into a TPM that cannot encrypt it for
    /// TPM2_Import (no TPM2_EncryptDecrypt2 / AES-CFB), crossing the TPM
    /// bus in clear once (`[TPM] ALLOW_UNWRAPPED_IMPORT`, default no).
    pub allow_unwrapped_import: bool,
}

impl TpmSettings {
    /// Where the certificate chain of the attestation key under `label` is
    /// kept: beside its key file (`prov-agent attest activate` writes it).
    pub fn attestation_certificate(&self, label: &super::KeyLabel) -> PathBuf {
        Self::certificate_in(&self.key_dir, label)
    }

    pub(crate) fn certificate_in(key_dir: &std::path::Path, label: &super::KeyLabel) -> PathBuf {
        key_dir.join(format!("{label}.cert.pem"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// Path of the PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the token (slot ids change when a token is initialised).
    pub token_label: String,
    /// Where the user PIN comes from.
    pub pin: SecretSource,
    /// Keys made by other tools, found by CKA_ID instead of by label: the
    /// store's label (`[KEYSTORE] CLAIM_KEY`) to the object's CKA_ID
    /// (`[PKCS11] CLAIM_KEY_ID`). The agent uses such a key and never makes,
    /// replaces or deletes one under its label.
    pub key_ids: std::collections::BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSettings {
    /// Directory holding `<label>.pem` files (0700, keys 0600).
    pub key_dir: PathBuf,
}

/// Which backend to open, with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStoreSettings {
    Tpm(TpmSettings),
    Pkcs11(Pkcs11Settings),
    File(FileSettings),
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn sources_parse_and_read_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "1234\nignored\n").unwrap();
        let src = SecretSource::parse(&format!("file:{}", file.display())).unwrap();
        assert_eq!(src.read(Backend::Pkcs11).unwrap().expose_secret(), "1234");

        // A systemd credential: $CREDENTIALS_DIRECTORY/NAME. No other test
        // touches this variable.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let src = SecretSource::parse("credential:pin").unwrap();
        assert_eq!(src.read(Backend::Pkcs11).unwrap().expose_secret(), "1234");
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        let e = src.read(Backend::Pkcs11).unwrap_err().to_string();
        assert!(e.contains("LoadCredential=pin"), "{e}");

        assert!(SecretSource::parse("credential:../etc/shadow").is_err());
        assert!(SecretSource::parse("env:").is_err());
        // The value is never echoed: it may be the PIN itself.
        let e = SecretSource::parse("s3cret-pin").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        // Debug shows where the secret is, never a secret.
        assert_eq!(format!("{:?}", SecretSource::Env("PIN".into())), "env:PIN");
    }

    /// `PIN_SOURCE = env:NAME` for a command that opens the store itself:
    /// the PIN leaves the environment (block included) and is read from
    /// its memfd, as often as asked. In a child process of its own (the
    /// environment is process-wide and the tests run on threads).
    #[test]
    fn a_pin_from_the_environment_is_sealed_and_read_again() {
        const CHILD: &str = "PROV_AGENT_SETTINGS_SEALED_CHILD";
        const VARIABLE: &str = "PROV_AGENT_SETTINGS_SEALED_PIN";
        if std::env::var_os(CHILD).is_some() {
            let pkcs11 = |pin| {
                KeyStoreSettings::Pkcs11(Pkcs11Settings {
                    module: "/nonexistent.so".into(),
                    token_label: "t".into(),
                    pin,
                    key_ids: Default::default(),
                })
            };
            // Not set: left as it is, for the login to say so.
            let mut unset = pkcs11(SecretSource::Env("PROV_AGENT_SETTINGS_UNSET".into()));
            unset.seal_pin_from_environment().unwrap();
            assert_eq!(
                unset,
                pkcs11(SecretSource::Env("PROV_AGENT_SETTINGS_UNSET".into()))
            );

            let mut settings = pkcs11(SecretSource::Env(VARIABLE.into()));
            settings.seal_pin_from_environment().unwrap();
            assert!(std::env::var_os(VARIABLE).is_none());
            let environ = std::fs::read("/proc/self/environ").unwrap();
            assert!(!environ.windows(12).any(|w| w == b"sealed-pin-1"));
            let KeyStoreSettings::Pkcs11(p) = &settings else {
                unreachable!()
            };
            assert!(matches!(p.pin, SecretSource::Sealed(_)));
            assert_eq!(format!("{:?}", p.pin), format!("env:{VARIABLE}"));
            assert_eq!(settings.pin_variable(), Some(VARIABLE));
            for _ in 0..2 {
                assert_eq!(
                    p.pin.read(Backend::Pkcs11).unwrap().expose_secret(),
                    "sealed-pin-1"
                );
            }
            // Taken once: a second call hands out the same sealed value
            // (the read above keeps its first line only, as for `env:`).
            let again = settings.take_pin_from_environment().unwrap().unwrap();
            assert_eq!(&**again.read().unwrap(), b"sealed-pin-1\nsecond line");
            assert_eq!(settings.clone(), settings);
            return;
        }
        crate::environ::in_a_child(
            "keystore::settings::tests::a_pin_from_the_environment_is_sealed_and_read_again",
            &[(CHILD, "1"), (VARIABLE, "sealed-pin-1\nsecond line")],
        );
    }
}
