//! `GET /api/v1/measurements`: stored measurements, newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::auth::{ApiKey, Scope};
use crate::api::export::{self, ExportRow, Format};
use crate::api::{cursor, params};
use crate::app::AppState;
use crate::error::{AppError, ErrorBody};
use crate::senml::device_key;
use crate::store::devices;
use crate::store::measurements::{self, MeasurementFilter, MeasurementRow};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The device URN (any case).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    device: Option<String>,
    /// The measurement name, e.g. `temperature`.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    name: Option<String>,
    /// Start, inclusive (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End, exclusive (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Items per page, 1 to 1000 (default 100); ignored by exports.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One measurement; exactly one of the value fields is present (or only `sum`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Measurement)]
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
    /// Base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sum: Option<f64>,
}

impl Item {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl From<MeasurementRow> for Item {
    fn from(mut row: MeasurementRow) -> Self {
        Item {
            string_value: row.string(),
            device: row.device,
            name: row.name,
            unit: row.unit,
            time: params::format_time(row.time),
            value: row.value,
            bool_value: row.bool_value,
            data_value: row.data_value.map(|d| STANDARD.encode(d)),
            sum: row.sum,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(nullable = true)]
    pub next_cursor: Option<String>,
}

impl ExportRow for MeasurementRow {
    const CSV_HEADER: &'static str =
        "time,device,name,unit,value,string_value,bool_value,data_value,sum";

    fn write_csv(self, out: &mut Vec<u8>) {
        let item = Item::from(self);
        let value = item.value.map(|v| v.to_string());
        let bool_value = item.bool_value.map(|v| v.to_string());
        let sum = item.sum.map(|v| v.to_string());
        export::csv_line(
            out,
            &[
                Some(&item.time),
                Some(&item.device),
                Some(&item.name),
                item.unit.as_deref(),
                value.as_deref(),
                item.string_value.as_deref(),
                bool_value.as_deref(),
                item.data_value.as_deref(),
                sum.as_deref(),
            ],
        );
    }

    fn write_json(self, out: &mut Vec<u8>) {
        // Serializing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &Item::from(self));
    }
}

/// Measurements, newest first. With `Accept: text/csv` or `Accept: application/x-ndjson`
/// every matching measurement is streamed, without pages.
#[utoipa::path(
    get, path = "/measurements", tag = "measurements", operation_id = "list_measurements",
    params(ListParams),
    responses(
        (status = 200, content(
            (Page<Item> = "application/json"),
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    headers: HeaderMap,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let format = Format::from_headers(&headers);
    let limit = params::limit(q.limit.as_deref())?;
    let mut filter = MeasurementFilter {
        name: params::text("name", q.name)?,
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        after: params::cursor(q.cursor.as_deref())?,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
        ..Default::default()
    };
    if let Some(device) = params::text("device", q.device)? {
        match devices::find(&state.pool, &device_key(&device))
            .await?
            .map(|d| d.id)
        {
            Some(id) => filter.device_id = Some(id),
            // No device matches: an empty answer. (-1 is never an identity value.)
            None => filter.device_id = Some(-1),
        }
    }
    if format != Format::Json {
        let query = measurements::select(&filter);
        return export::stream::<MeasurementRow>(
            &state.api.stream_pool,
            query,
            format,
            "measurements",
        )
        .await;
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
    })
    .into_response())
}
