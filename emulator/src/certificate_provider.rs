//! The certificate provider (AWS's "self-managed certificate signing"):
//! while the account has one, every CreateCertificateFromCsr MQTT request
//! is signed by it instead of the emulator's CA. AWS invokes a Lambda
//! function; the emulator runs the provider's command the same way it runs
//! a pre-provisioning hook (see `crate::external`), with the Lambda's
//! documented event on stdin:
//!
//! `{"certificateSigningRequest": PEM, "principalId": ID, "clientId": ID}`
//!
//! (`principalId`: the id of the certificate the requesting connection
//! authenticated with; `clientId`: its MQTT client id), and the Lambda's
//! documented answer on stdout: `{"certificatePem": PEM}`.
//!
//! AWS registers the returned certificate in the account and answers the
//! device with it (same `certificatePem`), its id and an ownership token.
//! AWS does not document which checks it makes on the returned certificate;
//! the emulator refuses one a device could never use: not X.509, for
//! another key than the CSR's, already expired, or a CA certificate. It does
//! not require the issuing CA to be registered (AWS documents no such
//! step for a provider): the certificate is registered by itself, as
//! RegisterCertificateWithoutCA does, and connects by its id once
//! RegisterThing activates it.

use serde::{Deserialize, Serialize};

use crate::external::{ProgramError, Stderr};
use crate::hook::HookRunner;
use crate::pki::Issued;
use crate::registry::CertificateProviderRecord;

/// The Lambda event of a certificate provider.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderRequest<'a> {
    pub certificate_signing_request: &'a str,
    pub principal_id: &'a str,
    pub client_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderResponse {
    certificate_pem: String,
}

/// Why a provider gave no usable certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    #[error("certificate provider {name} {source}")]
    Run {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("certificate provider {name} answered no JSON object with a string certificatePem: {source}")]
    BadAnswer {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("certificate provider {name} answered an unusable certificate: {source}")]
    BadCertificate {
        name: String,
        #[source]
        source: CertificateRefused,
    },
}

/// Why the certificate a provider answered is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateRefused {
    #[error("certificatePem is not PEM: {0}")]
    NotPem(#[source] pem::PemError),
    #[error("certificatePem holds no CERTIFICATE block")]
    NoCertificate,
    #[error("the first certificate is not X.509: {0}")]
    NotX509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("the certificate is for another public key than the CSR's")]
    OtherKey,
    #[error("the certificate expired at {0} (Unix time)")]
    Expired(i64),
    #[error("the certificate is a CA certificate (basicConstraints cA), not a device certificate")]
    IsCa,
}

/// A certificate a provider signed: the device certificate (the first
/// of `certificatePem`) to register, and the `certificatePem` the device is
/// answered, as the provider gave it (it may carry the chain after it).
pub(crate) struct Signed {
    pub issued: Issued,
    pub answer_pem: String,
}

/// Runs `provider` for one CSR whose public key is `csr_spki` (DER) and
/// checks what it answers. Its stderr is logged, at `warn` when it failed.
pub(crate) async fn sign(
    runner: &HookRunner,
    provider: &CertificateProviderRecord,
    request: &ProviderRequest<'_>,
    csr_spki: &[u8],
) -> Result<Signed, ProviderError> {
    let name = &provider.certificate_provider_name;
    let input = serde_json::to_vec(request).unwrap_or_default();
    let mut stderr = Stderr::default();
    let result = async {
        let out = runner
            .program(&provider.command)
            .run(&input, &mut stderr)
            .await
            .map_err(|source| ProviderError::Run {
                name: name.clone(),
                source,
            })?;
        let answer: ProviderResponse =
            serde_json::from_slice(&out).map_err(|source| ProviderError::BadAnswer {
                name: name.clone(),
                source,
            })?;
        let issued = check_certificate(
            &answer.certificate_pem,
            csr_spki,
            crate::registry::now_unix(),
        )
        .map_err(|source| ProviderError::BadCertificate {
            name: name.clone(),
            source,
        })?;
        Ok(Signed {
            issued,
            answer_pem: answer.certificate_pem,
        })
    }
    .await;
    stderr.log(&format!("certificate provider {name}"), result.is_err());
    result
}

/// The device certificate of a provider's `certificatePem`, if a device
/// holding the CSR's key can use it at `now` (Unix seconds).
fn check_certificate(
    certificate_pem: &str,
    csr_spki: &[u8],
    now: i64,
) -> Result<Issued, CertificateRefused> {
    let blocks = pem::parse_many(certificate_pem).map_err(CertificateRefused::NotPem)?;
    let der = blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or(CertificateRefused::NoCertificate)?
        .into_contents();
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(CertificateRefused::NotX509)?;
    if cert.public_key().raw != csr_spki {
        return Err(CertificateRefused::OtherKey);
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= now {
        return Err(CertificateRefused::Expired(not_after));
    }
    if matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(CertificateRefused::IsCa);
    }
    let leaf_pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok(Issued {
        certificate_id: crate::pki::certificate_id(&der),
        certificate_pem: leaf_pem,
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Validity};

    fn csr(key: &rcgen::KeyPair) -> String {
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn the_csrs_key_unexpired_and_no_ca_is_accepted_with_its_chain() {
        let (ca, _) = CertificateAuthority::generate().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = csr(&key);
        let spki = crate::pki::csr_public_key(&csr).unwrap();
        let now = crate::registry::now_unix();
        let v = |secs| Validity::starting_at(now, std::time::Duration::from_secs(secs));
        let good = ca.issue_from_csr_with(&csr, Some(v(120)), false).unwrap();
        // With the CA after it, as a provider may answer.
        let with_chain = format!("{}{}", good.certificate_pem, ca.cert_pem());
        let issued = check_certificate(&with_chain, &spki, now).unwrap();
        assert_eq!(issued.certificate_id, good.certificate_id);
        assert_eq!(issued.der, good.der);

        let other = ca.issue_from_csr_with(&csr, Some(v(120)), true).unwrap();
        assert!(matches!(
            check_certificate(&other.certificate_pem, &spki, now),
            Err(CertificateRefused::OtherKey)
        ));
        assert!(matches!(
            check_certificate(&good.certificate_pem, &spki, now + 121),
            Err(CertificateRefused::Expired(_))
        ));
        // The CA certificate itself, pretending to be for the CSR's key: its key differs.
        assert!(check_certificate(ca.cert_pem(), &spki, now).is_err());
        assert!(matches!(
            check_certificate("junk", &spki, now),
            Err(CertificateRefused::NotPem(_)) | Err(CertificateRefused::NoCertificate)
        ));
        let key_only = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert!(matches!(
            check_certificate(&key_only, &spki, now),
            Err(CertificateRefused::NoCertificate)
        ));
        let junk = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            check_certificate(&junk, &spki, now),
            Err(CertificateRefused::NotX509(_))
        ));
    }

    #[test]
    fn a_ca_certificate_for_the_csrs_key_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            check_certificate(&cert.pem(), &spki, crate::registry::now_unix()),
            Err(CertificateRefused::IsCa)
        ));
    }
}
