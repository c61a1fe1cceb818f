//! What every door reads from a request head, and how it reads the body: checked before a
//! byte of the body is read, so that a refusal costs no memory and a client that sent
//! `Expect: 100-continue` gets the refusal instead of `100 Continue`.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::AppError;
use crate::token::Token;

pub const TOKEN_HEADER: &str = "things-message-token";

/// The one value of a required header. Twice is refused rather than "first wins": two
/// values mean a proxy or client mixed up two requests, and no answer would be right for both.
pub(super) fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    display: &'static str,
) -> Result<&'a HeaderValue, AppError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(AppError::MissingHeader(display))?;
    if values.next().is_some() {
        return Err(AppError::MalformedHeader {
            name: display,
            reason: "given more than once",
        });
    }
    Ok(value)
}

pub(super) fn token_header(headers: &HeaderMap) -> Result<Token, AppError> {
    let value = single(headers, TOKEN_HEADER, "Things-Message-Token")?;
    value
        .to_str()
        .ok()
        .and_then(Token::parse)
        .ok_or(AppError::MalformedHeader {
            name: "Things-Message-Token",
            reason: "expected 64 hexadecimal characters",
        })
}

/// The `Content-Length` the client declared, if any. An unparsable one is left to hyper,
/// which refuses it before we are called.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body, refusing it as soon as it grows past `limit` (a body without a
/// declared length, or HTTP/2 DATA frames beyond it).
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AppError::PayloadTooLarge(limit)),
        Err(_) => Err(AppError::BadBody),
    }
}
