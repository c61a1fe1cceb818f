//! The console's session cookie, and the CSRF defence of requests made with it.
//!
//! A browser attaches the cookie to every request for our origin, including requests another
//! site makes it send, so a state-changing request authenticated by the cookie must also
//! prove it came from our own page: its `Origin` names this host, and it carries the
//! session's CSRF token in `X-CSRF-Token`, which only our page can read (from
//! `GET /console/session`; `SameSite=Strict` and the lack of CORS keep other sites out).
//! A bearer key is not ambient, so it needs neither.

use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AppError;

/// The cookie's name.
pub const COOKIE_NAME: &str = "things_session";
/// The header the page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A fresh unguessable value (256 bits), for a cookie or a CSRF token.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the table stores of a cookie value.
pub fn token_hash(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Our cookie's value among the request's cookies (several `Cookie` headers under HTTP/2).
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that opens a session for `max_age_seconds`. Always `Secure`: the
/// main listener speaks TLS, or sits behind a TLS proxy with `--plain-http` (browsers keep
/// `Secure` cookies of `http://localhost` too).
pub fn set_cookie(value: &str, max_age_seconds: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; Secure; SameSite=Strict"
    ))
    .unwrap_or_else(|_| clear_cookie())
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "things_session=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
    )
}

/// GET, HEAD and OPTIONS change nothing here, so they need no CSRF defence.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request's `Origin` must be present and name the host the request was sent to
/// (`:authority` under HTTP/2, `Host` under HTTP/1.1). Only host and port are compared: the
/// scheme is TLS's business, and `--plain-http` behind a proxy sees `https` origins.
pub fn same_origin(parts: &Parts) -> Result<(), AppError> {
    let origin = parts
        .headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or(AppError::CrossSite("the request has no Origin"))?;
    let origin_authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or(AppError::CrossSite("the Origin is not this site"))?;
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|v| v.to_str().ok()))
        .ok_or(AppError::CrossSite("the request names no host"))?;
    if origin_authority.eq_ignore_ascii_case(authority) {
        Ok(())
    } else {
        Err(AppError::CrossSite("the Origin is not this site"))
    }
}

/// The request's `X-CSRF-Token` must equal the session's, compared in constant time.
pub fn check_token(headers: &HeaderMap, expected: &str) -> Result<(), AppError> {
    let sent = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .ok_or(AppError::CrossSite("the request has no X-CSRF-Token"))?;
    if bool::from(sent.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AppError::CrossSite(
            "the X-CSRF-Token does not match the session",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let p = parts("/", &[("cookie", "a=1; things_session=abc ; b=2")]);
        assert_eq!(cookie_value(&p.headers), Some("abc"));
        let p = parts("/", &[("cookie", "a=1"), ("cookie", "things_session=xyz")]);
        assert_eq!(cookie_value(&p.headers), Some("xyz"));
        let p = parts("/", &[("cookie", "things_sessionx=1; things_session=")]);
        assert_eq!(cookie_value(&p.headers), None);
    }

    #[test]
    fn only_an_origin_naming_this_host_passes() {
        let ok = parts(
            "/",
            &[
                ("host", "localhost:8443"),
                ("origin", "https://localhost:8443"),
            ],
        );
        assert!(same_origin(&ok).is_ok());
        let h2 = parts(
            "https://Localhost:8443/x",
            &[("origin", "https://localhost:8443")],
        );
        assert!(same_origin(&h2).is_ok());
        for origin in [
            "https://evil.example",
            "https://localhost:8444",
            "https://localhost:8443.evil.example",
            "null",
            "https://localhost:8443/path",
        ] {
            let p = parts("/", &[("host", "localhost:8443"), ("origin", origin)]);
            assert!(same_origin(&p).is_err(), "{origin} passed");
        }
        let none = parts("/", &[("host", "localhost:8443")]);
        assert!(same_origin(&none).is_err());
    }

    #[test]
    fn the_csrf_token_must_match() {
        let p = parts("/", &[("x-csrf-token", "tok")]);
        assert!(check_token(&p.headers, "tok").is_ok());
        assert!(check_token(&p.headers, "tok2").is_err());
        assert!(check_token(&parts("/", &[]).headers, "tok").is_err());
    }
}
