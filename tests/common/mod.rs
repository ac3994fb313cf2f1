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

/// Held while a `prov-agent` child process runs, so that no SoftHSM token
/// is being written meanwhile (see [`softhsm::TOKEN_STORE`]).
#[cfg(feature = "pkcs11")]
pub fn token_store_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    softhsm::TOKEN_STORE
        .read()
        .unwrap_or_else(|p| p.into_inner())
}

#[cfg(not(feature = "pkcs11"))]
pub fn token_store_shared() {}

/// Taken by in-process use of a SoftHSM token: excludes children and token
/// creation.
#[cfg(feature = "pkcs11")]
pub fn token_store_exclusive() -> Option<std::sync::RwLockWriteGuard<'static, ()>> {
    Some(
        softhsm::TOKEN_STORE
            .write()
            .unwrap_or_else(|p| p.into_inner()),
    )
}

#[cfg(not(feature = "pkcs11"))]
pub fn token_store_exclusive() -> Option<()> {
    None
}

/// A value used under [`token_store_exclusive`].
pub struct Exclusive<T> {
    pub value: T,
    #[cfg(feature = "pkcs11")]
    pub _guard: Option<std::sync::RwLockWriteGuard<'static, ()>>,
    #[cfg(not(feature = "pkcs11"))]
    pub _guard: Option<()>,
}

impl<T> std::ops::Deref for Exclusive<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}
