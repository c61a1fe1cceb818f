//! The actuator call: `POST {api}{path}?port=N&externalReference=ID` with a SenML body.
//!
//! A 401, or the 302 KPN may answer instead for a bad or expired token, gets exactly one
//! token replacement and one retry. Everything else is classified for the outbox: accepted,
//! worth retrying later (5xx, 429, 408, network errors, timeouts, identity provider trouble),
//! or refused for good (other 4xx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use uuid::Uuid;

use super::token::{AccessToken, TokenSource};
use super::{ConfigError, Credentials, KpnConfig, call_metrics, read_limited, truncate};

/// Longest `Retry-After` we honour; beyond it the outbox's own backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of KPN's answer is kept.
const MAX_ANSWER: usize = 4000;
/// How much of KPN's answer is read (a truncated UTF-8 tail is then cut off by
/// [`MAX_ANSWER`]); the rest is left unread.
const MAX_ANSWER_READ: usize = 16 * 1024;

/// One downlink as it goes to KPN.
#[derive(Debug, Clone, Copy)]
pub struct Downlink<'a> {
    pub port: Option<u16>,
    pub external_reference: Uuid,
    /// The SenML pack, JSON text.
    pub body: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// KPN took the downlink; its status and answer body.
    Accepted { status: u16, answer: String },
    /// A temporary failure: try again later (no earlier than `after`, if KPN said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// KPN refused it; retrying the same request will not help.
    Rejected {
        reason: String,
        status: Option<u16>,
        answer: Option<String>,
    },
}

pub struct KpnClient {
    http: reqwest::Client,
    downlink_url: reqwest::Url,
    config: Arc<KpnConfig>,
    tokens: TokenSource,
}

impl KpnClient {
    pub fn new(config: KpnConfig, credentials: Credentials) -> Result<KpnClient, ConfigError> {
        // No redirects: KPN's 302 means "bad token", not "look elsewhere".
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("things-receiver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ConfigError::Http)?;
        let downlink_url = format!("{}{}", config.api_url, config.downlink_path);
        let downlink_url = reqwest::Url::parse(&downlink_url).map_err(|_| ConfigError::BadUrl {
            flag: "--kpn-downlink-path",
            value: downlink_url.clone(),
        })?;
        let config = Arc::new(config);
        let tokens = TokenSource::new(http.clone(), config.clone(), credentials);
        Ok(KpnClient {
            http,
            downlink_url,
            config,
            tokens,
        })
    }

    pub fn config(&self) -> &KpnConfig {
        &self.config
    }

    pub async fn send_downlink(&self, downlink: Downlink<'_>) -> SendOutcome {
        let token = match self.tokens.get().await {
            Ok(token) => token,
            Err(e) => return retry(format!("no access token: {e}"), None),
        };
        let response = match self.post(&token, downlink).await {
            Ok(response) => response,
            Err(e) => return retry(format!("KPN not reachable: {e}"), None),
        };
        let status = response.status();
        if !needs_new_token(status) {
            return classify(response).await;
        }
        tracing::info!(
            status = status.as_u16(),
            "KPN refused the access token; replacing it and retrying once"
        );
        let token = match self.tokens.replace(&token).await {
            Ok(token) => token,
            Err(e) => return retry(format!("no access token: {e}"), None),
        };
        let response = match self.post(&token, downlink).await {
            Ok(response) => response,
            Err(e) => return retry(format!("KPN not reachable: {e}"), None),
        };
        let status = response.status();
        if needs_new_token(status) {
            return SendOutcome::Rejected {
                reason: format!(
                    "KPN answered {} again with a fresh token: check the API key's rights to KPN Things",
                    status.as_u16()
                ),
                status: Some(status.as_u16()),
                answer: None,
            };
        }
        classify(response).await
    }

    async fn post(
        &self,
        token: &AccessToken,
        downlink: Downlink<'_>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let started = Instant::now();
        let mut url = self.downlink_url.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(port) = downlink.port {
                query.append_pair("port", &port.to_string());
            }
            query.append_pair(
                "externalReference",
                &downlink.external_reference.to_string(),
            );
        }
        let mut request = self
            .http
            .post(url)
            .header("authorization", token.bearer())
            .header("accept", &self.config.downlink_accept)
            .header("content-type", "application/json")
            .body(downlink.body.to_owned());
        if let Some(client) = &self.config.sub_customer {
            request = request.header("x-client-id", client);
        }
        let result = request.send().await;
        call_metrics(
            "downlink",
            started,
            result.as_ref().ok().map(|r| r.status().as_u16()),
        );
        result
    }
}

/// 401, or the redirect KPN answers for a bad token.
fn needs_new_token(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status.is_redirection()
}

fn retry(reason: String, after: Option<Duration>) -> SendOutcome {
    SendOutcome::Retry { reason, after }
}

async fn classify(response: reqwest::Response) -> SendOutcome {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let answer = match read_limited(response, MAX_ANSWER_READ).await {
        Ok((text, _)) => truncate(&text, MAX_ANSWER),
        Err(e) if status.is_success() => {
            // KPN took it; only its answer was lost.
            format!("(answer not readable: {e})")
        }
        Err(e) => return retry(format!("KPN answer not readable: {e}"), None),
    };
    let code = status.as_u16();
    if status.is_success() {
        SendOutcome::Accepted {
            status: code,
            answer,
        }
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        retry(
            format!("KPN answered {code}: {}", truncate(&answer, 200)),
            retry_after,
        )
    } else {
        SendOutcome::Rejected {
            reason: format!(
                "KPN refused the downlink with {code}: {}",
                truncate(&answer, 200)
            ),
            status: Some(code),
            answer: Some(answer),
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = chrono::Utc::now() + chrono::TimeDelta::seconds(90);
        let header = later.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let parsed = parse_retry_after(&header).unwrap();
        assert!(parsed > Duration::from_secs(80) && parsed <= Duration::from_secs(90));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
