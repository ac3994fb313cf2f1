//! Signing adapters: let rustls (TLS client authentication) and rcgen (CSRs)
//! sign with a key that stays in a [`crate::keystore::KeyStore`].

pub mod cert;
pub mod csr;
pub mod deferred_cert;
pub mod tls;

pub use cert::{CertError, Certificate};
pub use csr::{make_csr, CsrError, HardwareCsrKey};
pub use deferred_cert::{deferred_client_config, DeferredClientCert};
pub use tls::{certified_key, client_config, HardwareSigningKey, TlsError, ALPN_AWS_IOT};
