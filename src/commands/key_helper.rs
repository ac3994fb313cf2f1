//! `prov-agent key-helper`: the helper side of the daemon's key store.

use std::os::fd::AsFd;

use super::CommandError;
use crate::config::Config;
use crate::keystore::{self, KeyStoreError};

/// Serves the daemon's key operations on stdin and stdout until the daemon
/// closes stdin. Both are used through descriptors of their own,
/// unbuffered, so that no library buffer keeps a copy of a key on its way
/// to the store.
pub fn run() -> Result<(), CommandError> {
    let own = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(CommandError::io(
                "duplicate the descriptor of",
                "stdin/stdout",
            ))
    };
    let mut input = own(std::io::stdin().as_fd())?;
    let mut output = own(std::io::stdout().as_fd())?;
    keystore::helper::serve(&mut input, &mut output, |path, text, pin| {
        let mut config = Config::from_str_with_env(path, text, std::env::vars()).map_err(|e| {
            KeyStoreError::HelperConfig {
                message: e.to_string(),
            }
        })?;
        // `PIN_SOURCE = env:NAME` under the daemon: the daemon's environment
        // no longer holds the PIN, the hello brings it, for one login.
        if let (Some(pin), keystore::KeyStoreSettings::Pkcs11(settings)) =
            (pin, &mut config.keystore.settings)
        {
            if matches!(settings.pin, keystore::SecretSource::Env(_)) {
                settings.pin = keystore::SecretSource::Given(keystore::GivenSecret::new(pin));
            }
        }
        keystore::open(&config.keystore.settings)
    })
    .map_err(CommandError::from)
}
