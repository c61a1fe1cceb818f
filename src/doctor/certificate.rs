//! Judging the presented chain as a Java client with the default trust store would:
//! does it lead to a public root, is it for this name, how long is it still valid.

use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::{Finding, MIN_DAYS_LEFT};
use crate::tls::check::{CertFacts, format_time};

pub fn check_chain(
    chain: &[CertificateDer<'static>],
    extra_roots: &[CertificateDer<'static>],
    now: i64,
) -> Finding {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Finding::fail(
            "chain",
            "the server presented no certificate",
            "configure a certificate",
        );
    };
    let end_entity = match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert,
        Err(e) => {
            return Finding::fail(
                "chain",
                format!("the certificate cannot be parsed: {e}"),
                "install a valid X.509 certificate",
            );
        }
    };
    let mut anchors: Vec<TrustAnchor<'_>> = webpki_roots::TLS_SERVER_ROOTS.to_vec();
    anchors.extend(
        extra_roots
            .iter()
            .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok()),
    );
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    let verified = end_entity.verify_for_usage(
        algorithms,
        &anchors,
        intermediates,
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    let facts = CertFacts::parse(leaf).ok();
    let public_only = || {
        end_entity
            .verify_for_usage(
                algorithms,
                webpki_roots::TLS_SERVER_ROOTS,
                intermediates,
                time,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .is_ok()
    };
    match verified {
        Ok(_) if !extra_roots.is_empty() && !public_only() => Finding::warn(
            "chain",
            "chains only to a root from --ca-file, not to a public root",
            "fine for a test; KPN trusts public CAs only, so use a public certificate in \
             production",
        ),
        Ok(_) => Finding::pass(
            "chain",
            format!(
                "chains to a trusted root{}",
                facts
                    .map(|f| format!(" (issuer {})", f.issuer))
                    .unwrap_or_default()
            ),
        ),
        Err(webpki::Error::UnknownIssuer) if chain.len() == 1 && is_self_signed(&facts) => {
            Finding::fail(
                "chain",
                "the certificate is self-signed",
                "KPN only accepts certificates from a CA in Java's default trust store: get one \
                 from a public CA (e.g. --acme-domain for Let's Encrypt)",
            )
        }
        Err(webpki::Error::UnknownIssuer) => Finding::fail(
            "chain",
            format!(
                "the chain does not lead to a public root{}",
                facts
                    .map(|f| format!(" (the certificate is issued by {})", f.issuer))
                    .unwrap_or_default()
            ),
            "serve the full chain (leaf, then the intermediate certificates: your CA's \
             \"fullchain\" file), and use a public CA, not a private one",
        ),
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
            Finding::fail(
                "chain",
                format!("a certificate in the chain is outside its validity period: {e}"),
                "renew the certificate (or use --acme-domain for automatic renewal) and check \
                 the server's clock",
            )
        }
        Err(e) => Finding::fail(
            "chain",
            format!("the chain does not verify: {e}"),
            "serve a certificate from a public CA with its full chain",
        ),
    }
}

fn is_self_signed(facts: &Option<CertFacts>) -> bool {
    facts.as_ref().is_some_and(|f| f.self_signed)
}

pub fn check_hostname(chain: &[CertificateDer<'static>], host: &str) -> Finding {
    let Some(leaf) = chain.first() else {
        return Finding::fail("hostname", "no certificate", "configure a certificate");
    };
    let names = || crate::tls::check::subject_names(leaf).join(", ");
    let matched = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| e.to_string())
        .and_then(|cert| {
            let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
            cert.verify_is_valid_for_subject_name(&name)
                .map_err(|e| e.to_string())
        });
    match matched {
        Ok(()) => Finding::pass("hostname", format!("the certificate is valid for {host}")),
        Err(_) => Finding::fail(
            "hostname",
            format!(
                "the certificate is not valid for {host} (it names: {})",
                names()
            ),
            format!("get a certificate whose subject alternative names include {host}"),
        ),
    }
}

pub fn check_expiry(chain: &[CertificateDer<'static>], now: i64) -> Finding {
    let Some(facts) = chain.first().and_then(|c| CertFacts::parse(c).ok()) else {
        return Finding::fail(
            "expiry",
            "the certificate cannot be read",
            "configure a certificate",
        );
    };
    let days = facts.days_left(now);
    let until = format_time(facts.not_after);
    if now > facts.not_after {
        Finding::fail(
            "expiry",
            format!("the certificate expired on {until}"),
            "renew the certificate now (or use --acme-domain for automatic renewal)",
        )
    } else if days < MIN_DAYS_LEFT {
        Finding::fail(
            "expiry",
            format!("the certificate expires in {days} days ({until})"),
            format!(
                "renew it: keep at least {MIN_DAYS_LEFT} days of validity (things-receiver \
                 re-reads renewed files without a restart; --acme-domain renews automatically)"
            ),
        )
    } else {
        Finding::pass(
            "expiry",
            format!("valid for {days} more days (until {until})"),
        )
    }
}
