//! `prov-agent run`: the daemon, with its hardware in a key helper.

use std::path::Path;
use std::sync::Arc;

use super::CommandError;
use crate::config::Config;
use crate::keystore::{helper::HelperKeyStore, KeyStore};

/// Runs the daemon until SIGTERM. `text` is the configuration as read, for
/// the key helper.
pub fn run(path: &Path, config: Config, text: String) -> Result<(), CommandError> {
    // The daemon keeps its hardware in a helper process that lives only as
    // long as a handshake or a rotation (keystore::helper). Start one now
    // so that a key store that cannot be opened is reported at once, with
    // its exit code.
    let mut helper = HelperKeyStore::new("/proc/self/exe", config.keystore.backend, path, text)
        .with_timeout(config.keystore.helper_timeout);
    // `PIN_SOURCE = env:NAME`: the PIN leaves the daemon's environment
    // (still one thread here) and its memory, sealed in a memfd, and goes
    // to each helper it starts, in the hello. The daemon keeps its
    // configuration as read (a reload compares it).
    if let Some(pin) = super::take_pin(&config.keystore.settings)? {
        helper = helper.with_pin(pin);
    }
    helper.start()?;
    let store: Arc<dyn KeyStore> = Arc::new(helper);
    let runtime = daemon_runtime()?;
    let result = runtime.block_on(crate::daemon::run::run(path, config, store));
    // A stop in the middle of a key operation leaves its task waiting for
    // the helper (at most HELPER_TIMEOUT): do not wait for it; the journal
    // finishes an interrupted rotation at the next start.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result?;
    Ok(())
}

/// How long a stopping daemon waits for tasks still running.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

fn daemon_runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    crate::runtime::daemon().map_err(CommandError::Runtime)
}
