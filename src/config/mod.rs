//! `config.ini` -> typed, validated [`Config`].
//!
//! The reference client's `[SETTINGS]` keys keep their names and meaning;
//! new sections add what a hardened agent needs. Every key can be overridden
//! from the environment as `PROV_AGENT_<SECTION>_<KEY>` (for example
//! `PROV_AGENT_SETTINGS_IOT_ENDPOINT`). Unknown sections, unknown keys and
//! bad values are errors that name the file, the line and the key.
//! docs/configuration.md lists every key with its default.

mod ini;
mod reader;
mod sections;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keystore::{Backend, KeyAlgorithm, KeyLabel, KeyStoreSettings};
use ini::Ini;
use reader::Reader;

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
    "PROV_AGENT_MEMDUMP",
    "PROV_AGENT_MEMDUMP_MARK",
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

impl ConfigError {
    /// Always [`ErrorKind::Config`](crate::error::ErrorKind::Config): the
    /// configuration must be fixed; retrying as is cannot help.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Config
    }
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
    /// `[KEYSTORE] HELPER_TIMEOUT`: how long the daemon waits for one
    /// answer of its key helper (four times as long for a key generation)
    /// before it kills the helper and fails the operation.
    pub helper_timeout: Duration,
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
    /// Commanded rotations closer than this to the last commit are
    /// ignored (a repeated command cannot loop rotations; a retained one
    /// is ignored whatever this is).
    pub min_interval: Duration,
}

/// `[EXPORT]`: where the current identity is published for the gateway's
/// other programs (`provision::export`).
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// `<DIR>/current` names the current identity; default
    /// `STATE_DIR/export`.
    pub dir: PathBuf,
    /// The group that may read it (its name and id), if any; else only the
    /// agent's user can.
    pub group: Option<(String, u32)>,
}

/// `[ATTESTATION] MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestationMode {
    /// No proof beyond the claim credential. The default.
    None,
    /// The TPM certifies each new device key with its attestation key, and
    /// the proof goes to RegisterThing (docs/attestation.md).
    Tpm,
}

/// `[ATTESTATION]`: whether enrollment and rotation prove that the new
/// key was made in this gateway's TPM (docs/attestation.md).
#[derive(Clone, Debug)]
pub struct AttestationConfig {
    pub mode: AttestationMode,
    /// The attestation key's label in the TPM store (`prov-agent attest
    /// init` makes it).
    pub key: KeyLabel,
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
    pub export: ExportConfig,
    pub attestation: AttestationConfig,
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
            ("HELPER_TIMEOUT", Some("30s")),
        ],
    ),
    (
        "TPM",
        &[
            ("TCTI", Some("device:/dev/tpmrm0")),
            ("KEY_STORAGE", Some("blob")),
            ("PERSISTENT_BASE", Some("0x81000100")),
            ("ALLOW_UNWRAPPED_IMPORT", Some("false")),
        ],
    ),
    (
        "PKCS11",
        &[
            ("MODULE", None),
            ("TOKEN_LABEL", None),
            ("PIN_SOURCE", None),
            ("CLAIM_KEY_ID", None),
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
            ("MIN_INTERVAL", Some("10m")),
        ],
    ),
    ("EXPORT", &[("DIR", None), ("GROUP", None)]),
    (
        "ATTESTATION",
        &[("MODE", Some("none")), ("KEY", Some("attest"))],
    ),
];

const FREE_FORM_SECTION: &str = "TEMPLATE_PARAMETERS";

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

    /// Parses `text` as if read from `path`, with the given environment:
    /// one builder per section (`sections.rs`), then the checks across
    /// sections.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let ini = Ini::parse(path, text)?;
        let r = Reader::new(ini, env)?;
        r.check_unknown()?;
        let files = sections::Paths::new(path);
        let settings = sections::settings(&r, path, &files)?;
        let state_dir =
            files.resolve(r.with_default("AGENT", "STATE_DIR", sections::path_value)?);
        let keystore = sections::keystore(&r, path, &state_dir)?;
        let provisioning = sections::provisioning(&r)?;
        if let KeyStoreSettings::Pkcs11(p) = &keystore.settings {
            if !p.key_ids.is_empty() && provisioning.decommission_claim {
                return Err(ConfigError::Value {
                    origin: path.display().to_string(),
                    section: "PROVISIONING".into(),
                    key: "DECOMMISSION_CLAIM".into(),
                    message: "the claim key is one other tools made ([PKCS11] CLAIM_KEY_ID), \
                              which the agent does not delete: set DECOMMISSION_CLAIM = false, or \
                              delete it with the token's own tools after enrolling"
                        .into(),
                });
            }
        }
        let template_parameters = sections::template_parameters(&r, path, &provisioning)?;
        let rotation = sections::rotation(&r)?;
        let export = sections::export(&r, path, &files, &state_dir)?;
        let attestation = sections::attestation(&r, path, &keystore, &provisioning)?;
        Ok(Config {
            source: path.to_path_buf(),
            settings,
            state_dir,
            keystore,
            provisioning,
            template_parameters,
            rotation,
            export,
            attestation,
        })
    }
}

#[cfg(test)]
mod tests;
