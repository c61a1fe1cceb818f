//! Error types of the HTTP surface and their single mapping to answers.
//!
//! Every handler returns [`AppError`]; this is the only place that decides status codes and
//! bodies, so the same failure always looks the same from outside. Bodies are short JSON:
//! `{"error": "<machine code>", "detail": "<human reason>"}`. Nothing secret ever goes into them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long KPN (or any client) should wait before retrying when we cannot store.
pub const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {name}: {reason}")]
    MalformedHeader {
        name: &'static str,
        reason: &'static str,
    },
    /// Unknown plug, wrong token, or a missing required static header: deliberately one
    /// variant, so none of them can be told apart.
    #[error("unknown plug or wrong token")]
    NotVerified,
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("cannot read the request body")]
    BadBody,
    #[error("invalid parameter {name}: {reason}")]
    BadParameter { name: &'static str, reason: String },
    #[error("missing or invalid API key")]
    Unauthenticated,
    #[error("this API key lacks the {0} scope")]
    Forbidden(&'static str),
    /// What was not found, e.g. `message` or `device "urn:dev:..."`.
    #[error("{0} not found")]
    NotFound(std::borrow::Cow<'static, str>),
    /// Too many requests in flight: shed load at once instead of queueing without bound.
    #[error("the server is busy; retry later")]
    Overloaded,
    /// The data cannot be made durable (or read) now; the reason is logged, not sent.
    #[error("the data cannot be stored right now; retry later")]
    Unavailable(String),
    /// Well-formed but not acceptable: the request asks for something we must not do.
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("{0}")]
    Conflict(String),
    /// A feature that needs configuration the operator has not given.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Well-formed but unacceptable input (a rule of the data, or a request too large to answer).
    #[error("{0}")]
    Unprocessable(String),
    #[error("too many failed authentication attempts; retry in {0} s")]
    TooManyAttempts(u64),
    /// The client did not send its whole request within `--request-timeout`.
    #[error("the request was not received in time")]
    RequestTimeout,
}

impl AppError {
    pub fn bad_parameter(name: &'static str, reason: impl Into<String>) -> Self {
        AppError::BadParameter {
            name,
            reason: reason.into(),
        }
    }

    /// The machine-readable code of this error, as sent in the `error` field.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::MissingHeader(_) => (StatusCode::BAD_REQUEST, "missing_header"),
            AppError::MalformedHeader { .. } => (StatusCode::BAD_REQUEST, "malformed_header"),
            AppError::NotVerified => (StatusCode::UNAUTHORIZED, "not_verified"),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            AppError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter"),
            AppError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            AppError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            AppError::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            AppError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A short machine-readable code, e.g. `bad_parameter`.
    pub error: String,
    /// What went wrong and, where possible, how to fix it.
    pub detail: String,
}

impl From<sqlx::Error> for AppError {
    /// Any database failure means the data is not durable (or not readable) now; the caller
    /// should retry, which is exactly what KPN does on a non-2xx answer.
    fn from(error: sqlx::Error) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<crate::admin::AdminError> for AppError {
    fn from(error: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match error {
            AdminError::InvalidSecret(e) => AppError::Unprocessable(e.to_string()),
            AdminError::Invalid(reason) => AppError::Unprocessable(reason),
            AdminError::NotFound(what) => AppError::NotFound(what.into()),
            AdminError::Conflict(reason) => AppError::Conflict(reason),
            AdminError::Database(e) => AppError::from(e),
        }
    }
}

impl From<crate::ingest::pipeline::PipelineError> for AppError {
    /// Not durable: 503 with `Retry-After`, so that KPN tries the delivery again.
    fn from(error: crate::ingest::pipeline::PipelineError) -> Self {
        AppError::Unavailable(error.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for AppError {
    /// Unreadable JSON is a bad request; JSON of the wrong shape is unprocessable.
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection;
        match rejection {
            JsonRejection::JsonDataError(e) => AppError::Unprocessable(e.body_text()),
            other => AppError::bad_parameter("body", other.body_text()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let AppError::Unavailable(reason) = &self {
            tracing::warn!(%reason, "answering 503");
        }
        let body = Json(serde_json::json!({ "error": code, "detail": self.to_string() }));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match self {
            AppError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            AppError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            AppError::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::TooManyAttempts(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            _ => {}
        }
        response
    }
}
