//! One device's timeline: its uplinks (messages), its door events, its downlinks and its
//! firmware targets, each read newest first within the bounds by its own index and merged.
//!
//! A device is known by its normalised URN both as a `devices` row (what its data named) and
//! as registrations (`device_keys`, removed ones included): the timeline covers both.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub struct Uplink {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub door: String,
    pub verdict: String,
    pub record_count: i32,
}

#[derive(Debug, sqlx::FromRow)]
pub struct DoorEvent {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub door: String,
    pub verdict: String,
    pub reason: String,
    pub status: i16,
    pub message_id: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct Downlink {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub transport: String,
    pub status: String,
    pub updated_at: DateTime<Utc>,
    pub message_id: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct FotaTarget {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub campaign: Uuid,
    pub firmware_version: String,
    pub state: String,
    pub pending_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub downloading_at: Option<DateTime<Utc>>,
    pub downloaded_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub enum Entry {
    Uplink(Uplink),
    Event(DoorEvent),
    Downlink(Downlink),
    Fota(FotaTarget),
}

impl Entry {
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Entry::Uplink(u) => u.time,
            Entry::Event(e) => e.time,
            Entry::Downlink(d) => d.time,
            Entry::Fota(f) => f.time,
        }
    }
}

/// Whether anything knows this normalised URN: a device row or a registration.
pub async fn known(pool: &PgPool, urn_key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE urn_key = $1) \
             OR EXISTS (SELECT 1 FROM device_keys WHERE urn_key = $1) \
             OR EXISTS (SELECT 1 FROM door_events WHERE device_key = $1)",
    )
    .bind(urn_key)
    .fetch_one(pool)
    .await
}

/// The newest `bounds.limit` entries of the device, newest first.
pub async fn read(pool: &PgPool, urn_key: &str, b: Bounds) -> Result<Vec<Entry>, sqlx::Error> {
    let uplinks = sqlx::query_as::<_, Uplink>(
        // Two index ranges (by the device row; a registration's few messages without one,
        // behind an OFFSET 0 fence and then sorted), not an OR, which would walk the
        // received-time index.
        "SELECT * FROM ( \
             (SELECT m.id, m.received_at AS time, m.door, m.status AS verdict, m.record_count \
              FROM messages m WHERE m.device_id = (SELECT id FROM devices WHERE urn_key = $1) \
                AND m.received_at >= coalesce($2::timestamptz, '-infinity') \
                AND m.received_at < coalesce($3::timestamptz, 'infinity') \
              ORDER BY m.received_at DESC, m.id DESC LIMIT $4) \
             UNION ALL \
             (SELECT * FROM (SELECT m.id, m.received_at, m.door, m.status, m.record_count \
              FROM messages m WHERE m.device_id IS NULL \
                AND m.device_key_id = ANY(ARRAY(SELECT id FROM device_keys WHERE urn_key = $1)) \
                AND m.received_at >= coalesce($2::timestamptz, '-infinity') \
                AND m.received_at < coalesce($3::timestamptz, 'infinity') OFFSET 0) r \
              ORDER BY r.received_at DESC, r.id DESC LIMIT $4)) u \
         ORDER BY time DESC, id DESC LIMIT $4",
    )
    .bind(urn_key)
    .bind(b.from)
    .bind(b.to)
    .bind(b.limit)
    .fetch_all(pool);
    let events = sqlx::query_as::<_, DoorEvent>(
        "SELECT id, received_at AS time, door, verdict, reason, status, message_id \
         FROM door_events WHERE device_key = $1 \
           AND ($2::timestamptz IS NULL OR received_at >= $2) \
           AND ($3::timestamptz IS NULL OR received_at < $3) \
         ORDER BY received_at DESC, id DESC LIMIT $4",
    )
    .bind(urn_key)
    .bind(b.from)
    .bind(b.to)
    .bind(b.limit)
    .fetch_all(pool);
    let downlinks = sqlx::query_as::<_, Downlink>(
        "SELECT id, created_at AS time, transport, status, updated_at, message_id \
         FROM downlinks \
         WHERE (device_id = (SELECT id FROM devices WHERE urn_key = $1) \
                OR device_key_id = ANY(ARRAY(SELECT id FROM device_keys WHERE urn_key = $1))) \
           AND ($2::timestamptz IS NULL OR created_at >= $2) \
           AND ($3::timestamptz IS NULL OR created_at < $3) \
         ORDER BY created_at DESC, seq DESC LIMIT $4",
    )
    .bind(urn_key)
    .bind(b.from)
    .bind(b.to)
    .bind(b.limit)
    .fetch_all(pool);
    let fota = sqlx::query_as::<_, FotaTarget>(
        "SELECT t.id, t.progress_at AS time, t.campaign_id AS campaign, c.firmware_version, \
                t.state, t.pending_at, t.notified_at, t.downloading_at, t.downloaded_at, \
                t.updated_at, t.failed_at, t.cancelled_at \
         FROM fota_targets t JOIN fota_campaigns c ON c.id = t.campaign_id \
         WHERE t.device_key_id = ANY(ARRAY(SELECT id FROM device_keys WHERE urn_key = $1)) \
           AND ($2::timestamptz IS NULL OR t.progress_at >= $2) \
           AND ($3::timestamptz IS NULL OR t.progress_at < $3) \
         ORDER BY t.progress_at DESC LIMIT $4",
    )
    .bind(urn_key)
    .bind(b.from)
    .bind(b.to)
    .bind(b.limit)
    .fetch_all(pool);
    let (uplinks, events, downlinks, fota) = tokio::try_join!(uplinks, events, downlinks, fota)?;
    let mut entries: Vec<Entry> = uplinks
        .into_iter()
        .map(Entry::Uplink)
        .chain(events.into_iter().map(Entry::Event))
        .chain(downlinks.into_iter().map(Entry::Downlink))
        .chain(fota.into_iter().map(Entry::Fota))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.time()));
    entries.truncate(usize::try_from(b.limit).unwrap_or(0));
    Ok(entries)
}
