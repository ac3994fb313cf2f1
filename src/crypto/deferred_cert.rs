//! A client certificate that is not known when the TLS handshake begins.
//!
//! The verifying connection of an enrollment or rotation is dialed (TCP
//! connect and ClientHello) while CreateCertificateFromCsr or
//! CreateKeysAndCertificate is still in flight, so that its handshake costs
//! no round trip of its own. The certificate it will present arrives with
//! that answer. rustls asks for the client certificate only when it
//! processes the server's CertificateRequest, so the connection's owner
//! holds the server's flight unread until it has filled the
//! [`DeferredClientCert`] (see `mqtt::Dialed::prepare`, which takes the
//! certificate and fills the slot before it reads: the slot cannot be read
//! empty through that path).

use std::sync::{Arc, OnceLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::tls::{config_with, TlsError};

/// The client certificate of one connection, filled once, after the
/// ClientHello went.
#[derive(Default)]
pub struct DeferredClientCert {
    slot: OnceLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for DeferredClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredClientCert")
            .field("filled", &self.slot.get().is_some())
            .finish()
    }
}

impl DeferredClientCert {
    /// Sets the certificate and key to present. `false`, leaving the first
    /// in place, when one was set already.
    pub fn fill(&self, certified: Arc<CertifiedKey>) -> bool {
        self.slot.set(certified).is_ok()
    }

    pub fn is_filled(&self) -> bool {
        self.slot.get().is_some()
    }
}

impl ResolvesClientCert for DeferredClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Empty only if the server's flight were read before the fill; the
        // handshake would then go on without a certificate and the server
        // refuse it, which the caller's fallback (connecting anew) covers.
        self.slot.get().cloned()
    }

    /// The handshake is made for client authentication from the start (the
    /// certificate will be there when it is asked for).
    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration like [`super::client_config`]'s whose client
/// certificate is set later, through the returned slot.
pub fn deferred_client_config(
    roots: &[CertificateDer<'static>],
    alpn: Option<&[u8]>,
) -> Result<(rustls::ClientConfig, Arc<DeferredClientCert>), TlsError> {
    let slot = Arc::new(DeferredClientCert::default());
    let config = config_with(roots, slot.clone(), alpn)?;
    Ok((config, slot))
}
