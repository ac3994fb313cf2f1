//! `prov-agent check`: tells an operator what is wrong, one line per check.
//!
//! Each check passes, warns or fails with an explanation of what to do;
//! the command exits non-zero when any check fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::outcome::date;
use super::CommandError;
use crate::config::Config;
use crate::crypto::Certificate;
use crate::keystore::{KeyInfo, KeyLabel, KeyStore};
use crate::mqtt::endpoint::Endpoint;
use crate::provision::identity::Identity;
use crate::provision::journal::Journal;
use crate::provision::rotate::{scheduled_at, unix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, serde::Serialize)]
pub struct Finding {
    /// The check's stable id, kebab-case (docs/json.md lists them).
    pub id: String,
    /// The check's name for people.
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// `key matches certificate` -> `key-matches-certificate`, for the
/// checks named here in plain words (hardware facts bring their own ids).
pub fn check_id(name: &str) -> String {
    let mut id = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    id.trim_end_matches('-').to_string()
}

/// No certificate can be valid before this (2025-01-01): a clock behind
/// it has never been set.
const CLOCK_FLOOR: u64 = 1_735_689_600;

struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &'static str, verdict: Verdict, detail: impl Into<String>) {
        self.add_as(check_id(check), check, verdict, detail);
    }

    fn add_as(
        &mut self,
        id: impl Into<String>,
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
    ) {
        self.0.push(Finding {
            id: id.into(),
            check,
            verdict,
            detail: detail.into(),
        });
    }
}

/// Runs every check, or with `offline` those that need neither the
/// hardware nor the network (the configuration, files and their
/// permissions, the certificates and the clock). `Ok((text, failed))`.
pub fn run(config: &Config, json: bool, offline: bool) -> Result<(String, bool), CommandError> {
    let mut r = Report(Vec::new());
    r.add(
        "config",
        Verdict::Pass,
        format!("{} is valid", config.source.display()),
    );
    check_state_dir(&mut r, &config.state_dir);

    let identity = match Identity::load(&config.state_dir) {
        Ok(i) => i,
        Err(e) => {
            r.add("identity", Verdict::Fail, crate::error::report(&e));
            None
        }
    };
    if let Some(id) = &identity {
        check_thing_name(&mut r, config, &id.thing_name);
    }
    match Journal::load(&config.state_dir) {
        Ok(Some(j)) => r.add(
            "journal",
            Verdict::Warn,
            format!(
                "an interrupted {:?} stopped at phase {:?} ({}): run it again to finish it",
                j.operation,
                j.phase(),
                date(j.updated_at)
            ),
        ),
        Ok(None) => {}
        Err(e) => r.add("journal", Verdict::Fail, crate::error::report(&e)),
    }

    // Which credential the device would use now.
    let (cert, label) = match &identity {
        Some(id) => (
            Certificate::from_pem(&id.certificate_pem, "identity certificate")
                .map_err(|e| crate::error::report(&e)),
            KeyLabel::new(id.key_label.clone()).map_err(|e| crate::error::report(&e)),
        ),
        None => {
            r.add(
                "identity",
                Verdict::Warn,
                "not enrolled yet: checking the claim credential",
            );
            let path = &config.settings.claim_cert;
            (
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read CLAIM_CERT {}: {e}", path.display()))
                    .and_then(|pem| {
                        Certificate::from_pem(&pem, &path.display().to_string())
                            .map_err(|e| crate::error::report(&e))
                    }),
                Ok(config.keystore.claim_key.clone()),
            )
        }
    };
    let cert = match cert {
        Ok(c) => Some(c),
        Err(e) => {
            r.add("certificate", Verdict::Fail, e);
            None
        }
    };

    // Offline: no hardware, so nothing below that needs the store (the
    // key, its match with the certificate, the endpoint) runs.
    let store = if offline {
        None
    } else {
        match crate::keystore::open(&config.keystore.settings) {
            Ok(s) => {
                r.add(
                    "key store",
                    Verdict::Pass,
                    format!("{} key store opened", config.keystore.backend),
                );
                Some(s)
            }
            Err(e) => {
                r.add("key store", Verdict::Fail, crate::error::report(&e));
                None
            }
        }
    };
    // What the hardware is and can do (a PKCS#11 module's mechanisms and
    // the import, copy and relabel it allows, tried on session objects).
    if let Some(store) = &store {
        match store.hardware_facts() {
            Ok(facts) => {
                for fact in facts {
                    let verdict = if fact.problem {
                        Verdict::Warn
                    } else {
                        Verdict::Pass
                    };
                    r.add_as(fact.id, fact.name, verdict, fact.value);
                }
            }
            Err(e) => r.add("hardware", Verdict::Warn, crate::error::report(&e)),
        }
    }
    let key = match (&store, &label) {
        (Some(store), Ok(label)) => match store.info(label) {
            Ok(k) => {
                r.add(
                    "key",
                    Verdict::Pass,
                    format!("{} is reachable", k.reference),
                );
                Some(k)
            }
            Err(e) => {
                // The identity's key gone: what the daemon says of it too.
                let text = match &identity {
                    Some(id) if e.is_not_found() => {
                        crate::provision::ProvisionError::IdentityKeyMissing {
                            certificate: id.certificate_id.clone(),
                            key: id.key_reference.clone(),
                        }
                        .to_string()
                    }
                    _ => crate::error::report(&e),
                };
                r.add("key", Verdict::Fail, text);
                None
            }
        },
        (_, Err(e)) => {
            r.add("key", Verdict::Fail, e.clone());
            None
        }
        _ => None,
    };
    if let (Some(cert), Some(key)) = (&cert, &key) {
        if *cert.public_key() == key.public_key {
            r.add(
                "key matches certificate",
                Verdict::Pass,
                format!("certificate {} belongs to {}", cert.id(), key.reference),
            );
        } else {
            let problem = if identity.is_some() {
                // What the daemon says of it too.
                crate::provision::ProvisionError::IdentityKeyMismatch {
                    certificate: cert.id(),
                    key: key.reference.clone(),
                }
                .to_string()
            } else {
                format!(
                    "the claim certificate {} does not belong to the claim key {}: import the \
                     claim credential again (`prov-agent claim import --replace`)",
                    cert.id(),
                    key.reference
                )
            };
            r.add("key matches certificate", Verdict::Fail, problem);
        }
    }
    // Keys mode imports the key the service makes: a store that cannot is
    // found out here, not after the service made a certificate for nothing.
    if let (Some(store), crate::config::ProvisioningMode::Keys) = (&store, config.provisioning.mode)
    {
        match store.probe_import() {
            Ok(()) => r.add(
                "key import",
                Verdict::Pass,
                "the key store takes the private key CreateKeysAndCertificate sends (MODE = keys)",
            ),
            Err(e @ crate::keystore::KeyStoreError::ImportRefused { .. }) => r.add(
                "key import",
                Verdict::Fail,
                format!("{e}: MODE = keys cannot work with it; set [PROVISIONING] MODE = csr"),
            ),
            Err(e) => r.add("key import", Verdict::Fail, crate::error::report(&e)),
        }
    }
    if config.attestation.mode == crate::config::AttestationMode::Tpm {
        check_attestation(&mut r, config, store.as_deref());
    }
    let endpoint = Endpoint::new(config).map_err(|e| crate::error::report(&e));
    if let Some(cert) = &cert {
        check_certificate(&mut r, config, &endpoint, cert, identity.is_some());
    }
    if let (Some(cert), Some(key), Some(store)) = (&cert, &key, &store) {
        // As the thing, or as a claim session would connect.
        let client_id = match &identity {
            Some(id) => id.thing_name.clone(),
            None => format!(
                "{}{}",
                config.provisioning.client_id_prefix,
                hex::encode(rand::random::<[u8; 16]>())
            ),
        };
        check_endpoint(&mut r, &endpoint, cert, store.clone(), key, client_id);
    }

    let failed = r.0.iter().any(|f| f.verdict == Verdict::Fail);
    let text = if json {
        super::outcome::document(
            serde_json::json!({ "ok": !failed, "offline": offline, "checks": r.0 }),
        )
    } else {
        r.0.iter()
            .map(|f| {
                let tag = match f.verdict {
                    Verdict::Pass => "ok  ",
                    Verdict::Warn => "warn",
                    Verdict::Fail => "FAIL",
                };
                format!("{tag}  {:<24} {}", f.check, f.detail)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((text, failed))
}

/// The claim policy lets anyone with the (fleet-wide) claim credential
/// connect with any client id that starts with `CLIENT_ID_PREFIX`; a thing
/// named so could be knocked off by them (the service drops the older
/// connection of a client id).
/// `[ATTESTATION] MODE = tpm`: the attestation key certificate is there
/// and valid, and (with the store) the key is there and is the one the
/// certificate is for.
fn check_attestation(r: &mut Report, config: &Config, store: Option<&dyn KeyStore>) {
    let der = match crate::provision::attestation::ak_certificate(config) {
        Ok(Some(der)) => der,
        Ok(None) => return,
        Err(e) => return r.add("attestation", Verdict::Fail, crate::error::report(&e)),
    };
    let Some(store) = store else {
        return r.add(
            "attestation",
            Verdict::Pass,
            "the attestation key certificate is there and valid (the key itself is not checked \
             offline)",
        );
    };
    let label = &config.attestation.key;
    match store.info(label) {
        Ok(ak) => {
            let matches = x509_parser::parse_x509_certificate(&der)
                .is_ok_and(|(_, c)| c.public_key().raw == ak.public_key.spki_der());
            if matches {
                r.add(
                    "attestation",
                    Verdict::Pass,
                    format!(
                        "attestation key {} and its certificate are ready",
                        ak.reference
                    ),
                );
            } else {
                r.add(
                    "attestation",
                    Verdict::Fail,
                    format!(
                        "the attestation key certificate is for another key than {}: run \
                         `prov-agent attest init` and `attest activate` again",
                        ak.reference
                    ),
                );
            }
        }
        Err(e) => r.add(
            "attestation",
            Verdict::Fail,
            format!("{e}: run `prov-agent attest init` and `attest activate`"),
        ),
    }
}

fn check_thing_name(r: &mut Report, config: &Config, thing: &str) {
    let prefix = &config.provisioning.client_id_prefix;
    if thing.starts_with(prefix.as_str()) {
        r.add(
            "thing name",
            Verdict::Fail,
            format!(
                "thing {thing} starts with CLIENT_ID_PREFIX {prefix:?}, the client ids the claim \
                 policy lets every claim holder connect as: anyone with the claim credential can \
                 knock this gateway off; rename things (the template's ThingNamePrefix) or change \
                 CLIENT_ID_PREFIX together with the claim policy"
            ),
        );
    } else {
        r.add(
            "thing name",
            Verdict::Pass,
            format!("thing {thing} is outside the claim sessions' client ids ({prefix}...)"),
        );
    }
}

fn check_state_dir(r: &mut Report, dir: &Path) {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.add(
                "state directory",
                Verdict::Warn,
                format!("{} does not exist yet (enroll creates it)", dir.display()),
            );
            return;
        }
        Err(e) => {
            r.add(
                "state directory",
                Verdict::Fail,
                format!("{}: {e}", dir.display()),
            );
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut problems = Vec::new();
    if mode & 0o077 != 0 {
        problems.push(format!(
            "{} is mode {mode:04o}: others can read it; run `chmod 0700 {}`",
            dir.display(),
            dir.display()
        ));
    }
    if me.is_some_and(|uid| uid != meta.uid()) {
        problems.push(format!(
            "{} is owned by uid {}, not by the agent's user",
            dir.display(),
            meta.uid()
        ));
    }
    for name in ["identity.json", "journal.json", "lock"] {
        let p = dir.join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                problems.push(format!(
                    "{} is mode {mode:04o}; run `chmod 0600 {}`",
                    p.display(),
                    p.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        r.add(
            "state directory",
            Verdict::Pass,
            format!("{} is private (0700)", dir.display()),
        );
    } else {
        r.add("state directory", Verdict::Fail, problems.join("; "));
    }
}

fn check_certificate(
    r: &mut Report,
    config: &Config,
    endpoint: &Result<Endpoint, String>,
    cert: &Certificate,
    enrolled: bool,
) {
    let now = SystemTime::now();
    let now_s = unix(now);
    if now_s < CLOCK_FLOOR
        || now
            < cert
                .not_before()
                .checked_sub(Duration::from_secs(300))
                .unwrap_or(cert.not_before())
    {
        r.add(
            "clock",
            Verdict::Fail,
            format!(
                "the clock says {}, before the certificate's notBefore {} (or before 2025): set the time (NTP) or TLS will fail",
                date(now_s),
                date(unix(cert.not_before()))
            ),
        );
    } else {
        r.add(
            "clock",
            Verdict::Pass,
            format!("{} is plausible", date(now_s)),
        );
    }
    let not_after = unix(cert.not_after());
    if now_s >= not_after {
        r.add(
            "certificate expiry",
            Verdict::Fail,
            format!(
                "certificate {} expired at {}: {}",
                cert.id(),
                date(not_after),
                if enrolled {
                    "it can no longer connect; enroll again (`prov-agent enroll --force`)"
                } else {
                    "ask for a new claim certificate"
                }
            ),
        );
    } else if enrolled && now >= scheduled_at(cert, &config.rotation) {
        r.add(
            "certificate expiry",
            Verdict::Warn,
            format!(
                "certificate {} is due for rotation (not after {}): run `prov-agent rotate`",
                cert.id(),
                date(not_after)
            ),
        );
    } else {
        r.add(
            "certificate expiry",
            Verdict::Pass,
            format!("valid until {}", date(not_after)),
        );
    }
    // The chain: verifiable when ROOT_CERT holds the issuer (the emulator,
    // a private CA); AWS signs device certificates with a CA of the
    // account that is not the server's root.
    let roots = match endpoint {
        Ok(endpoint) => endpoint.roots(),
        Err(e) => {
            r.add("certificate chain", Verdict::Fail, e.clone());
            return;
        }
    };
    let leaf = match x509_parser::parse_x509_certificate(cert.der()) {
        Ok((_, c)) => c,
        Err(e) => {
            r.add("certificate chain", Verdict::Fail, crate::error::report(&e));
            return;
        }
    };
    let issuer = roots.iter().find_map(|der| {
        let (_, ca) = x509_parser::parse_x509_certificate(der).ok()?;
        (ca.subject() == leaf.issuer()).then(|| der.clone())
    });
    match issuer {
        Some(der) => {
            let (_, ca) = x509_parser::parse_x509_certificate(&der).expect("parsed above");
            match leaf.verify_signature(Some(ca.public_key())) {
                Ok(()) => r.add("certificate chain", Verdict::Pass, format!("signed by {}", ca.subject())),
                Err(e) => r.add("certificate chain", Verdict::Fail, format!("the signature by {} does not verify: {e}", ca.subject())),
            }
        }
        None => r.add(
            "certificate chain",
            Verdict::Pass,
            format!("issuer {} is not in ROOT_CERT (normal for AWS-issued certificates); the service checks it", leaf.issuer()),
        ),
    }
}

/// The credential connects: TLS, then MQTT CONNECT as `client_id`,
/// answered by CONNACK 0. A TLS handshake alone proves little: in TLS 1.3
/// the client finishes its side before the server's verdict on its
/// certificate, so a deactivated certificate would pass.
fn check_endpoint(
    r: &mut Report,
    endpoint: &Result<Endpoint, String>,
    cert: &Certificate,
    store: Arc<dyn KeyStore>,
    key: &KeyInfo,
    client_id: String,
) {
    let endpoint = match endpoint {
        Ok(e) => e,
        Err(e) => {
            r.add("endpoint", Verdict::Fail, e.clone());
            return;
        }
    };
    let opts = match endpoint.options(
        "the device's credential",
        client_id.clone(),
        cert,
        store,
        key,
    ) {
        Ok(o) => o,
        Err(e) => {
            r.add("endpoint", Verdict::Fail, crate::error::report(&e));
            return;
        }
    };
    let address = endpoint.address();
    let result = super::runtime()
        .map_err(|e| crate::error::report(&e))
        .and_then(|rt| {
            rt.block_on(async {
                let session = crate::mqtt::Session::connect(&opts)
                    .await
                    .map_err(|e| crate::error::report(&e))?;
                session.close().await;
                Ok::<(), String>(())
            })
        });
    match result {
        Ok(()) => r.add(
            "endpoint",
            Verdict::Pass,
            format!("{address}: connected as {client_id} (TLS, then CONNECT answered by CONNACK 0)"),
        ),
        Err(e) => r.add(
            "endpoint",
            Verdict::Fail,
            format!("{e}; check IOT_ENDPOINT, PORT, ROOT_CERT, the network and the certificate's status"),
        ),
    }
}
