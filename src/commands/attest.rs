//! `prov-agent attest init` and `prov-agent attest activate`: the TPM's
//! attestation key and its certificate from the manufacturer's CA
//! (docs/attestation.md).
//!
//! `init` makes the attestation key (or keeps the one there is) and writes
//! the request for the CA: the TPM's endorsement key certificate and the
//! attestation key's public area and name. The CA answers with a
//! challenge: the attestation key certificate, encrypted (AES-256-GCM)
//! under a secret that it sealed with TPM2_MakeCredential to the
//! endorsement key and the attestation key's name. `activate` recovers the
//! secret with TPM2_ActivateCredential, which only the TPM holding both
//! keys can do, decrypts the certificate and stores it with the key once
//! its key is checked to be the attestation key's. Nothing in either file
//! is secret.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::CommandError;
use crate::cli::{AttestActivate, AttestInit};
use crate::config::Config;

/// The request `attest init` writes (format version 1).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub version: u32,
    pub serial_number: String,
    /// PEM.
    pub ek_certificate: String,
    /// Base64 of the marshalled TPMT_PUBLIC.
    pub ak_public: String,
    /// Hex of the TPM name.
    pub ak_name: String,
}

/// The CA's challenge `attest activate` reads (format version 1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Challenge {
    version: u32,
    credential_blob: String,
    encrypted_secret: String,
    nonce: String,
    encrypted_certificate: String,
}

/// What `init` did.
#[derive(Debug)]
pub struct Initialised {
    pub reference: String,
    /// Whether the key was made now (else it was there).
    pub made: bool,
    pub request: PathBuf,
}

#[cfg(feature = "tpm")]
fn tpm_store(config: &Config) -> Result<crate::keystore::tpm::TpmKeyStore, CommandError> {
    match &config.keystore.settings {
        crate::keystore::KeyStoreSettings::Tpm(s) => {
            Ok(crate::keystore::tpm::TpmKeyStore::open(s)?)
        }
        _ => Err(not_tpm(config)),
    }
}

#[cfg(not(feature = "tpm"))]
fn tpm_store(config: &Config) -> Result<std::convert::Infallible, CommandError> {
    Err(not_tpm(config))
}

fn not_tpm(config: &Config) -> CommandError {
    CommandError::Input(format!(
        "attestation needs a TPM: [KEYSTORE] BACKEND is {}{}; set BACKEND = tpm",
        config.keystore.backend,
        if cfg!(feature = "tpm") {
            ""
        } else {
            ", and this binary is built without the tpm feature"
        }
    ))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CommandError> {
    std::fs::read(path).map_err(CommandError::io(what, path))
}

fn bad(path: &Path, why: impl std::fmt::Display) -> CommandError {
    CommandError::Unusable {
        what: path.display().to_string(),
        problem: why.to_string(),
        source: None,
    }
}

/// [`bad`] of `what` (a file's path, or where in the TPM), with the
/// parser's error kept as the source.
fn unparsable(
    what: impl std::fmt::Display,
    why: impl std::fmt::Display,
    source: impl std::error::Error + Send + Sync + 'static,
) -> CommandError {
    CommandError::Unusable {
        what: what.to_string(),
        problem: why.to_string(),
        source: Some(Box::new(source)),
    }
}

/// `attest init`.
pub fn init(config: &Config, args: &AttestInit) -> Result<Initialised, CommandError> {
    #[cfg(not(feature = "tpm"))]
    {
        let _ = args;
        match tpm_store(config)? {}
    }
    #[cfg(feature = "tpm")]
    {
        let store = tpm_store(config)?;
        let ek_der = match &args.ek_cert {
            Some(path) => {
                let bytes = read(path, "cannot read the EK certificate")?;
                match pem::parse(&bytes) {
                    Ok(block) if block.tag() == "CERTIFICATE" => block.into_contents(),
                    Ok(block) => {
                        return Err(bad(
                            path,
                            format!("a {} PEM block, not a CERTIFICATE", block.tag()),
                        ))
                    }
                    Err(_) => bytes,
                }
            }
            None => store.endorsement_certificate()?,
        };
        x509_parser::parse_x509_certificate(&ek_der).map_err(|e| {
            let problem = "the endorsement key certificate does not parse as X.509; give the \
                           certificate from the TPM's maker with --ek-cert";
            match &args.ek_cert {
                Some(path) => unparsable(path.display(), problem, e),
                None => unparsable("the TPM's NV index 0x01c00002", problem, e),
            }
        })?;
        let label = &config.attestation.key;
        let (ak, made) = match store.attestation_key(label) {
            Ok(ak) => (ak, false),
            Err(e) if e.is_not_found() => (store.create_attestation_key(label)?, true),
            Err(e) => return Err(e.into()),
        };
        let serial = crate::provision::serial::resolve(&config.provisioning.serial, &store)?;
        let request = Request {
            version: 1,
            serial_number: serial,
            ek_certificate: pem::encode_config(
                &pem::Pem::new("CERTIFICATE", ek_der),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ),
            ak_public: base64::engine::general_purpose::STANDARD.encode(&ak.public_area),
            ak_name: hex::encode(&ak.name),
        };
        let mut text = serde_json::to_vec_pretty(&request).expect("plain data serialises");
        text.push(b'\n');
        crate::durable::write_file_mode(&args.out, &text, 0o644).map_err(CommandError::io(
            "cannot write the attestation request",
            &args.out,
        ))?;
        Ok(Initialised {
            reference: ak.info.reference,
            made,
            request: args.out.clone(),
        })
    }
}

/// `attest activate`: the path the certificate chain was stored at.
pub fn activate(config: &Config, args: &AttestActivate) -> Result<PathBuf, CommandError> {
    let path = &args.challenge;
    let text = read(path, "cannot read the challenge")?;
    let challenge: Challenge = serde_json::from_slice(&text).map_err(|e| {
        unparsable(
            path.display(),
            "not a challenge from the manufacturer's CA",
            e,
        )
    })?;
    if challenge.version != 1 {
        return Err(bad(
            path,
            format!(
                "challenge format version {} (this agent reads 1)",
                challenge.version
            ),
        ));
    }
    let b64 = |field: &str, value: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| unparsable(path.display(), format!("{field} is not base64"), e))
    };
    let blob = b64("credentialBlob", &challenge.credential_blob)?;
    let sealed = b64("encryptedSecret", &challenge.encrypted_secret)?;
    let nonce = b64("nonce", &challenge.nonce)?;
    let mut certificate = b64("encryptedCertificate", &challenge.encrypted_certificate)?;
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&nonce)
        .map_err(|_| bad(path, format!("nonce is {} bytes, not 12", nonce.len())))?;
    #[cfg(not(feature = "tpm"))]
    {
        let _ = (config, blob, sealed, nonce, &mut certificate);
        match tpm_store(config)? {}
    }
    #[cfg(feature = "tpm")]
    {
        let store = tpm_store(config)?;
        let label = &config.attestation.key;
        let ak = store.attestation_key(label)?;
        let secret = store.activate_credential(label, &blob, &sealed)?;
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &secret).map_err(|_| {
            bad(
                path,
                format!(
                    "the credential is {} bytes, not the 32 of an AES-256 key",
                    secret.len()
                ),
            )
        })?;
        let chain = ring::aead::LessSafeKey::new(key)
            .open_in_place(nonce, ring::aead::Aad::from(&ak.name), &mut certificate)
            .map_err(|_| {
                bad(
                    path,
                    "the certificate does not decrypt with the activated credential: the \
                     challenge was altered, or made for another attestation key",
                )
            })?;
        let chain = std::str::from_utf8(chain)
            .map_err(|_| bad(path, "the decrypted certificate is not PEM text"))?;
        store.store_attestation_certificate(label, chain)?;
        Ok(store.attestation_certificate_path(label))
    }
}
