//! The current identity, published for the gateway's other programs (an
//! MQTT bridge, an OpenSSL-based client, Greengrass; docs/consumers.md).
//!
//! Layout under `[EXPORT] DIR`:
//!
//! ```text
//! DIR/current -> id-<first 16 hex of the certificate id>
//! DIR/id-…/certificate.pem   the device certificate
//! DIR/id-…/ca.pem            ROOT_CERT, the endpoint's CA
//! DIR/id-…/device.tss2.pem   TPM blob keys: the standard TPM 2.0 key file
//! DIR/id-…/identity.json     thing, endpoint, expiry, and the key in the
//!                            forms consumers take (`key.openssl` for -key)
//! ```
//!
//! Invariants:
//! - a version directory is complete before `current` names it: its files
//!   are written (temp, fsync, rename) first, then `current` is switched
//!   with one rename of a new symlink, and the directory is synced;
//! - the flow publishes the new identity before it deletes the replaced
//!   key and prunes the older version directories only after, so
//!   `current` never names a certificate whose key is gone;
//! - publishing is idempotent: after a crash the flow publishes again;
//! - modes: 0700/0600, or 0750/0640 with `[EXPORT] GROUP` as the group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::identity::Identity;
use crate::config::{Config, ExportConfig};
use crate::durable;
use crate::keystore::{ConsumerKey, KeyStoreError, KeyStoreSettings};

/// The symlink naming the current identity's directory.
pub const CURRENT: &str = "current";
/// The file names in a version directory.
pub const CERTIFICATE: &str = "certificate.pem";
pub const CA: &str = "ca.pem";
pub const TPM_KEY_FILE: &str = "device.tss2.pem";
pub const IDENTITY: &str = "identity.json";
/// The version of `identity.json`'s layout.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "cannot {what} {path} (the identity published for other programs, [EXPORT] DIR): {source}"
    )]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key's reference does not give what consumers take.
    #[error("cannot describe the key for other programs: {0}")]
    Key(#[from] KeyStoreError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { what, path, source }
}

/// What [`publish`] wrote.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version directory (`DIR/id-…`).
    pub dir: PathBuf,
    /// What to give OpenSSL's `-key`; `None` for a key no consumer can use
    /// (a TPM blob under the older storage primary, until it is rotated).
    pub openssl_key: Option<String>,
}

/// `DIR/current`.
pub fn current(export: &ExportConfig) -> PathBuf {
    export.dir.join(CURRENT)
}

fn version_name(identity: &Identity) -> String {
    let id: String = identity.certificate_id.chars().take(16).collect();
    format!("id-{id}")
}

/// Writes `identity`'s version directory and points `DIR/current` at it.
pub fn publish(config: &Config, identity: &Identity) -> Result<Published, ExportError> {
    let export = &config.export;
    let (dir_mode, file_mode) = match export.group {
        Some(_) => (0o750, 0o640),
        None => (durable::DIR_MODE, durable::FILE_MODE),
    };
    make_dir(&export.dir, dir_mode, export.group.as_ref())?;
    let name = version_name(identity);
    let dir = export.dir.join(&name);
    make_dir(&dir, dir_mode, export.group.as_ref())?;
    let write = |file: &str, contents: &[u8]| -> Result<PathBuf, ExportError> {
        let path = dir.join(file);
        durable::write_file_mode(&path, contents, file_mode).map_err(io("write", &path))?;
        if let Some((_, gid)) = export.group {
            std::os::unix::fs::chown(&path, None, Some(gid))
                .map_err(io("give the export group", &path))?;
        }
        Ok(path)
    };

    let certificate = write(CERTIFICATE, identity.certificate_pem.as_bytes())?;
    let root = &config.settings.root_cert;
    let ca_pem = std::fs::read(root).map_err(io("read ROOT_CERT", root))?;
    let ca = write(CA, &ca_pem)?;
    let key = ConsumerKey::of_reference(&identity.key_reference)?;
    let key_file = match &key {
        ConsumerKey::TpmKeyFile { pem } => Some(write(TPM_KEY_FILE, pem.as_bytes())?),
        _ => {
            // A key file of an earlier version of this directory (the same
            // certificate cannot change store, but be exact).
            durable::remove_file(&dir.join(TPM_KEY_FILE))
                .map_err(io("remove", &dir.join(TPM_KEY_FILE)))?;
            None
        }
    };
    let openssl_key = key.openssl_key(key_file.as_deref());
    let description = describe(
        config,
        identity,
        &key,
        &certificate,
        &ca,
        key_file.as_deref(),
    );
    let mut text = serde_json::to_vec_pretty(&description).expect("json");
    text.push(b'\n');
    write(IDENTITY, &text)?;

    // The switch: a new symlink renamed over `current`.
    let link = current(export);
    let tmp = export
        .dir
        .join(format!(".{CURRENT}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io("create the symlink", &tmp))?;
    durable::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("switch", &link)(e)
    })?;
    tracing::info!(dir = %dir.display(), "published the identity for other programs");
    Ok(Published { dir, openssl_key })
}

/// [`publish`] unless `DIR/current` already names `identity` (for a
/// device enrolled before there was an export, or an export removed by
/// hand): `enroll` and `rotate` with nothing to do, and the daemon's start.
/// A failure is logged, not returned: the identity itself works.
pub fn ensure(config: &Config, identity: &Identity) {
    let link = current(&config.export);
    let up_to_date = std::fs::read_link(&link)
        .is_ok_and(|target| target == Path::new(&version_name(identity)))
        && std::fs::read(link.join(IDENTITY))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["certificateId"] == identity.certificate_id.as_str());
    if up_to_date {
        return;
    }
    if let Err(e) = publish(config, identity).and_then(|_| prune(config, identity)) {
        tracing::warn!(error = %crate::error::report(&e), "the identity could not be published for other programs");
    }
}

/// Removes the version directories other than `identity`'s: called once
/// the replaced key is deleted (until then a reader that resolved
/// `current` just before the switch may still use the older one).
pub fn prune(config: &Config, identity: &Identity) -> Result<(), ExportError> {
    let dir = &config.export.dir;
    let keep = version_name(identity);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("id-") && name != keep {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        }
    }
    durable::sync_dir(dir).map_err(io("sync", dir))
}

/// Creates `dir` if needed and sets its mode and group (both every time:
/// a change of `[EXPORT] GROUP` applies at the next commit).
fn make_dir(dir: &Path, mode: u32, group: Option<&(String, u32)>) -> Result<(), ExportError> {
    durable::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", dir))?;
    if let Some((_, gid)) = group {
        std::os::unix::fs::chown(dir, None, Some(*gid))
            .map_err(io("give the export group", dir))?;
    }
    Ok(())
}

/// `identity.json` of a version directory.
fn describe(
    config: &Config,
    identity: &Identity,
    key: &ConsumerKey,
    certificate: &Path,
    ca: &Path,
    key_file: Option<&Path>,
) -> serde_json::Value {
    let openssl = key.openssl_key(key_file);
    let key = match key {
        ConsumerKey::TpmKeyFile { .. } => serde_json::json!({
            "store": "tpm",
            "form": "tss2-key-file",
            "file": key_file,
            "openssl": openssl,
        }),
        ConsumerKey::TpmHandle(handle) => serde_json::json!({
            "store": "tpm",
            "form": "tpm-handle",
            "handle": format!("0x{handle:08x}"),
            "openssl": openssl,
        }),
        ConsumerKey::TpmOlderBlob { path } => serde_json::json!({
            "store": "tpm",
            "form": "tpm-blob",
            "file": path,
            "openssl": null,
            "note": "made under the storage primary of an earlier prov-agent, which other \
                     tools cannot recreate: the next rotation (prov-agent rotate) makes a key \
                     with a standard key file",
        }),
        ConsumerKey::Pkcs11Uri(uri) => {
            let module = match &config.keystore.settings {
                KeyStoreSettings::Pkcs11(p) => Some(p.module.clone()),
                _ => None,
            };
            serde_json::json!({
                "store": "pkcs11",
                "form": "pkcs11-uri",
                "uri": uri,
                "module": module,
                "openssl": openssl,
            })
        }
        ConsumerKey::File(path) => serde_json::json!({
            "store": "file",
            "form": "pem-file",
            "file": path,
            "openssl": openssl,
        }),
    };
    serde_json::json!({
        "format": FORMAT,
        "thingName": identity.thing_name,
        "certificateId": identity.certificate_id,
        "notAfter": crate::timefmt::rfc3339(identity.not_after),
        "committedAt": crate::timefmt::rfc3339(identity.committed_at),
        "endpoint": config.settings.iot_endpoint,
        "port": config.provisioning.port,
        "certificate": certificate,
        "ca": ca,
        "key": key,
    })
}
