//! `GET /api/v1/messages` and `GET /api/v1/messages/{id}/raw`: accepted deliveries, including
//! quarantined ones, and their bodies exactly as received.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::auth::{ApiKey, Scope};
use crate::api::measurements::Page;
use crate::api::{cursor, params};
use crate::app::AppState;
use crate::error::AppError;
use crate::store::messages::{self, MessageFilter, MessageRow};

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Item {
    id: i64,
    plug: Option<Uuid>,
    destination: String,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_error: Option<String>,
    record_count: i32,
    headers: BTreeMap<String, String>,
}

impl From<MessageRow> for Item {
    fn from(row: MessageRow) -> Self {
        Item {
            id: row.id,
            plug: row.plug,
            destination: row.destination,
            received_at: params::format_time(row.received_at),
            device: row.device,
            status: row.status,
            decode_error: row.decode_error,
            record_count: row.record_count,
            headers: row.headers.0,
        }
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Item>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("stored") => Some("stored"),
        Some("quarantined") => Some("quarantined"),
        Some(_) => {
            return Err(AppError::bad_parameter(
                "status",
                "expected stored or quarantined",
            ));
        }
    };
    let limit = params::limit(q.limit.as_deref())?;
    let filter = MessageFilter {
        status,
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        after: params::cursor(q.cursor.as_deref())?,
        limit: limit + 1,
    };
    let mut rows = messages::list(&state.pool, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| cursor::encode(r.received_at, r.id))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(Item::from).collect(),
        next_cursor,
    }))
}

pub async fn raw(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    key.require(Scope::Read)?;
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a message id"))?;
    let body = messages::raw_body(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound("message"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
