//! The `downlinks` table: the outbox of commands for devices.
//!
//! Two transports. `kpn` rows move `queued -> sending -> accepted | failed`, or
//! `queued -> cancelled`. `response` rows (for registered devices) wait for the device's next
//! uplink and move `queued -> delivered | expired | cancelled`, inside the uplink's
//! transaction (see `answer_downlinks`). For `kpn` rows a worker
//! claims due rows with `FOR UPDATE SKIP LOCKED` (replicas never claim the same row) and
//! holds each for a lease; every later write of that worker is fenced by the attempt number
//! it claimed, so a worker whose lease ran out cannot overwrite the outcome of the one that
//! took the row over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A downlink with the spelling of its device's URN.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DownlinkRow {
    pub id: Uuid,
    pub seq: i64,
    pub device: String,
    /// `kpn` or `response`.
    pub transport: String,
    pub port: Option<i16>,
    pub payload_hex: Option<String>,
    pub body: String,
    pub idempotency_key: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub kpn_status: Option<i16>,
    pub kpn_response: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// For a `response` downlink: when it expires if no uplink takes it.
    pub expires_at: Option<DateTime<Utc>>,
    /// For a delivered `response` downlink: the message (uplink) whose answer carried it.
    pub message_id: Option<i64>,
}

// A `kpn` row names a device that sent data; a `response` row a registration.
const SELECT: &str = "SELECT dl.id, dl.seq, COALESCE(d.urn, k.urn) AS device, dl.transport, \
     dl.port, dl.payload_hex, dl.body, \
     dl.idempotency_key, dl.status, dl.attempts, dl.next_attempt_at, dl.last_error, \
     dl.kpn_status, dl.kpn_response, dl.created_at, dl.updated_at, dl.finished_at, \
     dl.expires_at, dl.message_id \
     FROM downlinks dl LEFT JOIN devices d ON d.id = dl.device_id \
     LEFT JOIN device_keys k ON k.id = dl.device_key_id";

/// Whom a downlink is for, and so how it travels.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A device known from its data, through KPN's API.
    Kpn { device_id: i64 },
    /// A registered device, in the answer to its next uplink within `ttl`.
    Response { device_key_id: Uuid, ttl: Duration },
}

/// A new row to insert.
pub struct NewRow<'a> {
    pub id: Uuid,
    pub target: Target,
    pub port: Option<u16>,
    pub payload_hex: Option<&'a str>,
    pub body: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a [u8],
}

/// Inserts a queued row. With an idempotency key already used, nothing is inserted and the
/// existing row's id and request hash are returned instead (`Err`).
pub async fn insert(
    pool: &PgPool,
    row: &NewRow<'_>,
) -> Result<Result<(), (Uuid, Vec<u8>)>, sqlx::Error> {
    // A `response` row is never due for a KPN worker: not even for one of an older version
    // that does not know transports, during a rolling upgrade. (The last day of year 9999
    // rather than 'infinity', which chrono cannot hold and sqlx would panic decoding.)
    let (transport, device_id, device_key_id, ttl) = match row.target {
        Target::Kpn { device_id } => ("kpn", Some(device_id), None, None),
        Target::Response { device_key_id, ttl } => (
            "response",
            None,
            Some(device_key_id),
            Some(ttl.as_secs_f64()),
        ),
    };
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO downlinks (id, device_id, port, payload_hex, body, idempotency_key, request_hash, \
                                transport, device_key_id, expires_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10), \
                 CASE WHEN $8 = 'kpn' THEN now() ELSE TIMESTAMPTZ '9999-12-31 00:00:00+00' END) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(row.id)
    .bind(device_id)
    .bind(row.port.map(|p| p as i16))
    .bind(row.payload_hex)
    .bind(row.body)
    .bind(row.idempotency_key)
    .bind(row.request_hash)
    .bind(transport)
    .bind(device_key_id)
    .bind(ttl)
    .fetch_optional(pool)
    .await?;
    if inserted.is_some() {
        return Ok(Ok(()));
    }
    // The conflicting row committed before ours could insert, so it is visible now.
    let existing: (Uuid, Vec<u8>) =
        sqlx::query_as("SELECT id, request_hash FROM downlinks WHERE idempotency_key = $1")
            .bind(row.idempotency_key)
            .fetch_one(pool)
            .await?;
    Ok(Err(existing))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DownlinkRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE dl.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub struct ListFilter<'a> {
    pub device_key: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Only rows inserted before this `seq` (keyset pagination).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(pool: &PgPool, filter: &ListFilter<'_>) -> Result<Vec<DownlinkRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE ($1::text IS NULL OR d.urn_key = $1 OR k.urn_key = $1) \
         AND ($2::text IS NULL OR dl.status = $2) \
         AND ($3::bigint IS NULL OR dl.seq < $3) \
         ORDER BY dl.seq DESC LIMIT $4"
    )))
    .bind(filter.device_key)
    .bind(filter.status)
    .bind(filter.before_seq)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Cancels a queued row; `false` if it is not (or no longer) queued, or its ttl has passed.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'cancelled', updated_at = now(), finished_at = now() \
         WHERE id = $1 AND status = 'queued' AND (transport = 'kpn' OR expires_at > now())",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// A row claimed for sending.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    /// This attempt's number (1 for the first); fences the later writes.
    pub attempts: i32,
    pub port: Option<i16>,
    pub body: String,
}

/// Claims up to `limit` due rows: queued ones whose time has come, and rows whose sender's
/// lease ran out (it died mid-send). Rows locked by another claim in flight are skipped.
pub async fn claim<'e>(
    db: impl sqlx::PgExecutor<'e>,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS ( \
             SELECT id FROM downlinks \
             WHERE ((status = 'queued' AND next_attempt_at <= now()) \
                    OR (status = 'sending' AND lease_until <= now())) \
               AND transport = 'kpn' \
             ORDER BY next_attempt_at, seq LIMIT $1 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE downlinks dl SET status = 'sending', attempts = dl.attempts + 1, \
             lease_until = now() + make_interval(secs => $2), updated_at = now() \
         FROM due WHERE dl.id = due.id \
         RETURNING dl.id, dl.attempts, dl.port, dl.body",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await
}

/// When the next `kpn` row becomes due (queued time or lease expiry), and how many rows are
/// queued and being sent through KPN.
pub async fn pending(pool: &PgPool) -> Result<(Option<DateTime<Utc>>, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT LEAST( \
             (SELECT min(next_attempt_at) FROM downlinks WHERE status = 'queued' AND transport = 'kpn'), \
             (SELECT min(lease_until) FROM downlinks WHERE status = 'sending')), \
             (SELECT count(*) FROM downlinks WHERE status = 'queued' AND transport = 'kpn'), \
             (SELECT count(*) FROM downlinks WHERE status = 'sending')",
    )
    .fetch_one(pool)
    .await
}

/// KPN took the downlink. `false` if the claim was lost (another worker owns the row).
pub async fn mark_accepted(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    kpn_status: u16,
    answer: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'accepted', kpn_status = $3, kpn_response = $4, \
             last_error = NULL, lease_until = NULL, updated_at = now(), finished_at = now() \
         WHERE id = $1 AND status = 'sending' AND attempts = $2",
    )
    .bind(id)
    .bind(attempt)
    .bind(kpn_status as i16)
    .bind(answer)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Given up for good.
pub async fn mark_failed(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    reason: &str,
    kpn_status: Option<u16>,
    answer: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'failed', last_error = $3, kpn_status = $4, \
             kpn_response = $5, lease_until = NULL, updated_at = now(), finished_at = now() \
         WHERE id = $1 AND status = 'sending' AND attempts = $2",
    )
    .bind(id)
    .bind(attempt)
    .bind(reason)
    .bind(kpn_status.map(|s| s as i16))
    .bind(answer)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Back to the queue, due again after `delay`.
pub async fn reschedule(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    reason: &str,
    delay: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'queued', last_error = $3, \
             next_attempt_at = now() + make_interval(secs => $4), lease_until = NULL, updated_at = now() \
         WHERE id = $1 AND status = 'sending' AND attempts = $2",
    )
    .bind(id)
    .bind(attempt)
    .bind(reason)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Cancels every queued `response` downlink of a registration (it was removed: nothing can
/// carry them any more). Returns how many.
pub async fn cancel_for_registration<'e>(
    db: impl sqlx::PgExecutor<'e>,
    device_key_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'cancelled', last_error = 'the device registration was removed', \
             updated_at = now(), finished_at = now() \
         WHERE device_key_id = $1 AND transport = 'response' AND status = 'queued'",
    )
    .bind(device_key_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A spooled uplink's answer carried no downlink and no firmware notification. If its first
/// attempt's commit landed after all (the answer gave up waiting, or the connection broke
/// during COMMIT), a downlink marked delivered on that message never reached the device:
/// queue it again; and a firmware target it marked notified, before any part was served, is
/// pending again, so the next uplink carries the pack.
pub async fn requeue_unanswered(
    db: &mut sqlx::PgConnection,
    device_key_id: Uuid,
    token: &[u8],
    received_at: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'queued', message_id = NULL, finished_at = NULL, \
             updated_at = now() \
         WHERE status = 'delivered' AND message_id IN ( \
             SELECT id FROM messages \
             WHERE device_key_id = $1 AND token = $2 AND received_at = $3)",
    )
    .bind(device_key_id)
    .bind(token)
    .bind(received_at)
    .execute(&mut *db)
    .await?;
    let notices = sqlx::query(
        "UPDATE fota_targets SET state = 'pending', notified_at = NULL, notified_message_id = NULL \
         WHERE state = 'notified' AND parts = 0 AND notified_message_id IN ( \
             SELECT id FROM messages \
             WHERE device_key_id = $1 AND token = $2 AND received_at = $3)",
    )
    .bind(device_key_id)
    .bind(token)
    .bind(received_at)
    .execute(&mut *db)
    .await?;
    Ok(done.rows_affected() + notices.rows_affected())
}
