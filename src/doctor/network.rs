//! Reaching the endpoint: name resolution, TCP, and TLS handshakes that record what the
//! server presents instead of judging it (the judging is in `certificate`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Finding;

pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(timeout, lookup).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addresses)) => {
            let list: Vec<_> = addresses.collect();
            if list.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(list)
            }
        }
    }
}

/// The first address that accepts a TCP connection.
pub async fn connect(addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    let mut last = "no address".to_owned();
    for address in addresses {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = format!("{address}: {e}"),
            Err(_) => last = format!("{address}: timed out"),
        }
    }
    Err(last)
}

/// Accepts any certificate and keeps the chain presented; signatures are still checked so
/// that the handshake proves possession of the key.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut slot) = self.chain.lock() {
            *slot = chain;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}

/// Handshakes with `provider`'s suites and `versions`, recording the presented chain.
async fn handshake(
    addresses: &[SocketAddr],
    host: &str,
    timeout: Duration,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(TlsStream<TcpStream>, Vec<CertificateDer<'static>>), String> {
    let provider = Arc::new(provider);
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = connect(addresses, timeout).await?;
    let connecting = TlsConnector::from(Arc::new(config)).connect(server_name(host)?, tcp);
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err("the TLS handshake timed out".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(stream)) => stream,
    };
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    Ok((stream, chain))
}

/// The chain the server presents to a modern client (TLS 1.2 or 1.3, any suite).
pub async fn fetch_chain(
    addresses: &[SocketAddr],
    host: &str,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    handshake(
        addresses,
        host,
        timeout,
        ring::default_provider(),
        &versions,
    )
    .await
    .map(|(_, chain)| chain)
}

/// A TLS 1.2 handshake offering only KPN's suites must succeed.
pub async fn check_tls12(addresses: &[SocketAddr], host: &str, timeout: Duration) -> Finding {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: crate::tls::kpn_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect(),
        ..ring::default_provider()
    };
    match handshake(
        addresses,
        host,
        timeout,
        provider,
        &[&rustls::version::TLS12],
    )
    .await
    {
        Ok((stream, _)) => {
            let suite = stream
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            Finding::pass("tls12", format!("TLS 1.2 offered with {suite}"))
        }
        Err(e) => Finding::fail(
            "tls12",
            format!("no TLS 1.2 handshake with one of KPN's suites: {e}"),
            "enable TLS 1.2 with ECDHE-RSA or ECDHE-ECDSA AES-GCM or ChaCha20-Poly1305 suites \
             (things-receiver does so by default; check a proxy or load balancer in front)",
        ),
    }
}
