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

#[path = "common/pki.rs"]
mod pki;

use pki::{KeyType, TestCa, VALID, Validity};

/// Starts `serve` and expects it to refuse to start; returns its standard error.
fn serve_refuses(env: &Env, extra: &[&str]) -> String {
    let mut child = env
        .command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started although it should have refused: {extra:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn both_key_types_together_serve_every_listed_suite() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("both");
    let ecdsa = ca.leaf(dir.path(), "ecdsa", KeyType::Ecdsa, &["localhost"], VALID);
    let rsa = ca.leaf(dir.path(), "rsa", KeyType::Rsa, &["localhost"], VALID);
    let env = Env::new().await;
    let server = env.serve(&[
        "--tls-cert",
        path(&ecdsa.chain),
        "--tls-key",
        path(&ecdsa.key),
        "--tls-cert",
        path(&rsa.chain),
        "--tls-key",
        path(&rsa.key),
    ]);
    let root = ca.root_der();
    for suite in ECDSA_SUITES.into_iter().chain(RSA_SUITES) {
        let got = handshake(&server, &root, &[&rustls::version::TLS12], &[suite]).await;
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_2, suite.suite())));
    }
    for suite in TLS13_SUITES {
        let got = handshake(&server, &root, &[&rustls::version::TLS13], &[suite]).await;
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_3, suite.suite())));
    }
    // Legacy versions stay refused with both keys loaded.
    let addr = server.base_url.trim_start_matches("https://").to_owned();
    assert!(openssl_connects(
        &addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]
    ));
    assert!(!openssl_connects(
        &addr,
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]
    ));
}

#[tokio::test]
async fn a_key_of_another_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mismatch");
    let one = ca.leaf(dir.path(), "one", KeyType::Ecdsa, &["localhost"], VALID);
    let two = ca.leaf(dir.path(), "two", KeyType::Ecdsa, &["localhost"], VALID);
    let env = Env::new().await;
    let stderr = serve_refuses(
        &env,
        &["--tls-cert", path(&one.chain), "--tls-key", path(&two.key)],
    );
    assert!(
        stderr.contains("does not belong to the certificate") && stderr.contains("two-key.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("expired");
    let old = Validity {
        from_days: -120,
        to_days: -30,
    };
    let leaf = ca.leaf(dir.path(), "old", KeyType::Rsa, &["localhost"], old);
    let env = Env::new().await;
    let stderr = serve_refuses(
        &env,
        &[
            "--tls-cert",
            path(&leaf.chain),
            "--tls-key",
            path(&leaf.key),
        ],
    );
    assert!(
        stderr.contains("expired on") && stderr.contains("old-chain.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_chain_without_its_intermediate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("partial");
    let leaf = ca.leaf(dir.path(), "leaf", KeyType::Ecdsa, &["localhost"], VALID);
    let env = Env::new().await;
    let stderr = serve_refuses(
        &env,
        &[
            "--tls-cert",
            path(&leaf.chain_without_intermediate),
            "--tls-key",
            path(&leaf.key),
        ],
    );
    assert!(
        stderr.contains("is incomplete") && stderr.contains("partial intermediate"),
        "{stderr}"
    );
    // Unpaired flags are named too.
    let stderr = serve_refuses(
        &env,
        &[
            "--tls-cert",
            path(&leaf.chain),
            "--tls-cert",
            path(&leaf.chain),
            "--tls-key",
            path(&leaf.key),
        ],
    );
    assert!(stderr.contains("give them in pairs"), "{stderr}");
}

/// One new TLS connection and one request; the leaf certificate that was served.
async fn served_leaf(addr: &str, roots: &[CertificateDer<'static>]) -> Result<Vec<u8>, String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
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
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

/// Replaces a file the way renewal tools do: write beside it, then rename over it.
fn replace_file(target: &std::path::Path, source: &std::path::Path) {
    let temporary = target.with_extension("new");
    std::fs::copy(source, &temporary).unwrap();
    std::fs::rename(&temporary, target).unwrap();
}

fn leaf_der(chain: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(chain)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let live = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let old = old_ca.leaf(dir.path(), "old", KeyType::Ecdsa, &["localhost"], VALID);
    let new = new_ca.leaf(dir.path(), "new", KeyType::Ecdsa, &["localhost"], VALID);
    let cert = live.path().join("cert.pem");
    let key = live.path().join("key.pem");
    std::fs::copy(&old.chain, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();

    let env = Env::new().await;
    let server = env.serve(&["--tls-cert", path(&cert), "--tls-key", path(&key)]);
    let addr = server.base_url.trim_start_matches("https://").to_owned();
    let roots = [old_ca.root_der(), new_ca.root_der()];
    let (old_leaf, new_leaf) = (leaf_der(&old.chain), leaf_der(&new.chain));
    assert_eq!(served_leaf(&addr, &roots).await, Ok(old_leaf.clone()));

    // A broken pair (the new certificate with the old key) keeps the old one served.
    replace_file(&cert, &new.chain);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(served_leaf(&addr, &roots).await, Ok(old_leaf.clone()));
    }

    // A connection opened before the change keeps working after it.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut store = RootCertStore::empty();
    store.add(old_ca.root_der()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let mut open = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();

    // The matching key arrives: the next handshakes get the new certificate, and every
    // request in between succeeds.
    replace_file(&key, &new.key);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let served = served_leaf(&addr, &roots).await.expect("no failed request");
        if served == new_leaf {
            break;
        }
        assert_eq!(served, old_leaf);
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served"
        );
    }
    open.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_logged_at_start() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("soon");
    let soon = Validity {
        from_days: -80,
        to_days: 10,
    };
    let leaf = ca.leaf(dir.path(), "soon", KeyType::Ecdsa, &["localhost"], soon);
    let env = Env::new().await;
    let mut child = env
        .command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            path(&leaf.chain),
            "--tls-key",
            path(&leaf.key),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("certificate due for renewal") {
                let _ = found.send(line);
                return;
            }
        }
    });
    let line = lines.recv_timeout(std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no renewal warning for a certificate expiring in 10 days");
    // Drop the terminal colour codes around field names.
    let mut plain = String::new();
    let mut rest = line.as_str();
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = rest[start..].split_once('m').map_or("", |(_, after)| after);
    }
    plain.push_str(rest);
    let line = plain;
    assert!(
        line.contains("days_left=9") || line.contains("days_left=10"),
        "{line}"
    );
}
