//! `GET /api/v1/devices/{urn}/timeline`: one list of what happened to a device, newest first:
//! uplinks with their verdicts, refused and repeated uplinks, downlinks with their states,
//! firmware targets with the time of each state.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::admin::{ApiKey, Scope};
use crate::api::params;
use crate::error::{AppError, ErrorBody};
use crate::senml::device_key;
use crate::store::timeline::{self, Bounds, Entry};
use crate::time_format::format_time;

/// Entries when no `limit` is given.
const DEFAULT_LIMIT: i64 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineParams {
    /// Start, inclusive (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End, exclusive (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Most entries, 1 to 1000 (default 200).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// Entries newest first. Each has `time`, `kind` (`uplink`, `rejection`, `duplicate`,
/// `downlink` or `fota`), `id` and `summary`, plus the fields of its kind.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Timeline)]
pub struct Timeline {
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_time(t)))
}

fn entry(e: Entry) -> Value {
    match e {
        Entry::Uplink(u) => json!({
            "time": format_time(u.time), "kind": "uplink", "id": u.id.to_string(),
            "summary": format!("{} through {}, {} records", u.verdict, u.door, u.record_count),
            "message_id": u.id, "door": u.door, "verdict": u.verdict,
            "record_count": u.record_count,
        }),
        Entry::Event(ev) => {
            let kind = match ev.verdict.as_str() {
                "rejected" => "rejection",
                "duplicate" => "duplicate",
                _ => "uplink",
            };
            json!({
                "time": format_time(ev.time), "kind": kind, "id": ev.id.to_string(),
                "summary": format!("{} ({}) through {}, answered {}",
                                   ev.verdict, ev.reason, ev.door, ev.status),
                "door": ev.door, "verdict": ev.verdict, "reason": ev.reason,
                "status": ev.status, "message_id": ev.message_id,
            })
        }
        Entry::Downlink(d) => json!({
            "time": format_time(d.time), "kind": "downlink", "id": d.id.to_string(),
            "summary": format!("downlink {} ({})", d.status, d.transport),
            "transport": d.transport, "status": d.status,
            "updated_at": format_time(d.updated_at), "message_id": d.message_id,
        }),
        Entry::Fota(f) => json!({
            "time": format_time(f.time), "kind": "fota", "id": f.id.to_string(),
            "summary": format!("firmware {} {}", f.firmware_version, f.state),
            "campaign": f.campaign, "firmware_version": f.firmware_version, "state": f.state,
            "states": {
                "pending": format_time(f.pending_at), "notified": time(f.notified_at),
                "downloading": time(f.downloading_at), "downloaded": time(f.downloaded_at),
                "updated": time(f.updated_at), "failed": time(f.failed_at),
                "cancelled": time(f.cancelled_at),
            },
        }),
    }
}

/// A device's timeline, newest first.
#[utoipa::path(
    get, path = "/devices/{urn}/timeline", tag = "devices",
    params(("urn" = String, Path, description = "The device URN (any case)"), TimelineParams),
    responses(
        (status = 200, body = Timeline),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn timeline(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(urn): Path<String>,
    query: Result<Query<TimelineParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Timeline>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let urn = params::text("urn", Some(urn))?
        .ok_or_else(|| AppError::bad_parameter("urn", "must not be empty"))?;
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_LIMIT,
        some => params::limit(some)?,
    };
    let bounds = Bounds {
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        limit,
    };
    let key = device_key(&urn);
    if !timeline::known(&pool, &key).await? {
        return Err(AppError::NotFound(format!("device {urn:?}").into()));
    }
    let entries = timeline::read(&pool, &key, bounds).await?;
    Ok(Json(Timeline {
        items: entries.into_iter().map(entry).collect(),
    }))
}
