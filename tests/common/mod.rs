//! Test support shared by the integration tests: each test starts its own
//! software TPM (swtpm) and its own SoftHSM token, and stops them on drop.
#![allow(dead_code)]

pub mod abrmd;
pub mod backend;
pub mod conformance;
pub mod daemon;
pub mod device;
pub mod emulator;
pub mod local_ca;
pub mod pki;
pub mod softhsm;
pub mod swtpm;
#[cfg(feature = "pkcs11")]
pub mod tpm2pkcs11;

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

/// `bash -c` prologue that closes every inherited descriptor above 2 and
/// then runs `"$0" "$@"` (bash, because dash cannot name descriptors above
/// 9 in a redirection). tpm2-tss opens its TCTI sockets without
/// close-on-exec, so a child started while another test thread talks to a
/// swtpm would keep that connection open, and swtpm, which serves one
/// connection at a time, would wait on it for ever.
pub const CLOSE_FDS_AND_EXEC: &str =
    "for f in /proc/$$/fd/*; do fd=${f##*/}; [ \"$fd\" -gt 2 ] && [ -e \"$f\" ] && exec {fd}>&-; done; exec \"$0\" \"$@\"";

/// A std command for `program` that starts with no inherited descriptors.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(CLOSE_FDS_AND_EXEC).arg(program);
    cmd
}

/// The tokio flavour of [`clean_command`].
pub fn clean_tokio_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c").arg(CLOSE_FDS_AND_EXEC).arg(program);
    cmd
}

/// `sh -c script sh args...` in a mount namespace of its own (`unshare
/// --mount`, private propagation; root), for tests that mount over the
/// agent's files (a full disk, a read-only token) without touching the
/// machine's mounts. The token-store lock is held while it runs, as for any
/// child.
#[allow(clippy::let_unit_value)]
pub fn in_mount_namespace(
    script: &str,
    args: &[&std::ffi::OsStr],
    env: Vec<(String, String)>,
) -> std::process::Output {
    let _shared = token_store_shared();
    clean_command("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .args(args)
        .envs(env)
        .output()
        .unwrap()
}
