//! ACME end to end: a certificate obtained from a local pebble by TLS-ALPN-01 on the serving
//! port, served to real clients, cached in the data directory and served from there after a
//! restart without the CA.

mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pebble::{Pebble, free_port};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// One handshake trusting only `root` and one request; the served chain on success.
async fn fetch(addr: &str, root: &CertificateDer<'static>) -> Result<Vec<Vec<u8>>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(answer);
    }
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect())
}

async fn wait_for_certificate(addr: &str, root: &CertificateDer<'static>) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match fetch(addr, root).await {
            Ok(chain) => return chain,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no certificate from the ACME CA in time: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_by_tls_alpn_01_served_and_cached() {
    let port = free_port();
    let pebble = Pebble::start(port);
    let root = pebble.issuing_root().await;
    let env = Env::new().await;
    let listen = format!("127.0.0.1:{port}");
    let keep = tempfile::tempdir().unwrap();
    let https_root = keep.path().join("pebble-https-root.pem");
    std::fs::copy(&pebble.https_root, &https_root).unwrap();
    let acme_args = |directory: &str| {
        let mut cmd = env.command();
        cmd.args(["serve", "--listen", &listen])
            .args([
                "--acme-domain",
                "localhost",
                "--acme-email",
                "ops@example.org",
            ])
            .args(["--acme-directory", directory])
            .arg("--acme-ca-root")
            .arg(&https_root);
        cmd
    };
    let server = Server::start(acme_args(&pebble.directory_url));
    assert!(
        server.banner.contains("ACME for localhost"),
        "{}",
        server.banner
    );

    let chain = wait_for_certificate(&listen, &root).await;
    // Leaf and pebble's intermediate, verified against pebble's root by the client.
    assert!(chain.len() >= 2, "the full chain is served");
    let cache = env.data_dir.path().join("acme");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert!(!cached.is_empty(), "nothing cached in {}", cache.display());

    // Ordinary clients still get HTTP/2 by ALPN next to the acme-tls/1 protocol.
    let reqwest_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&root).unwrap()])
        .build()
        .unwrap();
    let response = reqwest_client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    // A restart with the CA gone serves the cached certificate.
    server.stop().await;
    let directory = pebble.directory_url.clone();
    pebble.stop();
    let _restarted = Server::start(acme_args(&directory));
    let again = wait_for_certificate(&listen, &root).await;
    assert_eq!(again[0], chain[0], "the cached certificate is served");
}
