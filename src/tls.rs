//! The TLS policy KPN Things demands, and the certificates we serve.
//!
//! KPN connects with TLS 1.2 or 1.3 and one of a fixed list of suites; of that list a modern
//! stack implements ECDHE with AES-GCM or ChaCha20-Poly1305. We offer exactly those and
//! nothing older, so a scanner sees no legacy protocol or CBC suite. The `ring` provider is
//! used throughout; aws-lc-rs is kept out of the build.

pub mod acme;
pub mod check;
pub mod reload;
pub mod resolver;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::{CryptoProvider, ring};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoKey { path: PathBuf },
    #[error("the certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot generate a development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write the development certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the private key in {path} cannot be used: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    #[error(
        "the private key in {key} does not belong to the certificate in {cert}: \
         give the key that was generated with this certificate's request"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {index} in {path} cannot be parsed: {reason}")]
    Unparsable {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error(
        "the {role} in {path} ({subject}) expired on {not_after}: \
         renew it (or use --acme-domain for automatic renewal)"
    )]
    Expired {
        path: PathBuf,
        role: &'static str,
        subject: String,
        not_after: String,
    },
    #[error("the {role} in {path} ({subject}) is not valid before {not_before}: check the clock")]
    NotYetValid {
        path: PathBuf,
        role: &'static str,
        subject: String,
        not_before: String,
    },
    #[error(
        "the chain in {path} is incomplete: {subject} is issued by {issuer}, which is neither \
         the next certificate in the file nor a public root CA; append the intermediate \
         certificate(s) after the leaf (your CA's \"fullchain\" file)"
    )]
    MissingIntermediate {
        path: PathBuf,
        subject: String,
        issuer: String,
    },
}

/// The cipher suites of KPN's list that rustls implements: the three TLS 1.3 suites and the
/// six TLS 1.2 ECDHE AEAD suites.
pub fn kpn_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::*;
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    }
}

/// Installs the unrestricted ring provider as the process default, for outgoing clients
/// (reqwest, sqlx). Safe to call more than once.
pub fn install_default_provider() {
    let _ = ring::default_provider().install_default();
}

/// A server configuration with KPN's policy for the given chain and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(kpn_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A server configuration with KPN's policy whose certificate is chosen per handshake by
/// `resolver` (several key types, reloadable).
pub fn server_config_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(kpn_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a PEM chain (leaf first) and its private key.
pub fn load_pem(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|_| TlsError::NoKey {
        path: key_path.to_owned(),
    })?;
    Ok((chain, key))
}

/// The development certificate under `dir`, generated on first use: self-signed for
/// `localhost`, `127.0.0.1` and `::1`. KPN will never accept it; it exists so that the first
/// run needs no setup.
pub fn dev_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("dev-cert.pem");
    let key_path = dir.join("dev-key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())
        .map_err(write_err(&key_path))?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(write_err(&cert_path))?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = dev_certificate(dir.path()).unwrap();
        let first = std::fs::read(&cert).unwrap();
        let (chain, private) = load_pem(&cert, &key).unwrap();
        assert_eq!(chain.len(), 1);
        server_config(chain, private).unwrap();
        dev_certificate(dir.path()).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
    }

    #[test]
    fn provider_offers_only_kpn_suites() {
        let names: Vec<String> = kpn_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names.len(), 9);
        assert!(
            names
                .iter()
                .all(|n| n.contains("GCM") || n.contains("CHACHA20"))
        );
        assert!(names.iter().filter(|n| n.starts_with("TLS_ECDHE")).count() == 6);
    }

    #[test]
    fn mismatched_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = dev_certificate(dir.path()).unwrap();
        assert!(matches!(
            load_pem(&cert, &cert),
            Err(TlsError::NoKey { .. })
        ));
        assert!(matches!(
            load_pem(&dir.path().join("nope.pem"), &cert),
            Err(TlsError::Read { .. })
        ));
    }
}
