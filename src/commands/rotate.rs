//! `prov-agent rotate`.

use std::sync::Arc;

use super::outcome::{human, json};
use super::{runtime, CommandError};
use crate::cli::Rotate;
use crate::config::Config;
use crate::keystore::KeyStore;
use crate::provision::rotate::{rotate, RotateOptions};

pub fn run(
    config: &Config,
    store: Arc<dyn KeyStore>,
    args: &Rotate,
) -> Result<String, CommandError> {
    let done = runtime()?
        .block_on(rotate(
            config,
            store,
            RotateOptions {
                if_due: args.if_due,
            },
        ))
        .map_err(CommandError::Provision)?;
    Ok(if args.json {
        json(&done)
    } else {
        human(&done, "rotated")
    })
}
