//! The TLS policy seen from a real client: TLS 1.2 and 1.3 only, KPN's ECDHE AEAD suites
//! only, certificates from `--tls-cert`/`--tls-key` (ECDSA and RSA) with their chain.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::crypto::ring::{self, cipher_suite::*};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedCipherSuite};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// A test CA and a leaf for `localhost` signed by it, written as chain and key files.
struct Pki {
    ca: CertificateDer<'static>,
    chain_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn pki(rsa: bool) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "things-receiver test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let leaf_key = if rsa {
        let pem_path = dir.path().join("rsa.pem");
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem_path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed to make an RSA test key");
        assert!(status.success());
        let pem = std::fs::read_to_string(&pem_path).unwrap();
        KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    } else {
        KeyPair::generate().unwrap()
    };
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let chain_path = dir.path().join("chain.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&chain_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    Pki {
        ca: ca.der().clone(),
        chain_path,
        key_path,
        _dir: dir,
    }
}

async fn serve_with(pki: &Pki) -> (Env, Server) {
    let env = Env::new().await;
    let server = env.serve(&[
        "--tls-cert",
        pki.chain_path.to_str().unwrap(),
        "--tls-key",
        pki.key_path.to_str().unwrap(),
    ]);
    (env, server)
}

/// Handshakes offering only `versions` and `suites`; on success returns what was negotiated
/// after a real request over the connection.
async fn handshake(
    server: &Server,
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
) -> Result<(ProtocolVersion, rustls::CipherSuite), String> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..ring::default_provider()
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = server.base_url.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, session) = tls.get_ref();
    Ok((
        session.protocol_version().unwrap(),
        session.negotiated_cipher_suite().unwrap().suite(),
    ))
}

const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    TLS13_AES_128_GCM_SHA256,
    TLS13_AES_256_GCM_SHA384,
    TLS13_CHACHA20_POLY1305_SHA256,
];
const ECDSA_SUITES: [SupportedCipherSuite; 3] = [
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];
const RSA_SUITES: [SupportedCipherSuite; 3] = [
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[tokio::test]
async fn ecdsa_certificate_serves_tls13_and_the_ecdsa_half_of_tls12() {
    let pki = pki(false);
    let (_env, server) = serve_with(&pki).await;
    for suite in TLS13_SUITES {
        let got = handshake(&server, &pki.ca, &[&rustls::version::TLS13], &[suite]).await;
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_3, suite.suite())));
    }
    for suite in ECDSA_SUITES {
        let got = handshake(&server, &pki.ca, &[&rustls::version::TLS12], &[suite]).await;
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_2, suite.suite())));
    }
    // An ECDSA key cannot sign an ECDHE_RSA handshake.
    let got = handshake(&server, &pki.ca, &[&rustls::version::TLS12], &RSA_SUITES).await;
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test]
async fn rsa_certificate_serves_the_rsa_half_of_tls12() {
    let pki = pki(true);
    let (_env, server) = serve_with(&pki).await;
    for suite in RSA_SUITES {
        let got = handshake(&server, &pki.ca, &[&rustls::version::TLS12], &[suite]).await;
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_2, suite.suite())));
    }
    let got = handshake(&server, &pki.ca, &[&rustls::version::TLS13], &TLS13_SUITES).await;
    assert_eq!(got.map(|g| g.0), Ok(ProtocolVersion::TLSv1_3));
}

/// `openssl s_client` with the given options; true if the handshake completed.
fn openssl_connects(addr: &str, options: &[&str]) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .args(options)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is needed for the legacy-protocol checks");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)")
}

#[tokio::test]
async fn legacy_protocols_and_suites_outside_the_list_are_refused() {
    let pki = pki(true);
    let (_env, server) = serve_with(&pki).await;
    let addr = server.base_url.trim_start_matches("https://").to_owned();
    // The control: a suite from the list over TLS 1.2 connects.
    assert!(openssl_connects(
        &addr,
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]
    ));
    // Legacy protocol versions (the security level is lowered so that the client offers them).
    assert!(!openssl_connects(
        &addr,
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]
    ));
    assert!(!openssl_connects(
        &addr,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]
    ));
    // TLS 1.2 suites KPN's list names but we do not offer, and ones it does not name.
    for cipher in [
        "ECDHE-RSA-AES128-SHA256",
        "AES128-GCM-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
        "AES256-SHA",
    ] {
        assert!(
            !openssl_connects(&addr, &["-tls1_2", "-cipher", cipher]),
            "{cipher}"
        );
    }
}

#[tokio::test]
async fn https_clients_verify_the_configured_chain_and_get_http2() {
    let pki = pki(false);
    let (_env, server) = serve_with(&pki).await;
    things_receiver::tls::install_default_provider();
    let url = server.url("/healthz").replace("127.0.0.1", "localhost");

    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&pki.ca).unwrap()])
        .build()
        .unwrap();
    let response = trusting.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN offers h2"
    );

    // A client that does not know the CA refuses: the chain is really what is served.
    let other_ca = pki_ca_only();
    let stranger = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&other_ca).unwrap()])
        .build()
        .unwrap();
    assert!(stranger.get(&url).send().await.is_err());
}

fn pki_ca_only() -> CertificateDer<'static> {
    pki(false).ca
}
