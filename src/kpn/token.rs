//! Access tokens from KPN's identity provider (GRIP), by OAuth2 client credentials.
//!
//! GRIP wants the client-credentials request as a JSON body (the `oauth2` crate only sends
//! forms), answers `access_token` and `expires_in` and issues no refresh token: a new token is
//! simply requested again. One token serves every call until shortly before it expires; the
//! cache is a mutex held across the request, so however many callers need a token at once,
//! exactly one request goes out and the others wait for its answer (single flight).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;

use super::credentials::Credentials;
use super::{KpnConfig, call_metrics, read_limited, truncate};

/// Assumed lifetime when GRIP's answer carries no usable `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Lifetimes are held to this range whatever GRIP says: a token trusted for years would
/// outlive any rotation, and one renewed every few milliseconds would flood GRIP. A token
/// that dies sooner than we assumed is answered 401 by KPN and replaced then.
const MIN_LIFETIME: Duration = Duration::from_secs(10);
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Largest token answer read; real ones are about 2 KiB.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// A token is replaced this long before it expires (at most; a fifth of short lifetimes), so
/// that no call starts with a token about to run out.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("identity provider not reachable: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("identity provider answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("identity provider answer is not a token: {0}")]
    Malformed(String),
    #[error("context switch to sub-customer {client}: {detail}")]
    ContextSwitch { client: String, detail: String },
}

/// A bearer token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

#[derive(Serialize)]
struct TokenRequest<'a> {
    grant_type: &'static str,
    audience: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
}

pub struct TokenSource {
    http: reqwest::Client,
    config: Arc<KpnConfig>,
    credentials: Credentials,
    cache: Mutex<Option<Cached>>,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, config: Arc<KpnConfig>, credentials: Credentials) -> Self {
        TokenSource {
            http,
            config,
            credentials,
            cache: Mutex::new(None),
        }
    }

    /// A token that is not about to expire: the cached one, or a fresh one.
    pub async fn get(&self) -> Result<AccessToken, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        self.refresh(&mut cache).await
    }

    /// A replacement for `rejected`, which KPN refused (401 or 302). If another caller has
    /// already replaced it, that newer token is returned without another request.
    pub async fn replace(&self, rejected: &AccessToken) -> Result<AccessToken, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && cached.token != *rejected
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        self.refresh(&mut cache).await
    }

    async fn refresh(&self, cache: &mut Option<Cached>) -> Result<AccessToken, TokenError> {
        *cache = None;
        let result = self.request().await;
        metrics::counter!(
            "things_kpn_token_refreshes_total",
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        let (token, lifetime, fetched) = result?;
        if let Some(client) = &self.config.sub_customer {
            self.context_switch(&token, client).await?;
        }
        let margin = MAX_REFRESH_MARGIN.min(lifetime / 5);
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at: fetched + lifetime.saturating_sub(margin),
        });
        tracing::debug!(lifetime_s = lifetime.as_secs_f64(), "new KPN access token");
        Ok(token)
    }

    async fn request(&self) -> Result<(AccessToken, Duration, Instant), TokenError> {
        let started = Instant::now();
        let body = TokenRequest {
            grant_type: "client_credentials",
            audience: &self.config.audience,
            client_id: &self.credentials.client_id,
            client_secret: self.credentials.secret(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let response = self
            .http
            .post(&self.config.token_url)
            .header("content-type", "application/json; charset=utf-8")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                call_metrics("token", started, None);
                return Err(TokenError::Transport(e));
            }
        };
        let status = response.status();
        call_metrics("token", started, Some(status.as_u16()));
        let (text, complete) = read_limited(response, MAX_TOKEN_ANSWER)
            .await
            .map_err(TokenError::Transport)?;
        if status.is_success() && !complete {
            return Err(TokenError::Malformed(format!(
                "answer longer than {MAX_TOKEN_ANSWER} bytes"
            )));
        }
        if !status.is_success() {
            return Err(TokenError::Status {
                status: status.as_u16(),
                detail: truncate(&text, 200),
            });
        }
        parse_token(&text).map(|(token, lifetime)| (token, lifetime, started))
    }

    /// Tells KPN that calls with this token act for a sub-customer.
    async fn context_switch(&self, token: &AccessToken, client: &str) -> Result<(), TokenError> {
        let started = Instant::now();
        let url = format!(
            "{}/api/v1/lifecycle/clients/{}/context-switch",
            self.config.api_url,
            urlencode_segment(client)
        );
        let failed = |detail: String| TokenError::ContextSwitch {
            client: client.to_owned(),
            detail,
        };
        let response = self
            .http
            .post(url)
            .header("authorization", token.bearer())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                call_metrics("context_switch", started, None);
                return Err(failed(e.to_string()));
            }
        };
        let status = response.status();
        call_metrics("context_switch", started, Some(status.as_u16()));
        if status.is_success() {
            Ok(())
        } else {
            let text = read_limited(response, MAX_TOKEN_ANSWER)
                .await
                .map(|(text, _)| text)
                .unwrap_or_default();
            Err(failed(format!(
                "answered {status}: {}",
                truncate(&text, 200)
            )))
        }
    }
}

/// `access_token` and `expires_in` (a number, or a number in a string) from GRIP's answer.
fn parse_token(text: &str) -> Result<(AccessToken, Duration), TokenError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| TokenError::Malformed("not JSON".to_owned()))?;
    let token = value
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Malformed("no access_token".to_owned()))?;
    let lifetime = lifetime(value.get("expires_in"));
    Ok((AccessToken(Arc::from(token)), lifetime))
}

/// `expires_in` (a number, or a number in a string) as a lifetime within [`MIN_LIFETIME`]
/// and [`MAX_LIFETIME`]; [`DEFAULT_LIFETIME`] when it is missing or no positive number.
/// Anything but a plain in-range number is logged, since it says GRIP changed.
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = expires_in.and_then(|e| {
        e.as_f64()
            .or_else(|| e.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
    });
    let Some(seconds) = seconds.filter(|s| s.is_finite() && *s > 0.0) else {
        tracing::warn!(
            expires_in = %expires_in.map_or("(missing)".to_owned(), |e| truncate(&e.to_string(), 40)),
            assumed_s = DEFAULT_LIFETIME.as_secs(),
            "identity provider gave no usable token lifetime"
        );
        return DEFAULT_LIFETIME;
    };
    // Compared as numbers before any conversion: `Duration::from_secs_f64` panics on values
    // beyond its range (1e300 is a valid JSON number).
    let (min, max) = (MIN_LIFETIME.as_secs_f64(), MAX_LIFETIME.as_secs_f64());
    if (min..=max).contains(&seconds) {
        return Duration::from_secs_f64(seconds);
    }
    let clamped = if seconds < min {
        MIN_LIFETIME
    } else {
        MAX_LIFETIME
    };
    tracing::warn!(
        expires_in = seconds,
        assumed_s = clamped.as_secs(),
        "identity provider's token lifetime is out of range"
    );
    clamped
}

/// Percent-encodes everything but unreserved characters, for one path segment.
fn urlencode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let (token, lifetime) =
            parse_token(r#"{"access_token":"abc","expires_in":3600,"token_type":"Bearer"}"#)
                .unwrap();
        assert_eq!(token.bearer(), "Bearer abc");
        assert_eq!(lifetime, Duration::from_secs(3600));
        let (_, lifetime) = parse_token(r#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!(lifetime, Duration::from_secs(60));
        let (_, lifetime) = parse_token(r#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(lifetime, DEFAULT_LIFETIME);
        assert!(parse_token(r#"{"expires_in":60}"#).is_err());
        let lifetime_of = |answer: &str| parse_token(answer).map(|(_, l)| l).unwrap();
        for (expires_in, expected) in [
            ("1e300", MAX_LIFETIME),
            ("\"1e300\"", MAX_LIFETIME),
            ("1.7976931348623157e308", MAX_LIFETIME),
            ("-60", DEFAULT_LIFETIME),
            ("0", DEFAULT_LIFETIME),
            ("\"soon\"", DEFAULT_LIFETIME),
            ("\"NaN\"", DEFAULT_LIFETIME),
            ("\"inf\"", DEFAULT_LIFETIME),
            ("null", DEFAULT_LIFETIME),
            ("[60]", DEFAULT_LIFETIME),
            ("1e-300", MIN_LIFETIME),
            ("0.5", MIN_LIFETIME),
            ("86400", MAX_LIFETIME),
            ("18446744073709551616", MAX_LIFETIME),
        ] {
            let answer = format!(r#"{{"access_token":"abc","expires_in":{expires_in}}}"#);
            assert_eq!(lifetime_of(&answer), expected, "{expires_in}");
        }
        assert!(parse_token("<html>").is_err());
        assert!(!format!("{token:?}").contains("abc"));
    }

    #[test]
    fn path_segments() {
        assert_eq!(urlencode_segment("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(urlencode_segment("a/b c"), "a%2Fb%20c");
    }
}
