//! The device's serial number: from the config, the DMI product serial or a
//! digest of /etc/machine-id. Never a constant shared by every device.

use std::path::Path;

use sha2::Digest;

use crate::config::SerialSource;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("no serial number: {tried}. Set [PROVISIONING] SERIAL_NUMBER to the device's serial")]
    NotFound { tried: String },
    #[error("SERIAL_NUMBER = tpm-ek needs the tpm key store backend")]
    NeedsTpm,
}

const DMI_SERIAL: &str = "/sys/class/dmi/id/product_serial";
const MACHINE_ID: &str = "/etc/machine-id";

/// Values firmware puts in DMI when nobody set a serial.
const PLACEHOLDERS: &[&str] = &[
    "",
    "0",
    "none",
    "default string",
    "to be filled by o.e.m.",
    "not specified",
    "system serial number",
    "0123456789",
];

/// The device's serial number from `source`. The key store is asked for
/// its hardware identifier (a TPM's endorsement key digest) only when the
/// source is `tpm-ek`.
pub fn resolve(
    source: &SerialSource,
    store: &dyn crate::keystore::KeyStore,
) -> Result<String, super::ProvisionError> {
    let tpm_ek = match source {
        SerialSource::TpmEk => store.hardware_id().transpose()?,
        _ => None,
    };
    Ok(resolve_at(
        source,
        tpm_ek,
        Path::new(DMI_SERIAL),
        Path::new(MACHINE_ID),
    )?)
}

fn resolve_at(
    source: &SerialSource,
    tpm_ek: Option<String>,
    dmi: &Path,
    machine_id: &Path,
) -> Result<String, SerialError> {
    match source {
        SerialSource::Fixed(s) => Ok(s.clone()),
        SerialSource::Dmi => from_dmi(dmi).ok_or_else(|| SerialError::NotFound {
            tried: format!("{} is missing, unreadable or a placeholder", dmi.display()),
        }),
        SerialSource::MachineId => {
            from_machine_id(machine_id).ok_or_else(|| SerialError::NotFound {
                tried: format!("{} is missing or empty", machine_id.display()),
            })
        }
        SerialSource::TpmEk => tpm_ek.ok_or(SerialError::NeedsTpm),
        SerialSource::Auto => from_dmi(dmi)
            .or_else(|| from_machine_id(machine_id))
            .ok_or_else(|| SerialError::NotFound {
                tried: format!(
                    "neither {} nor {} gives one",
                    dmi.display(),
                    machine_id.display()
                ),
            }),
    }
}

fn from_dmi(path: &Path) -> Option<String> {
    let raw = std::fs::read_to_string(path).ok()?;
    if PLACEHOLDERS.contains(&raw.trim().to_ascii_lowercase().as_str()) {
        return None;
    }
    let s: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if s.is_empty() || s.len() > 64 {
        None
    } else {
        Some(s)
    }
}

/// The machine id is a secret of sorts (systemd asks that it not be
/// exposed): only an application-specific digest of it leaves the device.
fn from_machine_id(path: &Path) -> Option<String> {
    let raw = std::fs::read_to_string(path).ok()?;
    let id = raw.trim();
    if id.is_empty() {
        return None;
    }
    let digest = sha2::Sha256::new()
        .chain_update(b"prov-agent serial v1\0")
        .chain_update(id.as_bytes())
        .finalize();
    Some(hex::encode(&digest[..10]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("serial");
        let mid = dir.path().join("machine-id");
        let fixed = SerialSource::Fixed("GW-1".into());
        assert_eq!(resolve_at(&fixed, None, &dmi, &mid).unwrap(), "GW-1");
        assert!(resolve_at(&SerialSource::Auto, None, &dmi, &mid).is_err());

        std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let a = resolve_at(&SerialSource::Auto, None, &dmi, &mid).unwrap();
        assert_eq!(a.len(), 20);
        assert!(
            !a.contains("0123456789abcdef"),
            "the raw machine id must not leak"
        );

        std::fs::write(&dmi, "To Be Filled By O.E.M.\n").unwrap();
        assert_eq!(
            resolve_at(&SerialSource::Auto, None, &dmi, &mid).unwrap(),
            a
        );
        std::fs::write(&dmi, "PF2X 9K3\n").unwrap();
        assert_eq!(
            resolve_at(&SerialSource::Auto, None, &dmi, &mid).unwrap(),
            "PF2X9K3"
        );
        assert!(matches!(
            resolve_at(&SerialSource::TpmEk, None, &dmi, &mid),
            Err(SerialError::NeedsTpm)
        ));
    }
}
