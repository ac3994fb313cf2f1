//! `prov-agent status`: what identity the device has and how it stands.

use std::time::SystemTime;

use super::outcome::{date, document};
use super::CommandError;
use crate::config::Config;
use crate::crypto::Certificate;
use crate::provision::identity::Identity;
use crate::provision::journal::Journal;
use crate::provision::rotate::{scheduled_at, unix};

/// What `status` found: the text to print, and the error to exit with
/// after printing it ([`CommandError::NotEnrolled`],
/// [`CommandError::Expired`]), if any.
pub fn run(config: &Config, json: bool) -> Result<(String, Option<CommandError>), CommandError> {
    let identity =
        Identity::load(&config.state_dir).map_err(|e| CommandError::Provision(e.into()))?;
    let journal =
        Journal::load(&config.state_dir).map_err(|e| CommandError::Provision(e.into()))?;
    let now = unix(SystemTime::now());
    let in_progress = journal.as_ref().map(|j| {
        serde_json::json!({ "operation": j.operation, "phase": j.phase(), "since": date(j.updated_at) })
    });
    let Some(id) = identity else {
        if json {
            return Ok((
                document(serde_json::json!({
                    "enrolled": false,
                    "backend": config.keystore.backend.as_str(),
                    "inProgress": in_progress,
                })),
                Some(CommandError::NotEnrolled),
            ));
        }
        let mut out = "not enrolled".to_string();
        if let Some(j) = &journal {
            out.push_str(&format!(
                "\ninterrupted {:?} at phase {:?}: running it again finishes it",
                j.operation,
                j.phase()
            ));
        }
        return Ok((out, Some(CommandError::NotEnrolled)));
    };
    let cert = Certificate::from_pem(&id.certificate_pem, "identity")
        .map_err(crate::provision::ProvisionError::DamagedCertificate)?;
    let due = unix(scheduled_at(&cert, &config.rotation));
    let left = id.not_after.saturating_sub(now);
    let expired = (now >= id.not_after).then(|| CommandError::Expired {
        not_after: date(id.not_after),
    });
    // What other programs use: the published directory and OpenSSL's -key.
    let export = crate::provision::export::current(&config.export);
    let openssl_key = crate::keystore::ConsumerKey::of_reference(&id.key_reference)
        .ok()
        .and_then(|k| k.openssl_key(Some(&export.join(crate::provision::export::TPM_KEY_FILE))));
    if json {
        return Ok((
            document(serde_json::json!({
                "enrolled": true,
                "thingName": id.thing_name,
                "certificateId": id.certificate_id,
                "notAfter": date(id.not_after),
                "secondsLeft": left,
                "expired": now >= id.not_after,
                "rotationDue": date(due),
                "keyReference": id.key_reference,
                "opensslKey": openssl_key,
                "exportDir": export,
                "backend": config.keystore.backend.as_str(),
                "lastCommit": date(id.committed_at),
                "previousCertificateId": id.previous_certificate_id,
                "inProgress": in_progress,
            })),
            expired,
        ));
    }
    let mut out = String::new();
    out.push_str(&format!("thing        {}\n", id.thing_name));
    out.push_str(&format!("certificate  {}\n", id.certificate_id));
    out.push_str(&format!(
        "not after    {} ({})\n",
        date(id.not_after),
        if now >= id.not_after {
            "EXPIRED".to_string()
        } else {
            format!("{} left", human_duration(left))
        }
    ));
    out.push_str(&format!("rotation due {}\n", date(due)));
    out.push_str(&format!(
        "key          {} ({} backend)\n",
        id.key_reference, config.keystore.backend
    ));
    out.push_str(&format!(
        "for others   {} (OpenSSL -key {})\n",
        export.display(),
        openssl_key
            .as_deref()
            .unwrap_or("none: rotate once to get a key file")
    ));
    out.push_str(&format!("last commit  {}", date(id.committed_at)));
    if let Some(prev) = &id.previous_certificate_id {
        out.push_str(&format!(" (replaced {prev})"));
    }
    if let Some(j) = &journal {
        out.push_str(&format!(
            "\nin progress  {:?} at phase {:?} since {}",
            j.operation,
            j.phase(),
            date(j.updated_at)
        ));
    }
    Ok((out, expired))
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}
