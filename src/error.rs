//! What a request can fail with, and the status and code each failure answers.
//!
//! Every handler returns [`AppError`]; this is the only place that decides status codes and
//! codes, so the same failure always looks the same from outside. Bodies are short JSON:
//! `{"error": "<machine code>", "detail": "<human reason>"}`. Nothing secret ever goes into them.
//!
//! A leaf: it imports nothing from the crate, so every layer can return it. How it becomes an
//! answer, and how each domain's error becomes one of these, is `web::error`.

use axum::http::StatusCode;

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
    /// A device door's uplink names (in its first `bn`) no registered device.
    #[error("device not registered")]
    UnknownDevice,
    /// A device door's uplink whose token does not sign the body with the device's secret.
    #[error("token does not match the body and the device secret")]
    DeviceNotVerified,
    /// A device door's body from which no device can be read.
    #[error("body is not a SenML pack naming its device: {0}")]
    NotADevicePack(&'static str),
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
    /// A state-changing request made with the console's cookie that did not come from our
    /// own page (Origin or CSRF token).
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    /// What was not found, e.g. `message` or `device "urn:dev:..."`.
    #[error("{0} not found")]
    NotFound(std::borrow::Cow<'static, str>),
    /// Too many requests in flight: shed load at once instead of queueing without bound.
    #[error("the server is busy; retry later")]
    Overloaded,
    /// The data cannot be made durable (or read) now; the reason is logged, not sent.
    #[error("the data cannot be stored right now; retry later")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    /// A feature that needs configuration the operator has not given.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Well-formed but unacceptable input: 422 with either code (see [`Unprocessable`]).
    #[error("{detail}")]
    Unprocessable { kind: Unprocessable, detail: String },
    #[error("too many failed authentication attempts; retry in {0} s")]
    TooManyAttempts(u64),
    /// The client did not send its whole request within `--request-timeout`.
    #[error("the request was not received in time")]
    RequestTimeout,
    /// A firmware download without its bearer token, or with another one.
    #[error("missing or wrong bearer token for this download")]
    DownloadNotAuthorized,
    /// What was there is no more, for good (a cancelled download).
    #[error("{0}")]
    Gone(&'static str),
    /// A download past KPN's limit of parts.
    #[error("at most {0} parts per download; download larger parts")]
    TooManyParts(i64),
}

/// An error answered as one line of plain text instead of JSON, with the same status and
/// headers: what the device doors answer, since device firmware reads text more easily and
/// KPN's documents describe these answers as text.
#[derive(Debug)]
pub struct PlainText(pub AppError);

/// The two codes a 422 answers with, kept apart because clients already tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprocessable {
    /// A value a rule refuses, naming its field: `invalid`.
    Invalid,
    /// A rule of the data, or a request too large to answer: `unprocessable`.
    Rule,
}

impl AppError {
    /// A field's value is well-formed but not acceptable: the request asks for something we
    /// must not do (code `invalid`).
    pub fn invalid(name: &str, reason: impl std::fmt::Display) -> Self {
        AppError::Unprocessable {
            kind: Unprocessable::Invalid,
            detail: format!("invalid {name}: {reason}"),
        }
    }

    /// Well-formed but unacceptable input (code `unprocessable`).
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        AppError::Unprocessable {
            kind: Unprocessable::Rule,
            detail: detail.into(),
        }
    }

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

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::MissingHeader(_) => (StatusCode::BAD_REQUEST, "missing_header"),
            AppError::MalformedHeader { .. } => (StatusCode::BAD_REQUEST, "malformed_header"),
            AppError::NotVerified | AppError::DeviceNotVerified => {
                (StatusCode::UNAUTHORIZED, "not_verified")
            }
            AppError::UnknownDevice => (StatusCode::NOT_FOUND, "unknown_device"),
            AppError::NotADevicePack(_) => (StatusCode::BAD_REQUEST, "bad_pack"),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            AppError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter"),
            AppError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            AppError::Forbidden(_) | AppError::CrossSite(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            AppError::Unprocessable { kind, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                match kind {
                    Unprocessable::Invalid => "invalid",
                    Unprocessable::Rule => "unprocessable",
                },
            ),
            AppError::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            AppError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            AppError::DownloadNotAuthorized => (StatusCode::UNAUTHORIZED, "not_authorized"),
            AppError::Gone(_) => (StatusCode::GONE, "gone"),
            AppError::TooManyParts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_parts"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_422_codes_come_from_one_variant() {
        let invalid = AppError::invalid("port", "must be 1 to 223");
        assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.code(), "invalid");
        assert_eq!(invalid.to_string(), "invalid port: must be 1 to 223");
        let rule = AppError::unprocessable("too many points");
        assert_eq!(rule.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(rule.code(), "unprocessable");
        assert_eq!(rule.to_string(), "too many points");
    }
}
