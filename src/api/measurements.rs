//! `GET /api/v1/measurements`: stored measurements, newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::api::auth::{ApiKey, Scope};
use crate::api::{cursor, params};
use crate::app::AppState;
use crate::error::AppError;
use crate::senml::device_key;
use crate::store::measurements::{self, MeasurementFilter, MeasurementRow};

#[derive(Debug, Deserialize)]
pub struct ListParams {
    device: Option<String>,
    name: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One measurement; exactly one of the value fields is present (or only `sum`).
#[derive(Debug, Serialize)]
pub struct Item {
    device: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    string_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bool_value: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sum: Option<f64>,
}

impl From<MeasurementRow> for Item {
    fn from(row: MeasurementRow) -> Self {
        Item {
            device: row.device,
            name: row.name,
            unit: row.unit,
            time: params::format_time(row.time),
            value: row.value,
            string_value: row.string_value,
            bool_value: row.bool_value,
            data_value: row.data_value.map(|d| STANDARD.encode(d)),
            sum: row.sum,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Item>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let limit = params::limit(q.limit.as_deref())?;
    let mut filter = MeasurementFilter {
        name: q.name.filter(|n| !n.is_empty()),
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        after: params::cursor(q.cursor.as_deref())?,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
        ..Default::default()
    };
    if let Some(device) = q.device.filter(|d| !d.is_empty()) {
        match measurements::device_id(&state.pool, &device_key(&device)).await? {
            Some(id) => filter.device_id = Some(id),
            None => {
                return Ok(Json(Page {
                    items: Vec::new(),
                    next_cursor: None,
                }));
            }
        }
    }
    let mut rows = measurements::list(&state.pool, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| cursor::encode(r.time, r.id))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(Item::from).collect(),
        next_cursor,
    }))
}
