//! The emulator's own certificate authority: root CA, the server
//! certificate, and the device certificates the provisioning APIs issue.

mod subject;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use sha2::{Digest, Sha256};

use crate::policy::CertificateFacts;
use x509_parser::prelude::FromDer;

use crate::csr::KeyKind;
pub use crate::csr::{CsrError, MAX_RSA_BITS, MAX_RSA_EXPONENT, MIN_RSA_BITS};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The client's CSR is refused: the only error a client can cause.
    #[error("certificate signing request is invalid: {0}")]
    BadCsr(#[from] CsrError),
    #[error("RSA key generation failed: {0}")]
    RsaKey(#[from] rsa::Error),
    #[error("RSA public key cannot be encoded as SubjectPublicKeyInfo DER: {0}")]
    RsaPublicKey(#[source] rsa::pkcs8::spki::Error),
    #[error("RSA private key cannot be encoded as PKCS#1 PEM: {0}")]
    RsaPrivateKey(#[source] rsa::pkcs1::Error),
    #[error("stored CA {part} is unreadable: {source} (the data directory is damaged: restore it from a backup, or run init on a new one)")]
    BadCa {
        /// `certificate` or `key`.
        part: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// rcgen wrote a certificate this module cannot take apart to put the
    /// CSR's subject in (see `pki::subject`): a bug, not the client's fault.
    #[error("certificate written by rcgen has an unexpected layout at its {0}: report this emulator bug")]
    CertificateLayout(&'static str),
    #[error("certificate validity cannot be encoded: Unix time {unix_time}: {source}")]
    Validity {
        unix_time: i64,
        #[source]
        source: time::error::ComponentRange,
    },
}

/// Lowercase hex SHA-256 of a certificate's DER: the AWS certificate id.
pub fn certificate_id(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Certificate id of the first certificate in a PEM string.
pub fn certificate_id_from_pem(pem_str: &str) -> Option<String> {
    let p = pem::parse(pem_str).ok()?;
    Some(certificate_id(p.contents()))
}

/// A certificate's validity period, in Unix seconds (X.509 times have a
/// resolution of one second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// The validity of a certificate issued now for `lifetime`: notAfter =
    /// now + lifetime in whole seconds (a fraction rounds up, at least 1 s),
    /// never after 2049-12-31 23:59:59 UTC (AWS's fixed notAfter);
    /// notBefore = now minus a clock-skew allowance of a tenth of the
    /// lifetime, at most 60 s, and never after notAfter.
    pub fn from_now(lifetime: std::time::Duration) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        Self::starting_at(now, lifetime)
    }

    /// As [`Validity::from_now`] with `now` in Unix seconds.
    pub fn starting_at(now: i64, lifetime: std::time::Duration) -> Self {
        let secs = lifetime
            .as_secs()
            .saturating_add(u64::from(lifetime.subsec_nanos() > 0))
            .max(1);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let not_after = now
            .saturating_add(secs)
            .min(crate::config::AWS_NOT_AFTER_UNIX);
        let skew = (secs / 10).min(60);
        Validity {
            not_before: (now - skew).min(not_after),
            not_after,
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), PkiError> {
        let t = |unix_time: i64| {
            time::OffsetDateTime::from_unix_timestamp(unix_time)
                .map_err(|source| PkiError::Validity { unix_time, source })
        };
        params.not_before = t(self.not_before)?;
        params.not_after = t(self.not_after)?;
        Ok(())
    }
}

/// SubjectPublicKeyInfo DER of a freshly made key of `kind` (thrown away).
fn fresh_spki(kind: KeyKind) -> Result<Vec<u8>, PkiError> {
    match kind {
        KeyKind::P256 => {
            Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?.subject_public_key_info())
        }
        KeyKind::P384 => {
            Ok(KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?.subject_public_key_info())
        }
        KeyKind::Rsa(bits) => {
            use rsa::pkcs8::EncodePublicKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits)?;
            Ok(key
                .to_public_key()
                .to_public_key_der()
                .map_err(PkiError::RsaPublicKey)?
                .as_bytes()
                .to_vec())
        }
    }
}

/// An issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub der: Vec<u8>,
}

pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&b)
}

/// An issued certificate from its DER (PEM with LF line endings, as rcgen writes).
fn issued_der(der: Vec<u8>) -> Issued {
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Issued {
        certificate_id: certificate_id(&der),
        certificate_pem: pem,
        der,
    }
}

fn issued(cert: rcgen::Certificate) -> Issued {
    Issued {
        certificate_id: certificate_id(cert.der()),
        certificate_pem: cert.pem(),
        der: cert.der().to_vec(),
    }
}

impl CertificateAuthority {
    /// Makes a new P-256 root CA; returns it with its key in PEM.
    pub fn generate() -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "iotcore-emulator Root CA");
        dn.push(DnType::OrganizationName, "iotcore-emulator");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self::load(&cert.pem(), &key_pem)?;
        Ok((ca, key_pem))
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let bad = |part: &'static str| move |source: rcgen::Error| PkiError::BadCa { part, source };
        let key = KeyPair::from_pem(key_pem).map_err(bad("key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(bad("certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Server certificate for `localhost` and `127.0.0.1`; returns (cert PEM, key PEM).
    pub fn issue_server(&self) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Device certificate parameters; `validity` `None` keeps rcgen's
    /// default (1975 to 4096), used for claim credentials.
    fn device_params(
        subject: DistinguishedName,
        validity: Option<Validity>,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        if let Some(v) = validity {
            v.apply(&mut params)?;
        }
        Ok(params)
    }

    /// CreateCertificateFromCsr: checks the CSR as AWS does (see
    /// [`crate::csr`]: RSA 2048 to 8192 bits, EC P-256/P-384, AWS's signature
    /// algorithms, the signature itself) and issues a certificate for its
    /// public key exactly as sent. The subject is the CSR's, byte for byte.
    pub fn issue_from_csr(&self, csr_pem: &str) -> Result<Issued, PkiError> {
        self.issue_from_csr_with(csr_pem, None, false)
    }

    /// As [`CertificateAuthority::issue_from_csr`] with a validity
    /// (`None`: rcgen's default). With `another_key` the certificate is
    /// for a freshly made key of the same kind as the CSR's instead of the
    /// CSR's own (a fault for testing clients).
    pub fn issue_from_csr_with(
        &self,
        csr_pem: &str,
        validity: Option<Validity>,
        another_key: bool,
    ) -> Result<Issued, PkiError> {
        let der = pem::parse(csr_pem)
            .map_err(CsrError::NotPem)?
            .into_contents();
        let csr = crate::csr::check(&der)?;
        // An empty subject here, the CSR's own put in by `subject`.
        let params = Self::device_params(DistinguishedName::new(), validity)?;
        let spki = if another_key {
            fresh_spki(csr.kind)?
        } else {
            csr.spki_der
        };
        let spki = SubjectPublicKeyInfo::from_der(&spki)?;
        let cert = params.signed_by(&spki, &self.issuer)?;
        let der = subject::with_subject(cert.der(), &csr.subject_der, self.issuer.key())?;
        Ok(issued_der(der))
    }

    /// Issues a certificate for an existing public key (SubjectPublicKeyInfo DER).
    pub fn issue_for_spki(&self, spki_der: &[u8], common_name: &str) -> Result<Issued, PkiError> {
        self.issue_for_spki_with(spki_der, common_name, None)
    }

    /// As [`CertificateAuthority::issue_for_spki`] with a validity (`None`:
    /// rcgen's default).
    pub fn issue_for_spki_with(
        &self,
        spki_der: &[u8],
        common_name: &str,
        validity: Option<Validity>,
    ) -> Result<Issued, PkiError> {
        let spki = SubjectPublicKeyInfo::from_der(spki_der)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        Ok(issued(
            Self::device_params(dn, validity)?.signed_by(&spki, &self.issuer)?,
        ))
    }

    /// CreateKeysAndCertificate: an RSA-2048 key made here, returned as a
    /// PKCS#1 PEM (what AWS sends) with its certificate.
    pub fn issue_with_new_rsa_key(&self) -> Result<(Issued, String), PkiError> {
        self.issue_with_new_rsa_key_with(None, false)
    }

    /// As [`CertificateAuthority::issue_with_new_rsa_key`] with a validity
    /// (`None`: rcgen's default). With `another_key` the certificate is for
    /// a second, freshly made RSA-2048 key, not for the returned one (a
    /// fault for testing clients).
    pub fn issue_with_new_rsa_key_with(
        &self,
        validity: Option<Validity>,
        another_key: bool,
    ) -> Result<(Issued, String), PkiError> {
        let key = crate::keypool::generate()?;
        let other = another_key.then(crate::keypool::generate).transpose()?;
        self.issue_with_rsa_key(&key, other.as_ref(), validity)
    }

    /// CreateKeysAndCertificate with a key made beforehand: the certificate
    /// of `key`, or with `certified` the certificate of that other key (the
    /// `CertificateForAnotherKey` fault), and `key` as a PKCS#1 PEM.
    pub(crate) fn issue_with_rsa_key(
        &self,
        key: &rsa::RsaPrivateKey,
        certified: Option<&rsa::RsaPrivateKey>,
        validity: Option<Validity>,
    ) -> Result<(Issued, String), PkiError> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePublicKey;
        let spki = certified
            .unwrap_or(key)
            .to_public_key()
            .to_public_key_der()
            .map_err(PkiError::RsaPublicKey)?;
        let key_pem = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(PkiError::RsaPrivateKey)?;
        let cert = self.issue_for_spki_with(spki.as_bytes(), "AWS IoT Certificate", validity)?;
        Ok((cert, key_pem.to_string()))
    }

    /// Issues a certificate with a fresh P-256 key; returns it and the key PEM
    /// (PKCS#8). Used for claim credentials and tests.
    pub fn issue_with_new_ec_key(&self, common_name: &str) -> Result<(Issued, String), PkiError> {
        self.issue_with_new_ec_key_with(common_name, None)
    }

    /// As [`CertificateAuthority::issue_with_new_ec_key`] with a validity
    /// (`None`: rcgen's default, 1975 to 4096).
    pub fn issue_with_new_ec_key_with(
        &self,
        common_name: &str,
        validity: Option<Validity>,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        let cert = Self::device_params(dn, validity)?.signed_by(&key, &self.issuer)?;
        Ok((issued(cert), key.serialize_pem()))
    }
}

/// Checks a CSR as CreateCertificateFromCsr does before anyone signs it
/// (PEM, PKCS#10, an accepted key and signature algorithm, a valid
/// signature: [`crate::csr::check`]) and returns its SubjectPublicKeyInfo
/// DER, which the certificate must carry.
pub fn csr_public_key(csr_pem: &str) -> Result<Vec<u8>, CsrError> {
    let der = pem::parse(csr_pem)
        .map_err(CsrError::NotPem)?
        .into_contents();
    Ok(crate::csr::check(&der)?.spki_der)
}

/// Distinguished-name attributes as (AWS attribute name, value) pairs.
pub type NameAttributes = Vec<(String, String)>;

/// The AWS IoT policy variable name of a distinguished-name attribute
/// ("X.509 Certificate AWS IoT Core policy variables"); `Locality` has no
/// variable but is kept for completeness.
fn dn_attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CommonName",
        "2.5.4.10" => "Organization",
        "2.5.4.11" => "OrganizationalUnit",
        "2.5.4.6" => "Country",
        "2.5.4.7" => "Locality",
        "2.5.4.8" => "State",
        "2.5.4.5" => "SerialNumber",
        "2.5.4.4" => "Surname",
        "2.5.4.42" => "GivenName",
        "2.5.4.43" => "Initials",
        "2.5.4.44" => "GenerationQualifier",
        "2.5.4.12" => "Title",
        "2.5.4.46" => "DistinguishedNameQualifier",
        "2.5.4.65" => "Pseudonym",
        _ => return None,
    })
}

fn name_attributes(name: &x509_parser::x509::X509Name<'_>) -> NameAttributes {
    let mut out = Vec::new();
    for attr in name.iter_attributes() {
        let Some(key) = dn_attribute_name(&attr.attr_type().to_id_string()) else {
            continue;
        };
        if let Ok(v) = attr.as_str() {
            out.push((key.to_owned(), v.to_owned()));
        }
    }
    out
}

/// Alternative names as (AWS name type, value), in the certificate's order.
fn alt_names(names: &[x509_parser::extensions::GeneralName<'_>]) -> NameAttributes {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for n in names {
        let entry = match n {
            GeneralName::RFC822Name(v) => ("RFC822Name", v.to_string()),
            GeneralName::DNSName(v) => ("DNSName", v.to_string()),
            GeneralName::URI(v) => ("UniformResourceIdentifier", v.to_string()),
            GeneralName::DirectoryName(v) => ("DirectoryName", v.to_string()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .ok()
                        .map(std::net::IpAddr::from),
                    _ => None,
                };
                match ip {
                    Some(ip) => ("IPAddress", ip.to_string()),
                    None => continue,
                }
            }
            _ => continue,
        };
        out.push((entry.0.to_owned(), entry.1));
    }
    out
}

/// What the policy engine's certificate variables read from a client
/// certificate. A certificate that does not parse (it passed the TLS
/// handshake, so it does) yields only its id.
pub fn certificate_facts(der: &[u8]) -> CertificateFacts {
    use x509_parser::extensions::ParsedExtension;
    let mut facts = CertificateFacts {
        id: certificate_id(der),
        ..CertificateFacts::default()
    };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return facts;
    };
    // Decimal: AWS does not say in which form the serial number is given.
    facts.serial_number = Some(cert.serial.to_string());
    facts.subject = name_attributes(cert.subject());
    facts.issuer = name_attributes(cert.issuer());
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                facts.subject_alt_names = alt_names(&san.general_names)
            }
            ParsedExtension::IssuerAlternativeName(ian) => {
                facts.issuer_alt_names = alt_names(&ian.general_names)
            }
            _ => {}
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AWS_NOT_AFTER_UNIX;
    use std::time::Duration;

    #[test]
    fn validity_rounds_caps_and_allows_for_skew() {
        let now = 1_800_000_000;
        let v = Validity::starting_at(now, Duration::from_secs(30));
        assert_eq!((v.not_before, v.not_after), (now - 3, now + 30));
        let v = Validity::starting_at(now, Duration::from_millis(1500));
        assert_eq!((v.not_before, v.not_after), (now, now + 2));
        let v = Validity::starting_at(now, Duration::ZERO);
        assert_eq!((v.not_before, v.not_after), (now, now + 1));
        let v = Validity::starting_at(now, Duration::from_secs(86_400));
        assert_eq!((v.not_before, v.not_after), (now - 60, now + 86_400));
        let v = Validity::starting_at(now, Duration::MAX);
        assert_eq!((v.not_before, v.not_after), (now - 60, AWS_NOT_AFTER_UNIX));
        // Issued after AWS's end date: never notBefore after notAfter.
        let v = Validity::starting_at(AWS_NOT_AFTER_UNIX + 100, Duration::from_secs(30));
        assert!(v.not_before <= v.not_after);
    }

    #[test]
    fn certificate_facts_read_what_the_policy_variables_name() {
        let mut params = CertificateParams::new(vec!["gw-1.example.com".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("192.0.2.7".parse().unwrap()));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "gw_1");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.distinguished_name.push(DnType::CountryName, "DE");
        params.serial_number = Some(SerialNumber::from_slice(&[0x12, 0x34]));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = certificate_facts(cert.der());
        assert_eq!(facts.id, certificate_id(cert.der()));
        assert_eq!(facts.serial_number.as_deref(), Some("4660"));
        let pairs = |v: &[(&str, &str)]| -> NameAttributes {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            facts.subject,
            pairs(&[
                ("CommonName", "gw_1"),
                ("Organization", "Acme"),
                ("Country", "DE")
            ])
        );
        // Self-signed: the issuer is the subject.
        assert_eq!(facts.issuer, facts.subject);
        assert_eq!(
            facts.subject_alt_names,
            pairs(&[
                ("DNSName", "gw-1.example.com"),
                ("IPAddress", "192.0.2.7"),
                ("RFC822Name", "ops@example.com"),
            ])
        );
        assert!(facts.issuer_alt_names.is_empty());
        // Not a certificate: only the id.
        let junk = certificate_facts(b"junk");
        assert_eq!(junk.id, certificate_id(b"junk"));
        assert!(junk.serial_number.is_none() && junk.subject.is_empty());
    }

    /// The source of `e`, which must be there.
    fn source(e: &dyn std::error::Error) -> &(dyn std::error::Error + 'static) {
        e.source().unwrap_or_else(|| panic!("{e} has no source"))
    }

    #[test]
    fn errors_keep_their_source_and_message() {
        let (ca, _) = CertificateAuthority::generate().unwrap();

        let e = ca.issue_from_csr("not a CSR").unwrap_err();
        assert!(matches!(e, PkiError::BadCsr(CsrError::NotPem(_))), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("certificate signing request is invalid: not PEM: "),
            "{e}"
        );
        assert!(source(source(&e)).is::<pem::PemError>());

        let junk = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![1, 2, 3]));
        let e = ca.issue_from_csr(&junk).unwrap_err();
        assert!(
            matches!(e, PkiError::BadCsr(CsrError::NotPkcs10(_))),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("certificate signing request is invalid: not a PKCS#10 request: "),
            "{e}"
        );

        let e = CertificateAuthority::load(ca.cert_pem(), "not a key")
            .err()
            .unwrap();
        assert!(matches!(e, PkiError::BadCa { part: "key", .. }), "{e:?}");
        assert!(source(&e).is::<rcgen::Error>());

        let mut params = CertificateParams::default();
        let e = Validity {
            not_before: i64::MAX,
            not_after: i64::MAX,
        }
        .apply(&mut params)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("certificate validity cannot be encoded: "),
            "{e}"
        );
        assert!(source(&e).is::<time::error::ComponentRange>());
    }
}
