//! The device's committed identity: which thing it is, which certificate it
//! presents and which key-store key signs for it.
//!
//! `STATE_DIR/identity.json` is the single source of truth, replaced
//! atomically; it holds the certificate PEM itself so that certificate and
//! metadata can never disagree. `STATE_DIR/certs/device.pem.crt` is a copy
//! for other services on the gateway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::Certificate;
use crate::durable;
use crate::keystore::{KeyLabel, KeyStore};
use crate::mqtt::endpoint::{Endpoint, EndpointError};
use crate::mqtt::ConnectOptions;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub thing_name: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    pub key_label: String,
    pub key_reference: String,
    /// Unix seconds.
    pub not_after: u64,
    pub device_configuration: BTreeMap<String, String>,
    /// Unix seconds of the commit.
    pub committed_at: u64,
    /// The certificate this identity replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_certificate_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not the JSON of an identity.
    #[error("{path} is damaged ({source}): restore it from a backup or enroll again with --force")]
    Unparsable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Its certificate does not parse.
    #[error("{path} is damaged ({source}): restore it from a backup or enroll again with --force")]
    Certificate {
        path: PathBuf,
        #[source]
        source: crate::crypto::CertError,
    },
}

pub const FILE_NAME: &str = "identity.json";

impl Identity {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    pub fn cert_path(state_dir: &Path) -> PathBuf {
        state_dir.join("certs").join("device.pem.crt")
    }

    pub fn load(state_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let id: Identity =
            serde_json::from_slice(&bytes).map_err(|source| IdentityError::Unparsable {
                path: path.clone(),
                source,
            })?;
        Certificate::from_pem(&id.certificate_pem, "identity certificate")
            .map_err(|source| IdentityError::Certificate { path, source })?;
        Ok(Some(id))
    }

    /// How to connect as this identity: its thing's name as client id, its
    /// certificate, its key in `store`.
    pub fn connect_options(
        &self,
        endpoint: &Endpoint,
        store: Arc<dyn KeyStore>,
    ) -> Result<ConnectOptions, super::ProvisionError> {
        let cert = Certificate::from_pem(&self.certificate_pem, "the identity's certificate")
            .map_err(EndpointError::from)?;
        let key = self.key(&cert, store.as_ref())?;
        Ok(endpoint.options("the identity", self.thing_name.clone(), &cert, store, &key)?)
    }

    /// The identity's key in `store`, checked to be `cert`'s: a key that
    /// another tool deleted or replaced is
    /// [`ProvisionError::IdentityKeyMissing`] or
    /// [`ProvisionError::IdentityKeyMismatch`], which say what to do.
    pub fn key(
        &self,
        cert: &Certificate,
        store: &dyn KeyStore,
    ) -> Result<crate::keystore::KeyInfo, super::ProvisionError> {
        let label = KeyLabel::new(self.key_label.clone())?;
        let key = store.info(&label).map_err(|e| {
            if e.is_not_found() {
                super::ProvisionError::IdentityKeyMissing {
                    certificate: cert.id(),
                    key: self.key_reference.clone(),
                }
            } else {
                e.into()
            }
        })?;
        if *cert.public_key() != key.public_key {
            return Err(super::ProvisionError::IdentityKeyMismatch {
                certificate: cert.id(),
                key: key.reference,
            });
        }
        Ok(key)
    }

    /// Writes the identity, then the certificate copy for other services.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { what, path, source }
        };
        durable::create_dir_all(state_dir).map_err(io("create", state_dir))?;
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).expect("identity serialises");
        durable::write_file(&path, &bytes).map_err(io("write", &path))?;
        let cert = Self::cert_path(state_dir);
        let certs_dir = cert.parent().expect("cert path has a parent");
        durable::create_dir_all(certs_dir).map_err(io("create", certs_dir))?;
        durable::write_file(&cert, self.certificate_pem.as_bytes()).map_err(io("write", &cert))
    }

    /// Removes the identity (used by `enroll --force` once the new identity
    /// replaces it, never before).
    pub fn remove(state_dir: &Path) -> Result<(), IdentityError> {
        let path = Self::path(state_dir);
        durable::remove_file(&path).map_err(|source| IdentityError::Io {
            what: "remove",
            path,
            source,
        })
    }
}
