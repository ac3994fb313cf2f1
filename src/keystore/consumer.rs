//! The key in the form other programs on the gateway take it (an MQTT
//! bridge, an OpenSSL-based client, Greengrass): derived from a key's
//! reference ([`crate::keystore::KeyInfo::reference`]) and, for the TPM,
//! from the store's key file, without opening the hardware.

use std::path::PathBuf;

use super::{Backend, KeyStoreError, Result};

/// What a consumer is given for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerKey {
    /// The standard TPM 2.0 key file (`-----BEGIN TSS2 PRIVATE KEY-----`),
    /// to be written beside the certificate: tpm2-openssl `-key FILE`.
    TpmKeyFile { pem: String },
    /// A persistent TPM object: tpm2-openssl `-key handle:0x81000101`.
    TpmHandle(u32),
    /// A TPM blob under the older storage primary, which no other tool
    /// recreates: the next rotation makes a key they can use.
    TpmOlderBlob { path: PathBuf },
    /// A PKCS#11 private key: its RFC 7512 URI (the pkcs11 engine or
    /// provider's `-key`, Greengrass's PKCS#11 provider).
    Pkcs11Uri(String),
    /// A PEM file of the development-only file backend.
    File(PathBuf),
}

impl ConsumerKey {
    /// For `reference` as the key stores write it: `tpm:blob=PATH`,
    /// `tpm:handle=0x…`, `pkcs11:…`, `file:PATH`.
    pub fn of_reference(reference: &str) -> Result<Self> {
        if let Some(path) = reference.strip_prefix("file:") {
            return Ok(ConsumerKey::File(PathBuf::from(path)));
        }
        if reference.starts_with("pkcs11:") {
            return Ok(ConsumerKey::Pkcs11Uri(reference.to_string()));
        }
        if let Some(rest) = reference.strip_prefix("tpm:") {
            return tpm(reference, rest);
        }
        Err(unknown(reference))
    }

    /// What to give OpenSSL's `-key` (with the tpm2 provider or the pkcs11
    /// engine), `file` being where [`ConsumerKey::TpmKeyFile`] was written.
    /// `None` for a key no consumer can use.
    pub fn openssl_key(&self, file: Option<&std::path::Path>) -> Option<String> {
        match self {
            ConsumerKey::TpmKeyFile { .. } => file.map(|f| f.display().to_string()),
            ConsumerKey::TpmHandle(h) => Some(format!("handle:0x{h:08x}")),
            ConsumerKey::TpmOlderBlob { .. } => None,
            ConsumerKey::Pkcs11Uri(uri) => Some(uri.clone()),
            ConsumerKey::File(path) => Some(path.display().to_string()),
        }
    }
}

#[cfg(feature = "tpm")]
fn tpm(reference: &str, rest: &str) -> Result<ConsumerKey> {
    use super::tpm::TpmConsumerKey;
    let path = if let Some(path) = rest.strip_prefix("blob=") {
        PathBuf::from(path)
    } else if rest.starts_with("handle=") {
        // Persistent keys have their key file in the store's directory,
        // named by label; the handle in the reference is all a consumer
        // needs.
        let handle = rest
            .strip_prefix("handle=0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| unknown(reference))?;
        return Ok(ConsumerKey::TpmHandle(handle));
    } else {
        return Err(unknown(reference));
    };
    Ok(match super::tpm::consumer_key(&path)? {
        TpmConsumerKey::KeyFile(pem) => ConsumerKey::TpmKeyFile { pem },
        TpmConsumerKey::Handle(h) => ConsumerKey::TpmHandle(h),
        TpmConsumerKey::OlderParent => ConsumerKey::TpmOlderBlob { path },
    })
}

#[cfg(not(feature = "tpm"))]
fn tpm(_reference: &str, _rest: &str) -> Result<ConsumerKey> {
    Err(KeyStoreError::NotCompiled {
        backend: Backend::Tpm,
        feature: "tpm".into(),
    })
}

fn unknown(reference: &str) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: Backend::File,
        op: "read a key reference".into(),
        detail: format!(
            "{reference:?} is not a key reference this agent writes (tpm:blob=, tpm:handle=, \
             pkcs11:, file:); the identity file may be damaged"
        ),
        code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_every_store() {
        assert_eq!(
            ConsumerKey::of_reference("pkcs11:token=gw;object=device;type=private").unwrap(),
            ConsumerKey::Pkcs11Uri("pkcs11:token=gw;object=device;type=private".into())
        );
        let file = ConsumerKey::of_reference("file:/var/lib/prov-agent/keys/device.pem").unwrap();
        assert_eq!(
            file.openssl_key(None).as_deref(),
            Some("/var/lib/prov-agent/keys/device.pem")
        );
        for bad in ["", "device", "tpm:", "tpm:handle=81000100", "tpm:nv=1"] {
            let e = ConsumerKey::of_reference(bad);
            if cfg!(feature = "tpm") || !bad.starts_with("tpm:") {
                assert!(e.is_err(), "{bad:?} accepted");
            }
        }
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn a_persistent_key_is_its_handle() {
        let key = ConsumerKey::of_reference("tpm:handle=0x81000101").unwrap();
        assert_eq!(key, ConsumerKey::TpmHandle(0x8100_0101));
        assert_eq!(key.openssl_key(None).as_deref(), Some("handle:0x81000101"));
    }
}
