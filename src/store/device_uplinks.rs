//! Which device uplinks are retries: the same registration and token within
//! [`RETRY_WINDOW`] of the one taken as new (`device_uplinks`, one row per token).
//!
//! A retry carries the same bytes and so the same token. But a device that sends no `bt`
//! sends the same bytes whenever a reading repeats ("door closed" every hour), and those are
//! new readings: a token is a retry only within the window, not forever.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::deliveries::{Delivery, Sender};

/// How long the same token from the same device counts as a retry. KPN's device SDK and
/// devices on a flaky network retry within seconds to minutes.
pub const RETRY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long rows are kept: far past the window, so that a spooled uplink replayed after a
/// long outage still finds the row of a first attempt whose commit did land.
const KEPT_FOR: &str = "7 days";

/// `unique` without the device uplinks that retry one taken as new within the window; the
/// others are recorded. Concurrent transactions with the same token wait for each other on
/// the row, so exactly one takes it.
pub(super) async fn keep_new(
    tx: &mut PgConnection,
    batch: &[Delivery],
    unique: Vec<usize>,
) -> Result<Vec<usize>, sqlx::Error> {
    let mut devices: Vec<(Uuid, [u8; 32], DateTime<Utc>, usize)> = unique
        .iter()
        .filter_map(|&i| match &batch[i].raw.sender {
            Sender::Device { key_id, .. } => {
                Some((*key_id, batch[i].raw.token.0, batch[i].raw.received_at, i))
            }
            Sender::Destination { .. } => None,
        })
        .collect();
    if devices.is_empty() {
        return Ok(unique);
    }
    // One lock order for every transaction.
    devices.sort_unstable_by_key(|d| (d.0, d.1));
    let keys: Vec<Uuid> = devices.iter().map(|d| d.0).collect();
    let tokens: Vec<&[u8]> = devices.iter().map(|d| &d.1[..]).collect();
    let times: Vec<DateTime<Utc>> = devices.iter().map(|d| d.2).collect();
    let taken: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "INSERT INTO device_uplinks (device_key_id, token, received_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::timestamptz[]) \
         ON CONFLICT (device_key_id, token) DO UPDATE SET received_at = EXCLUDED.received_at \
         WHERE device_uplinks.received_at < EXCLUDED.received_at - make_interval(secs => $4) \
         RETURNING device_key_id, token",
    )
    .bind(&keys)
    .bind(&tokens)
    .bind(&times)
    .bind(RETRY_WINDOW.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let taken: std::collections::HashSet<(Uuid, Vec<u8>)> = taken.into_iter().collect();
    let retries: std::collections::HashSet<usize> = devices
        .iter()
        .filter(|d| !taken.contains(&(d.0, d.1.to_vec())))
        .map(|d| d.3)
        .collect();
    Ok(unique
        .into_iter()
        .filter(|i| !retries.contains(i))
        .collect())
}

/// Forgets uplinks far older than the retry window.
pub async fn prune<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM device_uplinks WHERE received_at < now() - interval '{KEPT_FOR}'"
    )))
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
