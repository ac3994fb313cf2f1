//! How `enroll` and `rotate` print what they did.

use crate::provision::Outcome;

/// The version of every `--json` document's shape (docs/json.md): raised
/// when a field is removed or changes meaning, not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// Unix seconds as an RFC 3339 UTC date (`2026-12-01T13:05:00Z`), in the
/// JSON documents and for people alike.
pub fn date(secs: u64) -> String {
    crate::timefmt::rfc3339(secs)
}

/// A `--json` document: `value` (an object) with its `schemaVersion`.
pub fn document(mut value: serde_json::Value) -> String {
    if let Some(object) = value.as_object_mut() {
        object.insert("schemaVersion".into(), SCHEMA_VERSION.into());
    }
    serde_json::to_string_pretty(&value).expect("JSON of plain values")
}

pub fn json(done: &Outcome) -> String {
    let id = &done.identity;
    document(serde_json::json!({
        "changed": done.changed,
        "thingName": id.thing_name,
        "certificateId": id.certificate_id,
        "previousCertificateId": id.previous_certificate_id,
        "keyReference": id.key_reference,
        "notAfter": date(id.not_after),
        "notAfterUnix": id.not_after,
        "deviceConfiguration": id.device_configuration,
        "resumedFrom": done.resumed_from,
        "reportPending": done.report_pending,
        "dueAt": done.due_at.map(date),
    }))
}

/// `verb`: "enrolled" or "rotated".
pub fn human(done: &Outcome, verb: &str) -> String {
    let id = &done.identity;
    let mut out = String::new();
    if !done.changed {
        match done.due_at {
            Some(due) => out.push_str(&format!(
                "rotation not due until {} (certificate {}, not after {})",
                date(due),
                id.certificate_id,
                date(id.not_after)
            )),
            None => out.push_str(&format!(
                "already enrolled as {} (certificate {}); use --force to enroll again",
                id.thing_name, id.certificate_id
            )),
        }
        return out;
    }
    if let Some(phase) = done.resumed_from {
        out.push_str(&format!("resumed an interrupted run (phase {phase:?})\n"));
    }
    for step in &done.steps {
        out.push_str(&format!(
            "  {:<52} {:>8.1} ms\n",
            step.name,
            step.duration.as_secs_f64() * 1000.0
        ));
    }
    out.push_str(&format!("{verb}: thing {}\n", id.thing_name));
    out.push_str(&format!("  certificate  {}\n", id.certificate_id));
    if let Some(prev) = &id.previous_certificate_id {
        out.push_str(&format!("  replaces     {prev}\n"));
    }
    out.push_str(&format!("  key          {}\n", id.key_reference));
    out.push_str(&format!("  not after    {}\n", date(id.not_after)));
    for (k, v) in &id.device_configuration {
        out.push_str(&format!("  config       {k} = {v}\n"));
    }
    if done.report_pending {
        out.push_str(
            "  warning      the retired certificates could not be reported yet; the next run sends the report\n",
        );
    }
    out.trim_end().to_string()
}
