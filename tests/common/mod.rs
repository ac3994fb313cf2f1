//! Test support shared by the integration tests: each test starts its own
//! software TPM (swtpm) and its own SoftHSM token, and stops them on drop.
#![allow(dead_code)]

pub mod backend;
pub mod conformance;
pub mod device;
pub mod emulator;
pub mod pki;
pub mod softhsm;
pub mod swtpm;

/// SoftHSM's file object store is shared by this test process and the
/// `prov-agent` processes it starts. A child that starts while this process
/// is writing a new token can see it half made. Token creation takes this
/// lock for writing; every child process run holds it for reading.
pub static TOKEN_STORE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn token_store_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TOKEN_STORE.read().unwrap_or_else(|p| p.into_inner())
}
