//! Request ids: every HTTP request carries one, in its answer (`x-request-id`) and in every
//! log line written while it is handled, so that a client's report and an operator's logs
//! meet.
//!
//! An incoming `x-request-id` (from a proxy or the client) is kept, so one id follows the
//! request through every hop; an unusable one (long, or not visible ASCII) is replaced, so
//! that a client cannot stuff the logs. Otherwise a UUID is made.

use axum::extract::Request;
use axum::http::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id that is kept.
const MAX_LEN: usize = 128;

/// Drops an incoming id that is not fit for logs; `SetRequestIdLayer` then makes one.
pub fn drop_unusable(mut request: Request) -> Request {
    let usable = request.headers().get_all(&X_REQUEST_ID).iter().count() <= 1
        && request.headers().get(&X_REQUEST_ID).is_none_or(|v| {
            !v.is_empty() && v.len() <= MAX_LEN && v.as_bytes().iter().all(u8::is_ascii_graphic)
        });
    if !usable {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// The span every request is handled in: its fields appear on every line logged inside it.
/// The path only, not the query, which may carry values a dashboard put there.
pub fn span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(values: &[&str]) -> Option<String> {
        let mut request = Request::new(axum::body::Body::empty());
        for v in values {
            request
                .headers_mut()
                .append(X_REQUEST_ID, v.parse().unwrap());
        }
        drop_unusable(request)
            .headers()
            .get(X_REQUEST_ID)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn only_short_visible_ids_are_kept() {
        assert_eq!(kept(&["abc-123"]).as_deref(), Some("abc-123"));
        assert_eq!(kept(&[]), None);
        assert_eq!(kept(&["with space"]), None);
        assert_eq!(kept(&[""]), None);
        assert_eq!(kept(&[&"x".repeat(MAX_LEN + 1)]), None);
        assert_eq!(kept(&["a", "b"]), None);
    }
}
