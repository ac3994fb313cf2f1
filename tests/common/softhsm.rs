//! A SoftHSM token of its own for each test.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a PKCS#11
//! module is initialised once per process, while the tests of one binary run
//! on threads of one process. So there is one SoftHSM configuration and
//! token directory per test process (made once), and each test initialises
//! a fresh token with a unique label in it, the way rust-cryptoki's tests
//! do: init token with the SO PIN, SO login, init the user PIN.
//!
//! Child processes must not see the other tests' tokens: SoftHSM reads every
//! token directory of its store at `C_Initialize`, and rewrites a token's
//! `token.object` (truncate, then lock, then write) at every `C_Login`. A
//! child starting while two other children log in can read two truncated
//! token objects, give both slot 0 and abort on SoftHSM's
//! `SlotManager::insertToken` assertion (seen in CI). So once a token is made,
//! its directory moves to a store of the test's own, the process-wide store
//! keeps a symlink to it (this process never lists its store again, and
//! follows the link by path), and children get that store's configuration
//! through [`SoftHsm::env`]. SoftHSM skips symlinks when it lists a store, so
//! a child run without that environment finds no token and fails loudly.
#![cfg(feature = "pkcs11")]

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use prov_agent::keystore::{pkcs11::module_context, Pkcs11Settings, SecretSource};

pub const SO_PIN: &str = "so-pin-7531";
pub const USER_PIN: &str = "user-pin-2468";

/// SoftHSM's file object store is shared by this test process and the
/// `prov-agent` processes it starts, and a child that starts while this
/// process writes a new token can see it half made. Token creation takes
/// this lock for writing; every child process run holds it for reading.
pub static TOKEN_STORE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The SoftHSM module: `TEST_PKCS11_MODULE` or Debian's path.
pub fn module_path() -> PathBuf {
    std::env::var_os("TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// The process-wide SoftHSM directory; `SOFTHSM2_CONF` points into it
/// before anything loads the module.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale(&base);
        let dir = base.join(format!(
            "softhsm-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let tokens = dir.join("tokens");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tokens)
            .expect("create SoftHSM token directory");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        // Before any thread of this process initialises the module.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    })
}

/// Token directories of earlier test runs (older than an hour: no test run
/// takes that long) are removed, so that target/tmp does not grow forever.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("softhsm-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The module context shared with the key store (one per process).
pub fn context() -> Pkcs11 {
    config_dir();
    module_context(&module_path()).expect("load and initialise SoftHSM")
}

/// A fresh, initialised token with a user PIN, and a PIN file for it.
pub struct SoftHsm {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
    /// `softhsm2.conf` of the store that holds only this token.
    own_config: PathBuf,
    pins: tempfile::TempDir,
}

impl SoftHsm {
    /// Makes a token labelled `<name>-<n>`, unique in this process.
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        // Two tests must not both pick the one free slot.
        static INIT: Mutex<()> = Mutex::new(());

        let ctx = context();
        // No child process may start while the token is being made.
        let _exclusive = TOKEN_STORE.write().unwrap_or_else(|p| p.into_inner());
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut name = name.to_string();
        name.truncate(24); // token labels are at most 32 bytes
        let label = format!("{name}-{n}");
        let so_pin = AuthPin::from(SO_PIN);
        {
            let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
            let free = ctx
                .get_slots_with_token()
                .expect("list slots")
                .into_iter()
                .find(|s| {
                    ctx.get_token_info(*s)
                        .is_ok_and(|info| !info.token_initialized())
                })
                .expect("SoftHSM offers a free slot");
            ctx.init_token(free, &so_pin, &label).expect("init token");
        }
        // The slot id changes when SoftHSM initialises a token: find it again
        // by label.
        let slot = find_slot(&ctx, &label);
        {
            let session = ctx.open_rw_session(slot).expect("open SO session");
            match session.login(UserType::So, Some(&so_pin)) {
                Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => panic!("SO login: {e}"),
            }
            session
                .init_pin(&AuthPin::from(USER_PIN))
                .expect("init user PIN");
            session.logout().expect("SO logout");
        }
        let serial = ctx
            .get_token_info(slot)
            .expect("token info")
            .serial_number()
            .trim_end()
            .to_string();
        let own_config = move_to_own_store(&label, &serial);
        let pins = tempfile::tempdir().expect("PIN directory");
        let pin_file = write_pin(pins.path(), "user.pin", USER_PIN);
        SoftHsm {
            module: module_path(),
            token_label: label,
            pin_file,
            own_config,
            pins,
        }
    }

    /// The directory of this token's own store (the token's directory is
    /// in it), which child processes use.
    pub fn store_dir(&self) -> PathBuf {
        self.own_config
            .parent()
            .expect("softhsm2.conf is in the store's directory")
            .join("tokens")
    }

    /// The environment a child process that uses this token needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "SOFTHSM2_CONF".into(),
            self.own_config.display().to_string(),
        )]
    }

    /// Settings for the key store: this token, the PIN from the PIN file.
    pub fn settings(&self) -> Pkcs11Settings {
        Pkcs11Settings {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin: SecretSource::File(self.pin_file.clone()),
            key_ids: Default::default(),
        }
    }

    /// Settings whose PIN file holds `pin` instead of the right PIN.
    pub fn settings_with_pin(&self, pin: &str) -> Pkcs11Settings {
        let file = write_pin(self.pins.path(), "other.pin", pin);
        Pkcs11Settings {
            pin: SecretSource::File(file),
            ..self.settings()
        }
    }

    /// A read/write session of the test's own on the token, logged in as
    /// the user: to look at (and tamper with) objects independently of the
    /// store.
    pub fn user_session(&self) -> Session {
        let ctx = context();
        let session = ctx
            .open_rw_session(find_slot(&ctx, &self.token_label))
            .expect("open session");
        match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => session,
            Err(e) => panic!("user login: {e}"),
        }
    }
}

/// Moves the token whose serial is `serial` out of the process-wide store
/// into a store of its own (see the module docs), leaving a symlink behind;
/// returns that store's configuration file.
fn move_to_own_store(label: &str, serial: &str) -> PathBuf {
    // SoftHSM names a token's directory by a UUID and takes the serial from
    // its last two groups.
    assert_eq!(serial.len(), 16, "SoftHSM token serial {serial:?}");
    let suffix = format!("-{}-{}", &serial[..4], &serial[4..]);
    let shared = config_dir().join("tokens");
    let token_dir = std::fs::read_dir(&shared)
        .expect("list SoftHSM token directory")
        .flatten()
        .find(|e| {
            e.file_name().to_string_lossy().ends_with(&suffix)
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .unwrap_or_else(|| panic!("no token directory for serial {serial}"))
        .file_name();
    let own = config_dir().join(format!("own-{label}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(own.join("tokens"))
        .expect("create the token's own store");
    let moved = own.join("tokens").join(&token_dir);
    std::fs::rename(shared.join(&token_dir), &moved).expect("move the token directory");
    std::os::unix::fs::symlink(&moved, shared.join(&token_dir)).expect("link the token back");
    let conf = own.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            own.join("tokens").display()
        ),
    )
    .expect("write the token's softhsm2.conf");
    conf
}

fn find_slot(ctx: &Pkcs11, label: &str) -> cryptoki::slot::Slot {
    ctx.get_slots_with_token()
        .expect("list slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.token_initialized() && i.label().trim_end() == label)
        })
        .unwrap_or_else(|| panic!("token {label} not found after init"))
}

fn write_pin(dir: &Path, name: &str, pin: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create PIN file");
    writeln!(f, "{pin}").expect("write PIN file");
    path
}
