//! `GET /api/v1/measurements`: stored measurements, newest first.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::api::export::{self, ExportRow, Format};
use crate::api::page::{self, Page};
use crate::api::{cursor, params};
use crate::error::{AppError, ErrorBody};
use crate::senml::device_key;
use crate::store::devices;
use crate::store::measurements::{self, MeasurementFilter, MeasurementRow, StoredValue};
use crate::time_format::format_time;

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

/// The value fields of an answer, decoded from what the store keeps (strings as received,
/// data in base64). Shared by [`Item`] and the devices' latest values, whose JSON differs only
/// in the fields around these.
pub struct ValueFields {
    pub value: Option<f64>,
    pub string_value: Option<String>,
    pub bool_value: Option<bool>,
    pub data_value: Option<String>,
    pub sum: Option<f64>,
}

impl From<StoredValue> for ValueFields {
    fn from(mut stored: StoredValue) -> Self {
        ValueFields {
            string_value: stored.string(),
            value: stored.value,
            bool_value: stored.bool_value,
            data_value: stored.data_value.map(|d| STANDARD.encode(d)),
            sum: stored.sum,
        }
    }
}

impl From<MeasurementRow> for Item {
    fn from(row: MeasurementRow) -> Self {
        let v = ValueFields::from(row.stored);
        Item {
            device: row.device,
            name: row.name,
            unit: row.unit,
            time: format_time(row.time),
            value: v.value,
            string_value: v.string_value,
            bool_value: v.bool_value,
            data_value: v.data_value,
            sum: v.sum,
        }
    }
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
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
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
        limit: page::fetch_limit(limit),
        ..Default::default()
    };
    if let Some(device) = params::text("device", q.device)? {
        match devices::find(&pool, &device_key(&device))
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
            &settings.stream_pool,
            query,
            format,
            "measurements",
        )
        .await;
    }
    let rows = measurements::list(&pool, &filter).await?;
    let page = Page::of(rows, limit, |r| cursor::encode(r.time, r.id), Item::from);
    Ok(Json(page).into_response())
}
