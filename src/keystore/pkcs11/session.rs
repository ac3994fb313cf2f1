//! The module, the token and the one logged-in session of the store.
//!
//! PKCS#11 keeps its state per process: a module is initialised once
//! (`C_Initialize`), and a login holds for every session of the process on
//! that token. So the module context is a process-wide singleton per module
//! path, shared by every store (and by tests that prepare tokens).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;

use super::super::{KeyStoreError, Pkcs11Settings, Result};
use super::{error, BACKEND};

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The process-wide context of the module at `path`, loaded and initialised
/// with OS locking on first use. A module already initialised by someone
/// else in this process (`CKR_CRYPTOKI_ALREADY_INITIALIZED`) is fine.
pub fn module_context(path: &Path) -> Result<Pkcs11> {
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| KeyStoreError::Unavailable {
        backend: BACKEND,
        detail: format!(
            "cannot load PKCS#11 module {}: {e}; check the module path in the [PKCS11] section",
            path.display()
        ),
        retryable: false,
        code: None,
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, Function::Initialize)) => {}
        Err(e) => return Err(error::map("initialise module", e)),
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Finds the slot holding the token labelled `label`. Slot ids are not
/// stable (SoftHSM renumbers a slot when its token is initialised), labels
/// are.
pub fn find_token(ctx: &Pkcs11, module: &Path, label: &str) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| error::map("list slots", e))?;
    let mut present = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let info = match ctx.get_token_info(slot) {
            Ok(info) => info,
            // A slot whose token vanished between the two calls.
            Err(_) => continue,
        };
        if !info.token_initialized() {
            continue;
        }
        let l = info.label().trim_end().to_string();
        if l == label {
            found.push(slot);
        }
        present.push(l);
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => {
            let list = if present.is_empty() {
                "none".to_string()
            } else {
                present
                    .iter()
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "no initialised token labelled {label:?} in module {} (tokens present: {list}); \
                     fix token_label in the [PKCS11] section or initialise the token \
                     (e.g. softhsm2-util --init-token --free --label {label})",
                    module.display()
                ),
                // Usually a configuration error: retrying in a loop would
                // hide it. (A token plugged in later is found by the next
                // open.)
                retryable: false,
                code: None,
            })
        }
        _ => Err(KeyStoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{} tokens are labelled {label:?} in module {}: give each token a unique label",
                found.len(),
                module.display()
            ),
            retryable: false,
            code: None,
        }),
    }
}

/// Opens a read/write session on the token and logs the user in with the
/// PIN from the settings' PIN source. The PIN lives only in a
/// `SecretString` for the duration of this call.
///
/// It does not try when the token says a wrong PIN was given since the
/// last successful login (CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY)
/// or the PIN is locked: real tokens lock the PIN after 3 to 10 wrong
/// tries, and a wrong PIN source would spend them one restart at a time.
pub fn open_session(ctx: &Pkcs11, slot: Slot, settings: &Pkcs11Settings) -> Result<Session> {
    if let Ok(token) = ctx.get_token_info(slot) {
        let refuse = |why: &str| KeyStoreError::BadPin {
            backend: BACKEND,
            detail: format!(
                "the agent did not try to log in to token {:?}: {why}. Check PIN_SOURCE ({:?}), \
                 then log in once by hand with the right PIN, which clears the token's count \
                 (pkcs11-tool --module {} --token-label {:?} --login --test)",
                settings.token_label,
                settings.pin,
                settings.module.display(),
                settings.token_label
            ),
        };
        if token.user_pin_locked() {
            return Err(KeyStoreError::BadPin {
                backend: BACKEND,
                detail: format!(
                    "the user PIN of token {:?} is locked after too many wrong tries: the \
                     security officer must unlock it (for SoftHSM: softhsm2-util --init-pin)",
                    settings.token_label
                ),
            });
        }
        if token.user_pin_final_try() {
            return Err(refuse("the token says one more wrong PIN locks it"));
        }
        if token.user_pin_count_low() {
            return Err(refuse(
                "the token says a wrong PIN was given since the last successful login",
            ));
        }
    }
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| error::map("open session", e))?;
    // cryptoki's AuthPin is the same secrecy::SecretString: no copy.
    let pin: cryptoki::types::AuthPin = settings.pin.read(BACKEND)?;
    match session.login(UserType::User, Some(&pin)) {
        // Logins are per process and token: another session of ours may
        // have logged in already. The module then does not check the PIN
        // at all; it was checked by whoever logged in first.
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(match error::map("log in to token", e) {
            KeyStoreError::BadPin { backend, detail } => KeyStoreError::BadPin {
                backend,
                detail: format!(
                    "{detail} (token {:?}, PIN from {:?})",
                    settings.token_label, settings.pin
                ),
            },
            other => other,
        }),
    }
}

/// Whether `session` is alive and logged in as the user.
pub fn logged_in(session: &Session) -> bool {
    session
        .get_session_info()
        .is_ok_and(|info| info.session_state() == SessionState::RwUser)
}
