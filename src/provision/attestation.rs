//! The proof that a new device key was made in this gateway's TPM, sent
//! with RegisterThing when `[ATTESTATION] MODE = tpm` (docs/attestation.md):
//! TPM2_Certify of the pending key by the attestation key, qualified by
//! the new certificate's id, and the attestation key's certificate from
//! the manufacturer's CA. The pre-provisioning hook checks it; the agent
//! only carries it.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::ProvisionError;
use crate::config::{AttestationMode, Config};
use crate::fault;
use crate::keystore::{KeyLabel, KeyStore, KeyStoreSettings};

/// The template parameters of the proof.
pub const ATTEST: &str = "TpmAttest";
pub const SIGNATURE: &str = "TpmAttestSignature";
pub const DEVICE_PUBLIC: &str = "TpmDevicePublic";
pub const AK_CERTIFICATE: &str = "TpmAkCertificate";

/// AWS's limit on one template parameter's value.
pub const MAX_PARAMETER: usize = 4096;

/// The attestation key certificate (DER) to send, read before any request
/// so that a gateway not ready for attestation fails before it asks the
/// service for anything; `None` when attestation is off.
pub fn ak_certificate(config: &Config) -> Result<Option<Vec<u8>>, ProvisionError> {
    if config.attestation.mode == AttestationMode::None {
        return Ok(None);
    }
    let KeyStoreSettings::Tpm(tpm) = &config.keystore.settings else {
        // Config::load refuses MODE = tpm without the TPM backend.
        return Err(ProvisionError::AttestationNotReady {
            path: config.source.clone(),
            detail: format!("the key store is {}, not a TPM", config.keystore.backend),
            source: None,
        });
    };
    let path = tpm.attestation_certificate(&config.attestation.key);
    let because = |detail: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        ProvisionError::AttestationNotReady {
            path: path.clone(),
            detail,
            source,
        }
    };
    let not_ready = |detail: String| because(detail, None);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_ready("no attestation key certificate".into()),
        _ => because(
            "cannot read the attestation key certificate".into(),
            Some(Box::new(e)),
        ),
    })?;
    let der = pem::parse_many(&text)
        .ok()
        .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
        .map(pem::Pem::into_contents)
        .ok_or_else(|| {
            not_ready("the attestation key certificate file holds no certificate".into())
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        because(
            "the attestation key certificate does not parse as X.509".into(),
            Some(Box::new(e)),
        )
    })?;
    if !cert.validity().is_valid() {
        return Err(not_ready(format!(
            "the attestation key certificate is not valid now (valid {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }
    if encoded_len(der.len()) > MAX_PARAMETER {
        return Err(not_ready(format!(
            "the attestation key certificate is {} bytes, {} characters in base64; a template \
             parameter holds at most {MAX_PARAMETER}",
            der.len(),
            encoded_len(der.len())
        )));
    }
    Ok(Some(der))
}

fn encoded_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// The four parameters for the pending key under `pending` and the
/// certificate `certificate_id` issued for it.
pub fn parameters(
    store: &dyn KeyStore,
    config: &Config,
    pending: &KeyLabel,
    ak_certificate: &[u8],
    certificate_id: &str,
) -> Result<BTreeMap<String, String>, ProvisionError> {
    // The id's 32 bytes, not its 64 hex characters: TPM2B_DATA holds at
    // most a digest of the TPM's largest hash and 2 bytes, 34 on a TPM with
    // SHA-256 and no SHA-384 or SHA-512.
    let qualifying = hex::decode(certificate_id).map_err(|e| ProvisionError::BadResponse {
        api: "CreateCertificateFromCsr".into(),
        detail: format!("the certificate id {certificate_id:?} is not hex: {e}"),
    })?;
    let mut proof = if fault::tampers("attest-other-key") {
        // A key genuinely made in this TPM, not the one the certificate is for.
        let decoy = KeyLabel::new("attest-decoy")?;
        store.generate(&decoy, crate::keystore::KeyAlgorithm::EcP256)?;
        let proof = store.certify(&decoy, &config.attestation.key, &qualifying);
        store.delete(&decoy)?;
        proof?
    } else if fault::tampers("attest-replay") {
        store.certify(pending, &config.attestation.key, &[0; 32])?
    } else {
        store.certify(pending, &config.attestation.key, &qualifying)?
    };
    if fault::tampers("attest-flip-attest") {
        if let Some(last) = proof.attest.last_mut() {
            *last ^= 1;
        }
    }
    if fault::tampers("attest-flip-signature") {
        if let Some(last) = proof.signature.last_mut() {
            *last ^= 1;
        }
    }
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // Each well under AWS's MAX_PARAMETER: TPMS_ATTEST, TPMT_SIGNATURE and
    // TPMT_PUBLIC are bounded by the TPM (under 1 KiB each), and the AK
    // certificate's size was checked by `ak_certificate`.
    Ok([
        (ATTEST, b64(&proof.attest)),
        (SIGNATURE, b64(&proof.signature)),
        (DEVICE_PUBLIC, b64(&proof.public)),
        (AK_CERTIFICATE, b64(ak_certificate)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}
