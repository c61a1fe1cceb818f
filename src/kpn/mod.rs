//! The client side of KPN Things: access tokens from KPN's identity provider and actuator
//! downlinks through KPN's API.
//!
//! Everything KPN-specific (URLs, audience, path, Accept header) is configuration with KPN's
//! documented values as defaults, because KPN's sources disagree on some of them and a newer
//! API exists beside the one used here.

pub mod client;
pub mod credentials;
pub mod token;

use std::time::{Duration, Instant};

pub use client::{KpnClient, SendOutcome};
pub use credentials::Credentials;

use crate::config::KpnArgs;

const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Validated KPN settings.
#[derive(Debug, Clone)]
pub struct KpnConfig {
    pub token_url: String,
    pub audience: String,
    /// Without a trailing slash.
    pub api_url: String,
    /// With a leading slash.
    pub downlink_path: String,
    pub downlink_accept: String,
    pub sub_customer: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(
        "--kpn-token-url contains {{tenant}}: set KPN_TENANT_ID (or --kpn-tenant) to your GRIP tenant id (Things Portal, Customer details)"
    )]
    MissingTenant,
    #[error("{flag} {value:?} is not an http(s) URL")]
    BadUrl { flag: &'static str, value: String },
    #[error("{flag} must not be empty")]
    Empty { flag: &'static str },
    #[error("cannot build the HTTP client for KPN: {0}")]
    Http(#[source] reqwest::Error),
}

impl KpnConfig {
    pub fn from_args(args: &KpnArgs) -> Result<KpnConfig, ConfigError> {
        let token_url = if args.kpn_token_url.contains(TENANT_PLACEHOLDER) {
            let tenant = args
                .kpn_tenant
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(ConfigError::MissingTenant)?;
            args.kpn_token_url.replace(TENANT_PLACEHOLDER, tenant)
        } else {
            args.kpn_token_url.clone()
        };
        let token_url = http_url("--kpn-token-url", &token_url)?;
        let api_url = http_url("--kpn-api-url", &args.kpn_api_url)?
            .trim_end_matches('/')
            .to_owned();
        let path = args.kpn_downlink_path.trim();
        let downlink_path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let non_empty = |flag, value: &str| {
            let value = value.trim();
            if value.is_empty() {
                Err(ConfigError::Empty { flag })
            } else {
                Ok(value.to_owned())
            }
        };
        Ok(KpnConfig {
            token_url,
            audience: non_empty("--kpn-audience", &args.kpn_audience)?,
            api_url,
            downlink_path,
            downlink_accept: non_empty("--kpn-downlink-accept", &args.kpn_downlink_accept)?,
            sub_customer: args
                .kpn_sub_customer
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            timeout: args.kpn_timeout,
        })
    }
}

/// The configured client, or `None` (with the reason logged by the caller) when no
/// credentials are configured.
pub fn client_from_args(args: &KpnArgs) -> Result<Option<KpnClient>, ConfigError> {
    let Some(credentials) = credentials::load(args.kpn_credentials_file.as_deref())? else {
        return Ok(None);
    };
    let config = KpnConfig::from_args(args)?;
    Ok(Some(KpnClient::new(config, credentials)?))
}

fn http_url(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(value.to_owned())
        }
        _ => Err(ConfigError::BadUrl {
            flag,
            value: value.to_owned(),
        }),
    }
}

/// Records one call to KPN: its latency, and an error by kind when it failed.
/// `status` is `None` when no answer came (network error or timeout).
pub(crate) fn call_metrics(call: &'static str, started: Instant, status: Option<u16>) {
    metrics::histogram!("things_kpn_request_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    let kind = match status {
        None => "network",
        Some(s) if (200..300).contains(&s) => return,
        Some(401) => "401",
        Some(s) if (300..400).contains(&s) => "3xx",
        Some(429) => "429",
        Some(s) if s >= 500 => "5xx",
        Some(_) => "4xx",
    };
    metrics::counter!("things_kpn_errors_total", "call" => call, "kind" => kind).increment(1);
}

/// At most `max` bytes of an answer's body, as text (see [`answer_text`]), and whether
/// that was the whole body. The rest is not read: a server that sends without end costs at
/// most `max` bytes of memory and the time of the configured timeout.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<(String, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((answer_text(&body), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((answer_text(&body), true))
}

/// An answer's bytes as text that PostgreSQL can store: invalid UTF-8 and U+0000 become
/// U+FFFD. (A NUL kept in KPN's answer would make recording the outcome fail, and the
/// downlink would be sent again when its lease ran out, for ever.)
fn answer_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

/// At most `max` characters of `text`, for error details.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_storable_text() {
        assert_eq!(answer_text(b"{\"ok\":true}"), "{\"ok\":true}");
        assert_eq!(answer_text(b"a\0b\xffc"), "a\u{FFFD}b\u{FFFD}c");
    }
}
