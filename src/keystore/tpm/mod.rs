//! TPM 2.0 backend (tss-esapi).
//!
//! Keys live under a storage primary key (ECC P-256, re-created at each
//! start: a primary is derived from the owner seed and its template, so it
//! is the same key every time; `parent.rs` says which template, and why
//! there are two). Each key is either a wrapped blob in
//! `<key_dir>/<label>.tpmkey` that only this TPM can load
//! (`tpm:blob=<path>`) or a persistent object whose handle that file names
//! (`tpm:handle=0x81000100`).
//!
//! One ESAPI context, one HMAC session (salted with the SRK, so its key is
//! secret) and the primary live as long as the store, behind a mutex: the
//! TPM does one command at a time anyway. A lost connection or a TPM reset
//! is reported as retryable and the next call reconnects.
//!
//! Generated keys are fixedTPM, fixedParent and sensitiveDataOrigin.
//! Imported keys come in through TPM2_Import, encrypted on the bus (see
//! `import.rs`); the TPM refuses fixedTPM/fixedParent on imported objects,
//! and their empty authPolicy rules out TPM2_Duplicate, so they cannot
//! leave either.
//!
//! Files: `context.rs` (connection, session, errors), `parent.rs` (the
//! storage primaries), `keys.rs`
//! (templates, public keys), `import.rs` (TPM2_Import), `sign.rs`
//! (TPM2_Sign and signature encoding), `meta.rs` (the key files),
//! `attest.rs` (the attestation key, its activation, TPM2_Certify).

mod attest;
mod context;
mod import;
mod key_file;
mod keys;
mod meta;
mod parent;
mod sign;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tss_esapi::constants::{PropertyTag, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle};
use tss_esapi::interface_types::algorithm::SymmetricMode;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::structures::{
    Data, EncryptedSecret, InitialValue, MaxBuffer, Private, Public, SymmetricDefinitionObject,
};
use zeroize::Zeroizing;

pub use attest::{AttestationKey, EK_CERT_NV_INDEX};

use super::{
    Backend, Certification, HardwareCode, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError,
    PrivateKeyMaterial, Result, SignatureScheme, TpmKeyStorage, TpmSettings,
};
use crate::durable;
use context::{code, describe, rc_kind, tpm_err, Tpm, BACKEND};
use meta::{KeyFile, Location, Origin};
use parent::Parent;

/// The op of the error saying a persistent handle holds another key than
/// its key file describes.
const ANOTHER_KEY_AT_HANDLE: &str = "open persistent key (another key at the handle)";

/// A key the TPM just made or imported, before it is stored.
struct NewKey {
    algorithm: KeyAlgorithm,
    origin: Origin,
    /// For imported keys: how the key was protected on its way in.
    import_wrapper: Option<&'static str>,
    public: Public,
    private: Private,
    /// The storage primary it was made or imported under.
    parent: Parent,
}

pub struct TpmKeyStore {
    key_dir: PathBuf,
    storage: TpmKeyStorage,
    persistent_base: u32,
    /// `[TPM] ALLOW_UNWRAPPED_IMPORT`.
    allow_unwrapped_import: bool,
    tcti: String,
    /// `None` only between a lost connection and the reconnect.
    tpm: Mutex<Option<Tpm>>,
}

/// The locked, connected TPM.
struct TpmGuard<'a>(MutexGuard<'a, Option<Tpm>>);

impl std::ops::Deref for TpmGuard<'_> {
    type Target = Tpm;
    fn deref(&self) -> &Tpm {
        self.0
            .as_ref()
            .expect("TpmKeyStore::lock connects before handing out")
    }
}

impl std::ops::DerefMut for TpmGuard<'_> {
    fn deref_mut(&mut self) -> &mut Tpm {
        self.0
            .as_mut()
            .expect("TpmKeyStore::lock connects before handing out")
    }
}

impl TpmKeyStore {
    /// Connects to the TPM, flushes transient objects a crashed run left
    /// behind, creates the storage primary and the reused session.
    pub fn open(settings: &TpmSettings) -> Result<Self> {
        if settings.storage == TpmKeyStorage::Persistent
            && !(context::PERSISTENT_OWNER_FIRST..=context::PERSISTENT_OWNER_LAST)
                .contains(&settings.persistent_base)
        {
            return Err(KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "persistent base handle 0x{:08x} is outside the owner range \
                     0x81000000..0x817fffff",
                    settings.persistent_base
                ),
                retryable: false,
                code: None,
            });
        }
        durable::create_dir_all(&settings.key_dir).map_err(|source| KeyStoreError::Io {
            what: "cannot create TPM key directory".into(),
            path: settings.key_dir.clone(),
            source,
        })?;
        let tpm = Tpm::open(
            &settings.tcti,
            &settings.key_dir.join(context::PINNED_PRIMARY),
        )?;
        Ok(Self {
            key_dir: settings.key_dir.clone(),
            storage: settings.storage,
            persistent_base: settings.persistent_base,
            allow_unwrapped_import: settings.allow_unwrapped_import,
            tcti: settings.tcti.clone(),
            tpm: Mutex::new(Some(tpm)),
        })
    }

    /// A stable identifier of this TPM: the first 10 bytes (hex) of the
    /// SHA-256 of its RSA endorsement key's modulus, made from the TCG
    /// default EK template (the same key on every call: a primary).
    pub fn endorsement_id(&self) -> Result<String> {
        use sha2::Digest;
        let mut tpm = self.lock()?;
        let created = tpm.create_endorsement_key()?;
        let handle: ObjectHandle = created.key_handle.into();
        let _ = tpm.plain("flush EK", |ctx| ctx.flush_context(handle));
        match created.out_public {
            Public::Rsa { unique, .. } => {
                let digest = sha2::Sha256::digest(unique.value());
                Ok(hex::encode(&digest[..10]))
            }
            _ => Err(KeyStoreError::Backend {
                backend: BACKEND,
                op: "create EK".into(),
                detail: "the TPM returned a non-RSA endorsement key".into(),
                code: None,
            }),
        }
    }

    /// The TPM connection, reconnected first if the last command found it
    /// lost (the TPM, simulator or resource manager restarted): that is
    /// what makes a retryable `Unavailable` worth retrying.
    fn lock(&self) -> Result<TpmGuard<'_>> {
        // A panic while holding the lock leaves the context usable: every
        // TPM command is self-contained.
        let mut guard = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|t| t.broken) {
            // Drop the old context first: its drop flushes its handles by
            // number, which on a restarted TPM may be the new context's.
            drop(guard.take());
            tracing::warn!("tpm: reconnecting through {}", self.tcti);
            *guard = Some(Tpm::open(
                &self.tcti,
                &self.key_dir.join(context::PINNED_PRIMARY),
            )?);
        }
        Ok(TpmGuard(guard))
    }

    fn key_file(&self, label: &KeyLabel) -> Result<KeyFile> {
        let path = meta::path(&self.key_dir, label);
        meta::read(&path)?
            .ok_or_else(|| self.not_found(label, &path, "generate or import it first"))
    }

    /// NotFound for a label without a key file. Without the file there is
    /// no handle to name, so a persistent store names the file.
    fn not_found(
        &self,
        label: &KeyLabel,
        path: &std::path::Path,
        hint: &'static str,
    ) -> KeyStoreError {
        let reference = match self.storage {
            TpmKeyStorage::Blob => format!("tpm:blob={}", path.display()),
            TpmKeyStorage::Persistent => format!("tpm:key-file={}", path.display()),
        };
        KeyStoreError::NotFound {
            label: label.to_string(),
            backend: BACKEND,
            reference,
            hint: hint.into(),
        }
    }

    /// The path for a new key, if the label is free. A corrupted key file
    /// under the label is an error too (it says to delete the file).
    fn ensure_free(&self, label: &KeyLabel) -> Result<PathBuf> {
        let path = meta::path(&self.key_dir, label);
        if let Some(existing) = meta::read(&path)? {
            return Err(KeyStoreError::AlreadyExists {
                label: label.to_string(),
                backend: BACKEND,
                reference: existing.reference(),
            });
        }
        Ok(path)
    }

    /// Stores a freshly created or imported object (public + wrapped
    /// private) under `label`, as a blob or a persistent object, and
    /// describes it.
    fn store(
        &self,
        tpm: &mut Tpm,
        label: &KeyLabel,
        path: PathBuf,
        new: NewKey,
    ) -> Result<KeyInfo> {
        let NewKey {
            algorithm,
            origin,
            import_wrapper,
            public,
            private,
            parent,
        } = new;
        let location = match self.storage {
            TpmKeyStorage::Blob => Location::Blob {
                private: private.value().to_vec(),
            },
            TpmKeyStorage::Persistent => Location::Persistent {
                handle: self.free_handle(tpm)?,
            },
        };
        // The file first, then the persistent object: a crash in between
        // leaves a file naming an empty handle (which delete removes), never
        // an NV object no file names, which would fill the TPM slot by slot.
        meta::write(
            &path,
            algorithm,
            origin,
            import_wrapper,
            parent,
            &public,
            &location,
        )?;
        if let Location::Persistent { handle } = location {
            crate::fault::point("tpm-key-half-stored");
            if let Err(e) = self.persist(tpm, handle, &public, private.value()) {
                if let Err(rm) = durable::remove_file(&path) {
                    tracing::warn!(
                        "tpm: could not remove {} after the key could not be made persistent: {rm}",
                        path.display()
                    );
                }
                return Err(e);
            }
        }
        let file = KeyFile {
            path,
            algorithm,
            origin,
            parent,
            public,
            location,
        };
        info_of(label, &file)
    }

    /// With persistent storage: a free handle from `persistent_base` up and
    /// room in the TPM for one more persistent object, checked before a key
    /// is made or imported, so that a full TPM changes nothing. The TPM's
    /// own count (TPM_PT_HR_PERSISTENT_AVAIL) is an estimate: with `trial`
    /// the storage primary is made persistent at the free handle and
    /// evicted again, which is what storing the key will do (keys mode,
    /// before the service makes a key that could then not be kept).
    fn persistent_room(&self, tpm: &mut Tpm, trial: bool) -> Result<()> {
        if self.storage != TpmKeyStorage::Persistent {
            return Ok(());
        }
        let avail = tpm.plain("read TPM_PT_HR_PERSISTENT_AVAIL", |ctx| {
            ctx.get_tpm_property(PropertyTag::HrPersistentAvail)
        })?;
        if avail == Some(0) {
            return Err(no_persistent_room(
                "TPM_PT_HR_PERSISTENT_AVAIL is 0".into(),
                None,
            ));
        }
        let used = tpm.persistent_handles(self.persistent_base)?;
        let Some(free) =
            (self.persistent_base..=context::PERSISTENT_OWNER_LAST).find(|h| !used.contains(h))
        else {
            return Err(no_persistent_room(
                format!("no free handle from 0x{:08x} upward", self.persistent_base),
                None,
            ));
        };
        if trial {
            let primary: ObjectHandle = tpm.primary.into();
            let target =
                PersistentTpmHandle::new(free).map_err(|e| tpm_err("persistent handle", e))?;
            let persisted = tpm.authorized("try a persistent object (TPM2_EvictControl)", |ctx| {
                ctx.evict_control(Provision::Owner, primary, Persistent::Persistent(target))
            });
            match persisted {
                Ok(obj) => {
                    tpm.remember_persistent(free, obj);
                    evict(tpm, free)?;
                }
                Err(e)
                    if e.hardware_code().and_then(|c| c.tpm_kind())
                        == Some(Tss2ResponseCodeKind::NvSpace) =>
                {
                    return Err(no_persistent_room(
                        "TPM_RC_NV_SPACE on a trial".into(),
                        e.hardware_code(),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The first free persistent handle from `persistent_base` upward.
    fn free_handle(&self, tpm: &mut Tpm) -> Result<u32> {
        let used = tpm.persistent_handles(self.persistent_base)?;
        (self.persistent_base..=context::PERSISTENT_OWNER_LAST)
            .find(|h| !used.contains(h))
            .ok_or_else(|| KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "no free persistent handle from 0x{:08x} upward",
                    self.persistent_base
                ),
                retryable: false,
                code: None,
            })
    }

    /// Loads the object and makes it persistent at `handle` (from
    /// [`Self::free_handle`]).
    fn persist(&self, tpm: &mut Tpm, handle: u32, public: &Public, private: &[u8]) -> Result<()> {
        let loaded = tpm
            .load_blob(public, private, Parent::NEW_KEYS)
            .map_err(|e| tpm.classify("load the new key", e))?;
        let target =
            PersistentTpmHandle::new(handle).map_err(|e| tpm_err("persistent handle", e))?;
        let result = tpm.authorized("make the key persistent (TPM2_EvictControl)", |ctx| {
            ctx.evict_control(
                Provision::Owner,
                ObjectHandle::from(loaded),
                Persistent::Persistent(target),
            )
        });
        // The transient copy is not needed any more either way.
        tpm.unload_blob();
        let obj = result.map_err(|e| match e {
            e if e.hardware_code().and_then(|c| c.tpm_kind())
                == Some(Tss2ResponseCodeKind::NvSpace) =>
            {
                no_persistent_room("TPM_RC_NV_SPACE".into(), e.hardware_code())
            }
            KeyStoreError::Backend { detail, code, .. } => KeyStoreError::Backend {
                backend: BACKEND,
                op: "make the key persistent (TPM2_EvictControl)".into(),
                detail: format!(
                    "{detail}; if the TPM's NV is full, delete unused keys or evict stale \
                     handles with tpm2_evictcontrol"
                ),
                code,
            },
            other => other,
        })?;
        // EvictControl returned an ESYS resource for the new handle: keep it.
        tpm.remember_persistent(handle, obj);
        Ok(())
    }

    /// A loaded handle for the key, ready for TPM2_Sign / ReadPublic.
    fn loaded(&self, tpm: &mut Tpm, file: &KeyFile) -> Result<KeyHandle> {
        match &file.location {
            Location::Blob { private } => tpm
                .load_blob(&file.public, private, file.parent)
                .map_err(|e| {
                    match rc_kind(e) {
                        // Integrity/HMAC failures: the blob was wrapped under
                        // another primary (another TPM, or this TPM's owner
                        // hierarchy was cleared) or its bytes were altered.
                        Some(
                            Tss2ResponseCodeKind::Integrity
                            | Tss2ResponseCodeKind::Value
                            | Tss2ResponseCodeKind::Size
                            | Tss2ResponseCodeKind::Key
                            | Tss2ResponseCodeKind::Binding
                            | Tss2ResponseCodeKind::Hmac,
                        ) => KeyStoreError::Backend {
                            backend: BACKEND,
                            op: "load key blob".into(),
                            detail: format!(
                            "key blob {} does not load under this TPM's storage primary ({}): it \
                             was made by another TPM, the TPM was cleared since, or the file was \
                             altered. Generate or import the key again",
                            file.path.display(),
                            describe(e)
                        ),
                            code: code(e),
                        },
                        _ => tpm.classify("load key blob", e),
                    }
                }),
            Location::Persistent { handle } => {
                let handle = *handle;
                let obj = tpm.persistent_object(handle).map_err(|e| {
                    if matches!(
                        rc_kind(e),
                        Some(Tss2ResponseCodeKind::Handle | Tss2ResponseCodeKind::Value)
                    ) {
                        missing_handle(file, handle)
                    } else {
                        tpm.classify("open persistent key", e)
                    }
                })?;
                Ok(KeyHandle::from(obj))
            }
        }
    }

    /// For a persistent key, checks that the handle still holds the key the
    /// file describes (a handle can be evicted and reused by someone else).
    fn check_persistent(&self, tpm: &mut Tpm, file: &KeyFile) -> Result<()> {
        let Location::Persistent { handle } = file.location else {
            return Ok(());
        };
        let key = self.loaded(tpm, file)?;
        let read = tpm.plain("read persistent key", |ctx| ctx.read_public(key));
        let (public, _, _) = match read {
            Ok(r) => r,
            Err(e) => {
                // The cached resource may be stale: retry once from scratch.
                tpm.forget_persistent(handle);
                let key = self.loaded(tpm, file)?;
                tpm.plain("read persistent key", |ctx| ctx.read_public(key))
                    .map_err(|_| e)?
            }
        };
        if meta::marshall_public(&public)? != meta::marshall_public(&file.public)? {
            tpm.forget_persistent(handle);
            return Err(KeyStoreError::Backend {
                // [`TpmKeyStore::delete_locked`] tells this one by its op.
                backend: BACKEND,
                op: ANOTHER_KEY_AT_HANDLE.into(),
                detail: format!(
                    "persistent handle 0x{handle:08x} named by {} now holds another key: delete \
                     the key file and generate or import the key again",
                    file.path.display()
                ),
                code: None,
            });
        }
        Ok(())
    }

    fn sign_with(
        &self,
        tpm: &mut Tpm,
        file: &KeyFile,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>> {
        if !file.algorithm.supports(scheme) {
            return Err(KeyStoreError::SchemeMismatch {
                algorithm: file.algorithm,
                scheme,
            });
        }
        let public = keys::public_key(&file.public)?;
        let digest = sign::digest(scheme, message)?;
        let ticket = sign::null_ticket()?;
        let tpm_scheme = sign::tpm_scheme(scheme);
        let key = self.loaded(tpm, file)?;
        let signature = match tpm.password("sign (TPM2_Sign)", |ctx| {
            ctx.sign(key, digest.clone(), tpm_scheme, ticket.clone())
        }) {
            Ok(s) => s,
            Err(e) => {
                // A persistent handle evicted behind our back: the cached
                // ESYS resource is stale. Say so plainly.
                if let Location::Persistent { handle } = file.location {
                    tpm.forget_persistent(handle);
                    if !tpm.persistent_handles(handle)?.contains(&handle) {
                        return Err(missing_handle(file, handle));
                    }
                }
                return Err(e);
            }
        };
        sign::encode(signature, &public)
    }
}

/// The import blob encrypted by the TPM, and the one-time key it used.
struct InnerWrapped {
    key: Zeroizing<Vec<u8>>,
    blob: Zeroizing<Vec<u8>>,
}

/// Why the inner wrapper could not be made, and whether that is because
/// the TPM lacks the commands (then a plain import is the fallback).
struct WrapError {
    error: KeyStoreError,
    unsupported: bool,
}

/// Whether the TPM refused the inner wrapper for want of the command
/// (TPM2_EncryptDecrypt2) or of AES-CFB in it.
fn lacks_inner_wrap(error: &KeyStoreError) -> bool {
    matches!(
        error.hardware_code().and_then(HardwareCode::tpm_kind),
        Some(
            Tss2ResponseCodeKind::CommandCode
                | Tss2ResponseCodeKind::Symmetric
                | Tss2ResponseCodeKind::Mode
        )
    )
}

impl TpmKeyStore {
    /// Encrypts the import blob with a one-time AES key inside the TPM.
    /// Returns the key (for TPM2_Import's encryptionKey) and the blob.
    fn wrap_inner(
        &self,
        tpm: &mut Tpm,
        public: &Public,
        sensitive: &[u8],
    ) -> std::result::Result<InnerWrapped, WrapError> {
        let fail = |error: KeyStoreError| WrapError {
            unsupported: lacks_inner_wrap(&error),
            error,
        };
        if crate::fault::lacks("tpm-encrypt-decrypt-2") {
            // What a TPM without the command answers.
            const TPM_RC_COMMAND_CODE: u32 = 0x143;
            return Err(fail(tpm_err(
                "encrypt the key (TPM2_EncryptDecrypt2)",
                tss_esapi::Error::Tss2Error(tss_esapi::constants::Tss2ResponseCode::from(
                    TPM_RC_COMMAND_CODE,
                )),
            )));
        }
        let plain = import::inner_plaintext(public, sensitive).map_err(fail)?;
        let (key, key_public, key_sensitive) = import::inner_key().map_err(fail)?;
        let in_data = MaxBuffer::try_from(&plain[..])
            .map_err(|e| fail(tpm_err("wrap the key for encryption", e)))?;
        // inPrivate is LoadExternal's first parameter: encrypted on the bus.
        let aes = tpm
            .encrypted(
                "load the one-time wrapping key (TPM2_LoadExternal)",
                |ctx| ctx.load_external(key_sensitive, key_public, Hierarchy::Null),
            )
            .map_err(fail)?;
        let result = tpm.encrypted("encrypt the key (TPM2_EncryptDecrypt2)", |ctx| {
            ctx.encrypt_decrypt_2(
                aes,
                false,
                SymmetricMode::Cfb,
                in_data,
                InitialValue::try_from(vec![0u8; 16])?,
            )
        });
        if let Err(e) = tpm.ctx.flush_context(aes.into()) {
            tracing::warn!("tpm: could not flush the wrapping key: {}", describe(e));
        }
        let (out, _) = result.map_err(fail)?;
        Ok(InnerWrapped {
            key,
            blob: Zeroizing::new(out.value().to_vec()),
        })
    }
}

/// TPM2_Import under the storage primary. `inner_key` is the AES-128 key of
/// the inner wrapper, or `None` for an unwrapped blob.
fn import_with(
    tpm: &mut Tpm,
    public: &Public,
    duplicate: &[u8],
    inner_key: Option<Zeroizing<Vec<u8>>>,
) -> Result<Private> {
    let duplicate =
        Private::try_from(duplicate).map_err(|e| tpm_err("wrap the key for TPM2_Import", e))?;
    let (encryption_key, symmetric) = match &inner_key {
        Some(k) => (
            Some(Data::try_from(&k[..]).map_err(|e| tpm_err("wrap the inner key", e))?),
            SymmetricDefinitionObject::AES_128_CFB,
        ),
        None => (None, SymmetricDefinitionObject::Null),
    };
    let primary = tpm.primary;
    let public = public.clone();
    // encryptionKey is Import's first parameter: encrypted on the bus.
    tpm.encrypted("import key (TPM2_Import)", |ctx| {
        ctx.import(
            primary.into(),
            encryption_key,
            public,
            duplicate,
            EncryptedSecret::default(),
            symmetric,
        )
    })
    .map_err(|e| match e {
        KeyStoreError::Backend { detail, .. } => KeyStoreError::BadPrivateKey {
            detail: format!("the TPM refused the key in TPM2_Import: {detail}"),
        },
        other => other,
    })
}

fn missing_handle(file: &KeyFile, handle: u32) -> KeyStoreError {
    KeyStoreError::NotFound {
        label: file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backend: BACKEND,
        reference: format!("tpm:handle=0x{handle:08x}"),
        hint: "the persistent handle is gone from the TPM (evicted, or the TPM was cleared): \
               delete the key and generate or import it again"
            .into(),
    }
}

fn info_of(label: &KeyLabel, file: &KeyFile) -> Result<KeyInfo> {
    Ok(KeyInfo {
        label: label.clone(),
        backend: Backend::Tpm,
        reference: file.reference(),
        public_key: keys::public_key(&file.public)?,
    })
}

/// The TPM cannot hold one more persistent object (`why`): reported before
/// anything is changed.
fn no_persistent_room(why: String, code: Option<HardwareCode>) -> KeyStoreError {
    KeyStoreError::Unavailable {
        backend: BACKEND,
        detail: format!(
            "the TPM has no room for another persistent object ({why}): nothing was changed. \
             Evict persistent objects that are no longer used (tpm2_getcap \
             handles-persistent, tpm2_evictcontrol -C o -c HANDLE), or keep keys as blobs \
             ([TPM] KEY_STORAGE = blob)"
        ),
        retryable: false,
        code,
    }
}

/// Removes a persistent object from the TPM's NV.
fn evict(tpm: &mut Tpm, handle: u32) -> Result<()> {
    let obj = tpm
        .persistent_object(handle)
        .map_err(|e| tpm.classify("open persistent key", e))?;
    tpm.drop_persistent_entry(handle);
    // EvictControl's first parameter is a handle, not a TPM2B; any session
    // works. ESAPI closes the resource when the object goes.
    tpm.authorized("evict persistent key (TPM2_EvictControl)", |ctx| {
        ctx.evict_control(
            Provision::Owner,
            obj,
            Persistent::Persistent(PersistentTpmHandle::new(handle)?),
        )
    })?;
    Ok(())
}

impl KeyStore for TpmKeyStore {
    fn certify(&self, key: &KeyLabel, by: &KeyLabel, qualifying: &[u8]) -> Result<Certification> {
        self.certify_with(key, by, qualifying)
    }

    fn hardware_id(&self) -> Option<Result<String>> {
        Some(self.endorsement_id())
    }

    fn backend(&self) -> Backend {
        Backend::Tpm
    }

    /// Keys mode: with persistent storage, room for the key the service
    /// is about to make, before it makes it.
    fn probe_import(&self) -> Result<()> {
        let mut tpm = self.lock()?;
        self.persistent_room(&mut tpm, true)
    }

    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        let path = self.ensure_free(label)?;
        let attributes =
            keys::generated_attributes().map_err(|e| tpm_err("build key attributes", e))?;
        let template = keys::public_area(algorithm, attributes, None, None)?;
        let mut tpm = self.lock()?;
        self.persistent_room(&mut tpm, false)?;
        // Create needs a free object slot on TPMs without a resource manager.
        tpm.unload_blob();
        // Test builds can make the key as releases before the standard key
        // file did, under the zero-unique SRK (`fault::lacks`).
        let parent = if crate::fault::lacks("tss2-key-file") {
            Parent::ZeroUnique
        } else {
            Parent::NEW_KEYS
        };
        let created = tpm.create_key(parent, &template)?;
        self.store(
            &mut tpm,
            label,
            path,
            NewKey {
                algorithm,
                origin: Origin::Generated,
                import_wrapper: None,
                public: created.out_public,
                private: created.out_private,
                parent,
            },
        )
    }

    fn import(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo> {
        let path = self.ensure_free(label)?;
        let algorithm = key.algorithm();
        let expected = key.public_key()?;
        let (public, sensitive) = import::import_parts(key)?;
        let mut tpm = self.lock()?;
        self.persistent_room(&mut tpm, false)?;
        tpm.unload_blob();
        let (private, import_wrapper) = match self.wrap_inner(&mut tpm, &public, &sensitive) {
            Ok(wrapped) => (
                import_with(&mut tpm, &public, &wrapped.blob, Some(wrapped.key))?,
                "aes-128-cfb-inner",
            ),
            Err(e) if e.unsupported && !self.allow_unwrapped_import => {
                return Err(KeyStoreError::ImportRefused {
                    backend: BACKEND,
                    detail: format!(
                        "this TPM cannot encrypt the key for TPM2_Import ({}), so it would cross \
                         the TPM bus in clear; set [TPM] ALLOW_UNWRAPPED_IMPORT = true to \
                         accept that, or make keys in the TPM (claim generate, MODE = csr)",
                        e.error
                    ),
                })
            }
            Err(e) if e.unsupported => {
                tracing::warn!(
                    "tpm: this TPM cannot encrypt the key for TPM2_Import ({}); importing it \
                     without the inner wrapper (ALLOW_UNWRAPPED_IMPORT), so the key crosses the \
                     TPM bus unencrypted once",
                    e.error
                );
                (import_with(&mut tpm, &public, &sensitive, None)?, "none")
            }
            Err(e) => return Err(e.error),
        };
        drop(sensitive);
        let info = self.store(
            &mut tpm,
            label,
            path,
            NewKey {
                algorithm,
                origin: Origin::Imported,
                import_wrapper: Some(import_wrapper),
                public,
                private,
                parent: Parent::NEW_KEYS,
            },
        )?;
        // The TPM does not check that an EC private scalar matches the public
        // point it was given: prove the pair with one signature.
        let file = self.key_file(label)?;
        let probe = b"prov-agent import check";
        let scheme = algorithm.default_scheme();
        let ok = self
            .sign_with(&mut tpm, &file, scheme, probe)
            .and_then(|sig| expected.verify(scheme, probe, &sig));
        if let Err(e) = ok {
            let _ = self.delete_locked(&mut tpm, label);
            return Err(KeyStoreError::BadPrivateKey {
                detail: format!("the imported key does not sign for its public key ({e})"),
            });
        }
        Ok(info)
    }

    fn info(&self, label: &KeyLabel) -> Result<KeyInfo> {
        let file = self.key_file(label)?;
        if matches!(file.location, Location::Persistent { .. }) {
            let mut tpm = self.lock()?;
            self.check_persistent(&mut tpm, &file)?;
        }
        info_of(label, &file)
    }

    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        let file = self.key_file(label)?;
        let mut tpm = self.lock()?;
        self.sign_with(&mut tpm, &file, scheme, message)
    }

    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo> {
        let new = self.key_file(pending)?;
        let mut tpm = self.lock()?;
        // Prove the pending key is there and loads before replacing anything.
        self.check_persistent(&mut tpm, &new)?;
        self.loaded(&mut tpm, &new)?;
        let to = meta::path(&self.key_dir, current);
        let old = meta::read(&to).ok().flatten();
        // The rename is the commit point: before it `current` is the old
        // key, after it the new one.
        durable::rename(&new.path, &to).map_err(|source| KeyStoreError::Io {
            what: "cannot promote TPM key file".into(),
            path: new.path.clone(),
            source,
        })?;
        if let Some(old) = old {
            if let (Location::Persistent { handle: old_h }, new_h) = (&old.location, &new.location)
            {
                let same = matches!(new_h, Location::Persistent { handle } if handle == old_h);
                if !same {
                    // A crash before this point leaks the old NV object but
                    // leaves `current` right; the eviction is housekeeping.
                    if let Err(e) = evict(&mut tpm, *old_h) {
                        tracing::warn!(
                            "tpm: promoted {pending} to {current} but could not evict the old \
                             key at 0x{old_h:08x}: {e}"
                        );
                    }
                }
            }
        }
        drop(tpm);
        self.info(current)
    }

    fn delete(&self, label: &KeyLabel) -> Result<()> {
        let mut tpm = self.lock()?;
        self.delete_locked(&mut tpm, label)
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for label in meta::labels(&self.key_dir)? {
            // Reads the files only: listing must work (and show what is
            // there) even when a persistent handle has gone.
            let file = self.key_file(&label)?;
            out.push(info_of(&label, &file)?);
        }
        Ok(out)
    }
}

impl TpmKeyStore {
    fn delete_locked(&self, tpm: &mut Tpm, label: &KeyLabel) -> Result<()> {
        let path = meta::path(&self.key_dir, label);
        let file = match meta::read(&path) {
            Ok(Some(f)) => Some(f),
            Ok(None) => return Err(self.not_found(label, &path, "nothing to delete")),
            // A corrupted file is deleted all the same: that is the fix the
            // corruption error suggests.
            Err(e) => {
                tracing::warn!("tpm: deleting unreadable key file {}: {e}", path.display());
                None
            }
        };
        if let Some(
            f @ KeyFile {
                location: Location::Persistent { handle },
                ..
            },
        ) = &file
        {
            if tpm.persistent_handles(*handle)?.contains(handle) {
                // Only the key the file describes: a handle evicted behind
                // our back may have been reused for someone else's key.
                match self.check_persistent(tpm, f) {
                    Ok(()) => evict(tpm, *handle)?,
                    Err(KeyStoreError::Backend { op, .. }) if op == ANOTHER_KEY_AT_HANDLE => {
                        tracing::warn!(
                            "tpm: persistent handle 0x{handle:08x} of {label} now holds another \
                             key: left it alone, removing the stale key file"
                        );
                        tpm.forget_persistent(*handle);
                    }
                    Err(e) => return Err(e),
                }
            } else {
                tracing::warn!(
                    "tpm: persistent handle 0x{handle:08x} of {label} was already gone; \
                     removing its key file"
                );
                tpm.forget_persistent(*handle);
            }
        }
        if let Some(KeyFile {
            location: Location::Blob { .. },
            ..
        }) = &file
        {
            tpm.unload_blob();
        }
        durable::remove_file(&path).map_err(|source| KeyStoreError::Io {
            what: "cannot delete TPM key file".into(),
            path,
            source,
        })
    }
}

/// How another program on the gateway can use the key whose key file is
/// `path` (the `tpm:blob=` or `tpm:handle=` key of this store), read from
/// the file alone: no TPM command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmConsumerKey {
    /// The standard TPM 2.0 key file (PEM), for tpm2-openssl's `-key FILE`
    /// and the other tools that read it.
    KeyFile(String),
    /// A persistent object, for tpm2-openssl's `-key handle:0x81000101`.
    Handle(u32),
    /// A blob under the older storage primary, which no other tool
    /// recreates: the next rotation makes a key they can use.
    OlderParent,
}

pub fn consumer_key(path: &std::path::Path) -> Result<TpmConsumerKey> {
    let file = meta::read(path)?.ok_or_else(|| KeyStoreError::NotFound {
        label: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backend: BACKEND,
        reference: format!("tpm:blob={}", path.display()),
        hint: "the key file is gone".into(),
    })?;
    Ok(match &file.location {
        Location::Persistent { handle } => TpmConsumerKey::Handle(*handle),
        Location::Blob { private } => {
            let public = meta::tpm2b(&meta::marshall_public(&file.public)?);
            match key_file::pem(file.parent, &public, &meta::tpm2b(private)) {
                Some(pem) => TpmConsumerKey::KeyFile(pem),
                None => TpmConsumerKey::OlderParent,
            }
        }
    })
}

/// What the TPM says about a key's protection, read from its public area
/// in the TPM (not from the key file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpmKeyAttributes {
    /// The key cannot be duplicated off this TPM.
    pub fixed_tpm: bool,
    /// The key cannot be duplicated to another parent.
    pub fixed_parent: bool,
    /// The TPM made the private part itself.
    pub sensitive_data_origin: bool,
    /// The key came in through TPM2_Import (per the key file).
    pub imported: bool,
}

impl TpmKeyStore {
    /// Reads a key's attributes back from the TPM (TPM2_ReadPublic on the
    /// loaded object), for tests and `prov-agent check`.
    pub fn key_attributes(&self, label: &KeyLabel) -> Result<TpmKeyAttributes> {
        let file = self.key_file(label)?;
        let mut tpm = self.lock()?;
        let key = self.loaded(&mut tpm, &file)?;
        let (public, _, _) = tpm.plain("read key public area", |ctx| ctx.read_public(key))?;
        let a = public.object_attributes();
        Ok(TpmKeyAttributes {
            fixed_tpm: a.fixed_tpm(),
            fixed_parent: a.fixed_parent(),
            sensitive_data_origin: a.sensitive_data_origin(),
            imported: file.origin == Origin::Imported,
        })
    }
}

// rustls signs on whatever thread runs the handshake.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<TpmKeyStore>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: Option<u32>, detail: &str) -> KeyStoreError {
        KeyStoreError::Backend {
            backend: BACKEND,
            op: "encrypt the key (TPM2_EncryptDecrypt2)".into(),
            detail: detail.into(),
            code: code.map(HardwareCode::Tpm),
        }
    }

    /// The plain-import fallback is chosen by the TPM's code, not by words
    /// in the message.
    #[test]
    fn the_inner_wrapper_is_skipped_only_for_a_missing_command_or_mode() {
        // TPM_RC_COMMAND_CODE; TPM_RC_SYMMETRIC and TPM_RC_MODE on parameter 1.
        for rc in [0x143, 0x1d6, 0x1c9] {
            assert!(lacks_inner_wrap(&refused(Some(rc), "")), "0x{rc:x}");
        }
        // TPM_RC_INTEGRITY, TPM_RC_RETRY.
        for rc in [0x99f, 0x922] {
            assert!(!lacks_inner_wrap(&refused(Some(rc), "")), "0x{rc:x}");
        }
        assert!(!lacks_inner_wrap(&refused(None, "TPM_RC_COMMAND_CODE")));
    }
}
