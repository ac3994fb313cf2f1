//! The rotation report rule: the emulator's stand-in for a customer's
//! backend function (AWS has no such service) that retires a thing's old
//! certificates when the device reports a completed rotation on
//! `things/<thing>/rotation` (see README).

use serde_json::Value;

use crate::registry::{CertStatus, Registry, Retired};

/// A report's fields this rule reads.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    thing_name: String,
    new_certificate_id: String,
    old_certificate_ids: Vec<String>,
}

fn parse(payload: &[u8]) -> Result<Report, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("report is not JSON: {e}"))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("report lacks string field {k}"))
    };
    let thing_name = text("thingName")?;
    let new_certificate_id = text("newCertificateId")?;
    let mut old_certificate_ids = Vec::new();
    match v.get("oldCertificateIds") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ids)) => {
            for id in ids {
                let id = id
                    .as_str()
                    .ok_or("oldCertificateIds must be a list of strings")?;
                old_certificate_ids.push(id.to_owned());
            }
        }
        Some(_) => return Err("oldCertificateIds must be a list of strings".into()),
    }
    match v.get("oldCertificateId") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => old_certificate_ids.push(id.clone()),
        Some(_) => return Err("oldCertificateId must be a string".into()),
    }
    if old_certificate_ids.is_empty() {
        return Err("report names no old certificate".into());
    }
    old_certificate_ids.sort();
    old_certificate_ids.dedup();
    Ok(Report {
        thing_name,
        new_certificate_id,
        old_certificate_ids,
    })
}

/// Applies one authorised PUBLISH on a topic matching `things/+/rotation`
/// from a connection whose certificate is `sender`. Anything that does not
/// check out is ignored with a log line.
pub(crate) fn apply_report(registry: &Registry, sender: &str, topic: &str, payload: &[u8]) {
    let topic_thing = topic.split('/').nth(1).unwrap_or_default();
    let report = match parse(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%topic, "rotation report ignored: {e}");
            return;
        }
    };
    let ignore = |why: &str| {
        tracing::info!(%topic, thing = %report.thing_name, new = %report.new_certificate_id, "rotation report ignored: {why}");
    };
    if report.thing_name != topic_thing {
        return ignore("thingName is not the thing of the topic");
    }
    if report.new_certificate_id != sender {
        return ignore("sent by a connection whose certificate is not newCertificateId");
    }
    if !matches!(
        registry.certificate_status(&report.new_certificate_id),
        Ok(Some(CertStatus::Active))
    ) {
        return ignore("newCertificateId is not ACTIVE");
    }
    if !registry
        .thing_attached(&report.thing_name, &report.new_certificate_id)
        .unwrap_or(false)
    {
        return ignore("newCertificateId is not attached to the thing");
    }
    for old in &report.old_certificate_ids {
        if *old == report.new_certificate_id {
            tracing::info!(thing = %report.thing_name, "rotation report: old id is the new certificate: skipped");
            continue;
        }
        match registry.retire_certificate(&report.thing_name, old) {
            Ok(Retired::Deactivated) => {
                tracing::info!(thing = %report.thing_name, certificate_id = %old, "rotation report: old certificate detached and set INACTIVE")
            }
            Ok(Retired::DetachedOnly) => {
                tracing::info!(thing = %report.thing_name, certificate_id = %old, "rotation report: old certificate detached; still attached to another thing, so left ACTIVE")
            }
            Ok(Retired::NotAttached) => {
                tracing::info!(thing = %report.thing_name, certificate_id = %old, "rotation report: old certificate is not attached to the thing: ignored")
            }
            Err(e) => {
                tracing::warn!(thing = %report.thing_name, certificate_id = %old, "rotation report: registry error: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_single_old_ids() {
        let r = parse(br#"{"thingName":"t","newCertificateId":"n","oldCertificateIds":["b","a"],"oldCertificateId":"a","time":1}"#).unwrap();
        assert_eq!(r.old_certificate_ids, vec!["a".to_owned(), "b".to_owned()]);
        let r =
            parse(br#"{"thingName":"t","newCertificateId":"n","oldCertificateId":"a"}"#).unwrap();
        assert_eq!(r.old_certificate_ids, vec!["a".to_owned()]);
        assert!(parse(br#"{"thingName":"t","newCertificateId":"n"}"#).is_err());
        assert!(
            parse(br#"{"thingName":"t","newCertificateId":"n","oldCertificateIds":[1]}"#).is_err()
        );
        assert!(parse(b"not json").is_err());
    }
}
