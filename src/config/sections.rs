//! One builder per section of `config.ini`: each reads its keys through the
//! [`Reader`] (file, line and environment overrides) and checks what can
//! be checked within the section; `Config::from_str_with_env` puts them
//! together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::Reader;
use super::{
    values, AttestationConfig, AttestationMode, ConfigError, ExportConfig, KeyStoreConfig,
    PayloadFormat, ProvisioningConfig, ProvisioningMode, RotationConfig, RotationThreshold,
    SerialSource, Settings, FREE_FORM_SECTION,
};
use crate::keystore::{
    Backend, FileSettings, KeyAlgorithm, KeyLabel, KeyStoreSettings, Pkcs11Settings, SecretSource,
    TpmKeyStorage, TpmSettings,
};

/// Relative paths are relative to the config file, not to whatever
/// directory the agent happens to be started from.
pub(super) struct Paths {
    base: PathBuf,
}

impl Paths {
    pub(super) fn new(path: &Path) -> Self {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self { base }
    }

    pub(super) fn resolve(&self, p: PathBuf) -> PathBuf {
        match p {
            p if p.is_absolute() => p,
            p if p == Path::new(".") => self.base.clone(),
            p => self.base.join(p),
        }
    }
}

/// `[SETTINGS]`: the reference client's keys.
pub(super) fn settings(r: &Reader, path: &Path, paths: &Paths) -> Result<Settings, ConfigError> {
    let cert_path = paths.resolve(r.with_default("SETTINGS", "SECURE_CERT_PATH", path_value)?);
    let in_cert_path = |p: PathBuf| {
        if p.is_absolute() {
            p
        } else {
            cert_path.join(p)
        }
    };
    // The reference client's code reads PRODUCTION_TEMPLATE, its README
    // says PROVISIONING_TEMPLATE_NAME: accept either, refuse a conflict.
    let production = r.parse("SETTINGS", "PRODUCTION_TEMPLATE", values::template_name)?;
    let alias = r.parse(
        "SETTINGS",
        "PROVISIONING_TEMPLATE_NAME",
        values::template_name,
    )?;
    let production_template = match (production, alias) {
        (Some(p), Some(a)) if p != a => {
            return Err(ConfigError::Value {
                origin: path.display().to_string(),
                section: "SETTINGS".into(),
                key: "PROVISIONING_TEMPLATE_NAME".into(),
                message: format!(
                "{a:?} contradicts PRODUCTION_TEMPLATE {p:?}: they are the same setting, keep one"
            ),
            })
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => return Err(ConfigError::Missing {
            file: path.to_path_buf(),
            section: "SETTINGS".into(),
            key: "PRODUCTION_TEMPLATE".into(),
            hint:
                "name the fleet provisioning template (PROVISIONING_TEMPLATE_NAME is accepted too)"
                    .into(),
        }),
    };
    Ok(Settings {
        root_cert: in_cert_path(r.with_default("SETTINGS", "ROOT_CERT", path_value)?),
        claim_cert: in_cert_path(r.with_default("SETTINGS", "CLAIM_CERT", path_value)?),
        secure_key: r
            .parse("SETTINGS", "SECURE_KEY", path_value)?
            .map(in_cert_path),
        iot_endpoint: r.required(
            "SETTINGS",
            "IOT_ENDPOINT",
            "set it to your account's data endpoint, e.g. xxxxxxxx-ats.iot.us-east-1.amazonaws.com",
            endpoint,
        )?,
        production_template,
        cert_rotation_template: r.parse(
            "SETTINGS",
            "CERT_ROTATION_TEMPLATE",
            values::template_name,
        )?,
        secure_cert_path: cert_path,
    })
}

/// `[KEYSTORE]` and the backends' own sections (`[TPM]`, `[PKCS11]`).
pub(super) fn keystore(
    r: &Reader,
    path: &Path,
    state_dir: &Path,
) -> Result<KeyStoreConfig, ConfigError> {
    let backend = r.with_default("KEYSTORE", "BACKEND", |s| s.parse::<Backend>())?;
    if !backend.compiled_in() {
        let located = r.get("KEYSTORE", "BACKEND");
        return Err(ConfigError::Value {
            origin: located
                .map(|l| l.origin)
                .unwrap_or_else(|| format!("{} (default)", path.display())),
            section: "KEYSTORE".into(),
            key: "BACKEND".into(),
            message: format!(
                "this prov-agent was built without the {b} backend: rebuild with \
                 `cargo build --features {b}` or choose another backend",
                b = backend.as_str()
            ),
        });
    }
    let label = |s: &str| KeyLabel::new(s.trim()).map_err(|e| e.to_string());
    // Every backend's section is validated, whichever backend is in use,
    // so that a mistake shows before someone switches to it.
    let tpm = TpmSettings {
        tcti: r.with_default("TPM", "TCTI", values::non_empty)?,
        storage: r.with_default("TPM", "KEY_STORAGE", |s| {
            match s.trim().to_ascii_lowercase().as_str() {
                "blob" => Ok(TpmKeyStorage::Blob),
                "persistent" => Ok(TpmKeyStorage::Persistent),
                _ => Err(format!("{s:?}: use blob or persistent")),
            }
        })?,
        persistent_base: r.with_default("TPM", "PERSISTENT_BASE", |s| {
            let v = values::u32_auto_radix(s)?;
            if (0x8100_0000..=0x817F_FFFF).contains(&v) {
                Ok(v)
            } else {
                Err(format!(
                    "{s:?} is outside the owner persistent range 0x81000000-0x817FFFFF"
                ))
            }
        })?,
        allow_unwrapped_import: r.with_default("TPM", "ALLOW_UNWRAPPED_IMPORT", values::boolean)?,
        key_dir: state_dir.join("tpm"),
    };
    let module = r.parse("PKCS11", "MODULE", path_value)?;
    let token_label = r.parse("PKCS11", "TOKEN_LABEL", values::non_empty)?;
    let pin = r.parse("PKCS11", "PIN_SOURCE", SecretSource::parse)?;
    let claim_key_id = r.parse("PKCS11", "CLAIM_KEY_ID", key_id)?;
    if claim_key_id.is_some() && backend != Backend::Pkcs11 {
        return Err(ConfigError::Value {
            origin: path.display().to_string(),
            section: "PKCS11".into(),
            key: "CLAIM_KEY_ID".into(),
            message: format!(
                "names a key of a PKCS#11 token, and [KEYSTORE] BACKEND is {backend}: set \
                 BACKEND = pkcs11 or remove CLAIM_KEY_ID"
            ),
        });
    }
    let claim_key = r.with_default("KEYSTORE", "CLAIM_KEY", label)?;
    let backend_settings = match backend {
        Backend::Tpm => KeyStoreSettings::Tpm(tpm),
        Backend::Pkcs11 => {
            let missing = |key: &str, hint: &str| ConfigError::Missing {
                file: path.to_path_buf(),
                section: "PKCS11".into(),
                key: key.into(),
                hint: hint.into(),
            };
            KeyStoreSettings::Pkcs11(Pkcs11Settings {
                module: module.ok_or_else(|| {
                    missing(
                        "MODULE",
                        "the path of your token's PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so",
                    )
                })?,
                token_label: token_label.ok_or_else(|| {
                    missing("TOKEN_LABEL", "the label of the token that holds the keys")
                })?,
                pin: pin.ok_or_else(|| {
                    missing(
                        "PIN_SOURCE",
                        "file:/path, env:NAME or credential:NAME (the PIN is never written in the config)",
                    )
                })?,
                key_ids: claim_key_id
                    .map(|id| (claim_key.to_string(), id))
                    .into_iter()
                    .collect(),
            })
        }
        Backend::File => KeyStoreSettings::File(FileSettings {
            key_dir: state_dir.join("keys"),
        }),
    };
    let device_key = r.with_default("KEYSTORE", "DEVICE_KEY", label)?;
    check_key_labels(path, &claim_key, &device_key)?;
    Ok(KeyStoreConfig {
        backend,
        claim_key,
        device_key,
        algorithm: r.with_default("KEYSTORE", "KEY_ALGORITHM", |s| s.parse::<KeyAlgorithm>())?,
        settings: backend_settings,
        helper_timeout: r.with_default("KEYSTORE", "HELPER_TIMEOUT", |s| {
            bounded_duration(s, HOUR, "1h")
        })?,
    })
}

/// `[PROVISIONING]`.
pub(super) fn provisioning(r: &Reader) -> Result<ProvisioningConfig, ConfigError> {
    let port = r.with_default("PROVISIONING", "PORT", values::port)?;
    Ok(ProvisioningConfig {
        mode: r.with_default("PROVISIONING", "MODE", |s| {
            match s.trim().to_ascii_lowercase().as_str() {
                "csr" => Ok(ProvisioningMode::Csr),
                "keys" => Ok(ProvisioningMode::Keys),
                _ => Err(format!("{s:?}: use csr (key made in hardware) or keys")),
            }
        })?,
        serial: r.with_default("PROVISIONING", "SERIAL_NUMBER", serial_source)?,
        payload_format: r.with_default("PROVISIONING", "PAYLOAD_FORMAT", |s| {
            match s.trim().to_ascii_lowercase().as_str() {
                "json" => Ok(PayloadFormat::Json),
                "cbor" => Ok(PayloadFormat::Cbor),
                _ => Err(format!("{s:?}: use json or cbor")),
            }
        })?,
        port,
        alpn: match r.with_default("PROVISIONING", "ALPN", |s| {
            match s.trim().to_ascii_lowercase().as_str() {
                "auto" => Ok(None),
                other => values::boolean(other)
                    .map(Some)
                    .map_err(|_| format!("{s:?}: use auto (on for port 443), true or false")),
            }
        })? {
            Some(on) => on,
            None => port == 443,
        },
        response_timeout: r.with_default("PROVISIONING", "RESPONSE_TIMEOUT", |s| {
            bounded_duration(s, HOUR, "1h")
        })?,
        connect_timeout: r.with_default("PROVISIONING", "CONNECT_TIMEOUT", |s| {
            bounded_duration(s, HOUR, "1h")
        })?,
        max_retries: r.with_default("PROVISIONING", "MAX_RETRIES", |s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| format!("{s:?}: a number of retries from 0 to 100"))
        })?,
        client_id_prefix: r.with_default(
            "PROVISIONING",
            "CLIENT_ID_PREFIX",
            values::client_id_prefix,
        )?,
        verify_topic: r.with_default("PROVISIONING", "VERIFY_TOPIC", values::topic)?,
        decommission_claim: r.with_default(
            "PROVISIONING",
            "DECOMMISSION_CLAIM",
            values::boolean,
        )?,
    })
}

/// `[TEMPLATE_PARAMETERS]`: free-form RegisterThing parameters, checked
/// against `[PROVISIONING]` (the claim sessions' client ids).
pub(super) fn template_parameters(
    r: &Reader,
    path: &Path,
    provisioning: &ProvisioningConfig,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut template_parameters = BTreeMap::new();
    if let Some(section) = r.ini.section(FREE_FORM_SECTION) {
        for e in &section.entries {
            template_parameters.insert(e.key.clone(), e.value.clone());
        }
    }
    for ((section, key), (_, value)) in &r.env {
        if section == FREE_FORM_SECTION {
            // Environment names are upper-case; keep the spelling of a
            // key the file already has.
            let existing = template_parameters
                .keys()
                .find(|k| k.eq_ignore_ascii_case(key))
                .cloned();
            template_parameters.insert(existing.unwrap_or_else(|| key.clone()), value.clone());
        }
    }
    if template_parameters.contains_key("SerialNumber") {
        return Err(ConfigError::Value {
            origin: path.display().to_string(),
            section: FREE_FORM_SECTION.into(),
            key: "SerialNumber".into(),
            message: "is sent by the agent itself: set [PROVISIONING] SERIAL_NUMBER instead".into(),
        });
    }

    // The claim policy lets claim sessions connect only as
    // `client/<CLIENT_ID_PREFIX>*`; a thing whose name starts with the
    // prefix could be knocked off by anyone holding the claim
    // credential (the service drops the older connection of a client id).
    if let Some(prefix) = template_parameters.get("ThingNamePrefix") {
        let names = format!("{prefix}_");
        let cip = &provisioning.client_id_prefix;
        if names.starts_with(cip.as_str()) || cip.starts_with(names.as_str()) {
            return Err(ConfigError::Value {
                origin: path.display().to_string(),
                section: FREE_FORM_SECTION.into(),
                key: "ThingNamePrefix".into(),
                message: format!(
                    "thing names {names}... and the claim sessions' client ids {cip}... \
                     overlap: anyone with the claim credential could connect as this \
                     gateway's thing and knock it off; choose a ThingNamePrefix that does \
                     not start with [PROVISIONING] CLIENT_ID_PREFIX"
                ),
            });
        }
    }
    Ok(template_parameters)
}

/// `[ROTATION]`.
pub(super) fn rotation(r: &Reader) -> Result<RotationConfig, ConfigError> {
    Ok(RotationConfig {
        threshold: r.with_default("ROTATION", "THRESHOLD", |s| {
            if s.trim().ends_with('%') || s.trim().starts_with("0.") {
                values::fraction(s).map(RotationThreshold::Lifetime)
            } else {
                values::duration(s)
                    .and_then(|d| at_most(d, s, CENTURY, "36500d"))
                    .map(RotationThreshold::BeforeExpiry)
                    .map_err(|e| format!("{e}; or a share of the lifetime such as 66%"))
            }
        })?,
        random_delay: r.with_default("ROTATION", "RANDOM_DELAY", |s| {
            values::duration(s).and_then(|d| at_most(d, s, MONTH, "30d"))
        })?,
        check_interval: r.with_default("ROTATION", "CHECK_INTERVAL", |s| {
            bounded_duration(s, MONTH, "30d")
        })?,
        command_topic: r.with_default("ROTATION", "COMMAND_TOPIC", values::topic)?,
        report_topic: r.with_default("ROTATION", "REPORT_TOPIC", values::topic)?,
        post_rotation_command: r.parse("ROTATION", "POST_ROTATION_COMMAND", values::non_empty)?,
        min_interval: r.with_default("ROTATION", "MIN_INTERVAL", |s| {
            values::duration(s).and_then(|d| at_most(d, s, MONTH, "30d"))
        })?,
    })
}

/// Longest configured label: the agent derives labels with up to 8 more
/// characters (`.pending`, `.alt.old`) and every label is at most 64.
const MAX_CONFIGURED_LABEL: usize = 56;

/// The labels the agent makes of the claim key's (staging for `claim
/// import`, and `.old` while the PKCS#11 store promotes) and of the device
/// key's (the second slot, and `.old` of each).
fn derived_labels(claim: &str, device: &str) -> (Vec<String>, Vec<String>) {
    let claim_labels = vec![
        claim.to_string(),
        format!("{claim}.pending"),
        format!("{claim}.old"),
    ];
    let device_labels = vec![
        device.to_string(),
        format!("{device}.alt"),
        format!("{device}.old"),
        format!("{device}.alt.old"),
    ];
    (claim_labels, device_labels)
}

/// CLAIM_KEY and DEVICE_KEY leave room for the labels derived from them,
/// and no label of one is a label of the other (`CLAIM_KEY = device.alt`
/// would have the first rotation delete the claim key).
fn check_key_labels(path: &Path, claim: &KeyLabel, device: &KeyLabel) -> Result<(), ConfigError> {
    let value = |key: &str, message: String| ConfigError::Value {
        origin: path.display().to_string(),
        section: "KEYSTORE".into(),
        key: key.into(),
        message,
    };
    for (key, label) in [("CLAIM_KEY", claim), ("DEVICE_KEY", device)] {
        if label.as_str().len() > MAX_CONFIGURED_LABEL {
            return Err(value(
                key,
                format!(
                    "{label} is {} characters; at most {MAX_CONFIGURED_LABEL}, since the agent \
                     adds up to 8 (.pending, .alt.old) to labels of at most 64",
                    label.as_str().len()
                ),
            ));
        }
    }
    let (claim_labels, device_labels) = derived_labels(claim.as_str(), device.as_str());
    if let Some(shared) = claim_labels.iter().find(|l| device_labels.contains(l)) {
        return Err(value(
            "DEVICE_KEY",
            format!(
                "CLAIM_KEY {claim} and DEVICE_KEY {device} both lead to the label {shared} (the \
                 agent uses {} for the claim key and {} for the device key): choose labels \
                 that share none",
                claim_labels.join(", "),
                device_labels.join(", ")
            ),
        ));
    }
    Ok(())
}

/// `[EXPORT]`. A group that may read the export needs a directory outside
/// STATE_DIR (0700: its members could not reach inside).
pub(super) fn export(
    r: &Reader,
    path: &Path,
    paths: &Paths,
    state_dir: &Path,
) -> Result<ExportConfig, ConfigError> {
    let dir = match r.parse("EXPORT", "DIR", path_value)? {
        Some(dir) => paths.resolve(dir),
        None => state_dir.join("export"),
    };
    let group = r.parse("EXPORT", "GROUP", |s| {
        let name = values::non_empty(s)?;
        group_id(&name, Path::new("/etc/group")).map(|gid| (name, gid))
    })?;
    if group.is_some() && dir.starts_with(state_dir) {
        return Err(ConfigError::Value {
            origin: path.display().to_string(),
            section: "EXPORT".into(),
            key: "GROUP".into(),
            message: format!(
                "the export directory {} is inside STATE_DIR {}, which only the agent's user                  may enter, so the group could not read it: set [EXPORT] DIR outside STATE_DIR                  (for example /var/lib/prov-agent-identity)",
                dir.display(),
                state_dir.display()
            ),
        });
    }
    Ok(ExportConfig { dir, group })
}

/// `[ATTESTATION]`. A proof of the key's origin needs a key made in a TPM:
/// the TPM backend, and csr mode (in keys mode the cloud made the key).
pub(super) fn attestation(
    r: &Reader,
    path: &Path,
    keystore: &KeyStoreConfig,
    provisioning: &ProvisioningConfig,
) -> Result<AttestationConfig, ConfigError> {
    let mode = r.with_default("ATTESTATION", "MODE", |s| {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(AttestationMode::None),
            "tpm" => Ok(AttestationMode::Tpm),
            other => Err(format!("{other:?}: use none or tpm")),
        }
    })?;
    let key = r.with_default("ATTESTATION", "KEY", |s| {
        KeyLabel::new(s.trim()).map_err(|e| e.to_string())
    })?;
    let refuse = |message: String| ConfigError::Value {
        origin: path.display().to_string(),
        section: "ATTESTATION".into(),
        key: "MODE".into(),
        message,
    };
    if mode == AttestationMode::Tpm {
        if keystore.backend != Backend::Tpm {
            return Err(refuse(format!(
                "tpm attestation needs the key in a TPM, and [KEYSTORE] BACKEND is {}: set \
                 BACKEND = tpm, or MODE = none",
                keystore.backend
            )));
        }
        if provisioning.mode != ProvisioningMode::Csr && !crate::fault::tampers("attest-keys-mode")
        {
            return Err(refuse(
                "in [PROVISIONING] MODE = keys the cloud makes the device key, which no TPM can \
                 attest as its own: set [PROVISIONING] MODE = csr, or MODE = none"
                    .into(),
            ));
        }
        if [&keystore.claim_key, &keystore.device_key]
            .iter()
            .any(|l| key.as_str() == l.as_str() || key.as_str().starts_with(&format!("{l}.")))
        {
            return Err(ConfigError::Value {
                origin: path.display().to_string(),
                section: "ATTESTATION".into(),
                key: "KEY".into(),
                message: format!(
                    "{key} is a label the agent uses for the claim or device key: choose \
                     another (default attest)"
                ),
            });
        }
    }
    Ok(AttestationConfig { mode, key })
}

/// The id of group `name` (or a number) in the group file `file`.
pub(super) fn group_id(name: &str, file: &Path) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "cannot read {} to look up group {name:?}: {e}",
            file.display()
        )
    })?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            format!(
                "no group {name:?} in {}: create it (groupadd {name}) or give its number",
                file.display()
            )
        })
}

/// A CKA_ID: hex (`0a1b`, colons allowed: `0a:1b`) or RFC 7512's
/// percent-encoding (`%0a%1b`).
fn key_id(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let hex_digits: String = if t.starts_with('%') {
        t.split('%').skip(1).collect()
    } else {
        t.replace(':', "")
    };
    match hex::decode(&hex_digits) {
        Ok(id) if !id.is_empty() && id.len() <= 64 => Ok(id),
        _ => Err(format!(
            "{t:?} is not a CKA_ID: give it in hex (0a1b, or 0a:1b) or percent-encoded as in a \
             PKCS#11 URI (%0a%1b), as pkcs11-tool --list-objects shows it"
        )),
    }
}

pub(super) fn path_value(s: &str) -> Result<PathBuf, String> {
    values::non_empty(s).map(PathBuf::from)
}

const HOUR: Duration = Duration::from_secs(3600);
const MONTH: Duration = Duration::from_secs(30 * 86_400);
const CENTURY: Duration = Duration::from_secs(36_500 * 86_400);

/// `d` if it is at most `max` (written `max_text`): durations are added to
/// clocks at run time, and one beyond any sensible setting would overflow.
fn at_most(d: Duration, s: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    if d <= max {
        Ok(d)
    } else {
        Err(format!(
            "{:?} is longer than the most this takes, {max_text}",
            s.trim()
        ))
    }
}

/// A duration longer than zero and at most `max`.
fn bounded_duration(s: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    positive_duration(s).and_then(|d| at_most(d, s, max, max_text))
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = values::duration(s)?;
    if d.is_zero() {
        Err("must be longer than zero".into())
    } else {
        Ok(d)
    }
}

fn endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 253
        && !s.contains("://")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a host name: write the endpoint alone, without scheme or port \
             (the port is [PROVISIONING] PORT)"
        ))
    }
}

fn serial_source(s: &str) -> Result<SerialSource, String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "auto" => Ok(SerialSource::Auto),
        "machine-id" => Ok(SerialSource::MachineId),
        "dmi" => Ok(SerialSource::Dmi),
        "tpm-ek" => Ok(SerialSource::TpmEk),
        _ => {
            let fixed = t.strip_prefix("fixed:").unwrap_or(t);
            if !fixed.is_empty()
                && fixed.len() <= 128
                && fixed
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                Ok(SerialSource::Fixed(fixed.to_string()))
            } else {
                Err(format!(
                    "{t:?}: use auto, machine-id, dmi, tpm-ek, or a serial of up to 128 \
                     characters of A-Z a-z 0-9 - _ . :"
                ))
            }
        }
    }
}
