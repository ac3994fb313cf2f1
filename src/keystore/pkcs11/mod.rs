//! PKCS#11 backend (cryptoki): keys in a token found by its label, named by
//! RFC 7512 URIs (`pkcs11:token=gw;object=device;type=private`).
//!
//! One module context per process ([`module_context`]), one
//! logged-in read/write session per store behind a mutex (sessions are
//! `Send`, not `Sync`). Keys are `CKA_TOKEN`, `CKA_PRIVATE`,
//! `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`; signing hashes in software and
//! uses CKM_ECDSA, CKM_RSA_PKCS or CKM_RSA_PKCS_PSS on the digest.
//!
//! Promotion relabels objects so that a crash at any point leaves either
//! the old or the new key under the current label: the old key first moves
//! to `<current>.old`, then the pending key becomes `<current>`, then the
//! old key is destroyed. Lookups of `<current>` fall back to
//! `<current>.old`, and opening the store finishes or rolls back what a
//! crash interrupted. The `.old` suffix is therefore reserved.

mod abilities;
mod error;
mod keys;
mod session;
mod sign;
pub mod uri;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

pub use session::module_context;
pub use uri::{ObjectType, Pkcs11Uri, UriError};

use self::keys::KeyObject;
use super::{
    Backend, HardwareFact, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError,
    Pkcs11Settings, PrivateKeyMaterial, Result, SignatureScheme,
};

const BACKEND: Backend = Backend::Pkcs11;
/// Suffix the old key carries while a promotion is under way.
const OLD_SUFFIX: &str = ".old";

struct Connection {
    slot: Slot,
    session: Session,
    /// Keys already looked up for signing, so that a TLS handshake costs
    /// one C_Sign and not a search of the token first. Cleared by every
    /// operation that changes keys and when a new session is opened; a
    /// handle that went stale (another process deleted the key) is looked
    /// up again.
    signing_keys: HashMap<KeyLabel, KeyObject>,
}

impl Connection {
    fn new(slot: Slot, session: Session) -> Self {
        Self {
            slot,
            session,
            signing_keys: HashMap::new(),
        }
    }
}

pub struct Pkcs11KeyStore {
    settings: Pkcs11Settings,
    ctx: Pkcs11,
    conn: Mutex<Connection>,
    /// Read at open: what the module offers of the mechanisms used.
    mechanisms: abilities::Mechanisms,
    /// Learnt on first need and kept for the store's life: that the module
    /// takes a private key into the token (C_CreateObject). A refusal is
    /// not kept, so that its error is the module's own each time.
    import_works: std::sync::OnceLock<()>,
    /// Learnt on the first `hardware_facts` and kept for the store's life.
    tried: std::sync::OnceLock<abilities::Tried>,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("module", &self.settings.module)
            .field("token", &self.settings.token_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyStore {
    /// Loads the module, finds the token by label, logs in with the PIN
    /// from the configured source, and finishes any promotion that a crash
    /// interrupted.
    pub fn open(settings: &Pkcs11Settings) -> Result<Self> {
        let ctx = session::module_context(&settings.module)?;
        let slot = session::find_token(&ctx, &settings.module, &settings.token_label)?;
        let session = session::open_session(&ctx, slot, settings)?;
        let mechanisms = abilities::Mechanisms::read(&ctx, slot);
        let store = Self {
            settings: settings.clone(),
            ctx,
            conn: Mutex::new(Connection::new(slot, session)),
            mechanisms,
            import_works: std::sync::OnceLock::new(),
            tried: std::sync::OnceLock::new(),
        };
        // Lookups cope with a leftover `.old` key on their own, so a token
        // that refuses the clean-up (write-protected, say) is still usable.
        if let Err(e) = store.with_session(false, |s| store.recover(s)) {
            tracing::warn!(
                token = %store.settings.token_label,
                "could not clean up after an interrupted key promotion: {e}"
            );
        }
        Ok(store)
    }

    /// The URI of the private key object labelled `object`.
    fn reference(&self, object: &str) -> String {
        Pkcs11Uri::private_key(&self.settings.token_label, object).to_string()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the session usable: PKCS#11
        // operations are single calls here.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the session. When the session turns out to be gone (the
    /// token was pulled, the daemon behind the module restarted) or logged
    /// out (a login is per process and token: a logout anywhere in the
    /// process ends it), a new one is opened; `f` runs again after a
    /// failure only if `retry` says that is safe.
    fn with_conn<T>(&self, retry: bool, f: impl Fn(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        // Checked first because a logged-out session does not fail: it
        // just no longer sees private objects, and every key looks absent.
        if !session::logged_in(&conn.session) {
            tracing::warn!(
                token = %self.settings.token_label,
                "PKCS#11 session is no longer logged in; opening a new one"
            );
            self.reconnect(&mut conn)?;
        }
        match f(&mut conn) {
            Err(e) if e.is_retryable() => {
                tracing::warn!(
                    token = %self.settings.token_label,
                    "PKCS#11 session lost ({e}); opening a new one"
                );
                self.reconnect(&mut conn)?;
                if retry {
                    f(&mut conn)
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    fn reconnect(&self, conn: &mut Connection) -> Result<()> {
        let slot =
            session::find_token(&self.ctx, &self.settings.module, &self.settings.token_label)
                .map_err(|e| match e {
                    // The token was there when the store opened: it is
                    // likely to come back.
                    KeyStoreError::Unavailable {
                        backend, detail, ..
                    } => KeyStoreError::Unavailable {
                        backend,
                        detail,
                        retryable: true,
                        code: None,
                    },
                    other => other,
                })?;
        let session = session::open_session(&self.ctx, slot, &self.settings)?;
        *conn = Connection::new(slot, session);
        Ok(())
    }

    /// Runs `f` on the session (see [`Self::with_conn`]).
    fn with_session<T>(&self, retry: bool, f: impl Fn(&Session) -> Result<T>) -> Result<T> {
        self.with_conn(retry, |c| f(&c.session))
    }

    /// Runs `f`, which changes keys, on the session; forgets the cached
    /// signing keys before and after.
    fn change<T>(&self, f: impl Fn(&Session) -> Result<T>) -> Result<T> {
        self.with_conn(false, |c| {
            c.signing_keys.clear();
            let result = f(&c.session);
            c.signing_keys.clear();
            result
        })
    }

    fn old_label(label: &str) -> String {
        format!("{label}{OLD_SUFFIX}")
    }

    /// The key that `label` means now: the object labelled `label`, or, in
    /// the middle of an interrupted promotion, the old key at `<label>.old`.
    fn resolve(&self, s: &Session, label: &KeyLabel) -> Result<Option<KeyObject>> {
        if let Some(id) = self.settings.key_ids.get(label.as_str()) {
            return keys::find_by_id(s, id, label.as_str());
        }
        if let Some(key) = keys::find(s, label.as_str())? {
            return Ok(Some(key));
        }
        keys::find(s, &Self::old_label(label.as_str()))
    }

    fn require(&self, s: &Session, label: &KeyLabel) -> Result<KeyObject> {
        self.resolve(s, label)?.ok_or_else(|| {
            self.not_found(
                label,
                "generate or import it first (prov-agent claim import, or enroll)",
            )
        })
    }

    fn not_found(&self, label: &KeyLabel, hint: &'static str) -> KeyStoreError {
        match self.settings.key_ids.get(label.as_str()) {
            Some(id) => KeyStoreError::NotFound {
                label: label.to_string(),
                backend: BACKEND,
                reference: self.id_reference(id),
                hint: format!(
                    "no private key on the token has that CKA_ID ([PKCS11] CLAIM_KEY_ID): check \
                     the id with `pkcs11-tool --list-objects` (hex {})",
                    hex::encode(id)
                )
                .into(),
            },
            None => KeyStoreError::NotFound {
                label: label.to_string(),
                backend: BACKEND,
                reference: self.reference(label.as_str()),
                hint: hint.into(),
            },
        }
    }

    /// The URI of the private key whose CKA_ID is `id`.
    fn id_reference(&self, id: &[u8]) -> String {
        Pkcs11Uri {
            token: Some(self.settings.token_label.clone()),
            id: Some(id.to_vec()),
            object_type: Some(ObjectType::Private),
            ..Pkcs11Uri::default()
        }
        .to_string()
    }

    fn key_info(&self, s: &Session, label: &KeyLabel, key: &KeyObject) -> Result<KeyInfo> {
        let reference = match self.settings.key_ids.get(label.as_str()) {
            Some(id) => self.id_reference(id),
            None => self.reference(&key.object_label),
        };
        Ok(KeyInfo {
            label: label.clone(),
            backend: Backend::Pkcs11,
            reference,
            public_key: keys::public_key(s, key)?,
        })
    }

    /// Refuses to make, replace or delete a key that `[PKCS11] CLAIM_KEY_ID`
    /// says another tool made.
    fn not_ours(&self, label: &KeyLabel) -> Result<()> {
        match self.settings.key_ids.get(label.as_str()) {
            Some(id) => Err(KeyStoreError::Backend {
                backend: BACKEND,
                op: format!("change key {label}").into(),
                detail: format!(
                    "{label} is the token's key {} ([PKCS11] CLAIM_KEY_ID), made by other \
                     tools: the agent uses it as it is and never makes, replaces or deletes it; \
                     remove CLAIM_KEY_ID to manage the claim key with prov-agent",
                    self.id_reference(id)
                ),
                code: None,
            }),
            None => Ok(()),
        }
    }

    /// Finishes or undoes promotions that a crash interrupted: a leftover
    /// `<label>.old` next to `<label>` is the replaced key (destroy it); a
    /// `<label>.old` alone is the current key whose replacement never got
    /// its label (give it its label back; the pending key is still there
    /// for the next attempt).
    fn recover(&self, s: &Session) -> Result<()> {
        for object in keys::private_labels(s)? {
            // One key this store cannot handle must not stop the others.
            if let Err(e) = self.recover_one(s, &object) {
                tracing::warn!(
                    token = %self.settings.token_label,
                    "cannot check key {object} for an interrupted promotion: {e}"
                );
            }
        }
        Ok(())
    }

    fn recover_one(&self, s: &Session, object: &str) -> Result<()> {
        let base = object.strip_suffix(OLD_SUFFIX).unwrap_or(object);
        if KeyLabel::new(base).is_err() {
            return Ok(()); // not one of the agent's keys
        }
        let Some(key) = keys::find(s, object)? else {
            return Ok(());
        };
        let Some(base) = object.strip_suffix(OLD_SUFFIX) else {
            // A crash between relabelling the private and the public half
            // leaves the public half under the old name.
            return keys::sync_public_label(s, &key);
        };
        if keys::find(s, base)?.is_some() {
            tracing::warn!(
                token = %self.settings.token_label,
                "destroying key {object}, left over from an interrupted promotion to {base}"
            );
            keys::destroy(s, &key)
        } else {
            tracing::warn!(
                token = %self.settings.token_label,
                "restoring key {base} from {object} after an interrupted promotion"
            );
            keys::relabel(s, &key, base)
        }
    }

    fn check_free(&self, s: &Session, label: &KeyLabel) -> Result<()> {
        self.not_ours(label)?;
        if keys::find(s, label.as_str())?.is_some() {
            return Err(KeyStoreError::AlreadyExists {
                label: label.to_string(),
                backend: BACKEND,
                reference: self.reference(label.as_str()),
            });
        }
        Ok(())
    }

    /// The slot the token sits in now (for diagnostics).
    pub fn slot_id(&self) -> u64 {
        self.lock().slot.id()
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn backend(&self) -> Backend {
        Backend::Pkcs11
    }

    fn probe_import(&self) -> Result<()> {
        if self.import_works.get().is_some() {
            return Ok(());
        }
        self.with_session(true, keys::probe_import)?;
        let _ = self.import_works.set(());
        Ok(())
    }

    fn hardware_facts(&self) -> Result<Vec<HardwareFact>> {
        let conn = self.lock();
        let tried = self
            .tried
            .get_or_init(|| abilities::Tried::learn(&conn.session));
        if tried.import.is_ok() {
            let _ = self.import_works.set(());
        }
        Ok(abilities::facts(
            &self.ctx,
            conn.slot,
            &self.mechanisms,
            tried,
        ))
    }

    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        self.mechanisms.check_generate(algorithm)?;
        self.change(|s| {
            self.check_free(s, label)?;
            let key = keys::generate(s, label.as_str(), algorithm)?;
            self.key_info(s, label, &key)
        })
    }

    fn import(&self, label: &KeyLabel, material: &PrivateKeyMaterial) -> Result<KeyInfo> {
        self.change(|s| {
            self.check_free(s, label)?;
            let key = keys::import(s, label.as_str(), material)?;
            // Prove that the token holds the key we were given: a test
            // signature must verify with the caller's public key.
            let expected = material.public_key()?;
            let scheme = material.algorithm().default_scheme();
            let probe = b"prov-agent import check";
            let checked = sign::sign(s, &key, scheme, probe)
                .and_then(|signed| {
                    signed.map_err(|_| KeyStoreError::Backend {
                        backend: BACKEND,
                        op: "import key".into(),
                        detail: "the imported object vanished".into(),
                        code: None,
                    })
                })
                .and_then(|sig| expected.verify(scheme, probe, &sig))
                .and_then(|()| self.key_info(s, label, &key));
            let info = match checked {
                Ok(info) if info.public_key == expected => info,
                other => {
                    keys::destroy(s, &key)?;
                    return Err(match other {
                        Err(e) => e,
                        Ok(_) => KeyStoreError::Backend {
                            backend: BACKEND,
                            op: "import key".into(),
                            detail: "the token's public key differs from the imported key's; \
                                     the import was undone"
                                .into(),
                            code: None,
                        },
                    });
                }
            };
            Ok(info)
        })
    }

    fn info(&self, label: &KeyLabel) -> Result<KeyInfo> {
        self.with_session(true, |s| {
            let key = self.require(s, label)?;
            self.key_info(s, label, &key)
        })
    }

    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        self.mechanisms.check_sign(scheme)?;
        self.with_conn(true, |c| {
            let key = match c.signing_keys.get(label) {
                Some(key) => key.clone(),
                None => self.require(&c.session, label)?,
            };
            let key = match sign::sign(&c.session, &key, scheme, message)? {
                Ok(signature) => {
                    c.signing_keys.insert(label.clone(), key);
                    return Ok(signature);
                }
                // The cached handle is gone: look the label up again.
                Err(sign::StaleHandle) => {
                    c.signing_keys.remove(label);
                    self.require(&c.session, label)?
                }
            };
            match sign::sign(&c.session, &key, scheme, message)? {
                Ok(signature) => {
                    c.signing_keys.insert(label.clone(), key);
                    Ok(signature)
                }
                Err(sign::StaleHandle) => Err(KeyStoreError::Backend {
                    backend: BACKEND,
                    op: "sign".into(),
                    detail: format!(
                        "the object of key {label} vanished while signing; is another program \
                         changing the token?"
                    ),
                    code: None,
                }),
            }
        })
    }

    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo> {
        if pending == current {
            return self.info(current);
        }
        self.not_ours(current)?;
        self.change(|s| {
            let new = keys::find(s, pending.as_str())?.ok_or_else(|| {
                self.not_found(
                    pending,
                    "nothing to promote: generate or import the pending key first",
                )
            })?;
            // Prove the pending key is whole before anything moves.
            keys::public_key(s, &new)?;
            let old_label = Self::old_label(current.as_str());
            let mut old = keys::find(s, &old_label)?;
            if let Some(cur) = keys::find(s, current.as_str())? {
                // A `.old` next to a current key is garbage from an earlier
                // promotion that crashed before its last step.
                if let Some(stale) = old.take() {
                    keys::destroy(s, &stale)?;
                }
                // Step 1: the old key steps aside; lookups of `current`
                // still find it as `current.old`.
                keys::relabel(s, &cur, &old_label)?;
                old = Some(cur);
            }
            // Step 2: the new key takes the label. From here on `current`
            // is the new key.
            keys::relabel(s, &new, current.as_str())?;
            // Step 3: the old key goes.
            if let Some(old) = old {
                keys::destroy(s, &old)?;
            }
            let new = KeyObject {
                object_label: current.to_string(),
                ..new
            };
            self.key_info(s, current, &new)
        })
    }

    fn delete(&self, label: &KeyLabel) -> Result<()> {
        self.not_ours(label)?;
        self.change(|s| {
            let key = keys::find(s, label.as_str())?;
            let old = keys::find(s, &Self::old_label(label.as_str()))?;
            if key.is_none() && old.is_none() {
                return Err(self.not_found(label, "nothing to delete"));
            }
            for k in key.iter().chain(old.iter()) {
                keys::destroy(s, k)?;
            }
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.with_session(true, |s| {
            let objects = keys::private_labels(s)?;
            let mut out = Vec::new();
            for object in &objects {
                // `<label>.old` stands for `<label>` only while `<label>`
                // itself is missing (an interrupted promotion).
                let name = match object.strip_suffix(OLD_SUFFIX) {
                    Some(base) if objects.iter().any(|o| o == base) => continue,
                    Some(base) => base,
                    None => object.as_str(),
                };
                let Ok(label) = KeyLabel::new(name) else {
                    continue;
                };
                // A key this agent cannot use (another curve, no public
                // object) is reported in the log, not fatal to the list.
                let found = keys::find(s, object)
                    .and_then(|k| k.map(|k| self.key_info(s, &label, &k)).transpose());
                match found {
                    Ok(Some(info)) => out.push(info),
                    Ok(None) => {}
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => tracing::warn!(
                        token = %self.settings.token_label,
                        "skipping key {object} in list: {e}"
                    ),
                }
            }
            out.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(out)
        })
    }
}
