//! `GET /api/v1/devices`, `/devices/{urn}` and `/devices/{urn}/latest`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::auth::{ApiKey, Scope};
use crate::api::params;
use crate::app::AppState;
use crate::error::{AppError, ErrorBody};
use crate::senml::device_key;
use crate::store::devices::{self, DeviceFilter, DeviceRow, LatestRow};

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
}

impl From<DeviceRow> for Device {
    fn from(row: DeviceRow) -> Self {
        Device {
            urn: row.urn,
            kind: row.kind,
            first_seen: params::format_time(row.first_seen),
            last_seen: params::format_time(row.last_seen),
            message_count: row.message_count,
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
    fn from(mut row: LatestRow) -> Self {
        LatestValue {
            string_value: row.string(),
            name: row.name,
            time: params::format_time(row.time),
            unit: row.unit,
            value: row.value,
            bool_value: row.bool_value,
            data_value: row.data_value.map(|d| STANDARD.encode(d)),
            sum: row.sum,
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
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            AppError::bad_parameter("cursor", "not a cursor returned by this API")
        })?),
    };
    let filter = DeviceFilter {
        search: params::text("q", q.q)?,
        kind,
        after,
        limit: limit + 1,
    };
    let mut rows = devices::list(&state.pool, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
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
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(urn): Path<String>,
) -> Result<Json<Device>, AppError> {
    key.require(Scope::Read)?;
    Ok(Json(find(&state, &urn).await?.into()))
}

/// The latest value of every measurement name of a device.
#[utoipa::path(
    get, path = "/devices/{urn}/latest", tag = "devices",
    params(("urn" = String, Path, description = "The device URN (any case)")),
    responses(
        (status = 200, body = Latest),
        (status = 400, description = "The URN is not acceptable text", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn latest(
    State(state): State<Arc<AppState>>,
    key: ApiKey,
    Path(urn): Path<String>,
) -> Result<Json<Latest>, AppError> {
    key.require(Scope::Read)?;
    let device = find(&state, &urn).await?;
    let values = devices::latest(&state.pool, device.id).await?;
    Ok(Json(Latest {
        device: device.urn,
        values: values.into_iter().map(LatestValue::from).collect(),
    }))
}

/// The device with this URN, or 404.
pub async fn find(state: &AppState, urn: &str) -> Result<DeviceRow, AppError> {
    let urn = params::text("urn", Some(urn.to_owned()))?.unwrap_or_default();
    devices::find(&state.pool, &device_key(&urn))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("device {urn:?}").into()))
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("d.{id}"))
}

fn decode_cursor(text: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("d.")?
        .parse()
        .ok()
}
