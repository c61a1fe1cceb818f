//! The file server devices download firmware from: `GET /f/v1/{uuid}` (and `HEAD`), on the
//! main listener and on the plain device listener, as KPN's FOTA document describes it.
//!
//! Per request: the download (its token hash, state and part count: what the answer and the
//! part limit need) from the process's cache (`downloads`, read again every 2 s and dropped at
//! once on a cancellation), the image from the image cache, and the served range recorded in
//! memory for the next batched progress write: no database access per part. Unknown uuid
//! 404; missing or wrong bearer token 401 (constant-time comparison of hashes); cancelled
//! 410; past [`MAX_PARTS`](super::MAX_PARTS) parts 429. Every answer carries `Accept-Ranges`,
//! a strong `ETag` (the SHA-256), `Repr-Digest` of the whole image and `Digest: crc32=` of
//! its own body, which a device checks part by part.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use uuid::Uuid;

use super::cache::{Image, ImageCache};
use super::downloads::DownloadCache;
use super::progress::Progress;
use super::range::{self, Answer};
use super::{MAX_PARTS, token};
use crate::error::{AppError, PlainText};

/// What the file server needs: the download and image caches, the progress gathered in
/// memory.
#[derive(Clone)]
pub struct FileServer {
    pub downloads: Arc<DownloadCache>,
    pub images: Arc<ImageCache>,
    pub progress: Arc<Progress>,
}

/// `Digest` (RFC 3230, as KPN's devices read it): the CRC-32 of this answer's body.
pub const DIGEST: &str = "digest";
/// RFC 9530: the digest of the whole image, whichever part an answer carries.
pub const REPR_DIGEST: &str = "repr-digest";

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    FileServer: FromRef<S>,
{
    // `get` answers HEAD too, with the same headers and no body.
    Router::new().route("/f/v1/{id}", get(serve))
}

async fn serve(
    State(files): State<FileServer>,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let response = match answer(&files, &method, &id, &headers).await {
        Ok(response) => response,
        Err(e) => PlainText(e).into_response(),
    };
    let status = response.status();
    metrics::counter!("things_fota_answers_total", "status" => status.as_u16().to_string())
        .increment(1);
    if status.is_success() && method != Method::HEAD {
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        metrics::counter!("things_fota_bytes_total").increment(bytes);
    }
    response
}

async fn answer(
    files: &FileServer,
    method: &Method,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let unknown = || AppError::NotFound("firmware download".into());
    let id: Uuid = id.parse().map_err(|_| unknown())?;
    // The part count read (or cached) counts every part this process had written by then.
    let (download, written_at_read) = files
        .downloads
        .get(id, || files.progress.counts(id).1)
        .await?
        .ok_or_else(unknown)?;
    let presented = bearer(headers).unwrap_or("");
    if !token::matches(presented, &download.token_hash) {
        return Err(AppError::DownloadNotAuthorized);
    }
    let firmware_id = match download.firmware_id {
        Some(f) if !download.cancelled && download.state != "cancelled" => f,
        _ => return Err(AppError::Gone("this firmware download was cancelled")),
    };
    let serving = method != Method::HEAD;
    let served_since = files.progress.counts(id).0 - written_at_read;
    if serving && i64::from(download.parts) + served_since >= MAX_PARTS {
        return Err(AppError::TooManyParts(MAX_PARTS));
    }
    let image = files
        .images
        .get(firmware_id)
        .await?
        .ok_or(AppError::Gone("this firmware was removed"))?;
    let total = image.bytes.len() as u64;
    // Ranges are defined for GET only (RFC 9110, 14.2): HEAD describes the whole image.
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| serving && if_range_holds(headers, &image));
    let response = match range::answer(range_header, total) {
        Answer::Whole => {
            if serving {
                files.progress.record(id, 0, total);
            }
            with_body(StatusCode::OK, &image, image.bytes.clone(), image.crc32)
        }
        Answer::Part { first, last } => {
            let body = image.bytes.slice(first as usize..=last as usize);
            if serving {
                files.progress.record(id, first, last + 1);
            }
            let crc = crc32fast::hash(&body);
            let mut response = with_body(StatusCode::PARTIAL_CONTENT, &image, body, crc);
            insert(
                &mut response,
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{total}"),
            );
            response
        }
        Answer::Unsatisfiable => {
            let mut response =
                with_body(StatusCode::RANGE_NOT_SATISFIABLE, &image, Bytes::new(), 0);
            insert(
                &mut response,
                header::CONTENT_RANGE,
                format!("bytes */{total}"),
            );
            response
        }
    };
    Ok(response)
}

/// `If-Range` holds when absent or equal to the image's strong ETag; a date or another tag
/// means the client's parts are of something else: it gets the whole image.
fn if_range_holds(headers: &HeaderMap, image: &Image) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value.as_bytes() == image.etag.as_bytes(),
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn with_body(status: StatusCode, image: &Image, body: Bytes, crc: u32) -> Response {
    let length = body.len();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert(&mut response, header::ETAG, image.etag.clone());
    insert(&mut response, REPR_DIGEST, image.repr_digest.clone());
    insert(&mut response, DIGEST, format!("crc32={crc:08x}"));
    response
}

fn insert(response: &mut Response, name: impl header::IntoHeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(name, value);
    }
}
