//! `doctor`: checks an endpoint the way KPN Things will reach it, before go-live.
//!
//! When KPN cannot deliver it says nothing to the receiver: deliveries just stop. Every rule
//! KPN applies (https on port 443, a name that resolves, a certificate chaining to a public
//! CA, valid for the name and not about to expire, TLS 1.2 with one of its suites, no legacy
//! protocols) is checked from the outside here, each with a verdict and, on failure, the fix.
//! With a plug and secret a signed probe delivery shows the whole path works end to end.
//! Mozilla's root set stands in for Java's default trust store.

pub mod certificate;
pub mod delivery;
pub mod legacy;
pub mod network;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;

/// Days of validity a certificate must have left.
pub const MIN_DAYS_LEFT: i64 = crate::tls::check::RENEW_WITHIN_DAYS;

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub plug: Option<uuid::Uuid>,
    pub secret: Option<String>,
    /// Extra trusted roots (PEM), for checking against a private test CA.
    pub ca_file: Option<PathBuf>,
    /// Per network operation.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not checked because an earlier check failed.
    Skip,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier for machines: `scheme`, `port`, `dns`, `connect`, `chain`,
    /// `hostname`, `expiry`, `legacy-tls`, `tls12`, `delivery`.
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skip(check: &'static str, why: &str) -> Finding {
        Finding {
            check,
            status: Status::Skip,
            detail: format!("not checked: {why}"),
            fix: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub ok: bool,
    pub findings: Vec<Finding>,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("{0:?} is not a URL: {1}")]
    Url(String, String),
    #[error("{path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// The parts of the URL the checks need.
struct Target {
    https: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn parse_target(url: &str) -> Result<Target, DoctorError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| DoctorError::Url(url.to_owned(), e.to_string()))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| DoctorError::Url(url.to_owned(), "no scheme".into()))?;
    let host = uri
        .host()
        .ok_or_else(|| DoctorError::Url(url.to_owned(), "no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = scheme.eq_ignore_ascii_case("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    Ok(Target {
        https,
        host,
        port,
        path_and_query,
    })
}

/// Runs every check in order; later checks are skipped when what they need failed.
pub async fn run(options: &Options) -> Result<Report, DoctorError> {
    let target = parse_target(&options.url)?;
    let extra_roots = match &options.ca_file {
        Some(path) => load_roots(path)?,
        None => Vec::new(),
    };
    let mut findings = Vec::new();

    findings.push(if target.https {
        Finding::pass("scheme", "https")
    } else {
        Finding::fail(
            "scheme",
            format!("{} is not https", options.url),
            "KPN Things delivers only to https:// URLs: serve TLS (the default) or put a \
             TLS-terminating proxy in front, and configure the https URL at KPN",
        )
    });
    findings.push(if target.port == 443 {
        Finding::pass("port", "443")
    } else {
        Finding::fail(
            "port",
            format!("port {} is not 443", target.port),
            "KPN Things delivers only to port 443: listen on 443 (--listen 0.0.0.0:443, or map \
             443 to the listen port) and use a URL without a port",
        )
    });

    let addresses = network::resolve(&target.host, target.port, options.timeout).await;
    let addresses: Vec<SocketAddr> = match addresses {
        Ok(list) => {
            findings.push(Finding::pass(
                "dns",
                format!(
                    "{} resolves to {}",
                    target.host,
                    list.iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            list
        }
        Err(e) => {
            findings.push(Finding::fail(
                "dns",
                format!("{} does not resolve: {e}", target.host),
                "publish an A or AAAA record for the name in public DNS",
            ));
            Vec::new()
        }
    };

    let tls_checks = [
        "connect",
        "chain",
        "hostname",
        "expiry",
        "legacy-tls",
        "tls12",
    ];
    if addresses.is_empty() || !target.https {
        let why = if addresses.is_empty() {
            "the name does not resolve"
        } else {
            "the URL is not https"
        };
        findings.extend(tls_checks.iter().map(|c| Finding::skip(c, why)));
        findings.push(Finding::skip("delivery", why));
        return Ok(report(options, findings));
    }

    let presented = network::fetch_chain(&addresses, &target.host, options.timeout).await;
    let chain: Vec<CertificateDer<'static>> = match presented {
        Ok(chain) => {
            findings.push(Finding::pass(
                "connect",
                format!("TLS handshake with {} completed", target.host),
            ));
            chain
        }
        Err(e) => {
            findings.push(Finding::fail(
                "connect",
                format!("no TLS connection to {}:{}: {e}", target.host, target.port),
                "check that the receiver runs, that port 443 is open to the internet in every \
                 firewall, and that it speaks TLS (not plain HTTP) on that port",
            ));
            // The protocol checks do not need the certificate: they still tell which
            // versions the server speaks.
            let why = "no TLS connection";
            findings.extend(tls_checks[1..4].iter().map(|c| Finding::skip(c, why)));
            findings.push(legacy::check(&addresses, &target.host, options.timeout).await);
            findings.push(network::check_tls12(&addresses, &target.host, options.timeout).await);
            findings.push(Finding::skip("delivery", why));
            return Ok(report(options, findings));
        }
    };
    let now = crate::tls::check::now_unix();
    let chain_finding = certificate::check_chain(&chain, &extra_roots, now);
    let chain_ok = matches!(chain_finding.status, Status::Pass | Status::Warn);
    findings.push(chain_finding);
    findings.push(certificate::check_hostname(&chain, &target.host));
    findings.push(certificate::check_expiry(&chain, now));
    findings.push(legacy::check(&addresses, &target.host, options.timeout).await);
    findings.push(network::check_tls12(&addresses, &target.host, options.timeout).await);

    match (&options.plug, &options.secret) {
        (Some(plug), Some(secret)) => {
            findings.push(
                delivery::probe(
                    &addresses,
                    &target.host,
                    &target.path_and_query,
                    *plug,
                    secret,
                    &extra_roots,
                    chain_ok,
                    options.timeout,
                )
                .await,
            );
        }
        _ => findings.push(Finding::skip(
            "delivery",
            "give --plug and --secret to send a signed probe delivery",
        )),
    }
    Ok(report(options, findings))
}

fn report(options: &Options, findings: Vec<Finding>) -> Report {
    Report {
        url: options.url.clone(),
        ok: findings.iter().all(|f| f.status != Status::Fail),
        findings,
    }
}

fn load_roots(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, DoctorError> {
    use rustls_pki_types::pem::PemObject;
    let roots: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| DoctorError::CaFile {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| DoctorError::CaFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if roots.is_empty() {
        return Err(DoctorError::CaFile {
            path: path.clone(),
            reason: "no PEM certificate in the file".into(),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("https://example.org/ingest/kpn?x=1").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("example.org", 443));
        assert_eq!(t.path_and_query, "/ingest/kpn?x=1");
        let t = parse_target("http://[::1]:8080").unwrap();
        assert!(!t.https);
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert!(parse_target("not a url").is_err());
    }
}
