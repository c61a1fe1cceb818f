//! A local ACME CA: Debian's `pebble`, started by the test on free ports. Its directory is
//! served over HTTPS with a certificate made here, which the receiver is told to trust with
//! `--acme-ca-root`; its TLS-ALPN-01 validations connect to `tls_port` on 127.0.0.1.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PEBBLE: &str = "/usr/bin/pebble";

pub struct Pebble {
    child: Child,
    pub directory_url: String,
    management: u16,
    /// The certificate of pebble's own HTTPS endpoints (PEM).
    pub https_root: PathBuf,
    https_root_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pebble did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 challenges on `tls_port`.
    pub fn start(tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert = dir.path().join("pebble-cert.pem");
        let key = dir.path().join("pebble-key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        let (listen, management, http_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pebble is needed for the ACME test (apt-get install pebble)");
        wait_for_port(listen);
        wait_for_port(management);
        Pebble {
            child,
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            management,
            https_root: cert,
            https_root_der: certified.cert.der().to_vec(),
            _dir: dir,
        }
    }

    /// The root that signs the certificates pebble issues (new on every start).
    pub async fn issuing_root(&self) -> rustls_pki_types::CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        things_receiver::tls::install_default_provider();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(&self.https_root_der).unwrap()])
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
