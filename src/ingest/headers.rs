//! Which request headers are kept with a delivery.
//!
//! KPN destinations can carry static extra headers (`device-type: dragino-lds01` is a common
//! one for routing). We keep those, and drop everything that is transport noise or could be
//! a credential, so that the stored headers are safe to show on a dashboard.

use std::collections::BTreeMap;

use axum::http::HeaderMap;

/// Headers that are part of the protocol or the transport rather than of the delivery.
const TRANSPORT: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "accept",
    "accept-encoding",
    "accept-charset",
    "accept-language",
    "user-agent",
    "expect",
    "things-plug-uuid",
    "things-message-token",
    // Set on every request (kept from a proxy or made here): it names the request in the
    // logs, not the delivery.
    "x-request-id",
];

/// Parts of a header name that suggest it carries a credential.
const SECRET_HINTS: &[&str] = &[
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "x-api-key",
    "signature",
    "session",
    "auth",
];

/// The non-secret extra headers of a request, lower-case names, repeated values joined.
pub fn extra_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if TRANSPORT.contains(&name) || SECRET_HINTS.iter().any(|hint| name.contains(hint)) {
            continue;
        }
        let Ok(value) = value.to_str() else {
            continue;
        };
        out.entry(name.to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out
}

/// Whether a header's value may be a credential (the message token aside, which is a
/// signature over the body and is needed to diagnose a refusal).
pub fn credential_like(name: &str) -> bool {
    name != "things-message-token" && SECRET_HINTS.iter().any(|hint| name.contains(hint))
}

/// How a recorded refusal keeps the value of a [`credential_like`] header: only its SHA-256,
/// enough to tell whether it was the value a destination requires, useless to anyone
/// reading the record.
pub fn masked(value: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(value.trim().as_bytes()))
    )
}

/// Whether a recorded header value is `expected`, as sent or [`masked`].
pub fn recorded_matches(recorded: &str, expected: &str) -> bool {
    recorded.trim() == expected.trim() || recorded == masked(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_value_matches_only_its_own_value() {
        assert!(credential_like("x-api-key"));
        assert!(credential_like("x-auth-secret"));
        assert!(!credential_like("things-message-token"));
        assert!(!credential_like("device-type"));
        let recorded = masked(" k3y ");
        assert!(!recorded.contains("k3y"));
        assert!(recorded_matches(&recorded, "k3y"));
        assert!(recorded_matches("k3y", "k3y"));
        assert!(!recorded_matches(&recorded, "other"));
    }

    #[test]
    fn keeps_static_headers_and_drops_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("device-type", "dragino-lds01".parse().unwrap());
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        headers.insert("x-api-key", "k".parse().unwrap());
        headers.insert("things-message-token", "00".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("x-tag", "a".parse().unwrap());
        headers.append("x-tag", "b".parse().unwrap());
        let kept = extra_headers(&headers);
        assert_eq!(
            kept.get("device-type").map(String::as_str),
            Some("dragino-lds01")
        );
        assert_eq!(kept.get("x-tag").map(String::as_str), Some("a, b"));
        assert_eq!(kept.len(), 2, "{kept:?}");
    }
}
