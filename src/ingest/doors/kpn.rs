//! The KPN Things destination door: `POST /ingest/kpn` (and `GET` with a body, which a KPN
//! destination can be configured to send).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use uuid::Uuid;

use crate::error::AppError;
use crate::ingest::IngestState;
use crate::ingest::delivery::{RawDelivery, Sender, StoreOutcome};
use crate::ingest::events::{Accepted as DoorAccepted, Seen};
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
    let (parts, body) = request.into_parts();
    let mut seen = Seen::default();
    // Recorded once the answer is decided, and without changing it.
    let result = match receive_inner(&state, &parts.headers, body, &mut seen).await {
        Err(e) => {
            state.events.refused(DOOR, &e, &parts.headers, seen);
            Err(e)
        }
        Ok((response, unstored)) => {
            if let Some(unstored) = unstored {
                let status = response.status().as_u16();
                state.events.accepted(unstored, status, &parts.headers);
            }
            Ok(response)
        }
    };
    count(result).into_response()
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

/// The answer, and for a duplicate or spooled delivery what to record of it. `seen` gathers
/// what a refusal is recorded with, at no cost to a delivery that is stored.
async fn receive_inner(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<(Response, Option<DoorAccepted>), AppError> {
    // Size first: a declared length over the limit is refused whatever else is wrong.
    if declared_length(headers).is_some_and(|length| length > state.max_body as u64) {
        return Err(AppError::PayloadTooLarge(state.max_body));
    }
    let plug = plug_header(headers)?;
    seen.plug = Some(plug);
    let token = token_header(headers)?;
    let body = read_body(body, state.max_body).await?;
    // Received once the whole body is in, as before the door read it itself.
    let received_at = Utc::now();

    let digest = BodyDigest::new(&body);
    let verified = match state.secrets.verify_request(plug, headers, &digest, &token) {
        Ok(verified) => verified,
        Err(reason) => {
            seen.received_at = Some(received_at);
            seen.body = Some(body);
            return Err(refusal(state, reason));
        }
    };
    let body_size = body.len();

    let raw = RawDelivery {
        sender: Sender::Destination {
            id: verified.destination.id,
            bind_plug: verified.bind_plug,
        },
        token,
        received_at,
        body,
        headers: extra_headers(headers),
    };
    let accepted = state.pipeline.accept(raw).await?;
    let unstored = match &accepted {
        Accepted::Spooled => Some("spooled"),
        Accepted::Stored(receipt) if receipt.outcome == StoreOutcome::Duplicate => {
            Some("duplicate")
        }
        Accepted::Stored(_) => None,
    }
    .map(|verdict| DoorAccepted {
        door: DOOR,
        verdict,
        received_at,
        body_size,
        plug: Some(plug),
        device: None,
        destination_id: Some(verified.destination.id),
        device_key_id: None,
        token: token.0,
    });

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
    Ok((response, unstored))
}

/// The answer to a delivery that did not verify: the same for an unknown plug and a wrong
/// token (the metric's reason is for operators' dashboards of this process only).
fn refusal(state: &IngestState, reason: VerifyFailure) -> AppError {
    metrics::counter!("things_verification_failures_total", "door" => DOOR, "reason" => reason.as_str())
        .increment(1);
    if state.secrets.is_current() {
        AppError::NotVerified
    } else {
        // The destination may have been added or rotated while we could not hear of it: let
        // KPN retry rather than reject what may be valid.
        AppError::Unavailable("destinations cannot be checked right now".into())
    }
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
