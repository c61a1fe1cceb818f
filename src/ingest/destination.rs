//! The KPN Things destination door: `POST /ingest/kpn` (and `GET` with a body, which a KPN
//! destination can be configured to send).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::AppError;
use crate::ingest::headers::extra_headers;
use crate::senml;
use crate::store::deliveries::{self, Delivery, StoreOutcome};
use crate::token::{BodyDigest, Token};

pub const PLUG_HEADER: &str = "things-plug-uuid";
pub const TOKEN_HEADER: &str = "things-message-token";

pub async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let received_at = Utc::now();
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(state.max_body)
        } else {
            AppError::BadBody
        }
    })?;
    let plug = plug_header(&headers)?;
    let token = token_header(&headers)?;

    let digest = BodyDigest::new(&body);
    let verified = state
        .secrets
        .verify(plug, &digest, &token)
        .filter(|v| v.destination.headers_match(&headers))
        .ok_or(AppError::NotVerified)?;

    let decoded = senml::resolve(&body, received_at).map_err(|e| e.to_string());
    let extra = extra_headers(&headers);
    let outcome = deliveries::store(
        &state.pool,
        Delivery {
            destination_id: verified.destination.id,
            bind_plug: verified.bind_plug,
            token,
            received_at,
            body: &body,
            headers: &extra,
            decoded,
        },
    )
    .await?;

    if verified.bind_plug.is_some() {
        tracing::info!(destination = %verified.destination.name, %plug, "bound pending destination to its plug");
        // Our own cache must know the plug before the next delivery; the notification
        // reaches the other processes.
        if let Err(e) = state.secrets.reload().await {
            tracing::warn!(error = %e, "reloading destinations after binding failed");
        }
    }
    let status = match outcome {
        StoreOutcome::Stored { message_id } => {
            tracing::debug!(message_id, "delivery stored");
            "stored"
        }
        StoreOutcome::Quarantined { message_id } => {
            tracing::warn!(message_id, destination = %verified.destination.name, "delivery quarantined: not a valid SenML pack");
            "quarantined"
        }
        StoreOutcome::Duplicate => "duplicate",
    };
    let code = verified.destination.response_code;
    Ok(
        if code == StatusCode::NO_CONTENT || code == StatusCode::RESET_CONTENT {
            code.into_response()
        } else {
            (code, axum::Json(serde_json::json!({ "status": status }))).into_response()
        },
    )
}

fn plug_header(headers: &HeaderMap) -> Result<Uuid, AppError> {
    let value = headers
        .get(PLUG_HEADER)
        .ok_or(AppError::MissingHeader("Things-Plug-UUID"))?;
    value
        .to_str()
        .ok()
        .and_then(|text| Uuid::try_parse(text.trim()).ok())
        .ok_or(AppError::MalformedHeader {
            name: "Things-Plug-UUID",
            reason: "expected a UUID",
        })
}

fn token_header(headers: &HeaderMap) -> Result<Token, AppError> {
    let value = headers
        .get(TOKEN_HEADER)
        .ok_or(AppError::MissingHeader("Things-Message-Token"))?;
    value
        .to_str()
        .ok()
        .and_then(Token::parse)
        .ok_or(AppError::MalformedHeader {
            name: "Things-Message-Token",
            reason: "expected 64 hexadecimal characters",
        })
}
