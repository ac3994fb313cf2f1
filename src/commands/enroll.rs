//! `prov-agent enroll`.

use std::sync::Arc;

use super::outcome::{human, json};
use super::{runtime, CommandError};
use crate::cli::Enroll;
use crate::config::Config;
use crate::keystore::KeyStore;
use crate::provision::enroll::{enroll, EnrollOptions};
use crate::provision::serial;

pub fn run(
    config: &Config,
    store: Arc<dyn KeyStore>,
    args: &Enroll,
) -> Result<String, CommandError> {
    let serial = serial::resolve(&config.provisioning.serial, store.as_ref())?;
    let done = runtime()?
        .block_on(enroll(
            config,
            store,
            &serial,
            EnrollOptions { force: args.force },
        ))
        .map_err(CommandError::Provision)?;
    Ok(if args.json {
        json(&done)
    } else {
        human(&done, "enrolled")
    })
}
