//! Test certificates: a CA with an intermediate, and leaves of either key type with chosen
//! names and validity, written as PEM files the way an operator would have them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyType {
    Ecdsa,
    Rsa,
}

/// A root CA and an intermediate it signed; leaves are signed by the intermediate.
pub struct TestCa {
    pub root: rcgen::Certificate,
    root_key: KeyPair,
    pub intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

/// A leaf's files.
pub struct Leaf {
    /// Leaf, intermediate, root.
    pub chain: PathBuf,
    /// Leaf and root only: the intermediate is missing.
    pub chain_without_intermediate: PathBuf,
    pub key: PathBuf,
}

/// Validity of a leaf, in days relative to now.
#[derive(Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub to_days: i64,
}

pub const VALID: Validity = Validity {
    from_days: -1,
    to_days: 90,
};

/// (year, month, day) `days` from today.
fn date(days: i64) -> (i32, u8, u8) {
    let day = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
    use chrono::Datelike;
    (day.year(), day.month() as u8, day.day() as u8)
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params(&format!("{name} root"))
            .self_signed(&root_key)
            .unwrap();
        let intermediate_key = KeyPair::generate().unwrap();
        let intermediate = ca_params(&format!("{name} intermediate"))
            .signed_by(&intermediate_key, &root, &root_key)
            .unwrap();
        TestCa {
            root,
            root_key,
            intermediate,
            intermediate_key,
        }
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    /// Writes the root certificate as a PEM file (for `doctor --ca-file`).
    pub fn write_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("root.pem");
        std::fs::write(&path, self.root.pem()).unwrap();
        path
    }

    /// A leaf for `names` under `dir` with files named after `label`.
    pub fn leaf(
        &self,
        dir: &Path,
        label: &str,
        key_type: KeyType,
        names: &[&str],
        validity: Validity,
    ) -> Leaf {
        let key = match key_type {
            KeyType::Ecdsa => KeyPair::generate().unwrap(),
            KeyType::Rsa => rsa_key(dir),
        };
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let (y, m, d) = date(validity.from_days);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = date(validity.to_days);
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let leaf = params
            .signed_by(&key, &self.intermediate, &self.intermediate_key)
            .unwrap();
        let chain = dir.join(format!("{label}-chain.pem"));
        let partial = dir.join(format!("{label}-partial.pem"));
        let key_path = dir.join(format!("{label}-key.pem"));
        std::fs::write(
            &chain,
            format!(
                "{}{}{}",
                leaf.pem(),
                self.intermediate.pem(),
                self.root.pem()
            ),
        )
        .unwrap();
        std::fs::write(&partial, format!("{}{}", leaf.pem(), self.root.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            chain,
            chain_without_intermediate: partial,
            key: key_path,
        }
    }
}

/// A 2048-bit RSA key from `openssl genpkey` (rcgen cannot generate RSA keys with ring).
pub fn rsa_key(dir: &Path) -> KeyPair {
    let pem_path = dir.join(format!("rsa-{}.pem", uuid::Uuid::new_v4()));
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
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make an RSA test key");
    assert!(status.success());
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
}

/// A self-signed certificate for `localhost` (what KPN refuses).
pub fn self_signed(dir: &Path) -> Leaf {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = dir.join("self-signed.pem");
    let key = dir.join("self-signed-key.pem");
    std::fs::write(&chain, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    Leaf {
        chain: chain.clone(),
        chain_without_intermediate: chain,
        key,
    }
}
