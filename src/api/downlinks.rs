//! Downlinks over the API (scope `downlink`): queue one for a device, follow it, list them,
//! cancel one not yet sent.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::auth::{ApiKey, Scope};
use crate::api::params;
use crate::app::AppState;
use crate::downlink::Status;
use crate::downlink::outbox::{self, OutboxError};
use crate::downlink::request::{self, RequestError};
use crate::downlink::view::DownlinkView;
use crate::error::AppError;
use crate::kpn::credentials::HOW_TO_CONFIGURE;
use crate::senml::device_key;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl From<OutboxError> for AppError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Request(RequestError::Malformed { field, reason }) => {
                AppError::bad_parameter(field, reason)
            }
            OutboxError::Request(RequestError::Invalid { field, reason }) => AppError::Invalid {
                name: field,
                reason,
            },
            OutboxError::UnknownDevice(_) => AppError::NotFound("device"),
            OutboxError::NotFound(_) => AppError::NotFound("downlink"),
            e @ (OutboxError::IdempotencyConflict | OutboxError::NotCancellable { .. }) => {
                AppError::Conflict(e.to_string())
            }
            OutboxError::Database(e) => AppError::from(e),
        }
    }
}

/// `POST /api/v1/devices/{urn}/downlinks`: 202 with the id and status.
pub async fn queue(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(urn): Path<String>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, AppError> {
    key.require(Scope::Downlink)?;
    if !state.downlinks_enabled {
        return Err(AppError::NotConfigured(HOW_TO_CONFIGURE));
    }
    let Json(body) = body.map_err(|e| AppError::bad_parameter("body", e.body_text()))?;
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            AppError::bad_parameter("Idempotency-Key", "expected visible ASCII characters")
        })?),
    };
    let checked = request::check_json(&device_key(urn.trim()), &body).map_err(OutboxError::from)?;
    let (device_id, urn_key) = outbox::known_device(&state.pool, &urn).await?;
    let queued = outbox::queue(&state.pool, device_id, &urn_key, &checked, idempotency_key).await?;
    let location = format!("/api/v1/downlinks/{}", queued.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(queued),
    )
        .into_response())
}

/// `GET /api/v1/downlinks/{id}`
pub async fn show(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<DownlinkView>, AppError> {
    key.require(Scope::Downlink)?;
    let row = outbox::get(&state.pool, parse_id(&id)?).await?;
    Ok(Json(row.into()))
}

/// `DELETE /api/v1/downlinks/{id}`: the cancelled downlink, or 409 once it has left.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<DownlinkView>, AppError> {
    key.require(Scope::Downlink)?;
    let row = outbox::cancel(&state.pool, parse_id(&id)?).await?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    device: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    items: Vec<DownlinkView>,
    next_cursor: Option<String>,
}

/// `GET /api/v1/downlinks?device=&status=&limit=&cursor=`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page>, AppError> {
    key.require(Scope::Downlink)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            AppError::bad_parameter(
                "status",
                "expected queued, sending, accepted, failed or cancelled",
            )
        })?),
    };
    let limit = params::limit(q.limit.as_deref())?;
    let before = params::cursor(q.cursor.as_deref())?.map(|(_, seq)| seq);
    let device = q.device.as_deref().filter(|d| !d.is_empty());
    let mut rows = outbox::list(&state.pool, device, status, before, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|r| crate::api::cursor::encode(r.created_at, r.seq))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(DownlinkView::from).collect(),
        next_cursor,
    }))
}

fn parse_id(id: &str) -> Result<Uuid, AppError> {
    id.parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a downlink id (UUID)"))
}
