//! The KPN Things destination door: `POST /ingest/kpn` (and `GET` with a body, which a KPN
//! destination can be configured to send).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use uuid::Uuid;

use crate::error::AppError;
use crate::ingest::IngestState;
use crate::ingest::delivery::{RawDelivery, Sender};
use crate::ingest::headers::extra_headers;
use crate::ingest::pipeline::Accepted;
use crate::ingest::verify::destinations::VerifyFailure;
use crate::token::BodyDigest;

pub use super::head::TOKEN_HEADER;
use super::head::{declared_length, read_body, single, token_header};

pub const PLUG_HEADER: &str = "things-plug-uuid";
const DOOR: &str = "destination";

/// Everything that can be refused is refused from the request head, before a byte of the
/// body is read: a flood of bodies without credentials then costs no memory, and a client
/// that sends `Expect: 100-continue` gets its refusal instead of `100 Continue` (hyper sends
/// that only when the body is first polled).
pub async fn receive(State(state): State<IngestState>, request: Request) -> Response {
    // Bounded concurrency: past the limit, answer at once instead of queueing without end.
    let Ok(_permit) = state.slots.try_acquire() else {
        return count(Err(AppError::Overloaded)).into_response();
    };
    count(receive_inner(&state, request).await).into_response()
}

/// Records the outcome by door; the metric names are the project's, stable for dashboards.
fn count(result: Result<Response, AppError>) -> Result<Response, AppError> {
    let outcome = match &result {
        Ok(response) => response
            .extensions()
            .get::<Outcome>()
            .map_or("accepted", |o| o.0),
        Err(e) => e.code(),
    };
    metrics::counter!("things_ingest_requests_total", "door" => DOOR, "outcome" => outcome)
        .increment(1);
    result
}

#[derive(Clone, Copy)]
struct Outcome(&'static str);

async fn receive_inner(state: &IngestState, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // Size first: a declared length over the limit is refused whatever else is wrong.
    if declared_length(&headers).is_some_and(|length| length > state.max_body as u64) {
        return Err(AppError::PayloadTooLarge(state.max_body));
    }
    let plug = plug_header(&headers)?;
    let token = token_header(&headers)?;
    let body = read_body(body, state.max_body).await?;
    // Received once the whole body is in, as before the door read it itself.
    let received_at = Utc::now();

    let digest = BodyDigest::new(&body);
    let verified = state
        .secrets
        .verify(plug, &digest, &token)
        .and_then(|v| {
            if v.destination.headers_match(&headers) {
                Ok(v)
            } else {
                Err(VerifyFailure::WrongToken)
            }
        })
        .map_err(|reason| {
            metrics::counter!("things_verification_failures_total", "door" => DOOR, "reason" => reason.as_str())
                .increment(1);
            if state.secrets.is_current() {
                AppError::NotVerified
            } else {
                // The destination may have been added or rotated while we could not hear of
                // it: let KPN retry rather than reject what may be valid.
                AppError::Unavailable("destinations cannot be checked right now".into())
            }
        })?;

    let raw = RawDelivery {
        sender: Sender::Destination {
            id: verified.destination.id,
            bind_plug: verified.bind_plug,
        },
        token,
        received_at,
        body,
        headers: extra_headers(&headers),
    };
    let accepted = state.pipeline.accept(raw).await?;

    // Spooled, the binding is not in the database yet: the next delivery for this plug
    // matches the pending secret again and carries the same binding.
    if verified.bind_plug.is_some() && !matches!(accepted, Accepted::Spooled) {
        tracing::info!(destination = %verified.destination.name, %plug, "bound pending destination to its plug");
        // Our own cache must know the plug before the next delivery; the notification
        // reaches the other processes.
        if let Err(e) = state.secrets.reload().await {
            tracing::warn!(error = %e, "reloading destinations after binding failed");
        }
    }
    let status = accepted.as_str();
    if status == "quarantined" {
        tracing::warn!(destination = %verified.destination.name, "delivery quarantined: not a valid SenML pack");
    }
    let code = verified.destination.response_code;
    let mut response = if code == StatusCode::NO_CONTENT || code == StatusCode::RESET_CONTENT {
        code.into_response()
    } else {
        (code, axum::Json(serde_json::json!({ "status": status }))).into_response()
    };
    response.extensions_mut().insert(Outcome(status));
    Ok(response)
}

fn plug_header(headers: &HeaderMap) -> Result<Uuid, AppError> {
    let value = single(headers, PLUG_HEADER, "Things-Plug-UUID")?;
    value
        .to_str()
        .ok()
        .and_then(|text| Uuid::try_parse(text.trim()).ok())
        .ok_or(AppError::MalformedHeader {
            name: "Things-Plug-UUID",
            reason: "expected a UUID",
        })
}
