//! The key helper: a short-lived child process that holds the hardware for
//! the daemon.
//!
//! `prov-agent run` stays connected for months but needs its key only for a
//! TLS handshake or a rotation. It therefore keeps no TPM context and no
//! PKCS#11 session of its own: [`HelperKeyStore`] starts `prov-agent
//! key-helper` (the very executable that is running, `/proc/self/exe`) when
//! a key operation comes, forwards the operations over a pipe, and ends it
//! on [`KeyStore::release`](super::KeyStore::release), once the handshake
//! or the rotation is over. The idle daemon therefore
//! - holds no TPM device or socket and no logged-in token session that a
//!   post-rotation command (or any other child) could inherit;
//! - has never initialised the PKCS#11 module, nor tpm2-tss and the OpenSSL
//!   under it, which keeps its resident memory small (`ci/bench.sh daemon`);
//! - leaves the TPM or token to other users between operations.
//!
//! An error of the store in the helper comes back to the daemon as the same
//! [`KeyStoreError`](super::KeyStoreError) variant, message and
//! retryability (`wire::WireError` is its mirror), so callers match it the
//! same way in and out of the helper.
//!
//! The protocol is versioned (`wire.rs` has the format and its rules) and
//! the hello checks the version. Daemon and helper are one executable, so
//! the versions differ only when they are two builds:
//! - A package upgrade while the daemon runs does not do it. Package
//!   managers install the new file under a temporary name and rename it
//!   over the old one; `/proc/self/exe` still names the old, now unlinked,
//!   file, the kernel keeps it while the daemon runs, and every helper is
//!   the daemon's own build until the upgrade restarts the daemon (tested:
//!   `tests/keystore_helper.rs`). The file cannot be rewritten in place
//!   while it runs (ETXTBSY).
//! - A helper started by path (`HelperKeyStore::new` with a path, as the
//!   tests do), or by hand, may be another build. Then the hello fails on
//!   both sides with [`KeyStoreError::HelperVersion`](super::KeyStoreError::HelperVersion),
//!   naming both versions and saying to restart the daemon; it is not
//!   retryable, and nothing is forwarded to a helper of another version.
//!
//! A helper that stops answering does not hold the daemon: each answer is
//! awaited until a deadline (`[KEYSTORE] HELPER_TIMEOUT`, longer for key
//! generation), then the helper is killed and the operation fails as
//! retryable [`KeyStoreError::Unavailable`](super::KeyStoreError::Unavailable).
//! Inside a multi-threaded tokio runtime (the daemon's) the wait happens
//! off the runtime's worker (`block_in_place`), so signals and the systemd
//! watchdog are served meanwhile.
//!
//! Files: `wire.rs` (frames, messages, the error mirror), `server.rs` (the
//! helper side), `client.rs` (the daemon side), `deadline.rs` (the daemon's
//! pipe ends, read and written against a deadline).

mod client;
mod deadline;
mod sealed;
mod server;
pub mod wire;

pub use client::HelperKeyStore;
pub use sealed::SealedSecret;
pub use server::{serve, ServeError};

/// The hidden subcommand that runs the helper side.
pub const SUBCOMMAND: &str = "key-helper";
