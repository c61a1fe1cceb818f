//! Automatic certificates from an ACME CA (Let's Encrypt by default) by TLS-ALPN-01.
//!
//! KPN delivers only to port 443, and TLS-ALPN-01 is the challenge that needs nothing but
//! that port: the CA connects to it offering the `acme-tls/1` protocol and expects a special
//! self-signed certificate, which the resolver of `rustls-acme` answers while an order is
//! open. Ordinary handshakes get the issued certificate, under the same suite policy as
//! files. Account and certificates are cached in the data directory, so a restart serves the
//! cached certificate at once and renewal (30 days before expiry) runs in the background.
//! Connections that negotiated `acme-tls/1` are closed after the handshake: they are the
//! CA's validation, never HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::accept::Accept;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::acme::ACME_TLS_ALPN_NAME;
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, EventOk};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

use super::{TlsError, kpn_provider};

pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// What `serve` needs to obtain certificates.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// Directory URL; `production` and `staging` name Let's Encrypt's.
    pub directory: String,
    /// Extra root trusted for the directory's HTTPS (a local test CA only).
    pub ca_root: Option<PathBuf>,
    /// Where account and certificates are cached.
    pub cache_dir: PathBuf,
}

impl AcmeSettings {
    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "production" => LETS_ENCRYPT_PRODUCTION,
            "staging" => LETS_ENCRYPT_STAGING,
            url => url,
        }
    }
}

/// The server configuration answering ACME challenges and serving the issued certificate,
/// and the task that orders and renews it.
pub struct Acme {
    pub config: ServerConfig,
    driver: BoxFuture<'static, ()>,
}

impl Acme {
    pub fn new(settings: &AcmeSettings) -> Result<Acme, TlsError> {
        let client = Arc::new(client_config(settings.ca_root.as_deref())?);
        let mut acme = AcmeConfig::new_with_client_config(&settings.domains, client)
            .directory(settings.directory_url())
            .cache(DirCache::new(settings.cache_dir.clone()));
        if let Some(email) = &settings.email {
            acme = acme.contact_push(format!("mailto:{email}"));
        }
        let mut state = acme.state();
        let mut config = ServerConfig::builder_with_provider(Arc::new(kpn_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(state.resolver());
        config.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            ACME_TLS_ALPN_NAME.to_vec(),
        ];
        let domains = settings.domains.join(", ");
        let directory = settings.directory_url().to_owned();
        let driver = Box::pin(async move {
            while let Some(event) = state.next().await {
                match event {
                    Ok(EventOk::DeployedNewCert) => {
                        tracing::info!(%domains, %directory, "ACME: new certificate deployed")
                    }
                    Ok(EventOk::DeployedCachedCert) => {
                        tracing::info!(%domains, "ACME: cached certificate deployed")
                    }
                    Ok(other) => tracing::debug!(event = ?other, "ACME"),
                    Err(e) => tracing::error!(
                        %domains,
                        %directory,
                        error = %e,
                        "ACME: cannot obtain or renew the certificate; retrying with backoff"
                    ),
                }
            }
        });
        Ok(Acme { config, driver })
    }

    /// Runs the order and renewal loop until shutdown.
    pub fn spawn(self, shutdown: CancellationToken) -> ServerConfig {
        let driver = self.driver;
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = driver => {}
            }
        });
        self.config
    }
}

/// The client for the ACME directory: Mozilla's roots, plus `ca_root` for a local test CA.
fn client_config(ca_root: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_root {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|_| TlsError::NoCertificate {
                path: path.to_owned(),
            })?
            .filter_map(Result::ok)
            .collect();
        if certificates.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        for certificate in certificates {
            roots.add(certificate)?;
        }
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Wraps the TLS acceptor: a connection that negotiated `acme-tls/1` was the CA's
/// validation and is closed instead of being served HTTP.
#[derive(Clone)]
pub struct ChallengeCloser<A>(pub A);

impl<A, I, S, IO> Accept<I, S> for ChallengeCloser<A>
where
    A: Accept<I, S, Stream = tokio_rustls::server::TlsStream<IO>> + Send + Sync,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
    IO: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = BoxFuture<'static, std::io::Result<(A::Stream, A::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepting = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN_NAME) {
                return Err(std::io::Error::other("ACME TLS-ALPN-01 validation done"));
            }
            Ok((stream, service))
        })
    }
}
