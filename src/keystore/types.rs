use std::fmt;
use std::str::FromStr;

use super::{KeyStoreError, Result};

/// The name of a key inside a store: `claim`, `device`, `device.pending`.
///
/// 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with a dot, so that
/// a label is safe as a file name, a PKCS#11 `CKA_LABEL` and a URI component
/// without escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyLabel(String);

impl KeyLabel {
    pub fn new(label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        let ok = !label.is_empty()
            && label.len() <= 64
            && !label.starts_with('.')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(label))
        } else {
            Err(KeyStoreError::InvalidLabel { label })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The label of the pending key that will replace this one.
    pub fn pending(&self) -> Self {
        Self(format!("{}.pending", self.0))
    }
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyLabel({})", self.0)
    }
}

impl FromStr for KeyLabel {
    type Err = KeyStoreError;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// The key store backends. A backend that the binary was built without is
/// still named here so that configuration errors can say which cargo feature
/// is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Tpm,
    Pkcs11,
    File,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Tpm => "tpm",
            Backend::Pkcs11 => "pkcs11",
            Backend::File => "file",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled_in(self) -> bool {
        match self {
            Backend::Tpm => cfg!(feature = "tpm"),
            Backend::Pkcs11 => cfg!(feature = "pkcs11"),
            Backend::File => true,
        }
    }

    /// Whether private keys in this backend are protected by hardware.
    pub fn hardware(self) -> bool {
        !matches!(self, Backend::File)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tpm" | "tpm2" => Ok(Backend::Tpm),
            "pkcs11" => Ok(Backend::Pkcs11),
            "file" => Ok(Backend::File),
            _ => Err(format!(
                "unknown key store backend {s:?}: use tpm, pkcs11 or file"
            )),
        }
    }
}

/// Key algorithms the agent makes and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcP256,
    EcP384,
    Rsa2048,
    Rsa3072,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 4] = [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::EcP384 => "ec-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }

    pub fn is_ec(self) -> bool {
        matches!(self, KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384)
    }

    /// RSA modulus length in bits, or `None` for EC keys.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            _ => None,
        }
    }

    /// The scheme used for CSRs and other signatures the agent makes on its
    /// own account (not TLS, where the peer chooses).
    pub fn default_scheme(self) -> SignatureScheme {
        match self {
            KeyAlgorithm::EcP256 => SignatureScheme::EcdsaSha256,
            KeyAlgorithm::EcP384 => SignatureScheme::EcdsaSha384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    /// Whether `scheme` can be made with a key of this algorithm.
    pub fn supports(self, scheme: SignatureScheme) -> bool {
        match self {
            KeyAlgorithm::EcP256 => scheme == SignatureScheme::EcdsaSha256,
            KeyAlgorithm::EcP384 => scheme == SignatureScheme::EcdsaSha384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => scheme.is_rsa(),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "ec-p256" | "p256" | "p-256" | "ecc-p256" | "secp256r1" | "prime256v1" => {
                Ok(KeyAlgorithm::EcP256)
            }
            "ec-p384" | "p384" | "p-384" | "ecc-p384" | "secp384r1" => Ok(KeyAlgorithm::EcP384),
            "rsa-2048" | "rsa2048" => Ok(KeyAlgorithm::Rsa2048),
            "rsa-3072" | "rsa3072" => Ok(KeyAlgorithm::Rsa3072),
            _ => Err(format!(
                "unsupported key algorithm {s:?}: use ec-p256, ec-p384, rsa-2048 or rsa-3072"
            )),
        }
    }
}

/// Signature schemes a store can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    EcdsaSha256,
    EcdsaSha384,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
}

/// Hash functions behind the signature schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            HashAlg::Sha256 => sha2::Sha256::digest(message).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(message).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(message).to_vec(),
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The DER `DigestInfo` prefix that PKCS#1 v1.5 signatures put before
    /// the digest (RFC 8017, section 9.2, note 1).
    pub fn pkcs1_digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlg::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            HashAlg::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            HashAlg::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

impl SignatureScheme {
    pub fn hash(self) -> HashAlg {
        use SignatureScheme::*;
        match self {
            EcdsaSha256 | RsaPkcs1Sha256 | RsaPssSha256 => HashAlg::Sha256,
            EcdsaSha384 | RsaPkcs1Sha384 | RsaPssSha384 => HashAlg::Sha384,
            RsaPkcs1Sha512 | RsaPssSha512 => HashAlg::Sha512,
        }
    }

    pub fn is_rsa(self) -> bool {
        !matches!(
            self,
            SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384
        )
    }

    pub fn is_pss(self) -> bool {
        use SignatureScheme::*;
        matches!(self, RsaPssSha256 | RsaPssSha384 | RsaPssSha512)
    }
}

/// A public key as a DER `SubjectPublicKeyInfo`, with its algorithm.
/// Two keys are equal when their algorithm and key bits are, whatever the
/// encoding details of the algorithm identifier.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// Parses a DER `SubjectPublicKeyInfo`, accepting only the algorithms
    /// the agent supports.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        use pkcs8::DecodePublicKey;
        let algorithm = if p256::PublicKey::from_public_key_der(der).is_ok() {
            KeyAlgorithm::EcP256
        } else if p384::PublicKey::from_public_key_der(der).is_ok() {
            KeyAlgorithm::EcP384
        } else if let Ok(rsa) = rsa::RsaPublicKey::from_public_key_der(der) {
            use rsa::traits::PublicKeyParts;
            match rsa.n().bits() {
                2048 => KeyAlgorithm::Rsa2048,
                3072 => KeyAlgorithm::Rsa3072,
                bits => {
                    return Err(KeyStoreError::UnsupportedAlgorithm {
                        what: format!("RSA-{bits} public key"),
                    })
                }
            }
        } else {
            return Err(KeyStoreError::UnsupportedAlgorithm {
                what: "public key that is neither EC P-256, EC P-384 nor RSA".into(),
            });
        };
        Ok(Self {
            algorithm,
            spki_der: der.to_vec(),
        })
    }

    /// Builds the key from an uncompressed SEC1 point (`04 || X || Y`).
    pub fn from_ec_point(algorithm: KeyAlgorithm, point: &[u8]) -> Result<Self> {
        use pkcs8::EncodePublicKey;
        let bad = |e: &dyn fmt::Display| KeyStoreError::BadPublicKey {
            op: "decode EC point".into(),
            detail: e.to_string(),
        };
        let der = match algorithm {
            KeyAlgorithm::EcP256 => p256::PublicKey::from_sec1_bytes(point)
                .map_err(|e| bad(&e))?
                .to_public_key_der()
                .map_err(|e| bad(&e))?,
            KeyAlgorithm::EcP384 => p384::PublicKey::from_sec1_bytes(point)
                .map_err(|e| bad(&e))?
                .to_public_key_der()
                .map_err(|e| bad(&e))?,
            other => {
                return Err(KeyStoreError::UnsupportedAlgorithm {
                    what: format!("{other} is not an EC algorithm"),
                })
            }
        };
        Ok(Self {
            algorithm,
            spki_der: der.into_vec(),
        })
    }

    /// Builds the key from a big-endian modulus and public exponent.
    pub fn from_rsa_components(modulus: &[u8], exponent: &[u8]) -> Result<Self> {
        use pkcs8::EncodePublicKey;
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(modulus),
            rsa::BigUint::from_bytes_be(exponent),
        )
        .map_err(|e| KeyStoreError::BadPublicKey {
            op: "decode RSA public key".into(),
            detail: e.to_string(),
        })?;
        let der = key
            .to_public_key_der()
            .map_err(|e| KeyStoreError::BadPublicKey {
                op: "encode RSA public key".into(),
                detail: e.to_string(),
            })?;
        Self::from_spki_der(der.as_bytes())
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The contents of the `subjectPublicKey` BIT STRING: the SEC1 point for
    /// EC keys, the PKCS#1 `RSAPublicKey` for RSA keys.
    pub fn subject_public_key(&self) -> &[u8] {
        // The SPKI was produced or validated by us, so the structure is
        // known good: SEQUENCE { AlgorithmIdentifier, BIT STRING }.
        use pkcs8::der::Decode;
        let spki = pkcs8::SubjectPublicKeyInfoRef::from_der(&self.spki_der)
            .expect("PublicKey always holds a valid SubjectPublicKeyInfo");
        let bits = spki.subject_public_key.raw_bytes();
        // Find the slice inside our own buffer to return a borrow of self.
        let start = self
            .spki_der
            .len()
            .checked_sub(bits.len())
            .expect("bit string is a suffix of the SPKI");
        &self.spki_der[start..]
    }

    /// The SPKI as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }

    /// Lowercase hex SHA-256 of the SPKI DER: a short, stable fingerprint.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.spki_der))
    }

    /// Verifies a signature made by the matching private key, in software
    /// (ring). Used to prove that an imported or generated key works.
    pub fn verify(&self, scheme: SignatureScheme, message: &[u8], signature: &[u8]) -> Result<()> {
        use ring::signature as rs;
        if !self.algorithm.supports(scheme) {
            return Err(KeyStoreError::SchemeMismatch {
                algorithm: self.algorithm,
                scheme,
            });
        }
        let alg: &dyn rs::VerificationAlgorithm = match scheme {
            SignatureScheme::EcdsaSha256 => &rs::ECDSA_P256_SHA256_ASN1,
            SignatureScheme::EcdsaSha384 => &rs::ECDSA_P384_SHA384_ASN1,
            SignatureScheme::RsaPkcs1Sha256 => &rs::RSA_PKCS1_2048_8192_SHA256,
            SignatureScheme::RsaPkcs1Sha384 => &rs::RSA_PKCS1_2048_8192_SHA384,
            SignatureScheme::RsaPkcs1Sha512 => &rs::RSA_PKCS1_2048_8192_SHA512,
            SignatureScheme::RsaPssSha256 => &rs::RSA_PSS_2048_8192_SHA256,
            SignatureScheme::RsaPssSha384 => &rs::RSA_PSS_2048_8192_SHA384,
            SignatureScheme::RsaPssSha512 => &rs::RSA_PSS_2048_8192_SHA512,
        };
        rs::UnparsedPublicKey::new(alg, self.subject_public_key())
            .verify(message, signature)
            .map_err(|_| KeyStoreError::BadSignature)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm && self.subject_public_key() == other.subject_public_key()
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// One thing a store learnt about its hardware, for `prov-agent check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareFact {
    /// Its stable id in `check --json` (kebab-case, docs/json.md).
    pub id: &'static str,
    /// Its name for people.
    pub name: &'static str,
    pub value: String,
    /// Something the operator should act on (a PIN about to lock, say).
    pub problem: bool,
}

impl HardwareFact {
    pub fn info(id: &'static str, name: &'static str, value: impl Into<String>) -> Self {
        Self {
            id,
            name,
            value: value.into(),
            problem: false,
        }
    }

    pub fn problem(id: &'static str, name: &'static str, value: impl Into<String>) -> Self {
        Self {
            id,
            name,
            value: value.into(),
            problem: true,
        }
    }
}

/// A TPM's statement about one of its keys (TPM2_Certify), in the TPM's
/// own encoding: what a verifier needs to check that the key was made in
/// this TPM and cannot leave it (docs/attestation.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certification {
    /// The marshalled TPMS_ATTEST (type TPM_ST_ATTEST_CERTIFY): the key's
    /// name and the qualifying data, signed by the attestation key.
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE over `attest`.
    pub signature: Vec<u8>,
    /// The marshalled TPMT_PUBLIC of the certified key: its name is the
    /// one in `attest`, its attributes say where the key came from.
    pub public: Vec<u8>,
}

/// What a store says about one of its keys.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub label: KeyLabel,
    pub backend: Backend,
    /// Where the key lives, for people and logs: `tpm:handle=0x81000100`,
    /// `tpm:blob=/var/lib/prov-agent/tpm/device.key`,
    /// `pkcs11:token=gw;object=device;type=private`, `file:/path/device.key`.
    /// Never holds a PIN.
    pub reference: String,
    pub public_key: PublicKey,
}

impl KeyInfo {
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.public_key.algorithm()
    }
}
