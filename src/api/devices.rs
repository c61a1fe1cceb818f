//! `GET /api/v1/devices`, `/devices/{urn}` and `/devices/{urn}/latest`.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::admin::{ApiKey, Scope};
use crate::api::measurements::ValueFields;
use crate::api::page;
use crate::api::{cursor, params};
use crate::error::{AppError, ErrorBody};
use crate::senml::device_key;
use crate::store::devices::{self, DeviceFilter, DeviceRow, LatestRow};
use crate::time_format::format_time;

/// The URN kinds a device can have.
const KINDS: [&str; 4] = ["DEVEUI", "IMEI", "DVNUUID", "other"];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Part of the device URN, matched case-insensitively.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    q: Option<String>,
    /// The URN kind: DEVEUI, IMEI, DVNUUID or other (any case).
    #[param(pattern = "^(DEVEUI|IMEI|DVNUUID|other|deveui|imei|dvnuuid|OTHER)?$")]
    kind: Option<String>,
    /// Devices per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A device, as first identified by its URN.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    /// The URN as first seen, e.g. `urn:dev:DEVEUI:0018B21000008C47:`.
    urn: String,
    /// DEVEUI, IMEI, DVNUUID or other.
    kind: String,
    first_seen: String,
    last_seen: String,
    /// Accepted deliveries attributed to this device.
    message_count: i64,
    /// Whether the device is registered for direct ingestion (it posts to the device doors
    /// with its own secret; see `POST /devices`).
    registered: bool,
}

impl From<DeviceRow> for Device {
    fn from(row: DeviceRow) -> Self {
        Device {
            urn: row.urn,
            kind: row.kind,
            first_seen: format_time(row.first_seen),
            last_seen: format_time(row.last_seen),
            message_count: row.message_count,
            registered: row.registered,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePage {
    items: Vec<Device>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[schema(nullable = true)]
    next_cursor: Option<String>,
}

// Its own type rather than `measurements::Item` without a device: its fields come in another
// order, on the wire and in the OpenAPI schema. (A doc comment here would go into the schema.)
/// The newest value of one measurement name.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatestValue {
    name: String,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
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

impl From<LatestRow> for LatestValue {
    fn from(row: LatestRow) -> Self {
        let v = ValueFields::from(row.stored);
        LatestValue {
            name: row.name,
            time: format_time(row.time),
            unit: row.unit,
            value: v.value,
            string_value: v.string_value,
            bool_value: v.bool_value,
            data_value: v.data_value,
            sum: v.sum,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Latest {
    device: String,
    values: Vec<LatestValue>,
}

/// Devices, in the order they were first seen.
#[utoipa::path(
    get, path = "/devices", tag = "devices", operation_id = "list_devices",
    params(ListParams),
    responses(
        (status = 200, body = DevicePage),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    key: ApiKey,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DevicePage>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let limit = params::limit(q.limit.as_deref())?;
    let kind = match params::text("kind", q.kind)? {
        None => None,
        Some(kind) => Some(
            KINDS
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(&kind))
                .ok_or_else(|| {
                    AppError::bad_parameter("kind", "expected DEVEUI, IMEI, DVNUUID or other")
                })?
                .to_owned(),
        ),
    };
    let after = params::id_cursor(q.cursor.as_deref())?;
    let filter = DeviceFilter {
        search: params::text("q", q.q)?,
        kind,
        after,
        limit: page::fetch_limit(limit),
    };
    let rows = devices::list(&pool, &filter).await?;
    let (rows, next_cursor) = page::split(rows, limit, |r| cursor::encode_id(r.id));
    Ok(Json(DevicePage {
        items: rows.into_iter().map(Device::from).collect(),
        next_cursor,
    }))
}

/// One device.
#[utoipa::path(
    get, path = "/devices/{urn}", tag = "devices", operation_id = "get_device",
    params(("urn" = String, Path, description = "The device URN (any case)")),
    responses(
        (status = 200, body = Device),
        (status = 400, description = "The URN is not acceptable text", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(urn): Path<String>,
) -> Result<Json<Device>, AppError> {
    key.require(Scope::Read)?;
    Ok(Json(find(&pool, &urn).await?.into()))
}

/// The latest value of every measurement name of a device.
#[utoipa::path(
    get, path = "/devices/{urn}/latest", tag = "devices",
    params(("urn" = String, Path, description = "The device URN (any case)")),
    responses(
        (status = 200, body = Latest),
        (status = 400, description = "The URN is not acceptable text", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn latest(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(urn): Path<String>,
) -> Result<Json<Latest>, AppError> {
    key.require(Scope::Read)?;
    let device = find(&pool, &urn).await?;
    let values = devices::latest(&pool, device.id).await?;
    Ok(Json(Latest {
        device: device.urn,
        values: values.into_iter().map(LatestValue::from).collect(),
    }))
}

/// The device with this URN, or 404.
pub async fn find(pool: &PgPool, urn: &str) -> Result<DeviceRow, AppError> {
    let urn = params::text("urn", Some(urn.to_owned()))?.unwrap_or_default();
    devices::find(pool, &device_key(&urn))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("device {urn:?}").into()))
}
