//! `/api/v1/rejections`: what the doors refused (and, by id, any recorded door event), why
//! (the diagnosis, computed when an admin opens one), and the replay of a refused request
//! once the configuration is fixed.
//!
//! The list reads `door_events` and adds this process's ring entries the rate cap kept out
//! of it (`"persisted": false`), so a flood is visible where it arrived.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::admin::AdminState;
use super::page::{self, Page};
use super::params;
use crate::admin::{ApiKey, Scope};
use crate::error::{AppError, ErrorBody};
use crate::ingest::IngestState;
use crate::ingest::diagnosis::{self, Diagnosis, Recorded};
use crate::ingest::events::Entry;
use crate::ingest::events::replay::{self, ReplayError, Replayed};
use crate::store::door_events::{self, DoorEventRow, Filter};
use crate::time_format::format_time;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `destination`, `m2m` or `ip`.
    #[param(pattern = "^(destination|m2m|ip)?$")]
    door: Option<String>,
    /// A destination's name or plug (removed destinations too).
    destination: Option<String>,
    /// A device URN, in any spelling of its scheme, type and id.
    device: Option<String>,
    /// The refusal's code, e.g. `not_verified`.
    reason: Option<String>,
    #[param(format = DateTime)]
    from: Option<String>,
    #[param(format = DateTime)]
    to: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    cursor: Option<String>,
}

/// One recorded event.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Rejection)]
pub struct Item {
    id: Uuid,
    received_at: String,
    /// `destination`, `m2m` or `ip`.
    door: String,
    /// `rejected`, `duplicate` or `spooled`.
    verdict: String,
    /// The status answered.
    status: u16,
    /// The refusal's code, or the verdict.
    reason: String,
    /// The one-line reason the sender was given.
    detail: Option<String>,
    plug: Option<Uuid>,
    /// The name of the destination the plug belongs (or belonged) to.
    destination: Option<String>,
    /// A device door's first `bn`, as sent.
    device: Option<String>,
    /// Bytes received, or declared when the body was not read.
    size: Option<i64>,
    /// The stored message a duplicate repeats.
    message_id: Option<i64>,
    replayed_message_id: Option<i64>,
    /// False for an event only this process's ring holds (over the persistence rate).
    persisted: bool,
}

/// One recorded event with the request as recorded and its diagnosis.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RejectionDetail)]
pub struct Detail {
    #[serde(flatten)]
    item: Item,
    /// Request headers but Authorization and Cookie.
    headers: BTreeMap<String, String>,
    /// The first 64 KiB of the body; null when it was not read.
    body_base64: Option<String>,
    body_truncated: bool,
    /// `{"cause", "summary", ...the cause's fields}`.
    #[schema(value_type = Object)]
    diagnosis: Diagnosis,
}

/// What a replay stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    message_id: i64,
    /// `stored`, `quarantined` or `duplicate` (stored before).
    status: String,
}

/// A recorded event from the table or from the ring, and whether it is in the table.
struct Found {
    row: DoorEventRow,
    persisted: bool,
    entry: Option<std::sync::Arc<Entry>>,
}

fn row_of(entry: &Entry) -> DoorEventRow {
    let e = &entry.event;
    DoorEventRow {
        id: e.id,
        received_at: e.received_at,
        door: e.door.into(),
        verdict: e.verdict.into(),
        status: e.status as i16,
        reason: e.reason.into(),
        detail: e.detail.clone(),
        plug: e.plug,
        destination: None,
        device_urn: e.device_urn.clone(),
        device_key: e.device_key.clone(),
        destination_id: e.destination_id,
        device_key_id: e.device_key_id,
        message_id: None,
        headers: SqlJson(e.headers.clone()),
        body: e.body.as_ref().map(|b| b.to_vec()),
        body_size: e.body_size,
        body_truncated: e.body_truncated,
        replayed_message_id: None,
        replayed_status: None,
    }
}

fn item(row: &DoorEventRow, persisted: bool) -> Item {
    Item {
        id: row.id,
        received_at: format_time(row.received_at),
        door: row.door.clone(),
        verdict: row.verdict.clone(),
        status: u16::try_from(row.status).unwrap_or(0),
        reason: row.reason.clone(),
        detail: row.detail.clone(),
        plug: row.plug,
        destination: row.destination.clone(),
        device: row.device_urn.clone(),
        size: row.body_size,
        message_id: row.message_id,
        replayed_message_id: row.replayed_message_id,
        persisted,
    }
}

fn encode_cursor(time: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", time.timestamp_micros(), id))
}

fn decode_cursor(text: &str) -> Result<(DateTime<Utc>, Uuid), AppError> {
    let bad = || AppError::bad_parameter("cursor", "not a cursor this API returned");
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let raw = std::str::from_utf8(&raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
    let time = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((time, Uuid::try_parse(id).map_err(|_| bad())?))
}

fn matches(row: &DoorEventRow, filter: &Filter) -> bool {
    row.verdict == "rejected"
        && filter.door.as_ref().is_none_or(|d| *d == row.door)
        && filter
            .plugs
            .as_ref()
            .is_none_or(|plugs| row.plug.is_some_and(|p| plugs.contains(&p)))
        && filter
            .device_key
            .as_ref()
            .is_none_or(|k| row.device_key.as_ref() == Some(k))
        && filter.reason.as_ref().is_none_or(|r| *r == row.reason)
        && filter.from.is_none_or(|from| row.received_at >= from)
        && filter.to.is_none_or(|to| row.received_at < to)
        && filter
            .before
            .is_none_or(|before| (row.received_at, row.id) < before)
}

/// Refused deliveries, newest first: the table's rows and this process's unpersisted ones.
#[utoipa::path(
    get, path = "/rejections", tag = "rejections", operation_id = "list_rejections",
    params(ListParams),
    responses(
        (status = 200, body = Page<Item>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    State(ingest): State<IngestState>,
    key: ApiKey,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Item>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let door = params::text("door", q.door)?;
    if let Some(door) = &door
        && !matches!(door.as_str(), "destination" | "m2m" | "ip")
    {
        return Err(AppError::bad_parameter(
            "door",
            "expected destination, m2m or ip",
        ));
    }
    let plugs = match params::text("destination", q.destination)? {
        Some(destination) => Some(door_events::plugs_of(&pool, &destination).await?),
        None => None,
    };
    let filter = Filter {
        door,
        plugs,
        device_key: params::text("device", q.device)?.map(|d| crate::senml::device_key(&d)),
        reason: params::text("reason", q.reason)?,
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        before: match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_cursor(c)?),
            None => None,
        },
    };
    let limit = params::limit(q.limit.as_deref())?;
    let fetch = page::fetch_limit(limit);
    let mut rows: Vec<(DoorEventRow, bool)> = door_events::list_rejected(&pool, &filter, fetch)
        .await?
        .into_iter()
        .map(|row| (row, true))
        .collect();
    rows.extend(
        ingest
            .events
            .unpersisted()
            .iter()
            .map(|entry| row_of(entry))
            .filter(|row| matches(row, &filter))
            .map(|row| (row, false)),
    );
    rows.sort_by_key(|(row, _)| std::cmp::Reverse((row.received_at, row.id)));
    // An entry persisted between the two reads is in both: the row wins (sorted first).
    rows.dedup_by_key(|(row, _)| row.id);
    rows.truncate(usize::try_from(fetch).unwrap_or(usize::MAX));
    Ok(Json(Page::of(
        rows,
        limit,
        |(row, _)| encode_cursor(row.received_at, row.id),
        |(row, persisted)| item(&row, persisted),
    )))
}

async fn find(pool: &PgPool, ingest: &IngestState, id: &str) -> Result<Found, AppError> {
    let not_found = || AppError::NotFound("rejection".into());
    let id = Uuid::try_parse(id.trim()).map_err(|_| not_found())?;
    if let Some(row) = door_events::get(pool, id).await? {
        return Ok(Found {
            row,
            persisted: true,
            entry: None,
        });
    }
    let entry = ingest.events.get(id).ok_or_else(not_found)?;
    Ok(Found {
        row: row_of(&entry),
        persisted: entry.persisted(),
        entry: Some(entry),
    })
}

/// The diagnosis of a recorded event, against today's senders and configuration.
async fn diagnose(
    pool: &PgPool,
    ingest: &IngestState,
    admin: &AdminState,
    row: &DoorEventRow,
) -> Result<Diagnosis, AppError> {
    let recorded = Recorded {
        door: &row.door,
        verdict: &row.verdict,
        status: u16::try_from(row.status).unwrap_or(0),
        reason: &row.reason,
        detail: row.detail.as_deref(),
        plug: row.plug,
        device_key: row.device_key.as_deref(),
        headers: &row.headers.0,
        body: row.body.as_deref(),
        body_truncated: row.body_truncated,
        body_size: row.body_size,
        message_id: row.message_id,
    };
    let headers = diagnosis::header_map(&row.headers.0);
    let verifies_now = matches!(row.reason.as_str(), "not_verified" | "unknown_device")
        && !row.body_truncated
        && row.body.as_deref().is_some_and(|body| {
            replay::verifies(
                ingest,
                &replay::Request {
                    door: &row.door,
                    plug: row.plug,
                    headers: &headers,
                    body,
                    received_at: row.received_at,
                },
            )
        });
    let senders = diagnosis::load(pool, &admin.key, &recorded).await?;
    Ok(diagnosis::diagnose(
        &recorded,
        &senders,
        verifies_now,
        Utc::now(),
    ))
}

/// One recorded event (any verdict): the request as recorded, and why it was refused.
#[utoipa::path(
    get, path = "/rejections/{id}", tag = "rejections", operation_id = "get_rejection",
    params(("id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, body = Detail),
        (status = 404, description = "No such event (or it left this process's ring)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(pool): State<PgPool>,
    State(ingest): State<IngestState>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Detail>, AppError> {
    key.require(Scope::Admin)?;
    let found = find(&pool, &ingest, &id).await?;
    let diagnosis = diagnose(&pool, &ingest, &admin, &found.row).await?;
    let row = found.row;
    Ok(Json(Detail {
        item: item(&row, found.persisted),
        body_base64: row.body.as_deref().map(|b| STANDARD.encode(b)),
        body_truncated: row.body_truncated,
        headers: row.headers.0,
        diagnosis,
    }))
}

/// Runs a refused request again against today's configuration: verified, it is stored like
/// any delivery (with its original receipt time) and the event records the message.
#[utoipa::path(
    post, path = "/rejections/{id}/replay", tag = "rejections", operation_id = "replay_rejection",
    params(("id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 201, description = "Replayed and stored", body = ReplayAnswer),
        (status = 200, description = "Replayed before: the same message", body = ReplayAnswer),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 422, description = "Still refused (the diagnosis says why), or its body was not kept", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn replay(
    State(pool): State<PgPool>,
    State(ingest): State<IngestState>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ReplayAnswer>), AppError> {
    key.require(Scope::Admin)?;
    let found = find(&pool, &ingest, &id).await?;
    let row = &found.row;
    if let (Some(message_id), status) = (row.replayed_message_id, &row.replayed_status) {
        let status = status.clone().unwrap_or_else(|| "stored".into());
        return Ok((StatusCode::OK, Json(ReplayAnswer { message_id, status })));
    }
    if row.verdict != "rejected" {
        return Err(AppError::unprocessable(
            "only a refused delivery can be replayed",
        ));
    }
    let body = match (&row.body, row.body_truncated) {
        (Some(body), false) => body,
        _ => {
            return Err(AppError::unprocessable(
                "the body of this request was not kept whole: it cannot be replayed",
            ));
        }
    };
    let headers = diagnosis::header_map(&row.headers.0);
    let request = replay::Request {
        door: &row.door,
        plug: row.plug,
        headers: &headers,
        body,
        received_at: row.received_at,
    };
    let replayed = match replay::replay(&ingest, &request).await {
        Ok(replayed) => replayed,
        Err(ReplayError::NotVerified) => {
            let diagnosis = diagnose(&pool, &ingest, &admin, row).await?;
            return Err(AppError::unprocessable(diagnosis.summary));
        }
        Err(ReplayError::NotCurrent) => {
            return Err(AppError::Unavailable(
                "the configuration cannot be checked right now".into(),
            ));
        }
        Err(ReplayError::Pipeline(e)) => return Err(e.into()),
    };
    let (message_id, status) = match replayed {
        Replayed::New { message_id, status } => (message_id, status),
        Replayed::Duplicate {
            destination_id,
            device_key_id,
            token,
        } => {
            let id = door_events::message_of(&pool, destination_id, device_key_id, &token)
                .await?
                .ok_or_else(|| {
                    AppError::Unavailable("the stored delivery cannot be found".into())
                })?;
            (id, "duplicate")
        }
        Replayed::Spooled => {
            return Err(AppError::Unavailable(
                "the database cannot take it now; it is kept in the spool".into(),
            ));
        }
    };
    if !found.persisted
        && let Some(entry) = &found.entry
    {
        // Only this process's ring had it: it becomes a row, to carry the replay.
        door_events::insert_batch(&pool, std::slice::from_ref(&entry.event)).await?;
        entry.set_persisted();
    }
    let marked = door_events::mark_replayed(&pool, row.id, message_id, status).await?;
    let (message_id, stored_status) = marked.unwrap_or((message_id, status.to_owned()));
    let code = if stored_status == status {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        Json(ReplayAnswer {
            message_id,
            status: stored_status,
        }),
    ))
}
