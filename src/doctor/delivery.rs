//! A signed probe delivery, built and sent exactly as KPN Things sends one.
//!
//! It proves the last part of the path: the receiver knows the plug, the shared secret
//! matches, and the answer is a 2xx (KPN treats anything else as a failed delivery). The
//! probe is a real SenML pack from a fixed device, `urn:dev:DVNUUID:<nil uuid>:`, so it is
//! stored like any delivery and easy to recognise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::Finding;
use super::network::connect;
use crate::ingest::doors::kpn::{PLUG_HEADER, TOKEN_HEADER};
use crate::token::Token;

/// The device the probe speaks for.
pub const PROBE_DEVICE: &str = "urn:dev:DVNUUID:00000000-0000-0000-0000-000000000000:";

#[allow(clippy::too_many_arguments)]
pub async fn probe(
    addresses: &[SocketAddr],
    host: &str,
    path_and_query: &str,
    plug: uuid::Uuid,
    secret: &str,
    extra_roots: &[CertificateDer<'static>],
    chain_ok: bool,
    timeout: Duration,
) -> Finding {
    if !chain_ok {
        return Finding::skip(
            "delivery",
            "KPN would not connect to a server whose certificate chain fails",
        );
    }
    let body = format!(
        r#"[{{"bn":"{PROBE_DEVICE}","bt":{},"n":"doctor","vs":"things-receiver doctor probe"}}]"#,
        crate::tls::check::now_unix()
    );
    let token = Token::sign(body.as_bytes(), secret.as_bytes());
    let request = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {host}\r\n{PLUG_HEADER}: {plug}\r\n\
         {TOKEN_HEADER}: {}\r\nContent-type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        token.to_hex(),
        body.len()
    );
    match tokio::time::timeout(
        timeout,
        send(addresses, host, extra_roots, &request, timeout),
    )
    .await
    {
        Err(_) => Finding::fail(
            "delivery",
            "no answer to the probe delivery in time",
            "KPN waits only a short time: check that the receiver and its database are up",
        ),
        Ok(Err(e)) => Finding::fail(
            "delivery",
            format!("the probe delivery failed: {e}"),
            "check that the receiver is running and reachable",
        ),
        Ok(Ok((status, answer))) => verdict(status, &answer),
    }
}

fn verdict(status: u16, answer: &str) -> Finding {
    let answer = answer.trim();
    let shown = if answer.len() > 200 {
        &answer[..answer.floor_char_boundary(200)]
    } else {
        answer
    };
    match status {
        200..=299 => Finding::pass(
            "delivery",
            format!("the signed probe was accepted with {status}"),
        ),
        401 | 403 => Finding::fail(
            "delivery",
            format!("the probe was refused with {status} ({shown})"),
            "the plug or secret does not match the receiver's destination: compare the \
             Things-Plug-UUID and shared secret at KPN with `things-receiver destinations list` \
             (rotate the secret on both sides if unsure)",
        ),
        404 => Finding::fail(
            "delivery",
            format!("the probe was answered 404 ({shown})"),
            "the URL path is wrong: KPN must deliver to /ingest/kpn",
        ),
        _ => Finding::fail(
            "delivery",
            format!("the probe was answered {status} ({shown})"),
            "KPN counts every non-2xx answer as a failed delivery: check the receiver's log",
        ),
    }
}

async fn send(
    addresses: &[SocketAddr],
    host: &str,
    extra_roots: &[CertificateDer<'static>],
    request: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone()).map_err(|e| e.to_string())?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crate::tls::kpn_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = connect(addresses, timeout).await?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))?;
    Ok((status, body.to_owned()))
}
