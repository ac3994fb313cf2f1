//! `prov-agent rotate`: replace the device's certificate and key while it
//! keeps working, through the rotation template, with the current identity.
//!
//! Before the commit any failure rolls back: the pending key is deleted, a
//! certificate that may have been activated is reported for deactivation,
//! and the current identity is untouched. After a crash (no chance to roll
//! back) the next run resumes from the journal instead.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::flow::Flow;
use super::identity::Identity;
use super::journal::{Journal, Operation, Phase};
use super::{lock_state_dir, Outcome, ProvisionError};
use sha2::{Digest, Sha256};

use crate::config::{Config, RotationConfig, RotationThreshold};
use crate::crypto::Certificate;
use crate::keystore::KeyStore;

#[derive(Debug, Clone, Copy, Default)]
pub struct RotateOptions {
    /// Rotate only once the certificate's scheduled time ([`scheduled_at`]:
    /// THRESHOLD plus its random delay) has come.
    pub if_due: bool,
}

/// When the certificate should be rotated (before any random delay).
pub fn due_at(cert: &Certificate, threshold: RotationThreshold) -> SystemTime {
    let (nb, na) = (cert.not_before(), cert.not_after());
    let lifetime = na.duration_since(nb).unwrap_or(Duration::ZERO);
    match threshold {
        RotationThreshold::Lifetime(share) => nb + lifetime.mul_f64(share),
        RotationThreshold::BeforeExpiry(before) => na.checked_sub(before).unwrap_or(nb).max(nb),
    }
}

/// When the daemon and `rotate --if-due` rotate `cert`: at THRESHOLD plus
/// the certificate's own random delay, so that a fleet does not rotate at
/// once. A digest of the certificate id picks a point in [0, RANDOM_DELAY),
/// stable across restarts and runs, different for each device; it never
/// takes more than half the time left between the threshold and notAfter,
/// so a short-lived certificate is still rotated well before it expires.
pub fn scheduled_at(cert: &Certificate, rotation: &RotationConfig) -> SystemTime {
    let base = due_at(cert, rotation.threshold);
    let window = rotation.random_delay.as_secs();
    if window == 0 {
        return base;
    }
    let digest = Sha256::digest(cert.id().as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let delay = Duration::from_secs(n % window);
    let room = cert
        .not_after()
        .duration_since(base)
        .unwrap_or(Duration::ZERO)
        / 2;
    base + delay.min(room)
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn rotate(
    config: &Config,
    store: Arc<dyn KeyStore>,
    opts: RotateOptions,
) -> Result<Outcome, ProvisionError> {
    let _lock = lock_state_dir(&config.state_dir)?;
    rotate_locked(config, store, opts).await
}

/// [`rotate`] for a caller that holds the state directory's lock (the
/// daemon).
pub async fn rotate_locked(
    config: &Config,
    store: Arc<dyn KeyStore>,
    opts: RotateOptions,
) -> Result<Outcome, ProvisionError> {
    let state_dir = &config.state_dir;
    let current = Identity::load(state_dir)?.ok_or(ProvisionError::NotEnrolled)?;
    let journal = Journal::load(state_dir)?;
    if let Some(j) = &journal {
        if j.operation != Operation::Rotate {
            return Err(ProvisionError::OtherOperation {
                running: j.operation,
                phase: j.phase(),
            });
        }
    }
    let cert = Certificate::from_pem(&current.certificate_pem, "current identity")
        .map_err(ProvisionError::DamagedCertificate)?;
    let due = scheduled_at(&cert, &config.rotation);
    if journal.is_none() && opts.if_due && SystemTime::now() < due {
        super::export::ensure(config, &current);
        let mut outcome = Outcome::unchanged(current);
        outcome.due_at = Some(unix(due));
        return Ok(outcome);
    }

    let resumed_from = journal.as_ref().map(|j| j.phase());
    if let Some(phase) = resumed_from {
        tracing::info!(?phase, "resuming an interrupted rotation");
    }
    let new_journal = |keys| {
        let mut j = Journal::new(Operation::Rotate, keys);
        j.previous_certificate_id = Some(current.certificate_id.clone());
        j.abandoned_certificate_ids
            .push(current.certificate_id.clone());
        j
    };
    let serial = current
        .device_configuration
        .get("serialNumber")
        .cloned()
        .unwrap_or_else(|| current.thing_name.clone());
    let mut flow = Flow::new(
        config,
        store,
        Operation::Rotate,
        Some(current.clone()),
        &serial,
    )?;
    let mut journal = journal.unwrap_or_else(|| new_journal(flow.key_slots()));
    match flow.run(&mut journal).await {
        Ok(identity) => Ok(Outcome {
            identity,
            changed: true,
            resumed_from,
            steps: std::mem::take(&mut flow.steps),
            report_pending: flow.report_pending,
            due_at: None,
        }),
        Err(e) if journal.phase() <= Phase::Registered => {
            tracing::warn!(error = %crate::error::report(&e), "rotation failed before the commit: rolling back");
            flow.close_session().await;
            if let Err(rollback) = flow.roll_back(&journal, &current).await {
                tracing::error!(error = %rollback, "rollback incomplete");
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

impl Flow<'_> {
    /// Undoes a rotation that failed before the commit: a certificate that
    /// RegisterThing may have activated is reported for deactivation (as
    /// the current identity), then the pending key goes and the journal is
    /// removed. The current identity is never touched.
    ///
    /// In that order: while the report has not gone out (the hardware or
    /// the network failed too), the journal and the pending key it names
    /// stay as they were, and the next run resumes the rotation from them.
    /// Deleting the key first left a journal at `Registered` whose key was
    /// gone (found with the TPM killed in the middle of a rotation).
    pub(super) async fn roll_back(
        &mut self,
        journal: &Journal,
        current: &Identity,
    ) -> Result<(), ProvisionError> {
        if journal.state.register_sent() {
            if let Some(failed) = journal.state.certificate() {
                self.report_as(std::slice::from_ref(&failed.id), current)
                    .await?;
            }
        }
        self.delete_pending()?;
        Journal::clear(self.state_dir())?;
        Ok(())
    }
}
