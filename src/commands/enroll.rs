//! `prov-agent enroll`.

use std::sync::Arc;

use super::CommandError;
use crate::cli::Enroll;
use crate::config::Config;
use crate::keystore::KeyStore;
use crate::provision::enroll::{enroll, EnrollOptions, Enrolled};
use crate::provision::serial;

pub fn run(
    config: &Config,
    store: Arc<dyn KeyStore>,
    args: &Enroll,
) -> Result<String, CommandError> {
    let tpm_ek = match (&config.provisioning.serial, store.hardware_id()) {
        (crate::config::SerialSource::TpmEk, Some(id)) => Some(id?),
        _ => None,
    };
    let serial = serial::resolve(&config.provisioning.serial, tpm_ek)
        .map_err(|e| CommandError::Provision(e.into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Other(format!("cannot start the async runtime: {e}")))?;
    let done = runtime
        .block_on(enroll(
            config,
            store,
            &serial,
            EnrollOptions { force: args.force },
        ))
        .map_err(CommandError::Provision)?;
    Ok(if args.json { json(&done) } else { human(&done) })
}

fn not_after(secs: u64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn json(done: &Enrolled) -> String {
    let id = &done.identity;
    serde_json::to_string_pretty(&serde_json::json!({
        "changed": done.changed,
        "thingName": id.thing_name,
        "certificateId": id.certificate_id,
        "keyReference": id.key_reference,
        "notAfter": not_after(id.not_after),
        "notAfterUnix": id.not_after,
        "deviceConfiguration": id.device_configuration,
        "resumedFrom": done.resumed_from.map(|p| format!("{p:?}")),
    }))
    .expect("JSON of strings")
}

fn human(done: &Enrolled) -> String {
    let id = &done.identity;
    let mut out = String::new();
    if !done.changed {
        out.push_str(&format!(
            "already enrolled as {} (certificate {}); use --force to enroll again\n",
            id.thing_name, id.certificate_id
        ));
        return out.trim_end().to_string();
    }
    if let Some(phase) = done.resumed_from {
        out.push_str(&format!(
            "resumed an interrupted enrollment (phase {phase:?})\n"
        ));
    }
    for step in &done.steps {
        out.push_str(&format!(
            "  {:<52} {:>8.1} ms\n",
            step.name,
            step.duration.as_secs_f64() * 1000.0
        ));
    }
    out.push_str(&format!("enrolled: thing {}\n", id.thing_name));
    out.push_str(&format!("  certificate  {}\n", id.certificate_id));
    out.push_str(&format!("  key          {}\n", id.key_reference));
    out.push_str(&format!("  not after    {}\n", not_after(id.not_after)));
    for (k, v) in &id.device_configuration {
        out.push_str(&format!("  config       {k} = {v}\n"));
    }
    out.trim_end().to_string()
}
