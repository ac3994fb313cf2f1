//! Private key material on its way into a key store.
//!
//! This is the only place where the agent holds a private key in memory: a
//! PEM handed to `claim import`, or the key that CreateKeysAndCertificate
//! sends. Every buffer is `Zeroizing`, `Debug` prints no secret, and the
//! value is meant to live only until the store has imported it.

use std::fmt;

use zeroize::Zeroizing;

use super::{KeyAlgorithm, KeyStoreError, PublicKey, Result};

/// A parsed private key whose secret parts are wiped on drop.
pub enum PrivateKeyMaterial {
    Ec {
        algorithm: KeyAlgorithm,
        /// The private scalar, big-endian, exactly the curve's length.
        scalar: Zeroizing<Vec<u8>>,
        /// Uncompressed SEC1 public point.
        public_point: Vec<u8>,
        /// PKCS#8 DER of the whole key (for stores that take PKCS#8).
        pkcs8_der: Zeroizing<Vec<u8>>,
    },
    Rsa {
        algorithm: KeyAlgorithm,
        modulus: Vec<u8>,
        public_exponent: Vec<u8>,
        private_exponent: Zeroizing<Vec<u8>>,
        prime1: Zeroizing<Vec<u8>>,
        prime2: Zeroizing<Vec<u8>>,
        exponent1: Zeroizing<Vec<u8>>,
        exponent2: Zeroizing<Vec<u8>>,
        coefficient: Zeroizing<Vec<u8>>,
        pkcs8_der: Zeroizing<Vec<u8>>,
    },
}

impl PrivateKeyMaterial {
    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1
    /// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). Encrypted PKCS#8 is
    /// refused: decrypt it with the tool that made it first.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        // The parser's own message may quote bytes of the key: leave it out.
        let block = pem::parse(pem_text.trim()).map_err(|_| KeyStoreError::BadPrivateKey {
            detail: "PEM could not be parsed (no BEGIN/END block, or damaged base64)".into(),
        })?;
        let tag = block.tag().to_string();
        // Move the DER out of the PEM block so the only copy is wiped on drop.
        let der = Zeroizing::new(block.into_contents());
        match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => Self::from_sec1_der(&der),
            "RSA PRIVATE KEY" => Self::from_pkcs1_der(&der),
            "ENCRYPTED PRIVATE KEY" => Err(KeyStoreError::BadPrivateKey {
                detail: "the key is encrypted".into(),
            }),
            other => Err(KeyStoreError::BadPrivateKey {
                detail: format!("the PEM block is a {other:?}"),
            }),
        }
    }

    /// Parses a DER PKCS#8 `PrivateKeyInfo`.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        use pkcs8::DecodePrivateKey;
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Self::from_p256(k);
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
            return Self::from_p384(k);
        }
        match rsa::RsaPrivateKey::from_pkcs8_der(der) {
            Ok(k) => Self::from_rsa(k),
            Err(e) => Err(KeyStoreError::BadPrivateKey {
                detail: format!(
                    "PKCS#8 key is not EC P-256, EC P-384 or RSA, or is malformed ({e})"
                ),
            }),
        }
    }

    fn from_sec1_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Self::from_p256(k);
        }
        if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
            return Self::from_p384(k);
        }
        Err(KeyStoreError::UnsupportedAlgorithm {
            what: "SEC1 EC key on a curve other than P-256 or P-384, or malformed".into(),
        })
    }

    fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let key =
            rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(|e| KeyStoreError::BadPrivateKey {
                detail: format!("PKCS#1 RSA key is malformed ({e})"),
            })?;
        Self::from_rsa(key)
    }

    fn from_p256(key: p256::SecretKey) -> Result<Self> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use pkcs8::EncodePrivateKey;
        let pkcs8 = key.to_pkcs8_der().map_err(encode_err)?;
        Ok(PrivateKeyMaterial::Ec {
            algorithm: KeyAlgorithm::EcP256,
            scalar: Zeroizing::new(key.to_bytes().to_vec()),
            public_point: key.public_key().to_encoded_point(false).as_bytes().to_vec(),
            pkcs8_der: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        })
    }

    fn from_p384(key: p384::SecretKey) -> Result<Self> {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        use pkcs8::EncodePrivateKey;
        let pkcs8 = key.to_pkcs8_der().map_err(encode_err)?;
        Ok(PrivateKeyMaterial::Ec {
            algorithm: KeyAlgorithm::EcP384,
            scalar: Zeroizing::new(key.to_bytes().to_vec()),
            public_point: key.public_key().to_encoded_point(false).as_bytes().to_vec(),
            pkcs8_der: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        })
    }

    fn from_rsa(key: rsa::RsaPrivateKey) -> Result<Self> {
        use pkcs8::EncodePrivateKey;
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let algorithm = match key.n().bits() {
            2048 => KeyAlgorithm::Rsa2048,
            3072 => KeyAlgorithm::Rsa3072,
            bits => {
                return Err(KeyStoreError::UnsupportedAlgorithm {
                    what: format!("RSA-{bits} private key"),
                })
            }
        };
        key.validate().map_err(|e| KeyStoreError::BadPrivateKey {
            detail: format!("RSA key is inconsistent ({e})"),
        })?;
        let primes = key.primes();
        if primes.len() != 2 {
            return Err(KeyStoreError::UnsupportedAlgorithm {
                what: "multi-prime RSA key".into(),
            });
        }
        let z = |n: &rsa::BigUint| Zeroizing::new(n.to_bytes_be());
        let dp = key.dp().ok_or_else(|| missing("dP"))?;
        let dq = key.dq().ok_or_else(|| missing("dQ"))?;
        let qinv = key.crt_coefficient().ok_or_else(|| missing("qInv"))?;
        let pkcs8 = key.to_pkcs8_der().map_err(encode_err)?;
        Ok(PrivateKeyMaterial::Rsa {
            algorithm,
            modulus: key.n().to_bytes_be(),
            public_exponent: key.e().to_bytes_be(),
            private_exponent: z(key.d()),
            prime1: z(&primes[0]),
            prime2: z(&primes[1]),
            exponent1: z(dp),
            exponent2: z(dq),
            coefficient: Zeroizing::new(qinv.to_bytes_be()),
            pkcs8_der: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PrivateKeyMaterial::Ec { algorithm, .. }
            | PrivateKeyMaterial::Rsa { algorithm, .. } => *algorithm,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey> {
        match self {
            PrivateKeyMaterial::Ec {
                algorithm,
                public_point,
                ..
            } => PublicKey::from_ec_point(*algorithm, public_point),
            PrivateKeyMaterial::Rsa {
                modulus,
                public_exponent,
                ..
            } => PublicKey::from_rsa_components(modulus, public_exponent),
        }
    }

    /// The whole key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &Zeroizing<Vec<u8>> {
        match self {
            PrivateKeyMaterial::Ec { pkcs8_der, .. }
            | PrivateKeyMaterial::Rsa { pkcs8_der, .. } => pkcs8_der,
        }
    }
}

fn encode_err(e: impl fmt::Display) -> KeyStoreError {
    KeyStoreError::BadPrivateKey {
        detail: format!("key could not be re-encoded ({e})"),
    }
}

fn missing(what: &str) -> KeyStoreError {
    KeyStoreError::BadPrivateKey {
        detail: format!("RSA key lacks its CRT value {what}"),
    }
}

impl fmt::Debug for PrivateKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKeyMaterial({}, <secret>)", self.algorithm())
    }
}
