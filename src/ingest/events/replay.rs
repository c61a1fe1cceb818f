//! An admin's replay of a recorded request: verified again against today's configuration by
//! the doors' own checks (`ingest::verify`), then handed to the pipeline with its original
//! receipt time, as the door would have.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ingest::IngestState;
use crate::ingest::delivery::{DeviceDoor, RawDelivery, Sender, StoreOutcome};
use crate::ingest::headers::extra_headers;
use crate::ingest::pipeline::{Accepted, PipelineError};
use crate::senml::{device_key, peek_device};
use crate::token::{BodyDigest, Token};

/// The request as recorded.
pub struct Request<'a> {
    pub door: &'a str,
    pub plug: Option<Uuid>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// Where the replayed delivery went.
#[derive(Debug)]
pub enum Replayed {
    /// Stored or quarantined as a new message.
    New {
        message_id: i64,
        status: &'static str,
    },
    /// The same delivery was stored before: the sender and token to find its message by.
    Duplicate {
        destination_id: Option<Uuid>,
        device_key_id: Option<Uuid>,
        token: [u8; 32],
    },
    /// Kept in the spool: stored later, its message unknown now.
    Spooled,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Today's configuration refuses it too.
    #[error("the request does not verify against today's configuration")]
    NotVerified,
    /// The caches may be stale (their listener is disconnected): no verdict now.
    #[error("the configuration cannot be checked right now")]
    NotCurrent,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Whether the door would accept `request` today.
pub fn verifies(state: &IngestState, request: &Request<'_>) -> bool {
    sender(state, request).is_ok()
}

fn sender(state: &IngestState, request: &Request<'_>) -> Result<(Sender, Token), ReplayError> {
    let token = request
        .headers
        .get(crate::ingest::doors::kpn::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| Token::parse(t.trim()))
        .ok_or(ReplayError::NotVerified)?;
    let digest = BodyDigest::new(request.body);
    let door = match request.door {
        "m2m" => DeviceDoor::M2m,
        "ip" => DeviceDoor::Ip,
        _ => {
            let plug = request.plug.ok_or(ReplayError::NotVerified)?;
            if !state.secrets.is_current() {
                return Err(ReplayError::NotCurrent);
            }
            let verified = state
                .secrets
                .verify_request(plug, request.headers, &digest, &token)
                .map_err(|_| ReplayError::NotVerified)?;
            let sender = Sender::Destination {
                id: verified.destination.id,
                bind_plug: verified.bind_plug,
            };
            return Ok((sender, token));
        }
    };
    let urn_key = peek_device(request.body)
        .map(|bn| device_key(&bn))
        .map_err(|_| ReplayError::NotVerified)?;
    if !state.devices.is_current() {
        return Err(ReplayError::NotCurrent);
    }
    let device = state
        .devices
        .verify(&urn_key, &digest, &token)
        .map_err(|_| ReplayError::NotVerified)?;
    let sender = Sender::Device {
        key_id: device.id,
        urn_key,
        door,
    };
    Ok((sender, token))
}

/// Verifies `request` again and, verified, stores it through the pipeline.
pub async fn replay(state: &IngestState, request: &Request<'_>) -> Result<Replayed, ReplayError> {
    let (sender, token) = sender(state, request)?;
    let binds = matches!(
        sender,
        Sender::Destination {
            bind_plug: Some(_),
            ..
        }
    );
    let (destination_id, device_key_id) = match &sender {
        Sender::Destination { id, .. } => (Some(*id), None),
        Sender::Device { key_id, .. } => (None, Some(*key_id)),
    };
    let headers: BTreeMap<String, String> = extra_headers(request.headers);
    let raw = RawDelivery {
        sender,
        token,
        received_at: request.received_at,
        body: bytes::Bytes::copy_from_slice(request.body),
        headers,
    };
    let accepted = state.pipeline.accept_unanswered(raw).await?;
    if binds
        && !matches!(accepted, Accepted::Spooled)
        && let Err(e) = state.secrets.reload().await
    {
        tracing::warn!(error = %e, "reloading destinations after binding failed");
    }
    Ok(match accepted {
        Accepted::Spooled => Replayed::Spooled,
        Accepted::Stored(receipt) => match receipt.outcome {
            StoreOutcome::Stored { message_id } => Replayed::New {
                message_id,
                status: "stored",
            },
            StoreOutcome::Quarantined { message_id } => Replayed::New {
                message_id,
                status: "quarantined",
            },
            StoreOutcome::Duplicate => Replayed::Duplicate {
                destination_id,
                device_key_id,
                token: token.0,
            },
        },
    })
}
