//! The files of `console/` in the repository, compiled in (so the console works offline and
//! the binary is the whole deployment), and the headers every console answer carries.
//!
//! The Content-Security-Policy allows scripts, styles and connections from this origin only:
//! no inline script or style, no framing, so a value from a device that slipped into the page
//! as markup could still not run.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "console/"]
struct Files;

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Adds the console's security headers to an answer.
pub(super) fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /console` and every page path under it: the one page.
pub(super) async fn page() -> Response {
    let Some(file) = Files::get("index.html") else {
        return secure(StatusCode::NOT_FOUND.into_response());
    };
    secure(
        (
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            file.data,
        )
            .into_response(),
    )
}

/// `GET /console/assets/{file}`: a file of `console/`, revalidated by its SHA-256 (`ETag`),
/// so a new binary's assets are never mixed with a cached old page.
pub(super) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(found) = Files::get(&file) else {
        return secure((StatusCode::NOT_FOUND, "no such console file\n").into_response());
    };
    let etag = format!("\"{}\"", hex::encode(found.metadata.sha256_hash()));
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cache = (CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if headers.get(IF_NONE_MATCH) == Some(&etag) {
        return secure((StatusCode::NOT_MODIFIED, [(ETAG, etag), cache]).into_response());
    }
    let kind = HeaderValue::from_static(content_type(&file));
    secure(([(CONTENT_TYPE, kind), (ETAG, etag), cache], found.data).into_response())
}

/// The content type by extension; `nosniff` makes browsers hold us to it.
fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ if file.ends_with("LICENSE") || file.ends_with("VERSION") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn types_follow_the_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(
            content_type("vendor/uplot/uPlot.min.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(
            content_type("vendor/uplot/LICENSE"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }
}
