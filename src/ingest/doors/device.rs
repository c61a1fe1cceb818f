//! The device doors: `POST /ingestion/m2m/senml/v1` and `POST /ingestion/ip/senml/v1`, where
//! M2M and Internet devices post SenML signed with their own secret, as they do to KPN Things.
//! The answer to an uplink carries at most one pack: a firmware notification when the device
//! is waiting for one (`firmware::notification`), else the oldest downlink queued for it.
//!
//! The order, cheapest refusal first: the slot and the declared length from the head, the
//! token header, the body under `--device-max-body`, the device from the first record's `bn`
//! (read without building the pack), the registration (404), the token against the current
//! and, during an overlap, the previous secret (401), then the pipeline every door shares.
//! Either door accepts any registered device; the door is recorded with the message.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::error::{AppError, PlainText};
use crate::firmware::notification::Notifier;
use crate::ingest::IngestState;
use crate::ingest::delivery::{DeviceDoor, DeviceReply, RawDelivery, Sender, StoreOutcome};
use crate::ingest::events::{Accepted as DoorAccepted, Seen};
use crate::ingest::headers::extra_headers;
use crate::ingest::pipeline::Accepted;
use crate::ingest::verify::devices::DeviceVerifyFailure;
use crate::senml::{PeekError, device_key, peek_device};
use crate::token::BodyDigest;

use super::head::{declared_length, read_body, token_header};

/// Tells the device how many more downlinks wait after the one in this answer, so that it
/// can post again at once; absent when none do.
pub const PENDING_HEADER: &str = "things-downlinks-pending";

pub async fn m2m(
    State(state): State<IngestState>,
    State(notifier): State<Notifier>,
    request: Request,
) -> Response {
    receive(&state, &notifier, DeviceDoor::M2m, request).await
}

pub async fn ip(
    State(state): State<IngestState>,
    State(notifier): State<Notifier>,
    request: Request,
) -> Response {
    receive(&state, &notifier, DeviceDoor::Ip, request).await
}

async fn receive(
    state: &IngestState,
    notifier: &Notifier,
    door: DeviceDoor,
    request: Request,
) -> Response {
    // Shares the in-flight slots with every other door.
    let result = match state.slots.try_acquire() {
        Ok(_permit) => {
            let (parts, body) = request.into_parts();
            let mut seen = Seen::default();
            // Recorded once the answer is decided, and without changing it.
            match receive_inner(state, door, &parts.headers, body, &mut seen).await {
                Err(e) => {
                    state
                        .events
                        .refused(door.as_str(), &e, &parts.headers, seen);
                    Err(e)
                }
                Ok((accepted, reply, unstored)) => {
                    if let Some(unstored) = unstored {
                        // What `answer` will say: 200 with a pack, else 202.
                        let status = match &reply {
                            Some(r) if r.fota.is_some() || r.downlink.is_some() => 200,
                            _ => 202,
                        };
                        state.events.accepted(unstored, status, &parts.headers);
                    }
                    Ok((accepted, reply))
                }
            }
        }
        Err(_) => Err(AppError::Overloaded),
    };
    let outcome = match &result {
        Ok((accepted, _)) => accepted.as_str(),
        Err(e) => e.code(),
    };
    metrics::counter!("things_ingest_requests_total", "door" => door.as_str(), "outcome" => outcome)
        .increment(1);
    match result {
        Ok((_, reply)) => answer(reply, notifier),
        Err(e) => PlainText(e).into_response(),
    }
}

/// The outcome and the answer's pack; for a duplicate or spooled uplink, what to record of
/// it. `seen` gathers what a refusal is recorded with, at no cost to a stored uplink.
async fn receive_inner(
    state: &IngestState,
    door: DeviceDoor,
    headers: &HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<(Accepted, Option<DeviceReply>, Option<DoorAccepted>), AppError> {
    let limit = state.device_max_body;
    if declared_length(headers).is_some_and(|length| length > limit as u64) {
        return Err(AppError::PayloadTooLarge(limit));
    }
    let token = token_header(headers)?;
    let body = read_body(body, limit).await?;
    let received_at = Utc::now();

    let urn_key = match peek_device(&body) {
        Ok(bn) => device_key(&bn),
        Err(e) => {
            let reason = match e {
                PeekError::NotAnArray => "not a JSON array",
                PeekError::NoBaseName => "the first record has no string bn",
            };
            seen.received_at = Some(received_at);
            seen.body = Some(body);
            return Err(AppError::NotADevicePack(reason));
        }
    };
    let digest = BodyDigest::new(&body);
    let verified = state.devices.verify(&urn_key, &digest, &token);
    let device = match verified {
        Ok(device) => device,
        Err(reason) => {
            seen.received_at = Some(received_at);
            // The `bn` as sent, read again: only a refusal pays for its copy.
            let sent = peek_device(&body)
                .map(|bn| bn.into_owned())
                .unwrap_or_default();
            seen.device = Some((sent, urn_key));
            seen.body = Some(body);
            return Err(refusal(state, door, reason));
        }
    };
    let body_size = body.len();

    let raw = RawDelivery {
        sender: Sender::Device {
            key_id: device.id,
            urn_key,
            door,
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
        door: door.as_str(),
        verdict,
        received_at,
        body_size,
        plug: None,
        // The registration's normalised URN: the body went to the pipeline.
        device: Some((device.urn_key.clone(), device.urn_key.clone())),
        destination_id: None,
        device_key_id: Some(device.id),
        token: token.0,
    });
    if accepted.as_str() == "quarantined" {
        tracing::warn!(device = %device.urn_key, door = door.as_str(), "uplink quarantined: not a valid SenML pack of its device");
    }
    let reply = match &accepted {
        Accepted::Stored(receipt) => receipt.reply.clone(),
        // Spooled: the downlinks stay queued for the next uplink.
        Accepted::Spooled => None,
    };
    Ok((accepted, reply, unstored))
}

/// The answer to an uplink that did not verify: 404 for an unregistered device (as KPN
/// answers), 401 for a wrong token.
fn refusal(state: &IngestState, door: DeviceDoor, reason: DeviceVerifyFailure) -> AppError {
    metrics::counter!("things_verification_failures_total", "door" => door.as_str(), "reason" => reason.as_str())
        .increment(1);
    if !state.devices.is_current() {
        // The device may have been registered or rotated while we could not hear of it: let
        // it retry rather than reject what may be valid.
        AppError::Unavailable("device registrations cannot be checked right now".into())
    } else if reason == DeviceVerifyFailure::Unknown {
        AppError::UnknownDevice
    } else {
        AppError::DeviceNotVerified
    }
}

/// 202 with an empty body, or 200 with one SenML pack (the firmware notification ahead of
/// the oldest downlink), as KPN answers.
fn answer(reply: Option<DeviceReply>, notifier: &Notifier) -> Response {
    let reply = reply.unwrap_or_default();
    let body = match (&reply.fota, reply.downlink) {
        (Some(notice), _) => Some(notifier.pack(notice)),
        (None, Some(downlink)) => Some(downlink.body),
        (None, None) => None,
    };
    let mut response = match body {
        Some(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    };
    if reply.pending > 0 {
        response
            .headers_mut()
            .insert(PENDING_HEADER, HeaderValue::from(reply.pending));
    }
    response
}
