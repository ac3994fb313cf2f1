//! The certificate provider (AWS's "self-managed certificate signing"):
//! while the account has one, every CreateCertificateFromCsr MQTT request
//! is signed by it instead of the emulator's CA. AWS invokes a Lambda
//! function; the emulator runs the provider's command the same way it runs
//! a pre-provisioning hook (see [`crate::external`]), with the Lambda's
//! documented event on stdin:
//!
//! `{"certificateSigningRequest": PEM, "principalId": ID, "clientId": ID}`
//!
//! (`principalId`: the id of the certificate the requesting connection
//! authenticated with; `clientId`: its MQTT client id), and the Lambda's
//! documented answer on stdout: `{"certificatePem": PEM}`.
//!
//! AWS registers the returned certificate in the account and answers the
//! device with it (its `certificatePem`), its id and an ownership token.
//! AWS does not document which checks it makes on the returned certificate;
//! the emulator's are listed at [`check_certificate`] (and in the README):
//! what a device could not use (another key, expired, not yet valid, a CA)
//! and what it should never get (a key or other non-certificate block, a
//! weak signature algorithm). Only the device certificate is registered
//! (DescribeCertificate shows the leaf, not a chain the provider added).
//! It does not require the issuing CA to be registered (AWS documents no
//! such step for a provider): the certificate is registered by itself, as
//! RegisterCertificateWithoutCA does, and connects by its id once
//! RegisterThing activates it.

use serde::{Deserialize, Serialize};

use crate::external::{ProgramError, ProgramRunner, Stderr};
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

/// Why a provider gave no usable certificate. Each message names the
/// provider and the step; the cause is the [`source`](std::error::Error::source),
/// not repeated in the message (show the chain with
/// [`crate::external::with_causes`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    #[error("certificate provider {name} failed (its stderr is in the emulator's log)")]
    Run {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("certificate provider {name} answered no JSON object with a string certificatePem")]
    BadAnswer {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("certificate provider {name} answered an unusable certificate")]
    BadCertificate {
        name: String,
        #[source]
        source: CertificateRefused,
    },
}

/// Why the certificate a provider answered is refused. Messages never
/// quote the answer: a provider that answered a key must not have it logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateRefused {
    #[error("certificatePem is not PEM")]
    NotPem(#[source] pem::PemError),
    #[error("certificatePem holds no PEM block")]
    NoCertificate,
    #[error("block {index} of certificatePem is {tag}, not CERTIFICATE: a provider answers certificates only, never a key")]
    NotCertificateBlock { index: usize, tag: String },
    #[error("certificate {index} of certificatePem is not X.509")]
    NotX509 {
        index: usize,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("certificate {index} of certificatePem has {count} bytes after its DER")]
    TrailingBytes { index: usize, count: usize },
    #[error("the certificate is for another public key than the CSR's")]
    OtherKey,
    #[error("the certificate expired at {0} (Unix time)")]
    Expired(i64),
    #[error("the certificate is not valid before {not_before} (Unix time), more than {NOT_BEFORE_SKEW_SECS} s after now ({now}): check the provider's clock")]
    NotYetValid { not_before: i64, now: i64 },
    #[error("the certificate's notBefore ({not_before}) is after its notAfter ({not_after})")]
    ValidityInverted { not_before: i64, not_after: i64 },
    #[error("the certificate is a CA certificate (basicConstraints cA), not a device certificate")]
    IsCa,
    #[error("the certificate's basicConstraints extension is {0}")]
    BadBasicConstraints(&'static str),
    #[error("the certificate is signed with {0}, which AWS IoT does not accept: sign with SHA-256, SHA-384 or SHA-512 and RSA (PKCS#1 v1.5 or PSS), ECDSA or DSA (SHA-256)")]
    SignatureAlgorithm(String),
}

/// How far after the emulator's clock a certificate's notBefore may be:
/// the provider's clock may be a little ahead. A device could not use a
/// certificate from further in the future (AWS documents no bound).
pub(crate) const NOT_BEFORE_SKEW_SECS: i64 = 300;

/// A certificate a provider signed: the device certificate (the first
/// of `certificatePem`) to register, and the `certificatePem` the device is
/// answered: the provider's certificates (the chain may follow the device
/// certificate), each block re-encoded.
pub(crate) struct Signed {
    pub issued: Issued,
    pub answer_pem: String,
}

/// Runs `provider` for one CSR whose public key is `csr_spki` (DER) and
/// checks what it answers. Its stderr is logged, at `warn` when it failed
/// (and kept in [`ProgramRunner::failures`] then).
pub(crate) async fn sign(
    runner: &ProgramRunner,
    provider: &CertificateProviderRecord,
    request: &ProviderRequest<'_>,
    csr_spki: &[u8],
) -> Result<Signed, ProviderError> {
    let name = &provider.certificate_provider_name;
    let input = serde_json::to_vec(request).unwrap_or_default();
    let mut stderr = Stderr::default();
    let result = async {
        let out = runner
            .run(&provider.command, &input, &mut stderr)
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
        let (issued, answer_pem) = check_certificate(
            &answer.certificate_pem,
            csr_spki,
            crate::registry::now_unix(),
        )
        .map_err(|source| ProviderError::BadCertificate {
            name: name.clone(),
            source,
        })?;
        Ok(Signed { issued, answer_pem })
    }
    .await;
    stderr.log(&format!("certificate provider {name}"), result.is_err());
    if result.is_err() {
        runner.record_failure(&stderr);
    }
    result
}

/// The device certificate of a provider's `certificatePem`, if a device
/// holding the CSR's key can use it at `now` (Unix seconds), and the
/// `certificatePem` to answer the device: every block re-encoded, so that
/// nothing but the checked certificates reaches it (no text between
/// blocks, never a key).
///
/// Checked: every PEM block is a CERTIFICATE holding exactly one X.509
/// DER; of the first (the device certificate): its public key is the
/// CSR's, notBefore <= notAfter, notAfter is after `now`, notBefore is at
/// most [`NOT_BEFORE_SKEW_SECS`] after `now`, basicConstraints (if
/// present) is well formed, once, without cA, and its signature algorithm
/// is one AWS IoT lists for certificates (SHA-2 with RSA, RSASSA-PSS,
/// ECDSA or DSA; not SHA-1 or MD5). The chain after it is relayed, not
/// verified (AWS documents no check).
fn check_certificate(
    certificate_pem: &str,
    csr_spki: &[u8],
    now: i64,
) -> Result<(Issued, String), CertificateRefused> {
    let blocks = pem::parse_many(certificate_pem).map_err(CertificateRefused::NotPem)?;
    if blocks.is_empty() {
        return Err(CertificateRefused::NoCertificate);
    }
    for (index, block) in blocks.iter().enumerate() {
        if block.tag() != "CERTIFICATE" {
            return Err(CertificateRefused::NotCertificateBlock {
                index: index + 1,
                tag: block.tag().chars().take(40).collect(),
            });
        }
        let (rest, _) =
            x509_parser::parse_x509_certificate(block.contents()).map_err(|source| {
                CertificateRefused::NotX509 {
                    index: index + 1,
                    source,
                }
            })?;
        if !rest.is_empty() {
            return Err(CertificateRefused::TrailingBytes {
                index: index + 1,
                count: rest.len(),
            });
        }
    }
    let der = blocks[0].contents().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|source| CertificateRefused::NotX509 { index: 1, source })?;
    if cert.public_key().raw != csr_spki {
        return Err(CertificateRefused::OtherKey);
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_before > not_after {
        return Err(CertificateRefused::ValidityInverted {
            not_before,
            not_after,
        });
    }
    if not_after <= now {
        return Err(CertificateRefused::Expired(not_after));
    }
    if not_before > now + NOT_BEFORE_SKEW_SECS {
        return Err(CertificateRefused::NotYetValid { not_before, now });
    }
    check_basic_constraints(&cert)?;
    check_signature_algorithm(&cert)?;
    let encode = |der: &[u8]| {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", der.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    };
    let leaf_pem = encode(&der);
    let answer_pem = blocks.iter().map(|b| encode(b.contents())).collect();
    Ok((
        Issued {
            certificate_id: crate::pki::certificate_id(&der),
            certificate_pem: leaf_pem,
            der,
        },
        answer_pem,
    ))
}

/// basicConstraints, if present: once, well formed, not a CA.
fn check_basic_constraints(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), CertificateRefused> {
    use x509_parser::extensions::ParsedExtension;
    let ext = cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS)
        .map_err(|_| CertificateRefused::BadBasicConstraints("present more than once"))?;
    match ext.map(|e| e.parsed_extension()) {
        None => Ok(()),
        Some(ParsedExtension::BasicConstraints(bc)) if bc.ca => Err(CertificateRefused::IsCa),
        Some(ParsedExtension::BasicConstraints(_)) => Ok(()),
        Some(_) => Err(CertificateRefused::BadBasicConstraints("malformed")),
    }
}

/// The signature algorithms AWS IoT lists for X.509 client certificates
/// ("X.509 client certificates", developer guide): SHA256/384/512 with
/// RSA, the same with RSASSA-PSS (RSAANDMGF1), DSA with SHA-256 and ECDSA
/// with SHA256/384/512.
fn check_signature_algorithm(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), CertificateRefused> {
    use x509_parser::oid_registry::*;
    /// id-dsa-with-sha256 (RFC 5758), not in the OID registry.
    const DSA_WITH_SHA256: &str = "2.16.840.1.101.3.4.3.2";
    let alg = &cert.signature_algorithm;
    let oid = &alg.algorithm;
    let sha2 = [
        OID_NIST_HASH_SHA256,
        OID_NIST_HASH_SHA384,
        OID_NIST_HASH_SHA512,
    ];
    let accepted = [
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ECDSA_WITH_SHA512,
    ]
    .contains(oid)
        || oid.to_id_string() == DSA_WITH_SHA256
        || (*oid == OID_PKCS1_RSASSAPSS
            && matches!(
                x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg),
                Ok(x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(params))
                    if sha2.contains(params.hash_algorithm_oid())
            ));
    if accepted {
        return Ok(());
    }
    let name = x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map(str::to_owned)
        .unwrap_or_else(|_| oid.to_id_string());
    Err(CertificateRefused::SignatureAlgorithm(name))
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

    fn pem_of(tag: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(tag, der.to_vec()))
    }

    /// A certificate for `key` by a CA of the test's own, valid from a
    /// minute ago for an hour unless `tweak` says otherwise; DER.
    fn leaf(key: &rcgen::KeyPair, tweak: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::hours(1);
        tweak(&mut params);
        params.signed_by(key, &issuer).unwrap().der().to_vec()
    }

    fn refused(pem: &str, spki: &[u8]) -> CertificateRefused {
        match check_certificate(pem, spki, crate::registry::now_unix()) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
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
        // With the CA after it, as a provider may answer, and text around
        // the blocks, which the device is not relayed.
        let with_chain = format!(
            "leaf:\n{}chain:\n{}trailer\n",
            good.certificate_pem,
            ca.cert_pem()
        );
        let (issued, answer) = check_certificate(&with_chain, &spki, now).unwrap();
        assert_eq!(issued.certificate_id, good.certificate_id);
        assert_eq!(issued.der, good.der);
        let relayed = pem::parse_many(&answer).unwrap();
        assert_eq!(relayed.len(), 2);
        assert_eq!(relayed[0].contents(), good.der.as_slice());
        assert!(!answer.contains("leaf:") && !answer.contains("trailer"));

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
        let junk = pem_of("CERTIFICATE", &[1, 2, 3]);
        assert!(matches!(
            check_certificate(&junk, &spki, now),
            Err(CertificateRefused::NotX509 { index: 1, .. })
        ));
    }

    #[test]
    fn a_key_or_any_other_block_is_never_relayed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        let good = pem_of("CERTIFICATE", &leaf(&key, |_| {}));
        assert!(check_certificate(&good, &spki, crate::registry::now_unix()).is_ok());
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg";
        for answer in [
            format!("{good}{}", pem_of("PRIVATE KEY", secret.as_bytes())),
            format!("{}{good}", pem_of("EC PRIVATE KEY", secret.as_bytes())),
        ] {
            let e = refused(&answer, &spki);
            assert!(
                matches!(e, CertificateRefused::NotCertificateBlock { ref tag, .. } if tag.contains("PRIVATE KEY")),
                "{e}"
            );
            assert!(!e.to_string().contains(secret), "{e}");
        }
        let key_only = pem_of("PRIVATE KEY", &[1, 2, 3]);
        assert!(matches!(
            refused(&key_only, &spki),
            CertificateRefused::NotCertificateBlock { index: 1, .. }
        ));
        // A second CERTIFICATE block that is not X.509.
        let bad_chain = format!("{good}{}", pem_of("CERTIFICATE", &[1, 2, 3]));
        assert!(matches!(
            refused(&bad_chain, &spki),
            CertificateRefused::NotX509 { index: 2, .. }
        ));
    }

    #[test]
    fn bytes_after_the_der_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        let mut der = leaf(&key, |_| {});
        der.extend_from_slice(&[0, 0]);
        assert!(matches!(
            refused(&pem_of("CERTIFICATE", &der), &spki),
            CertificateRefused::TrailingBytes { index: 1, count: 2 }
        ));
    }

    #[test]
    fn validity_in_the_future_or_inverted_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let future = leaf(&key, |p| {
            p.not_before = now + time::Duration::hours(1);
            p.not_after = now + time::Duration::hours(2);
        });
        assert!(matches!(
            refused(&pem_of("CERTIFICATE", &future), &spki),
            CertificateRefused::NotYetValid { .. }
        ));
        // Within the allowed skew: accepted.
        let skewed = leaf(&key, |p| p.not_before = now + time::Duration::seconds(60));
        assert!(check_certificate(
            &pem_of("CERTIFICATE", &skewed),
            &spki,
            crate::registry::now_unix()
        )
        .is_ok());
        let inverted = leaf(&key, |p| {
            p.not_before = now + time::Duration::hours(2);
            p.not_after = now + time::Duration::hours(1);
        });
        assert!(matches!(
            refused(&pem_of("CERTIFICATE", &inverted), &spki),
            CertificateRefused::ValidityInverted { .. }
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
            refused(&cert.pem(), &spki),
            CertificateRefused::IsCa
        ));
        // cA FALSE, explicitly: a device certificate.
        let explicit = leaf(&key, |p| p.is_ca = rcgen::IsCa::ExplicitNoCa);
        assert!(check_certificate(
            &pem_of("CERTIFICATE", &explicit),
            &spki,
            crate::registry::now_unix()
        )
        .is_ok());
    }

    #[test]
    fn malformed_basic_constraints_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        // basicConstraints whose value is an OCTET STRING, not a SEQUENCE.
        let malformed = leaf(&key, |p| {
            p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 19],
                vec![0x04, 0x01, 0xff],
            )]
        });
        assert!(matches!(
            refused(&pem_of("CERTIFICATE", &malformed), &spki),
            CertificateRefused::BadBasicConstraints("malformed")
        ));
        // Twice: refused (as not X.509 or as present more than once).
        let twice = leaf(&key, |p| {
            p.is_ca = rcgen::IsCa::ExplicitNoCa;
            p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 19],
                vec![0x30, 0x00],
            )]
        });
        assert!(matches!(
            refused(&pem_of("CERTIFICATE", &twice), &spki),
            CertificateRefused::BadBasicConstraints(_) | CertificateRefused::NotX509 { .. }
        ));
    }

    #[test]
    fn signature_algorithms_aws_does_not_list_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = crate::pki::csr_public_key(&csr(&key)).unwrap();
        let der = leaf(&key, |_| {});
        // ecdsa-with-SHA256 (1.2.840.10045.4.3.2) made ecdsa-with-SHA224
        // (.4.3.1), same length, in the TBS and the outer field (no one
        // checks the signature here).
        let sha256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let mut swapped = der.clone();
        let mut n = 0;
        for i in 0..swapped.len() - sha256.len() {
            if swapped[i..i + sha256.len()] == sha256 {
                swapped[i + sha256.len() - 1] = 0x01;
                n += 1;
            }
        }
        assert_eq!(n, 2, "the algorithm is in the TBS and the outer field");
        let e = refused(&pem_of("CERTIFICATE", &swapped), &spki);
        assert!(
            matches!(e, CertificateRefused::SignatureAlgorithm(ref a) if a == "ecdsa-with-SHA224"),
            "{e}"
        );
    }
}
