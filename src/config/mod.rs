//! `config.ini` -> typed, validated [`Config`].
//!
//! The reference client's `[SETTINGS]` keys keep their names and meaning;
//! new sections add what a hardened agent needs. Every key can be overridden
//! from the environment as `PROV_AGENT_<SECTION>_<KEY>` (for example
//! `PROV_AGENT_SETTINGS_IOT_ENDPOINT`). Unknown sections, unknown keys and
//! bad values are errors that name the file, the line and the key.
//! docs/configuration.md lists every key with its default.

mod ini;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keystore::{
    Backend, FileSettings, KeyAlgorithm, KeyLabel, KeyStoreSettings, Pkcs11Settings, SecretSource,
    TpmKeyStorage, TpmSettings,
};
use ini::Ini;

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/prov-agent/config.ini";
/// Environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "PROV_AGENT_CONFIG";
/// Variables with the override prefix that are not overrides.
pub const RESERVED_ENV: &[&str] = &[
    ENV_CONFIG,
    "PROV_AGENT_LOG",
    "PROV_AGENT_PIN",
    "PROV_AGENT_FAULT",
];
/// Prefix of the per-key environment overrides.
pub const ENV_PREFIX: &str = "PROV_AGENT_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {file}: {source}. Give the right path with --config or {ENV_CONFIG}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{origin}: [{section}] {key}: {message}")]
    Value {
        origin: String,
        section: String,
        key: String,
        message: String,
    },
    #[error("{file}: [{section}] {key} is required: {hint}")]
    Missing {
        file: PathBuf,
        section: String,
        key: String,
        hint: String,
    },
    #[error("{origin}: unknown key [{section}] {key}{suggestion}. docs/configuration.md lists every key")]
    UnknownKey {
        origin: String,
        section: String,
        key: String,
        suggestion: String,
    },
    #[error("{file}:{line}: unknown section [{section}]; known sections: {known}")]
    UnknownSection {
        file: PathBuf,
        line: usize,
        section: String,
        known: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// How the device obtains its key and certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisioningMode {
    /// CreateCertificateFromCsr: the key is made inside the hardware and
    /// never leaves it. The default.
    Csr,
    /// CreateKeysAndCertificate: the cloud makes the key and sends it; the
    /// agent imports it into the hardware at once and wipes every copy.
    Keys,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    Json,
    Cbor,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Cbor => "cbor",
        }
    }
}

/// Where the device's serial number comes from. Never a constant shared by
/// every device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSource {
    /// Written in the config (one config per device).
    Fixed(String),
    /// `/etc/machine-id`.
    MachineId,
    /// The DMI product serial (`/sys/class/dmi/id/product_serial`).
    Dmi,
    /// A digest of the TPM's endorsement key.
    TpmEk,
    /// The first of dmi, machine-id that gives a value.
    Auto,
}

/// When a certificate is due for rotation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RotationThreshold {
    /// After this share of the certificate's lifetime has passed.
    Lifetime(f64),
    /// This long before notAfter.
    BeforeExpiry(Duration),
}

/// The reference client's `[SETTINGS]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub secure_cert_path: PathBuf,
    /// Resolved against `secure_cert_path`.
    pub root_cert: PathBuf,
    /// Resolved against `secure_cert_path`.
    pub claim_cert: PathBuf,
    /// The claim private key file, resolved against `secure_cert_path`. With
    /// a hardware backend this is what `claim import` moves into the
    /// hardware; the agent never reads it otherwise.
    pub secure_key: Option<PathBuf>,
    pub iot_endpoint: String,
    pub production_template: String,
    pub cert_rotation_template: Option<String>,
}

#[derive(Clone, Debug)]
pub struct KeyStoreConfig {
    pub backend: Backend,
    pub claim_key: KeyLabel,
    pub device_key: KeyLabel,
    pub algorithm: KeyAlgorithm,
    pub settings: KeyStoreSettings,
}

#[derive(Clone, Debug)]
pub struct ProvisioningConfig {
    pub mode: ProvisioningMode,
    pub serial: SerialSource,
    pub payload_format: PayloadFormat,
    pub port: u16,
    /// Offer ALPN `x-amzn-mqtt-ca` (needed for MQTT on port 443).
    pub alpn: bool,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub client_id_prefix: String,
    /// Topic of the publish/subscribe round trip that proves a new
    /// credential; `{thing}` is replaced by the thing name.
    pub verify_topic: String,
    pub decommission_claim: bool,
}

#[derive(Clone, Debug)]
pub struct RotationConfig {
    pub threshold: RotationThreshold,
    pub random_delay: Duration,
    pub check_interval: Duration,
    /// `{thing}` is replaced by the thing name.
    pub command_topic: String,
    pub report_topic: String,
    pub post_rotation_command: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub settings: Settings,
    pub state_dir: PathBuf,
    pub keystore: KeyStoreConfig,
    pub provisioning: ProvisioningConfig,
    /// Sent to RegisterThing with SerialNumber.
    pub template_parameters: BTreeMap<String, String>,
    pub rotation: RotationConfig,
}

/// Every section and key the agent knows, with its default (`None`: no
/// default). docs/configuration.md is checked against this table by a test.
/// A key and its default (`None`: no default).
pub type KeySpec = (&'static str, Option<&'static str>);

pub const SCHEMA: &[(&str, &[KeySpec])] = &[
    (
        "SETTINGS",
        &[
            ("SECURE_CERT_PATH", Some(".")),
            ("ROOT_CERT", Some("root.ca.pem")),
            ("CLAIM_CERT", Some("claim.pem.crt")),
            ("SECURE_KEY", None),
            ("IOT_ENDPOINT", None),
            ("PRODUCTION_TEMPLATE", None),
            ("PROVISIONING_TEMPLATE_NAME", None),
            ("CERT_ROTATION_TEMPLATE", None),
        ],
    ),
    ("AGENT", &[("STATE_DIR", Some("/var/lib/prov-agent"))]),
    (
        "KEYSTORE",
        &[
            ("BACKEND", Some("tpm")),
            ("CLAIM_KEY", Some("claim")),
            ("DEVICE_KEY", Some("device")),
            ("KEY_ALGORITHM", Some("ec-p256")),
        ],
    ),
    (
        "TPM",
        &[
            ("TCTI", Some("device:/dev/tpmrm0")),
            ("KEY_STORAGE", Some("blob")),
            ("PERSISTENT_BASE", Some("0x81000100")),
        ],
    ),
    (
        "PKCS11",
        &[
            ("MODULE", None),
            ("TOKEN_LABEL", None),
            ("PIN_SOURCE", None),
        ],
    ),
    (
        "PROVISIONING",
        &[
            ("MODE", Some("csr")),
            ("SERIAL_NUMBER", Some("auto")),
            ("PAYLOAD_FORMAT", Some("json")),
            ("PORT", Some("8883")),
            ("ALPN", Some("auto")),
            ("RESPONSE_TIMEOUT", Some("10s")),
            ("CONNECT_TIMEOUT", Some("10s")),
            ("MAX_RETRIES", Some("5")),
            ("CLIENT_ID_PREFIX", Some("prov-")),
            ("VERIFY_TOPIC", Some("things/{thing}/provisioned")),
            ("DECOMMISSION_CLAIM", Some("false")),
        ],
    ),
    // Free-form: every key is a RegisterThing parameter.
    ("TEMPLATE_PARAMETERS", &[]),
    (
        "ROTATION",
        &[
            ("THRESHOLD", Some("66%")),
            ("RANDOM_DELAY", Some("6h")),
            ("CHECK_INTERVAL", Some("1h")),
            ("COMMAND_TOPIC", Some("cmd/{thing}")),
            ("REPORT_TOPIC", Some("things/{thing}/rotation")),
            ("POST_ROTATION_COMMAND", None),
        ],
    ),
];

const FREE_FORM_SECTION: &str = "TEMPLATE_PARAMETERS";

/// A value with the place it came from, for messages.
struct Located {
    value: String,
    origin: String,
}

struct Reader {
    ini: Ini,
    /// `(SECTION, KEY)` upper-case -> value from the environment.
    env: BTreeMap<(String, String), (String, String)>,
}

impl Reader {
    fn new(ini: Ini, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut overrides = BTreeMap::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if RESERVED_ENV.contains(&var.as_str()) {
                continue;
            }
            let found = SCHEMA.iter().find_map(|(section, keys)| {
                let key = rest.strip_prefix(section)?.strip_prefix('_')?;
                if *section == FREE_FORM_SECTION {
                    return (!key.is_empty()).then(|| (section.to_string(), key.to_string()));
                }
                keys.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(k, _)| (section.to_string(), k.to_string()))
            });
            let (section, key) = found.ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: "names no known [SECTION] KEY; write PROV_AGENT_<SECTION>_<KEY>, e.g. \
                          PROV_AGENT_SETTINGS_IOT_ENDPOINT"
                    .into(),
            })?;
            overrides.insert((section, key.to_ascii_uppercase()), (var, value));
        }
        Ok(Self {
            ini,
            env: overrides,
        })
    }

    fn file(&self) -> &Path {
        &self.ini.path
    }

    fn get(&self, section: &str, key: &str) -> Option<Located> {
        if let Some((var, value)) = self.env.get(&(section.to_string(), key.to_string())) {
            return Some(Located {
                value: value.clone(),
                origin: format!("environment {var}"),
            });
        }
        let entry = self.ini.section(section)?.get(key)?;
        Some(Located {
            value: entry.value.clone(),
            origin: format!("{}:{}", self.ini.path.display(), entry.line),
        })
    }

    /// The parsed value, or `None` when the key is absent (an empty value
    /// counts as absent for keys that have no default).
    fn parse<T>(
        &self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(located) = self.get(section, key) else {
            return Ok(None);
        };
        parse(&located.value)
            .map(Some)
            .map_err(|message| ConfigError::Value {
                origin: located.origin,
                section: section.into(),
                key: key.into(),
                message,
            })
    }

    /// The parsed value, or the schema's default.
    fn with_default<T>(
        &self,
        section: &str,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        if let Some(v) = self.parse(section, key, &parse)? {
            return Ok(v);
        }
        let default = schema_default(section, key)
            .unwrap_or_else(|| panic!("[{section}] {key} has no default in SCHEMA"));
        Ok(parse(default).expect("SCHEMA defaults parse"))
    }

    fn required<T>(
        &self,
        section: &str,
        key: &str,
        hint: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(section, key, parse)?
            .ok_or_else(|| ConfigError::Missing {
                file: self.file().to_path_buf(),
                section: section.into(),
                key: key.into(),
                hint: hint.into(),
            })
    }

    fn check_unknown(&self) -> Result<(), ConfigError> {
        let known: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
        for section in &self.ini.sections {
            let Some((name, keys)) = SCHEMA
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(&section.name))
            else {
                return Err(ConfigError::UnknownSection {
                    file: self.ini.path.clone(),
                    line: section.line,
                    section: section.name.clone(),
                    known: known.join(", "),
                });
            };
            if *name == FREE_FORM_SECTION {
                continue;
            }
            for entry in &section.entries {
                if !keys.iter().any(|(k, _)| k.eq_ignore_ascii_case(&entry.key)) {
                    return Err(ConfigError::UnknownKey {
                        origin: format!("{}:{}", self.ini.path.display(), entry.line),
                        section: section.name.clone(),
                        key: entry.key.clone(),
                        suggestion: suggest(&entry.key, keys),
                    });
                }
            }
        }
        Ok(())
    }
}

fn schema_default(section: &str, key: &str) -> Option<&'static str> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)?
        .1
        .iter()
        .find(|(k, _)| *k == key)?
        .1
}

/// "; did you mean X?" for a near miss (same letters ignoring case and
/// separators, or one edit away).
fn suggest(key: &str, keys: &[KeySpec]) -> String {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
    };
    let k = norm(key);
    keys.iter()
        .find(|(cand, _)| {
            let c = norm(cand);
            c == k || edit_distance(&c, &k) <= 2
        })
        .map(|(cand, _)| format!("; did you mean {cand}?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Config {
    /// Reads `path` and applies `PROV_AGENT_*` overrides from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the text it parsed (the daemon
    /// hands exactly that text to its key helper).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_str_with_env(path, &text, std::env::vars())?;
        Ok((config, text))
    }

    /// Parses `text` as if read from `path`, with the given environment.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let ini = Ini::parse(path, text)?;
        let r = Reader::new(ini, env)?;
        r.check_unknown()?;
        // Relative paths are relative to the config file, not to whatever
        // directory the agent happens to be started from.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: PathBuf| match p {
            p if p.is_absolute() => p,
            p if p == Path::new(".") => base.clone(),
            p => base.join(p),
        };

        let cert_path = resolve(r.with_default("SETTINGS", "SECURE_CERT_PATH", path_value)?);
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
            (None, None) => {
                return Err(ConfigError::Missing {
                    file: path.to_path_buf(),
                    section: "SETTINGS".into(),
                    key: "PRODUCTION_TEMPLATE".into(),
                    hint: "name the fleet provisioning template (PROVISIONING_TEMPLATE_NAME is accepted too)".into(),
                })
            }
        };
        let settings = Settings {
            root_cert: in_cert_path(r.with_default("SETTINGS", "ROOT_CERT", path_value)?),
            claim_cert: in_cert_path(r.with_default("SETTINGS", "CLAIM_CERT", path_value)?),
            secure_key: r.parse("SETTINGS", "SECURE_KEY", path_value)?.map(in_cert_path),
            iot_endpoint: r.required(
                "SETTINGS",
                "IOT_ENDPOINT",
                "set it to your account's data endpoint, e.g. xxxxxxxx-ats.iot.us-east-1.amazonaws.com",
                endpoint,
            )?,
            production_template,
            cert_rotation_template: r.parse("SETTINGS", "CERT_ROTATION_TEMPLATE", values::template_name)?,
            secure_cert_path: cert_path,
        };

        let state_dir = resolve(r.with_default("AGENT", "STATE_DIR", path_value)?);

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
            key_dir: state_dir.join("tpm"),
        };
        let module = r.parse("PKCS11", "MODULE", path_value)?;
        let token_label = r.parse("PKCS11", "TOKEN_LABEL", values::non_empty)?;
        let pin = r.parse("PKCS11", "PIN_SOURCE", SecretSource::parse)?;
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
                })
            }
            Backend::File => KeyStoreSettings::File(FileSettings {
                key_dir: state_dir.join("keys"),
            }),
        };
        let claim_key = r.with_default("KEYSTORE", "CLAIM_KEY", label)?;
        let device_key = r.with_default("KEYSTORE", "DEVICE_KEY", label)?;
        if claim_key == device_key {
            return Err(ConfigError::Value {
                origin: path.display().to_string(),
                section: "KEYSTORE".into(),
                key: "DEVICE_KEY".into(),
                message: format!("must differ from CLAIM_KEY (both are {claim_key})"),
            });
        }
        let keystore = KeyStoreConfig {
            backend,
            claim_key,
            device_key,
            algorithm: r
                .with_default("KEYSTORE", "KEY_ALGORITHM", |s| s.parse::<KeyAlgorithm>())?,
            settings: backend_settings,
        };

        let port = r.with_default("PROVISIONING", "PORT", values::port)?;
        let provisioning = ProvisioningConfig {
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
            response_timeout: r.with_default(
                "PROVISIONING",
                "RESPONSE_TIMEOUT",
                positive_duration,
            )?,
            connect_timeout: r.with_default(
                "PROVISIONING",
                "CONNECT_TIMEOUT",
                positive_duration,
            )?,
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
        };

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
                message: "is sent by the agent itself: set [PROVISIONING] SERIAL_NUMBER instead"
                    .into(),
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

        let rotation = RotationConfig {
            threshold: r.with_default("ROTATION", "THRESHOLD", |s| {
                if s.trim().ends_with('%') || s.trim().starts_with("0.") {
                    values::fraction(s).map(RotationThreshold::Lifetime)
                } else {
                    values::duration(s)
                        .map(RotationThreshold::BeforeExpiry)
                        .map_err(|e| format!("{e}; or a share of the lifetime such as 66%"))
                }
            })?,
            random_delay: r.with_default("ROTATION", "RANDOM_DELAY", values::duration)?,
            check_interval: r.with_default("ROTATION", "CHECK_INTERVAL", positive_duration)?,
            command_topic: r.with_default("ROTATION", "COMMAND_TOPIC", values::topic)?,
            report_topic: r.with_default("ROTATION", "REPORT_TOPIC", values::topic)?,
            post_rotation_command: r.parse(
                "ROTATION",
                "POST_ROTATION_COMMAND",
                values::non_empty,
            )?,
        };

        Ok(Config {
            source: path.to_path_buf(),
            settings,
            state_dir,
            keystore,
            provisioning,
            template_parameters,
            rotation,
        })
    }
}

fn path_value(s: &str) -> Result<PathBuf, String> {
    values::non_empty(s).map(PathBuf::from)
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

#[cfg(test)]
mod tests;
