//! How an [`AppError`] becomes an answer, and how each domain's error becomes an [`AppError`].
//!
//! Every `From<DomainError> for AppError` is here, so the mapping of failures to answers is
//! read in one place. (Trait impls are crate-wide: `?` works in every handler.)

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::admin::AdminError;
use crate::downlink::outbox::OutboxError;
use crate::downlink::request::RequestError;
use crate::error::{AppError, PlainText, RETRY_AFTER_SECONDS};
use crate::firmware::FirmwareError;
use crate::ingest::pipeline::PipelineError;

impl From<sqlx::Error> for AppError {
    /// Any database failure means the data is not durable (or not readable) now; the caller
    /// should retry, which is exactly what KPN does on a non-2xx answer.
    fn from(error: sqlx::Error) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<AdminError> for AppError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::InvalidSecret(e) => AppError::unprocessable(e.to_string()),
            AdminError::Invalid(reason) => AppError::unprocessable(reason),
            AdminError::NotFound(what) => AppError::NotFound(what.into()),
            AdminError::Conflict(reason) => AppError::Conflict(reason),
            AdminError::Database(e) => AppError::from(e),
        }
    }
}

impl From<OutboxError> for AppError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Request(RequestError::Malformed { field, reason }) => {
                AppError::bad_parameter(field, reason)
            }
            OutboxError::Request(RequestError::Invalid { field, reason }) => {
                AppError::invalid(field, reason)
            }
            OutboxError::UnknownDevice(_) => AppError::NotFound("device".into()),
            OutboxError::NotFound(_) => AppError::NotFound("downlink".into()),
            e @ (OutboxError::IdempotencyConflict | OutboxError::NotCancellable { .. }) => {
                AppError::Conflict(e.to_string())
            }
            OutboxError::Database(e) => AppError::from(e),
        }
    }
}

impl From<FirmwareError> for AppError {
    fn from(error: FirmwareError) -> Self {
        match error {
            FirmwareError::Invalid(reason) => AppError::unprocessable(reason),
            FirmwareError::TooLarge(limit) => AppError::PayloadTooLarge(limit),
            FirmwareError::NotFound(what) => AppError::NotFound(what.into()),
            FirmwareError::Conflict(reason) => AppError::Conflict(reason),
            FirmwareError::NotConfigured(why) => AppError::NotConfigured(why),
            FirmwareError::Database(e) => AppError::from(e),
        }
    }
}

impl From<PipelineError> for AppError {
    /// Not durable: 503 with `Retry-After`, so that KPN tries the delivery again.
    fn from(error: PipelineError) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<JsonRejection> for AppError {
    /// Unreadable JSON is a bad request; JSON of the wrong shape is unprocessable.
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => AppError::unprocessable(e.body_text()),
            other => AppError::bad_parameter("body", other.body_text()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.code(), "detail": self.to_string() }));
        answer(self, body.into_response())
    }
}

impl IntoResponse for PlainText {
    fn into_response(self) -> Response {
        let PlainText(error) = self;
        let text = format!("{error}\n");
        answer(error, text.into_response())
    }
}

/// Gives `body` the status and headers of `error` (and logs a 503's reason, never sent).
fn answer(error: AppError, body: Response) -> Response {
    let status = error.status();
    if let AppError::Unavailable(reason) = &error {
        tracing::warn!(%reason, "answering 503");
    }
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    match error {
        AppError::Unavailable(_) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        AppError::Overloaded => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        }
        AppError::Unauthenticated | AppError::DownloadNotAuthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        AppError::TooManyAttempts(seconds) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        _ => {}
    }
    response
}
