//! The `door_events` table: what the doors answered without storing a new message (refusals,
//! duplicates, spooled deliveries), written in batches by the recorder's writer
//! (`ingest::events`), read by the rejections API, pruned to a total size.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

/// One event as a door saw it, ready to insert. Declared here so that the store imports
/// nothing from ingestion.
#[derive(Debug, Clone)]
pub struct NewDoorEvent {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    /// `destination`, `m2m` or `ip`.
    pub door: &'static str,
    /// `rejected`, `duplicate` or `spooled`.
    pub verdict: &'static str,
    pub status: u16,
    /// `AppError::code()` of a refusal, else the verdict.
    pub reason: &'static str,
    /// The one-line reason the sender was given.
    pub detail: Option<String>,
    pub plug: Option<Uuid>,
    /// A device door's first `bn` as sent, and its normalised key.
    pub device_urn: Option<String>,
    pub device_key: Option<String>,
    pub destination_id: Option<Uuid>,
    pub device_key_id: Option<Uuid>,
    /// A duplicate's token: its stored message is found by sender and token on insert, so
    /// the door does no lookup.
    pub token: Option<[u8; 32]>,
    /// Request headers but Authorization, Proxy-Authorization and Cookie, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The first [`MAX_KEPT_BODY`] bytes, when the body was read.
    pub body: Option<bytes::Bytes>,
    /// Bytes received, or declared when the body was not read.
    pub body_size: Option<i64>,
    pub body_truncated: bool,
}

/// The most of a body an event keeps.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// What one row is counted as against the total size cap: the body, the headers and detail
/// as text, and a fixed part for the rest of the row and its index entries.
pub fn stored_bytes(event: &NewDoorEvent) -> i32 {
    let headers: usize = event
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    let size = 200
        + event.body.as_ref().map_or(0, |b| b.len())
        + headers
        + event.detail.as_ref().map_or(0, String::len)
        + event.device_urn.as_ref().map_or(0, |u| 2 * u.len());
    i32::try_from(size).unwrap_or(i32::MAX)
}

/// Inserts a batch in one statement (so one notification names them all). A duplicate's
/// `message_id` is looked up here, by sender and token. Ids already present are skipped.
pub async fn insert_batch(pool: &PgPool, events: &[NewDoorEvent]) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut received = Vec::with_capacity(events.len());
    let mut doors = Vec::with_capacity(events.len());
    let mut verdicts = Vec::with_capacity(events.len());
    let mut statuses = Vec::with_capacity(events.len());
    let mut reasons = Vec::with_capacity(events.len());
    let mut details = Vec::with_capacity(events.len());
    let mut plugs = Vec::with_capacity(events.len());
    let mut urns = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut destinations = Vec::with_capacity(events.len());
    let mut key_ids = Vec::with_capacity(events.len());
    let mut tokens = Vec::with_capacity(events.len());
    let mut headers = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut sizes = Vec::with_capacity(events.len());
    let mut truncated = Vec::with_capacity(events.len());
    let mut stored = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.id);
        received.push(e.received_at);
        doors.push(e.door);
        verdicts.push(e.verdict);
        statuses.push(e.status as i16);
        reasons.push(e.reason);
        details.push(e.detail.as_deref());
        plugs.push(e.plug);
        urns.push(e.device_urn.as_deref());
        keys.push(e.device_key.as_deref());
        destinations.push(e.destination_id);
        key_ids.push(e.device_key_id);
        tokens.push(e.token.map(|t| t.to_vec()));
        headers.push(serde_json::to_string(&e.headers).unwrap_or_else(|_| "{}".into()));
        bodies.push(e.body.as_deref());
        sizes.push(e.body_size);
        truncated.push(e.body_truncated);
        stored.push(stored_bytes(e));
    }
    let done = sqlx::query(
        "INSERT INTO door_events (id, received_at, door, verdict, status, reason, detail, plug, \
             device_urn, device_key, destination_id, device_key_id, message_id, headers, body, \
             body_size, body_truncated, stored_bytes) \
         SELECT i, r, o, v, s, re, de, p, u, k, d, dk, \
             CASE WHEN t IS NULL THEN NULL \
                  WHEN d IS NOT NULL THEN (SELECT m.id FROM messages m \
                       WHERE m.destination_id = d AND m.token = t LIMIT 1) \
                  ELSE (SELECT max(m.id) FROM messages m \
                       WHERE m.device_key_id = dk AND m.token = t) END, \
             h::jsonb, b, bs, bt, sb \
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::int2[], \
             $6::text[], $7::text[], $8::uuid[], $9::text[], $10::text[], $11::uuid[], \
             $12::uuid[], $13::bytea[], $14::text[], $15::bytea[], $16::int8[], $17::bool[], \
             $18::int4[]) AS x(i, r, o, v, s, re, de, p, u, k, d, dk, t, h, b, bs, bt, sb) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&received)
    .bind(&doors)
    .bind(&verdicts)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&details)
    .bind(&plugs)
    .bind(&urns)
    .bind(&keys)
    .bind(&destinations)
    .bind(&key_ids)
    .bind(&tokens)
    .bind(&headers)
    .bind(&bodies)
    .bind(&sizes)
    .bind(&truncated)
    .bind(&stored)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes the oldest rows (by `received_at`) while the rows' total `stored_bytes` is over
/// `max_bytes`; returns how many went. One statement, run by the writer every few seconds.
pub async fn prune(pool: &PgPool, max_bytes: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM door_events e USING ( \
             SELECT id FROM ( \
                 SELECT id, sum(stored_bytes) OVER (ORDER BY received_at DESC, id DESC) AS upto \
                 FROM door_events) w \
             WHERE upto > $1) old \
         WHERE e.id = old.id",
    )
    .bind(max_bytes)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A stored event, with the name of the destination its plug belongs to (a removed one too).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DoorEventRow {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub door: String,
    pub verdict: String,
    pub status: i16,
    pub reason: String,
    pub detail: Option<String>,
    pub plug: Option<Uuid>,
    pub destination: Option<String>,
    pub device_urn: Option<String>,
    pub device_key: Option<String>,
    pub destination_id: Option<Uuid>,
    pub device_key_id: Option<Uuid>,
    pub message_id: Option<i64>,
    pub headers: Json<BTreeMap<String, String>>,
    pub body: Option<Vec<u8>>,
    pub body_size: Option<i64>,
    pub body_truncated: bool,
    pub replayed_message_id: Option<i64>,
    pub replayed_status: Option<String>,
}

const SELECT: &str = "SELECT e.id, e.received_at, e.door, e.verdict, e.status, e.reason, \
    e.detail, e.plug, (SELECT name FROM destinations d WHERE d.plug = e.plug \
        ORDER BY d.removed_at DESC NULLS FIRST LIMIT 1) AS destination, \
    e.device_urn, e.device_key, e.destination_id, e.device_key_id, e.message_id, e.headers, \
    e.body, e.body_size, e.body_truncated, e.replayed_message_id, e.replayed_status \
    FROM door_events e";

/// Without the body (a list shows none).
const SELECT_LIST: &str = "SELECT e.id, e.received_at, e.door, e.verdict, e.status, e.reason, \
    e.detail, e.plug, (SELECT name FROM destinations d WHERE d.plug = e.plug \
        ORDER BY d.removed_at DESC NULLS FIRST LIMIT 1) AS destination, \
    e.device_urn, e.device_key, e.destination_id, e.device_key_id, e.message_id, e.headers, \
    NULL::bytea AS body, e.body_size, e.body_truncated, e.replayed_message_id, \
    e.replayed_status FROM door_events e";

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DoorEventRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE e.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What a list of rejections is narrowed to; every field optional.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub door: Option<String>,
    /// The plugs of the destination asked for (a name can have had several over time).
    pub plugs: Option<Vec<Uuid>>,
    /// Normalised (`senml::device_key`).
    pub device_key: Option<String>,
    pub reason: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Rows strictly before this `(received_at, id)`, newest first.
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

/// Refusals newest first (keyset on `door_events_received_idx`), at most `limit`.
pub async fn list_rejected(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DoorEventRow>, sqlx::Error> {
    let (before_time, before_id) = filter.before.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_LIST} WHERE e.verdict = 'rejected' \
           AND ($1::text IS NULL OR e.door = $1) \
           AND ($2::uuid[] IS NULL OR e.plug = ANY($2)) \
           AND ($3::text IS NULL OR e.device_key = $3) \
           AND ($4::text IS NULL OR e.reason = $4) \
           AND ($5::timestamptz IS NULL OR e.received_at >= $5) \
           AND ($6::timestamptz IS NULL OR e.received_at < $6) \
           AND ($7::timestamptz IS NULL OR (e.received_at, e.id) < ($7, $8::uuid)) \
         ORDER BY e.received_at DESC, e.id DESC LIMIT $9"
    )))
    .bind(filter.door.as_deref())
    .bind(filter.plugs.as_deref())
    .bind(filter.device_key.as_deref())
    .bind(filter.reason.as_deref())
    .bind(filter.from)
    .bind(filter.to)
    .bind(before_time)
    .bind(before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The plugs a destination name or plug stands for, removed destinations included; a UUID
/// that names none is taken as a plug itself.
pub async fn plugs_of(pool: &PgPool, name_or_plug: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    let plug = Uuid::try_parse(name_or_plug.trim()).ok();
    let mut plugs: Vec<Uuid> = sqlx::query_scalar(
        "SELECT plug FROM destinations WHERE plug IS NOT NULL AND (name = $1 OR plug = $2)",
    )
    .bind(name_or_plug)
    .bind(plug)
    .fetch_all(pool)
    .await?;
    if let Some(plug) = plug
        && !plugs.contains(&plug)
    {
        plugs.push(plug);
    }
    Ok(plugs)
}

/// Records the message a replay stored, unless a replay did already; returns the message id
/// and status the event now carries.
pub async fn mark_replayed(
    pool: &PgPool,
    id: Uuid,
    message_id: i64,
    status: &str,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let marked: Option<(i64, String)> = sqlx::query_as(
        "UPDATE door_events SET replayed_message_id = $2, replayed_status = $3, \
             replayed_at = now() \
         WHERE id = $1 AND replayed_message_id IS NULL \
         RETURNING replayed_message_id, replayed_status",
    )
    .bind(id)
    .bind(message_id)
    .bind(status)
    .fetch_optional(pool)
    .await?;
    if marked.is_some() {
        return Ok(marked);
    }
    sqlx::query_as(
        "SELECT replayed_message_id, coalesce(replayed_status, 'stored') FROM door_events \
         WHERE id = $1 AND replayed_message_id IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The message a delivery with this sender and token was stored as (for a replay that
/// turned out to be a duplicate).
pub async fn message_of(
    pool: &PgPool,
    destination_id: Option<Uuid>,
    device_key_id: Option<Uuid>,
    token: &[u8; 32],
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(id) FROM messages WHERE token = $3 \
           AND (($1::uuid IS NOT NULL AND destination_id = $1) \
             OR ($2::uuid IS NOT NULL AND device_key_id = $2))",
    )
    .bind(destination_id)
    .bind(device_key_id)
    .bind(token.as_slice())
    .fetch_one(pool)
    .await
}
