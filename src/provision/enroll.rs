//! `prov-agent enroll`: trade the claim credential for the device's own
//! identity, every private key in the key store.

use std::sync::Arc;

use super::flow::Flow;
use super::identity::Identity;
use super::journal::{Journal, Operation};
use super::{lock_state_dir, Outcome, ProvisionError};
use crate::config::Config;
use crate::keystore::KeyStore;

#[derive(Debug, Clone, Copy, Default)]
pub struct EnrollOptions {
    /// Enroll again even though the device has an identity.
    pub force: bool,
}

pub async fn enroll(
    config: &Config,
    store: Arc<dyn KeyStore>,
    serial: &str,
    opts: EnrollOptions,
) -> Result<Outcome, ProvisionError> {
    let _lock = lock_state_dir(&config.state_dir)?;
    enroll_locked(config, store, serial, opts).await
}

/// [`enroll`] for a caller that holds the state directory's lock.
pub async fn enroll_locked(
    config: &Config,
    store: Arc<dyn KeyStore>,
    serial: &str,
    opts: EnrollOptions,
) -> Result<Outcome, ProvisionError> {
    let state_dir = &config.state_dir;

    let existing = Identity::load(state_dir)?;
    let journal = Journal::load(state_dir)?;
    if let Some(j) = &journal {
        if j.operation != Operation::Enroll {
            return Err(ProvisionError::OtherOperation {
                running: j.operation,
                phase: j.phase(),
            });
        }
    }
    if let (Some(identity), None, false) = (&existing, &journal, opts.force) {
        super::export::ensure(config, identity);
        return Ok(Outcome::unchanged(identity.clone()));
    }

    let resumed_from = journal.as_ref().map(|j| j.phase());
    if let Some(phase) = resumed_from {
        tracing::info!(?phase, "resuming an interrupted enrollment");
    }
    let mut flow = Flow::new(config, store, Operation::Enroll, existing.clone(), serial)?;
    let mut journal = journal.unwrap_or_else(|| {
        let mut j = Journal::new(Operation::Enroll, flow.key_slots());
        // `--force`: once the new identity is committed, the old
        // certificate is reported so that the backend can deactivate it.
        if let Some(old) = &existing {
            j.abandoned_certificate_ids.push(old.certificate_id.clone());
            j.previous_certificate_id = Some(old.certificate_id.clone());
        }
        j
    });
    let identity = flow.run(&mut journal).await?;
    flow.close_session().await;
    Ok(Outcome {
        identity,
        changed: true,
        resumed_from,
        steps: std::mem::take(&mut flow.steps),
        report_pending: flow.report_pending,
        due_at: None,
    })
}
