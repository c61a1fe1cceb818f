//! `doctor` against a good receiver and deliberately broken servers: each fault is named,
//! with its fix, and the exit status says whether KPN could deliver.

mod common;
#[path = "common/pki.rs"]
mod pki;
#[path = "common/tls_server.rs"]
mod tls_server;

use std::process::Command;

use common::*;
use pki::{KeyType, TestCa, VALID, Validity};
use serde_json::Value;

struct Doctor {
    success: bool,
    report: Value,
}

impl Doctor {
    fn status(&self, check: &str) -> &str {
        self.finding(check)["status"].as_str().unwrap()
    }

    fn finding(&self, check: &str) -> &Value {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no finding {check}: {}", self.report))
    }

    /// The checks that failed, in order.
    fn failed(&self) -> Vec<&str> {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["status"] == "fail")
            .map(|f| f["check"].as_str().unwrap())
            .collect()
    }
}

fn doctor(url: &str, extra: &[&str]) -> Doctor {
    let out = Command::new(BIN)
        .env_clear()
        .args(["doctor", "--json", "--timeout", "5s", url])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], out.status.success(), "{report}");
    Doctor {
        success: out.status.success(),
        report,
    }
}

fn local_url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

fn port_of(server: &Server) -> u16 {
    server.base_url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_receiver_passes_everything_but_the_test_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("good");
    let ecdsa = ca.leaf(dir.path(), "ecdsa", KeyType::Ecdsa, &["localhost"], VALID);
    let rsa = ca.leaf(dir.path(), "rsa", KeyType::Rsa, &["localhost"], VALID);
    let root = ca.write_root(dir.path());
    let env = Env::new().await;
    let plug = env.add_destination("doctor", &[]);
    let server = env.serve(&[
        "--tls-cert",
        ecdsa.chain.to_str().unwrap(),
        "--tls-key",
        ecdsa.key.to_str().unwrap(),
        "--tls-cert",
        rsa.chain.to_str().unwrap(),
        "--tls-key",
        rsa.key.to_str().unwrap(),
    ]);
    let url = format!("https://localhost:{}/ingest/kpn", port_of(&server));
    let plug = plug.to_string();
    let root = root.to_str().unwrap();
    let result = doctor(
        &url,
        &["--ca-file", root, "--plug", &plug, "--secret", SECRET],
    );
    // The only fault of a test server: it is not on port 443.
    assert_eq!(result.failed(), vec!["port"], "{}", result.report);
    assert!(!result.success);
    for check in [
        "scheme",
        "dns",
        "connect",
        "hostname",
        "expiry",
        "legacy-tls",
        "tls12",
        "delivery",
    ] {
        assert_eq!(result.status(check), "pass", "{check}: {}", result.report);
    }
    // Trusted only through --ca-file: said so, without failing.
    assert_eq!(result.status("chain"), "warn");
    assert!(
        result.finding("delivery")["detail"]
            .as_str()
            .unwrap()
            .contains("accepted with 200")
    );

    // Without --ca-file the test CA is no public root.
    let result = doctor(&url, &[]);
    assert_eq!(result.failed(), vec!["port", "chain"], "{}", result.report);
    assert!(
        result.finding("chain")["fix"]
            .as_str()
            .unwrap()
            .contains("public CA")
    );
    assert_eq!(result.status("delivery"), "skip");

    // The text form names each verdict and the fix.
    let out = Command::new(BIN)
        .env_clear()
        .args(["doctor", &url, "--ca-file", root])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("FAIL  port"), "{text}");
    assert!(
        text.contains("fix: KPN Things delivers only to port 443"),
        "{text}"
    );
    assert!(text.contains("PASS  tls12"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("secret");
    let leaf = ca.leaf(dir.path(), "leaf", KeyType::Ecdsa, &["localhost"], VALID);
    let root = ca.write_root(dir.path());
    let env = Env::new().await;
    let plug = env.add_destination("doctor", &[]).to_string();
    let server = env.serve(&[
        "--tls-cert",
        leaf.chain.to_str().unwrap(),
        "--tls-key",
        leaf.key.to_str().unwrap(),
    ]);
    let url = format!("https://localhost:{}/ingest/kpn", port_of(&server));
    let wrong = "Wr0ng-Secret#For.Things/Testing!2024";
    let result = doctor(
        &url,
        &[
            "--ca-file",
            root.to_str().unwrap(),
            "--plug",
            &plug,
            "--secret",
            wrong,
        ],
    );
    assert_eq!(
        result.failed(),
        vec!["port", "delivery"],
        "{}",
        result.report
    );
    let delivery = result.finding("delivery");
    assert!(
        delivery["detail"].as_str().unwrap().contains("401"),
        "{delivery}"
    );
    assert!(
        delivery["fix"].as_str().unwrap().contains("secret"),
        "{delivery}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki::self_signed(dir.path());
    let addr = tls_server::spawn(&leaf.chain, &leaf.key, rustls::ALL_VERSIONS).await;
    let result = doctor(&local_url(addr, "/"), &[]);
    assert_eq!(result.failed(), vec!["port", "chain"], "{}", result.report);
    assert!(
        result.finding("chain")["detail"]
            .as_str()
            .unwrap()
            .contains("self-signed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("expired");
    let old = Validity {
        from_days: -100,
        to_days: -2,
    };
    let leaf = ca.leaf(dir.path(), "old", KeyType::Ecdsa, &["localhost"], old);
    let root = ca.write_root(dir.path());
    let addr = tls_server::spawn(&leaf.chain, &leaf.key, rustls::ALL_VERSIONS).await;
    let result = doctor(
        &local_url(addr, "/"),
        &["--ca-file", root.to_str().unwrap()],
    );
    assert_eq!(
        result.failed(),
        vec!["port", "chain", "expiry"],
        "{}",
        result.report
    );
    assert!(
        result.finding("expiry")["detail"]
            .as_str()
            .unwrap()
            .contains("expired on")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_21_days_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("soon");
    let soon = Validity {
        from_days: -80,
        to_days: 10,
    };
    let leaf = ca.leaf(dir.path(), "soon", KeyType::Ecdsa, &["localhost"], soon);
    let root = ca.write_root(dir.path());
    let addr = tls_server::spawn(&leaf.chain, &leaf.key, rustls::ALL_VERSIONS).await;
    let result = doctor(
        &local_url(addr, "/"),
        &["--ca-file", root.to_str().unwrap()],
    );
    assert_eq!(result.failed(), vec!["port", "expiry"], "{}", result.report);
    let detail = result.finding("expiry")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("expires in 9 days") || detail.contains("expires in 10 days"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("other");
    let leaf = ca.leaf(
        dir.path(),
        "other",
        KeyType::Rsa,
        &["things.example.org"],
        VALID,
    );
    let root = ca.write_root(dir.path());
    let addr = tls_server::spawn(&leaf.chain, &leaf.key, rustls::ALL_VERSIONS).await;
    let result = doctor(
        &local_url(addr, "/"),
        &["--ca-file", root.to_str().unwrap()],
    );
    assert_eq!(
        result.failed(),
        vec!["port", "hostname"],
        "{}",
        result.report
    );
    let detail = result.finding("hostname")["detail"].as_str().unwrap();
    assert!(detail.contains("things.example.org"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls12_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tls13");
    let leaf = ca.leaf(dir.path(), "leaf", KeyType::Ecdsa, &["localhost"], VALID);
    let root = ca.write_root(dir.path());
    let addr = tls_server::spawn(&leaf.chain, &leaf.key, &[&rustls::version::TLS13]).await;
    let result = doctor(
        &local_url(addr, "/"),
        &["--ca-file", root.to_str().unwrap()],
    );
    assert_eq!(result.failed(), vec!["port", "tls12"], "{}", result.report);
    assert!(
        result.finding("tls12")["fix"]
            .as_str()
            .unwrap()
            .contains("enable TLS 1.2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_accepting_tls10_is_named() {
    // openssl s_server still speaks TLS 1.0 when asked to.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("legacy");
    let leaf = ca.leaf(dir.path(), "leaf", KeyType::Rsa, &["localhost"], VALID);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-www"])
        .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
        .arg("-cert")
        .arg(&leaf.chain)
        .arg("-key")
        .arg(&leaf.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl is needed for the legacy-protocol server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = doctor(&format!("https://localhost:{port}/"), &[]);
    let _ = server.kill();
    let _ = server.wait();
    let legacy = result.finding("legacy-tls");
    assert_eq!(legacy["status"], "fail", "{}", result.report);
    // The modern protocol is there too: the finding is about the legacy one alone.
    assert_eq!(result.status("tls12"), "pass", "{}", result.report);
    assert!(
        legacy["detail"].as_str().unwrap().contains("TLS 1.0"),
        "{legacy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheme_and_dns_faults_are_named_and_the_rest_is_skipped() {
    // `.invalid` never resolves (RFC 6761).
    let result = doctor("https://things-receiver.invalid/ingest/kpn", &[]);
    assert!(!result.success);
    assert_eq!(result.failed(), vec!["dns"], "{}", result.report);
    assert_eq!(result.status("port"), "pass");
    assert_eq!(result.status("chain"), "skip");

    let result = doctor("http://localhost:1/ingest/kpn", &[]);
    assert_eq!(result.failed(), vec!["scheme", "port"], "{}", result.report);
    assert!(
        result.finding("scheme")["fix"]
            .as_str()
            .unwrap()
            .contains("https://")
    );
}
