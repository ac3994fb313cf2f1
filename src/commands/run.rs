//! `prov-agent run`: the daemon, with its hardware in a key helper.

use std::path::Path;
use std::sync::Arc;

use super::{runtime, CommandError};
use crate::config::Config;
use crate::keystore::{helper::HelperKeyStore, KeyStore};

/// Runs the daemon until SIGTERM. `text` is the configuration as read, for
/// the key helper.
pub fn run(path: &Path, config: Config, text: String) -> Result<(), CommandError> {
    // The daemon keeps its hardware in a helper process that lives only as
    // long as a handshake or a rotation (keystore::helper). Start one now
    // so that a key store that cannot be opened is reported at once, with
    // its exit code.
    let helper = HelperKeyStore::new("/proc/self/exe", config.keystore.backend, path, text);
    helper.start()?;
    let store: Arc<dyn KeyStore> = Arc::new(helper);
    runtime()?.block_on(crate::daemon::run::run(path, config, store))?;
    Ok(())
}
