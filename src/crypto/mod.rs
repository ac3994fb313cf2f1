//! Signing adapters: let rustls (TLS client authentication) and rcgen (CSRs)
//! sign with a key that stays in a [`crate::keystore::KeyStore`].
