//! X.509 certificates as the agent handles them: parsed once, checked
//! against the key they are meant for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use sha2::Digest;

use crate::keystore::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{what}: not a PEM certificate ({source}); give the PEM file (-----BEGIN CERTIFICATE-----)"
    )]
    NotPem {
        what: String,
        #[source]
        source: pem::PemError,
    },
    #[error(
        "{what}: not a PEM certificate (no CERTIFICATE block); give the PEM file \
         (-----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { what: String },
    #[error("{what}: the certificate cannot be parsed: {source}")]
    Unparsable {
        what: String,
        #[source]
        source: Box<x509_parser::nom::Err<x509_parser::error::X509Error>>,
    },
    #[error("{what}: the certificate cannot be parsed: {detail}")]
    Malformed { what: String, detail: &'static str },
    #[error("{what}: the certificate's key is not supported: {source}")]
    UnsupportedKey {
        what: String,
        #[source]
        source: Box<crate::keystore::KeyStoreError>,
    },
}

/// A parsed certificate (the first of a PEM bundle) with the rest of the
/// chain kept as DER.
#[derive(Clone)]
pub struct Certificate {
    chain: Vec<CertificateDer<'static>>,
    public_key: PublicKey,
    not_before: SystemTime,
    not_after: SystemTime,
    subject: String,
}

impl Certificate {
    /// Parses a PEM bundle; the first certificate is the leaf. `what` names
    /// the file or the source for messages.
    pub fn from_pem(pem_text: &str, what: &str) -> Result<Self, CertError> {
        let blocks = pem::parse_many(pem_text).map_err(|source| CertError::NotPem {
            what: what.into(),
            source,
        })?;
        let chain: Vec<CertificateDer<'static>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| CertificateDer::from(b.into_contents()))
            .collect();
        if chain.is_empty() {
            return Err(CertError::NoCertificate { what: what.into() });
        }
        Self::from_chain(chain, what)
    }

    pub fn from_chain(chain: Vec<CertificateDer<'static>>, what: &str) -> Result<Self, CertError> {
        let malformed = |detail: &'static str| CertError::Malformed {
            what: what.into(),
            detail,
        };
        let leaf = chain.first().ok_or_else(|| malformed("empty chain"))?;
        let (rest, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|source| CertError::Unparsable {
                what: what.into(),
                source: Box::new(source),
            })?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the certificate"));
        }
        let public_key = PublicKey::from_spki_der(parsed.public_key().raw).map_err(|source| {
            CertError::UnsupportedKey {
                what: what.into(),
                source: Box::new(source),
            }
        })?;
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH
            }
        };
        Ok(Self {
            public_key,
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            subject: parsed.subject().to_string(),
            chain,
        })
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The AWS IoT certificate id: lowercase hex SHA-256 of the DER.
    pub fn id(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.der()))
    }

    /// The whole chain as PEM.
    pub fn to_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect()
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id())
            .field("subject", &self.subject)
            .field("public_key", &self.public_key)
            .finish()
    }
}
