//! Chooses the certificate for each handshake from a set that can be replaced at any time.
//!
//! An RSA certificate can only complete the `ECDHE_RSA` TLS 1.2 suites and an ECDSA one only
//! the `ECDHE_ECDSA` ones. Serving both lets every client pick any suite of KPN's list: the
//! ClientHello's signature schemes (already narrowed by rustls to those usable with the
//! client's suites) decide. The set lives behind an `ArcSwap`, so a reload is one atomic
//! store: handshakes in progress keep the key they picked, the next one sees the new set.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub struct CertResolver {
    keys: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(keys: Vec<Arc<CertifiedKey>>) -> CertResolver {
        CertResolver {
            keys: ArcSwap::from_pointee(keys),
        }
    }

    /// Replaces the whole set; used by new handshakes from now on.
    pub fn replace(&self, keys: Vec<Arc<CertifiedKey>>) {
        self.keys.store(Arc::new(keys));
    }

    /// The set currently served.
    pub fn current(&self) -> Arc<Vec<Arc<CertifiedKey>>> {
        self.keys.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = client_hello.signature_schemes();
        let keys = self.keys.load();
        keys.iter()
            .find(|key| key.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}
