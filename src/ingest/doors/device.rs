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

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::error::{AppError, PlainText};
use crate::firmware::notification::Notifier;
use crate::ingest::IngestState;
use crate::ingest::delivery::{DeviceDoor, DeviceReply, RawDelivery, Sender};
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
        Ok(_permit) => receive_inner(state, door, request).await,
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

async fn receive_inner(
    state: &IngestState,
    door: DeviceDoor,
    request: Request,
) -> Result<(Accepted, Option<DeviceReply>), AppError> {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let limit = state.device_max_body;
    if declared_length(&headers).is_some_and(|length| length > limit as u64) {
        return Err(AppError::PayloadTooLarge(limit));
    }
    let token = token_header(&headers)?;
    let body = read_body(body, limit).await?;
    let received_at = Utc::now();

    let urn_key = match peek_device(&body) {
        Ok(bn) => device_key(&bn),
        Err(PeekError::NotAnArray) => return Err(AppError::NotADevicePack("not a JSON array")),
        Err(PeekError::NoBaseName) => {
            return Err(AppError::NotADevicePack(
                "the first record has no string bn",
            ));
        }
    };
    let digest = BodyDigest::new(&body);
    let device = state
        .devices
        .verify(&urn_key, &digest, &token)
        .map_err(|reason| {
            metrics::counter!("things_verification_failures_total", "door" => door.as_str(), "reason" => reason.as_str())
                .increment(1);
            if !state.devices.is_current() {
                // The device may have been registered or rotated while we could not hear of
                // it: let it retry rather than reject what may be valid.
                AppError::Unavailable("device registrations cannot be checked right now".into())
            } else if reason == DeviceVerifyFailure::Unknown {
                AppError::UnknownDevice
            } else {
                AppError::DeviceNotVerified
            }
        })?;

    let raw = RawDelivery {
        sender: Sender::Device {
            key_id: device.id,
            urn_key,
            door,
        },
        token,
        received_at,
        body,
        headers: extra_headers(&headers),
    };
    let accepted = state.pipeline.accept(raw).await?;
    if accepted.as_str() == "quarantined" {
        tracing::warn!(device = %device.urn_key, door = door.as_str(), "uplink quarantined: not a valid SenML pack of its device");
    }
    let reply = match &accepted {
        Accepted::Stored(receipt) => receipt.reply.clone(),
        // Spooled: the downlinks stay queued for the next uplink.
        Accepted::Spooled => None,
    };
    Ok((accepted, reply))
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
