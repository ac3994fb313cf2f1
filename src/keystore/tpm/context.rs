//! The one long-lived TPM connection: TCTI, ESAPI context, the reused HMAC
//! session, the storage primary, and the handles this store keeps loaded.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::{CapabilityType, SessionType, StartupType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Public, SymmetricDefinition};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use super::parent::Parent;
use crate::keystore::{Backend, HardwareCode, KeyStoreError, Result};

pub(super) const BACKEND: Backend = Backend::Tpm;

/// First handle of the transient range (TPM_HT_TRANSIENT << 24).
const TRANSIENT_FIRST: u32 = 0x8000_0000;
/// First and last handle of the owner's persistent range.
pub(super) const PERSISTENT_OWNER_FIRST: u32 = 0x8100_0000;
pub(super) const PERSISTENT_OWNER_LAST: u32 = 0x817F_FFFF;

/// Turns a tss-esapi error into the store's error, keeping the TPM's return
/// code: as a number in `code`, and in the message its TCG name, tss-esapi's
/// text and the raw value.
pub(super) fn tpm_err(op: &'static str, e: tss_esapi::Error) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: op.into(),
        detail: describe(e),
        code: code(e),
    }
}

/// `TPM_RC_INTEGRITY: the integrity check failed (rc 0x0000099f)`.
pub(super) fn describe(e: tss_esapi::Error) -> String {
    let raw = raw_rc(e)
        .map(|rc| format!(" (rc 0x{rc:08x})"))
        .unwrap_or_default();
    match rc_kind(e) {
        Some(kind) => format!("{}: {e}{raw}", rc_name(kind)),
        None => match raw_rc(e).and_then(tss_layer_text) {
            Some(text) => format!("{text}{raw}"),
            None => format!("{e}{raw}"),
        },
    }
}

/// What a code of the TSS's own layers (not the TPM's) means, where
/// tss-esapi 7 has no text for it ("response code not recognized"): the
/// layer in bits 16-23, the base code (tss2_common.h) below.
fn tss_layer_text(rc: u32) -> Option<String> {
    let layer = match rc >> 16 {
        6 => "the TSS feature API",
        7 => "the TSS (ESAPI)",
        8 => "the TSS (SAPI)",
        9 => "the TSS's marshalling",
        10 => "the TPM connection (TCTI)",
        11 => "the TPM resource manager",
        12 => "the TPM resource manager, for the TPM",
        _ => return None,
    };
    let what = match rc & 0xffff {
        1 => "a general failure",
        2 => "not implemented",
        3 => "a bad context",
        5 => "a bad reference",
        6 => "a buffer too small",
        7 => {
            "a command out of sequence (an earlier one failed half-way, for example because \
              the TPM connection broke)"
        }
        8 => "no connection to the TPM",
        9 => "try again",
        10 => {
            "an I/O error: the connection to the TPM broke (the TPM, its simulator or the \
               resource manager went away)"
        }
        11 => "a bad value",
        12 => "not permitted",
        16 => "a bad size",
        17 => "a malformed answer from the TPM",
        19 => "an answer from the TPM too short",
        21 => "not supported",
        23 => "out of memory",
        27 => {
            "an answer whose HMAC does not verify (altered on the way, or the session is out \
               of step)"
        }
        _ => return None,
    };
    Some(format!("{layer} reported {what}"))
}

/// The code an error keeps: the TSS2_RC, for an error of the TPM or the
/// TSS (not for one tss-esapi found before sending anything).
pub(super) fn code(e: tss_esapi::Error) -> Option<HardwareCode> {
    raw_rc(e).map(HardwareCode::Tpm)
}

pub(super) fn rc_kind(e: tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The raw TSS2_RC. tss-esapi 7.x has no accessor for it; the `Display` of
/// the format-zero/format-one wrappers prints it (`Response code value: 0x902`).
fn raw_rc(e: tss_esapi::Error) -> Option<u32> {
    use tss_esapi::constants::Tss2ResponseCode as Rc;
    let text = match e {
        tss_esapi::Error::Tss2Error(Rc::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Rc::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// `ObjectMemory` -> `TPM_RC_OBJECT_MEMORY`, the name the TPM spec and
/// tpm2-tools use.
fn rc_name(kind: Tss2ResponseCodeKind) -> String {
    let camel = format!("{kind:?}");
    let mut out = String::from("TPM_RC_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Whether the error came from the transport (TCTI layer) rather than the
/// TPM: the device went away or the simulator stopped.
fn is_transport(e: tss_esapi::Error) -> bool {
    // Layer is bits 16..24 of a TSS2_RC; 0x0A is the TCTI layer.
    raw_rc(e).is_some_and(|rc| (rc >> 16) & 0xff == 0x0a)
}

/// Whether the TPM no longer knows a handle or session this store loaded,
/// or wants TPM2_Startup: signs of a TPM reset or restart.
fn is_reset(e: tss_esapi::Error) -> bool {
    use Tss2ResponseCodeKind as K;
    rc_kind(e).is_some_and(|k| {
        matches!(
            k,
            K::Initialize
                | K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceS0
                | K::ReferenceS1
                | K::ReferenceS2
        )
    })
}

/// Parses a TCTI string as tpm2-tools take it (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`, `mssim:...`, `tabrmd`).
pub(super) fn parse_tcti(tcti: &str) -> Result<TctiNameConf> {
    TctiNameConf::from_str(tcti.trim()).map_err(|e| KeyStoreError::Unavailable {
        backend: BACKEND,
        detail: format!(
            "TCTI {tcti:?} cannot be parsed ({e}): use device:/dev/tpmrm0, \
             swtpm:host=127.0.0.1,port=2321, mssim:host=...,port=... or tabrmd"
        ),
        retryable: false,
        code: None,
    })
}

/// Everything that needs the TPM, behind the store's mutex.
pub(super) struct Tpm {
    pub(super) ctx: Context,
    /// HMAC session started once and reused for every authorised command:
    /// starting a session costs a round trip and an RNG draw per call.
    session: AuthSession,
    /// The storage primary of new keys ([`Parent::NEW_KEYS`]), loaded for
    /// the store's lifetime.
    pub(super) primary: KeyHandle,
    /// The last wrapped blob loaded under the primary, by its TPM2B_PRIVATE
    /// bytes (a promote or re-import changes them). One slot only: a TPM
    /// without a resource manager (swtpm, mssim) has as few as three object
    /// slots, and Create/Import need one free.
    loaded_blob: Option<(Vec<u8>, KeyHandle)>,
    /// ESYS resources for persistent handles, so signing does not pay a
    /// TPM2_ReadPublic each time.
    persistent: HashMap<u32, ObjectHandle>,
    /// Set when a command found the connection lost; the store then opens
    /// a new one before the next command.
    pub(super) broken: bool,
}

impl Tpm {
    /// Connects, and checks the storage primary against `pin` (see
    /// [`check_pinned_primary`]).
    pub(super) fn open(tcti: &str, pin: &Path) -> Result<Self> {
        let conf = parse_tcti(tcti)?;
        let direct = is_direct(&conf);
        let mut ctx = Context::new(conf).map_err(|e| KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "cannot connect to the TPM through TCTI {tcti:?}: {}. Check that the device \
                 exists and is readable, or that the simulator / resource manager runs",
                describe(e)
            ),
            retryable: true,
            code: code(e),
        })?;
        ensure_started(&mut ctx)?;
        flush_leaked(&mut ctx, direct)?;
        let primary = create_primary(&mut ctx, Parent::NEW_KEYS)?;
        check_pinned_primary(&mut ctx, primary, pin)?;
        // Salted with the SRK: without a salt (and with the empty auth
        // values used here) the session key would be empty and anyone on
        // the bus could compute the HMACs; with it the HMACs are secret and
        // parameter encryption becomes possible. One ECDH, once.
        let session = ctx
            .start_auth_session(
                Some(primary),
                None,
                None,
                SessionType::Hmac,
                // Used only by commands that ask for parameter encryption.
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| tpm_err("start HMAC session", e))?
            .ok_or_else(|| KeyStoreError::Backend {
                backend: BACKEND,
                op: "start HMAC session".into(),
                detail: "the TPM returned no session".into(),
                code: None,
            })?;
        // continueSession keeps the session alive after each command, which
        // is what makes reuse possible.
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .build();
        ctx.tr_sess_set_attributes(session, attrs, mask)
            .map_err(|e| tpm_err("set session attributes", e))?;
        Ok(Self {
            ctx,
            session,
            primary,
            loaded_blob: None,
            persistent: HashMap::new(),
            broken: false,
        })
    }

    /// Runs `f` with the reused HMAC session as the authorisation session,
    /// again after a pause while the TPM answers busy ([`while_busy`]).
    pub(super) fn authorized<T>(
        &mut self,
        op: &'static str,
        mut f: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let session = self.session;
        let result = while_busy(op, || self.ctx.execute_with_session(Some(session), &mut f));
        result.map_err(|e| self.classify(op, e))
    }

    /// Runs `f` with a password authorisation of the (empty) key auth
    /// value. For TPM2_Sign only: with an empty auth value an HMAC session
    /// proves nothing that a password session does not (anyone who reaches
    /// the TPM can start a session of their own), the digest is not secret
    /// and a tampered signature fails verification at the peer; but the
    /// session HMACs cost tpm2-tss 3.2 about 2.5 ms a call in OpenSSL,
    /// which makes signing about eight times slower.
    pub(super) fn password<T>(
        &mut self,
        op: &'static str,
        mut f: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let result = while_busy(op, || {
            self.ctx
                .execute_with_session(Some(AuthSession::Password), &mut f)
        });
        result.map_err(|e| self.classify(op, e))
    }

    /// The TPM's RSA endorsement key from the TCG default template (a
    /// primary: the same key on every call), loaded; the caller flushes it.
    pub(super) fn create_endorsement_key(
        &mut self,
    ) -> Result<tss_esapi::structures::CreatePrimaryKeyResult> {
        use tss_esapi::abstraction::ek::create_ek_public_from_default_template;
        use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
        let template = create_ek_public_from_default_template(AsymmetricAlgorithm::Rsa, None)
            .map_err(|e| tpm_err("build the EK template", e))?;
        self.password("create the EK (TPM2_CreatePrimary, endorsement)", |ctx| {
            ctx.create_primary(
                Hierarchy::Endorsement,
                template.clone(),
                None,
                None,
                None,
                None,
            )
        })
    }

    /// Runs `f` with the given sessions for the command's first, second
    /// and third authorised handles (commands that authorise two objects:
    /// TPM2_Certify, TPM2_ActivateCredential).
    pub(super) fn with_sessions<T>(
        &mut self,
        op: &'static str,
        sessions: (
            Option<AuthSession>,
            Option<AuthSession>,
            Option<AuthSession>,
        ),
        mut f: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let result = while_busy(op, || self.ctx.execute_with_sessions(sessions, &mut f));
        result.map_err(|e| self.classify(op, e))
    }

    /// Like [`Tpm::authorized`], with parameter encryption: the command's
    /// first TPM2B parameter and the response's first TPM2B travel
    /// AES-128-CFB encrypted under the salted session's key. Only for
    /// commands whose first parameter is a TPM2B (the TPM refuses the
    /// attribute otherwise).
    ///
    /// Not tried again when the TPM is busy: these commands carry secrets
    /// (a key on its way in), which are not copied for a second attempt;
    /// the busy error is retryable for the caller.
    pub(super) fn encrypted<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let session = self.session;
        let (on, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, on, mask)
            .map_err(|e| tpm_err("turn on parameter encryption", e))?;
        let result = self
            .ctx
            .execute_with_session(Some(session), f)
            .map_err(|e| self.classify(op, e));
        let (off, mask) = SessionAttributesBuilder::new()
            .with_decrypt(false)
            .with_encrypt(false)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, off, mask)
            .map_err(|e| tpm_err("turn off parameter encryption", e))?;
        result
    }

    /// Runs `f` without sessions (commands with no authorised handle: a
    /// session there would need audit or encrypt set).
    pub(super) fn plain<T>(
        &mut self,
        op: &'static str,
        mut f: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T> {
        let result = while_busy(op, || self.ctx.execute_without_session(&mut f));
        result.map_err(|e| self.classify(op, e))
    }

    /// [`classify`], remembering a lost connection or a TPM that was
    /// reset under us (then our primary, session and loaded keys are gone).
    pub(super) fn classify(&mut self, op: &'static str, e: tss_esapi::Error) -> KeyStoreError {
        if is_transport(e) {
            self.broken = true;
        } else if is_reset(e) {
            self.broken = true;
            return KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "{op}: the TPM was reset or restarted and lost this store's loaded objects \
                     ({}); the store reconnects on the next call",
                    describe(e)
                ),
                retryable: true,
                code: code(e),
            };
        }
        classify(op, e)
    }

    /// TPM2_Create of a key from `template` under `parent`: the store's
    /// primary, or another made for the call and flushed right after (as
    /// [`Tpm::load_blob`] does). Call with no blob loaded: Create needs a
    /// free object slot on TPMs without a resource manager.
    pub(super) fn create_key(
        &mut self,
        parent: Parent,
        template: &Public,
    ) -> Result<tss_esapi::structures::CreateKeyResult> {
        const OP: &str = "create key (TPM2_Create)";
        if parent == Parent::NEW_KEYS {
            let primary = self.primary;
            return self.authorized(OP, |ctx| {
                ctx.create(primary, template.clone(), None, None, None, None)
            });
        }
        let other = create_primary(&mut self.ctx, parent)?;
        let created = self.authorized(OP, |ctx| {
            ctx.create(other, template.clone(), None, None, None, None)
        });
        if let Err(e) = self.ctx.flush_context(other.into()) {
            tracing::warn!(
                "tpm: could not flush the older storage primary: {}",
                describe(e)
            );
        }
        created
    }

    /// Loads a wrapped blob under its `parent`, reusing the loaded copy
    /// when it is the same blob. A key under another primary than the
    /// store's has that primary made for the load and flushed right after
    /// (a loaded key does not need its parent loaded), so at most three
    /// object slots are ever in use: TPMs without a resource manager have
    /// as few.
    pub(super) fn load_blob(
        &mut self,
        public: &Public,
        private: &[u8],
        parent: Parent,
    ) -> std::result::Result<KeyHandle, tss_esapi::Error> {
        if let Some((bytes, handle)) = &self.loaded_blob {
            if bytes == private {
                return Ok(*handle);
            }
        }
        self.unload_blob();
        let session = self.session;
        let private_buf = tss_esapi::structures::Private::try_from(private)?;
        let public = public.clone();
        let handle = if parent == Parent::NEW_KEYS {
            let primary = self.primary;
            self.ctx
                .execute_with_session(Some(session), |ctx| ctx.load(primary, private_buf, public))?
        } else {
            let template = parent.template()?;
            let other = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
                })?
                .key_handle;
            let loaded = self
                .ctx
                .execute_with_session(Some(session), |ctx| ctx.load(other, private_buf, public));
            if let Err(e) = self.ctx.flush_context(other.into()) {
                tracing::warn!(
                    "tpm: could not flush the older storage primary: {}",
                    describe(e)
                );
            }
            loaded?
        };
        self.loaded_blob = Some((private.to_vec(), handle));
        Ok(handle)
    }

    /// Flushes the cached blob, freeing its object slot.
    pub(super) fn unload_blob(&mut self) {
        if let Some((_, handle)) = self.loaded_blob.take() {
            if let Err(e) = self.ctx.flush_context(handle.into()) {
                tracing::warn!("tpm: could not flush a loaded key: {}", describe(e));
            }
        }
    }

    /// The ESYS resource for a persistent handle. A handle that is not in the
    /// TPM fails with TPM_RC_HANDLE (or TPM_RC_VALUE).
    pub(super) fn persistent_object(
        &mut self,
        handle: u32,
    ) -> std::result::Result<ObjectHandle, tss_esapi::Error> {
        if let Some(obj) = self.persistent.get(&handle) {
            return Ok(*obj);
        }
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle)?);
        let obj = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))?;
        self.persistent.insert(handle, obj);
        Ok(obj)
    }

    /// Forgets the ESYS resource of a persistent handle (after it was
    /// evicted, or when it turned out to be stale).
    pub(super) fn forget_persistent(&mut self, handle: u32) {
        if let Some(mut obj) = self.persistent.remove(&handle) {
            // Closing only drops ESAPI's bookkeeping; it does not touch the
            // TPM object. Evicted objects are already closed by ESAPI.
            let _ = self.ctx.tr_close(&mut obj);
        }
    }

    pub(super) fn remember_persistent(&mut self, handle: u32, obj: ObjectHandle) {
        self.persistent.insert(handle, obj);
    }

    pub(super) fn drop_persistent_entry(&mut self, handle: u32) {
        self.persistent.remove(&handle);
    }

    /// Persistent handles present in the TPM from `first` upward.
    pub(super) fn persistent_handles(&mut self, first: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut next = first;
        loop {
            let (data, more) = self.plain("list persistent handles", |ctx| {
                ctx.get_capability(CapabilityType::Handles, next, 64)
            })?;
            let CapabilityData::Handles(list) = data else {
                break;
            };
            let mut last = None;
            for h in list.iter() {
                if let TpmHandle::Persistent(p) = h {
                    let v: u32 = (*p).into();
                    out.push(v);
                    last = Some(v);
                }
            }
            match (more, last) {
                (true, Some(l)) if l < PERSISTENT_OWNER_LAST => next = l + 1,
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Pauses between the attempts of a command the TPM answered "busy"
/// (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING): tpm2-tss has already
/// resubmitted it at once up to five times; a TPM shared with other
/// programs, or running its self-test, may need a little longer. About
/// 0.75 s in all, then the busy error goes to the caller (retryable).
const BUSY_BACKOFF: [Duration; 4] = [
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(150),
    Duration::from_millis(550),
];

/// Runs `command` again after each pause of [`BUSY_BACKOFF`] while the
/// TPM answers busy; any other outcome returns at once.
fn while_busy<T>(
    op: &'static str,
    mut command: impl FnMut() -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    let mut pauses = BUSY_BACKOFF.iter();
    loop {
        match command() {
            Err(e) if is_busy(e) => match pauses.next() {
                Some(pause) => {
                    tracing::debug!(op, "tpm: busy ({}); trying again in {pause:?}", describe(e));
                    std::thread::sleep(*pause);
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING: the same command may
/// succeed in a moment.
fn is_busy(e: tss_esapi::Error) -> bool {
    matches!(
        rc_kind(e),
        Some(
            Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
        )
    )
}

/// The store's error for a failed TPM command: a lost connection or a busy
/// TPM is retryable `Unavailable`, anything else `Backend` with the code.
pub(super) fn classify(op: &'static str, e: tss_esapi::Error) -> KeyStoreError {
    if is_transport(e) {
        KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!("{op}: lost the connection to the TPM: {}", describe(e)),
            retryable: true,
            code: code(e),
        }
    } else if rc_kind(e).is_some_and(|k| {
        matches!(
            k,
            Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
                | Tss2ResponseCodeKind::NvRate
                | Tss2ResponseCodeKind::NvUnavailable
        )
    }) {
        KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!("{op}: the TPM is busy: {}", describe(e)),
            retryable: true,
            code: code(e),
        }
    } else if rc_kind(e) == Some(Tss2ResponseCodeKind::Lockout) {
        KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{op}: the TPM is in dictionary-attack lockout ({}): after too many wrong \
                 authorization values (from some program using this TPM) it refuses keys \
                 without noDA until the lockout ends. Wait for it to recover (tpm2_getcap \
                 properties-variable shows TPM2_PT_LOCKOUT_COUNTER and the recovery time), or \
                 clear it with `tpm2_dictionarylockout --clear-lockout` and the lockout \
                 authorization, and find the program that causes it",
                describe(e)
            ),
            retryable: false,
            code: code(e),
        }
    } else {
        tpm_err(op, e)
    }
}

/// A TPM that was just powered on (a bare mssim simulator) needs
/// TPM2_Startup; real TPMs and swtpm with startup-clear already had it.
fn ensure_started(ctx: &mut Context) -> Result<()> {
    let probe = ctx.execute_without_session(|ctx| {
        ctx.get_capability(CapabilityType::Handles, TRANSIENT_FIRST, 1)
    });
    match probe {
        Ok(_) => Ok(()),
        Err(e) if rc_kind(e) == Some(Tss2ResponseCodeKind::Initialize) => ctx
            .startup(StartupType::Clear)
            .map_err(|e| tpm_err("TPM2_Startup", e)),
        Err(e) if is_transport(e) => Err(KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!("the TPM does not answer: {}", describe(e)),
            retryable: true,
            code: code(e),
        }),
        Err(e) => Err(tpm_err("read TPM capabilities", e)),
    }
}

/// Whether the TCTI talks to the TPM with no resource manager in between:
/// then everything loaded in the TPM was left by an earlier run of some
/// program, as nobody else can share the connection.
fn is_direct(conf: &TctiNameConf) -> bool {
    match conf {
        // DeviceConfig's path is private in tss-esapi 7.x; its Debug shows it.
        TctiNameConf::Device(d) => !format!("{d:?}").contains("tpmrm"),
        TctiNameConf::Mssim(_) | TctiNameConf::Swtpm(_) => true,
        _ => false,
    }
}

/// First handle of loaded HMAC/policy sessions (TPM_HT_LOADED_SESSION << 24).
const LOADED_SESSION_FIRST: u32 = 0x0200_0000;

/// Flushes transient objects and sessions that a crashed run left loaded.
/// Without a resource manager (swtpm, mssim, /dev/tpm0) they would hold the
/// TPM's few object and session slots (three of each on swtpm) until the
/// next reboot. Through /dev/tpmrm0 or tabrmd the transient list holds only
/// this connection's own objects (none yet), and sessions, which a resource
/// manager does not hide from other connections, are left alone.
///
/// Without a resource manager nothing tells our leftovers from another
/// live program's objects: two agents sharing one simulator or /dev/tpm0
/// would flush each other's. The device node is exclusive, and production
/// goes through /dev/tpmrm0, where this cannot happen.
fn flush_leaked(ctx: &mut Context, direct: bool) -> Result<()> {
    let mut ranges = vec![(TRANSIENT_FIRST, "transient object")];
    if direct {
        ranges.push((LOADED_SESSION_FIRST, "session"));
    }
    for (first, what) in ranges {
        let (data, _) = ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, first, 64))
            .map_err(|e| tpm_err("list loaded handles", e))?;
        let CapabilityData::Handles(list) = data else {
            continue;
        };
        for handle in list.iter() {
            let raw: u32 = (*handle).into();
            if raw >> 24 != first >> 24 {
                continue;
            }
            let flushed = ctx
                .execute_without_session(|ctx| ctx.tr_from_tpm_public(*handle))
                .and_then(|obj| ctx.flush_context(obj));
            match flushed {
                Ok(()) => tracing::info!("tpm: flushed leaked {what} 0x{raw:08x}"),
                Err(e) => tracing::warn!(
                    "tpm: could not flush leaked {what} 0x{raw:08x}: {}",
                    describe(e)
                ),
            }
        }
    }
    Ok(())
}

/// Creates (loads) the storage primary of `parent`.
/// The file, in the key directory, that pins the storage primary's name.
pub(super) const PINNED_PRIMARY: &str = "storage-primary.name";

/// The storage primary salts the HMAC session that protects (and, for an
/// imported key, encrypts) what crosses the bus, so it must be the TPM's
/// own: whoever could answer CreatePrimary with a key of theirs (something
/// between the agent and the TPM) could read the salt. Its name (the hash
/// of its public area; the primary is made again from the owner seed at
/// every open) is written to `pin` at first use and must be the same ever
/// after. It changes only when the TPM was cleared or replaced, after which
/// no key of this directory loads anyway.
fn check_pinned_primary(ctx: &mut Context, primary: KeyHandle, pin: &Path) -> Result<()> {
    let name = ctx
        .tr_get_name(primary.into())
        .map_err(|e| tpm_err("read the storage primary's name", e))?;
    let name = hex::encode(name.value());
    match std::fs::read_to_string(pin) {
        Ok(pinned) if pinned.trim() == name => Ok(()),
        Ok(pinned) => Err(KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "the TPM's storage primary key is not the one this device pinned in {} \
                 (name {} there, {name} now): the TPM was cleared or replaced, or something \
                 between the agent and the TPM answers for it. Keys made before do not load \
                 in another TPM: if the TPM was cleared or replaced on purpose, remove {} and \
                 enroll again (`prov-agent enroll --force`)",
                pin.display(),
                pinned.trim(),
                pin.display()
            ),
            retryable: false,
            code: None,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable::write_file(pin, format!("{name}\n").as_bytes()).map_err(|source| {
                KeyStoreError::Io {
                    what: "cannot pin the TPM's storage primary key in".into(),
                    path: pin.to_path_buf(),
                    source,
                }
            })?;
            tracing::info!(file = %pin.display(), "tpm: storage primary key pinned");
            Ok(())
        }
        Err(source) => Err(KeyStoreError::Io {
            what: "cannot read the pinned TPM storage primary key".into(),
            path: pin.to_path_buf(),
            source,
        }),
    }
}

fn create_primary(ctx: &mut Context, parent: Parent) -> Result<KeyHandle> {
    let template = parent
        .template()
        .map_err(|e| tpm_err("build the storage primary's template", e))?;
    // Owner hierarchy with an empty auth value: the password session is
    // enough and needs no round trip.
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })
    .map(|r| r.key_handle)
    .map_err(|e| match rc_kind(e) {
        Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail) => {
            KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "the owner hierarchy has an authorization value, which this agent does not \
                     support yet: {}",
                    describe(e)
                ),
                retryable: false,
                code: code(e),
            }
        }
        _ => tpm_err("create the storage primary key (SRK)", e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_layer_codes_are_named() {
        let text = tss_layer_text(0x000a_000a).unwrap();
        assert!(
            text.contains("TPM connection") && text.contains("broke"),
            "{text}"
        );
        assert!(tss_layer_text(0x0007_0007)
            .unwrap()
            .contains("out of sequence"));
        // TPM codes (layer 0) and unknown ones are left to tss-esapi.
        assert_eq!(tss_layer_text(0x0000_0902), None);
        assert_eq!(tss_layer_text(0x000a_00ff), None);
    }

    #[test]
    fn rc_names_and_values() {
        assert_eq!(
            rc_name(Tss2ResponseCodeKind::ObjectMemory),
            "TPM_RC_OBJECT_MEMORY"
        );
        assert_eq!(rc_name(Tss2ResponseCodeKind::Integrity), "TPM_RC_INTEGRITY");
    }

    /// The code is kept as the number tpm2-tss returned, names the same
    /// kind as the error it came from, and the message still prints it.
    #[test]
    fn errors_keep_the_response_code_as_a_number() {
        use tss_esapi::constants::Tss2ResponseCode;
        let tss = |rc: u32| tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc));
        // TPM_RC_INTEGRITY (format one, session 1), TPM_RC_COMMAND_CODE
        // (format zero), TPM_RC_RETRY (a warning), an I/O error of the TCTI.
        for rc in [0x99f, 0x143, 0x922, 0xa_000a] {
            assert_eq!(code(tss(rc)), Some(HardwareCode::Tpm(rc)), "0x{rc:x}");
            assert_eq!(
                HardwareCode::Tpm(rc).tpm_kind(),
                rc_kind(tss(rc)),
                "0x{rc:x}"
            );
        }
        assert_eq!(
            HardwareCode::Tpm(0x99f).tpm_kind(),
            Some(Tss2ResponseCodeKind::Integrity)
        );
        assert!(is_transport(tss(0xa_000a)));

        let e = tpm_err("load key blob", tss(0x99f));
        assert_eq!(e.hardware_code(), Some(HardwareCode::Tpm(0x99f)));
        let msg = e.to_string();
        assert!(
            msg.contains("TPM_RC_INTEGRITY") && msg.contains("(rc 0x0000099f)"),
            "{msg}"
        );
        let busy = classify("sign (TPM2_Sign)", tss(0x922));
        assert!(busy.is_retryable(), "{busy}");
        assert_eq!(busy.hardware_code(), Some(HardwareCode::Tpm(0x922)));
        assert!(busy.to_string().contains("TPM_RC_RETRY"), "{busy}");
        // tss-esapi's own errors never reached the TPM: no code.
        let wrapper = tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize);
        assert_eq!(tpm_err("build key template", wrapper).hardware_code(), None);
    }

    /// A busy TPM gets the command again after each pause, a bounded
    /// number of times; any other answer ends it at once.
    #[test]
    fn busy_commands_are_tried_again_a_bounded_number_of_times() {
        use tss_esapi::constants::Tss2ResponseCode;
        let tss = |rc: u32| tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc));
        // TPM_RC_RETRY twice, then an answer.
        let mut calls = 0;
        let r = while_busy("sign", || {
            calls += 1;
            if calls <= 2 {
                Err(tss(0x922))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        // TPM_RC_YIELDED and TPM_RC_TESTING count as busy too; always busy:
        // one attempt per pause and one more, then the error.
        for rc in [0x908, 0x90a, 0x922] {
            let mut calls = 0;
            let r: tss_esapi::Result<()> = while_busy("sign", || {
                calls += 1;
                Err(tss(rc))
            });
            assert!(is_busy(r.unwrap_err()), "0x{rc:x}");
            assert_eq!(calls, BUSY_BACKOFF.len() + 1, "0x{rc:x}");
        }
        // Anything else (TPM_RC_INTEGRITY): no second attempt.
        let mut calls = 0;
        let r: tss_esapi::Result<()> = while_busy("load", || {
            calls += 1;
            Err(tss(0x99f))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    /// Dictionary-attack lockout says what it is and what to do, and is not
    /// retried (waiting is the operator's call, not a loop's).
    #[test]
    fn lockout_is_named_with_what_to_do() {
        use tss_esapi::constants::Tss2ResponseCode;
        let e = classify(
            "sign (TPM2_Sign)",
            tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x921)),
        );
        let msg = e.to_string();
        assert!(msg.contains("dictionary-attack lockout"), "{msg}");
        assert!(msg.contains("tpm2_dictionarylockout"), "{msg}");
        assert!(!e.is_retryable());
        assert_eq!(e.hardware_code(), Some(HardwareCode::Tpm(0x921)));
    }

    #[test]
    fn tcti_strings_as_tpm2_tools_take_them() {
        for ok in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=2321",
            "swtpm:port=2321",
            "mssim:host=localhost,port=2321",
            "tabrmd",
            "tabrmd:bus_name=com.intel.tss2.Tabrmd",
        ] {
            parse_tcti(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(is_direct(&parse_tcti("device:/dev/tpm0").unwrap()));
        assert!(is_direct(&parse_tcti("swtpm:port=2321").unwrap()));
        assert!(!is_direct(&parse_tcti("device:/dev/tpmrm0").unwrap()));
        assert!(!is_direct(&parse_tcti("tabrmd").unwrap()));
        let err = parse_tcti("libtpms:whatever").unwrap_err();
        assert!(!err.is_retryable());
    }
}
