//! The TLS side of `serve`: the rustls configuration (certificate files, ACME, or the
//! development certificate; none with `--plain-http`) and what keeps its certificates fresh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServeArgs;
use crate::tls;
use crate::tls::reload::{CertPair, Reloader};
use crate::tls::resolver::CertResolver;

/// How often certificate files are checked for changes.
const CERT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where the certificate came from, for the banner.
pub enum CertSource {
    Files(Vec<PathBuf>),
    Acme(Vec<String>),
    Development(PathBuf),
    None,
}

/// The server configuration and what keeps its certificates fresh (started by `run`).
pub struct TlsSetup {
    pub config: Option<Arc<rustls::ServerConfig>>,
    pub reloader: Option<Reloader>,
    pub acme: Option<tls::acme::Acme>,
    pub source: CertSource,
}

impl TlsSetup {
    /// Reads the pairs (or makes the development certificate under `data_dir/tls`) and
    /// checks them, so a bad certificate fails the start before anything listens.
    pub fn from_args(data_dir: &Path, args: &ServeArgs) -> anyhow::Result<TlsSetup> {
        if args.plain_http {
            return Ok(TlsSetup {
                config: None,
                reloader: None,
                acme: None,
                source: CertSource::None,
            });
        }
        if !args.acme.acme_domain.is_empty() {
            let settings = tls::acme::AcmeSettings {
                domains: args.acme.acme_domain.clone(),
                email: args.acme.acme_email.clone(),
                directory: args.acme.acme_directory.clone(),
                ca_root: args.acme.acme_ca_root.clone(),
                cache_dir: data_dir.join("acme"),
            };
            let mut acme = tls::acme::Acme::new(&settings)?;
            if args.limits.no_http2 {
                acme.config.alpn_protocols.retain(|p| p.as_slice() != b"h2");
            }
            return Ok(TlsSetup {
                config: None,
                reloader: None,
                acme: Some(acme),
                source: CertSource::Acme(settings.domains),
            });
        }
        if args.tls_cert.len() != args.tls_key.len() {
            anyhow::bail!(
                "{} --tls-cert but {} --tls-key: give them in pairs, each key after its certificate",
                args.tls_cert.len(),
                args.tls_key.len()
            );
        }
        let (pairs, source) = if args.tls_cert.is_empty() {
            let (cert, key) = tls::dev_certificate(&data_dir.join("tls"))?;
            let pairs = vec![CertPair {
                cert: cert.clone(),
                key,
            }];
            (pairs, CertSource::Development(cert))
        } else {
            let pairs = args
                .tls_cert
                .iter()
                .zip(&args.tls_key)
                .map(|(cert, key)| CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect();
            (pairs, CertSource::Files(args.tls_cert.clone()))
        };
        let keys = tls::reload::load_pairs(&pairs)?;
        tls::reload::warn_if_expiring(&keys);
        let resolver = Arc::new(CertResolver::new(keys));
        let mut config = tls::server_config_with_resolver(resolver.clone())?;
        if args.limits.no_http2 {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let reloader = matches!(source, CertSource::Files(_)).then(|| Reloader {
            pairs,
            resolver,
            interval: CERT_WATCH_INTERVAL,
        });
        Ok(TlsSetup {
            config: Some(Arc::new(config)),
            reloader,
            acme: None,
            source,
        })
    }
}
