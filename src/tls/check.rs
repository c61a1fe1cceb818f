//! Checks a certificate chain the way KPN's client will judge it, before we serve it.
//!
//! KPN gives no feedback when it refuses our certificate: it just stops delivering. So the
//! mistakes an operator can make with files (a key from another certificate, an expired
//! certificate, a chain without its intermediate) are found at start and on every reload,
//! each with a message that names the file and the fix.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

/// A certificate with less validity left than this many days is due for renewal: KPN's
/// operators warn from then on, and `doctor` fails.
pub const RENEW_WITHIN_DAYS: i64 = 21;

/// The facts of one certificate that the checks and the `doctor` report use.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub self_signed: bool,
    /// DER encodings of the subject and issuer names, to link a chain.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
}

impl CertFacts {
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
        Ok(CertFacts {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            subject_der: cert.subject().as_raw().to_vec(),
            issuer_der: cert.issuer().as_raw().to_vec(),
        })
    }

    /// Whole days from `now` until the certificate expires (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// The DNS names and IP addresses a certificate is issued for (its subject alternative
/// names), for messages.
pub fn subject_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC time for messages.
pub fn format_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// Builds the served key from a chain and private key, refusing a pair that KPN would not
/// accept: the key must belong to the leaf, every certificate must be valid now, and each
/// certificate's issuer must follow it in the chain unless it is a public root.
pub fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnusableKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
    }
    check_chain(cert_path, &certified.cert, now_unix())?;
    Ok(certified)
}

/// Validity and completeness of a chain (leaf first) at time `now`.
pub fn check_chain(
    path: &Path,
    chain: &[CertificateDer<'static>],
    now: i64,
) -> Result<(), TlsError> {
    let facts = chain
        .iter()
        .enumerate()
        .map(|(index, der)| {
            CertFacts::parse(der).map_err(|reason| TlsError::Unparsable {
                path: path.to_owned(),
                index,
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, cert) in facts.iter().enumerate() {
        let role = if index == 0 {
            "certificate"
        } else {
            "chain certificate"
        };
        if now > cert.not_after {
            return Err(TlsError::Expired {
                path: path.to_owned(),
                role,
                subject: cert.subject.clone(),
                not_after: format_time(cert.not_after),
            });
        }
        if now < cert.not_before {
            return Err(TlsError::NotYetValid {
                path: path.to_owned(),
                role,
                subject: cert.subject.clone(),
                not_before: format_time(cert.not_before),
            });
        }
    }
    // Follow the chain from the leaf until it reaches a root, included (self-signed) or
    // public (known to clients); whatever follows is ignored by clients.
    for (index, cert) in facts.iter().enumerate() {
        if cert.self_signed {
            return Ok(());
        }
        let issued_by_next = facts
            .get(index + 1)
            .is_some_and(|next| next.subject_der == cert.issuer_der);
        if issued_by_next {
            continue;
        }
        if is_public_root_subject(&cert.issuer_der) {
            return Ok(());
        }
        return Err(TlsError::MissingIntermediate {
            path: path.to_owned(),
            subject: cert.subject.clone(),
            issuer: cert.issuer.clone(),
        });
    }
    Ok(())
}

/// Whether `name` (a DER-encoded X.501 Name) is the subject of one of Mozilla's roots.
fn is_public_root_subject(name: &[u8]) -> bool {
    // Trust anchors store the Name's contents without its outer SEQUENCE header.
    webpki_roots::TLS_SERVER_ROOTS.iter().any(|root| {
        let subject: &[u8] = root.subject.as_ref();
        name == subject || (name.ends_with(subject) && name.len() - subject.len() <= 4)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn a_chain_without_its_intermediate_is_named() {
        let (root, root_key) = ca("test root");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test intermediate");
        let inter_key = KeyPair::generate().unwrap();
        let inter = params.signed_by(&inter_key, &root, &root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &inter, &inter_key)
            .unwrap();
        let path = Path::new("chain.pem");
        let now = now_unix();
        let full = vec![leaf.der().clone(), inter.der().clone(), root.der().clone()];
        check_chain(path, &full, now).unwrap();
        let without_root = vec![leaf.der().clone(), inter.der().clone()];
        let err = check_chain(path, &without_root, now).unwrap_err();
        assert!(
            err.to_string().contains("test intermediate"),
            "names the certificate whose issuer is missing: {err}"
        );
        let leaf_only = vec![leaf.der().clone()];
        let err = check_chain(path, &leaf_only, now).unwrap_err();
        assert!(matches!(err, TlsError::MissingIntermediate { .. }), "{err}");
        assert!(err.to_string().contains("test intermediate"), "{err}");
    }

    #[test]
    fn days_left_rounds_down() {
        let facts = CertFacts {
            subject: String::new(),
            issuer: String::new(),
            not_before: 0,
            not_after: 86_400 * 21 + 10,
            self_signed: true,
            subject_der: Vec::new(),
            issuer_der: Vec::new(),
        };
        assert_eq!(facts.days_left(20), 20);
        assert_eq!(facts.days_left(0), 21);
        assert_eq!(facts.days_left(86_400 * 22), -1);
    }
}
