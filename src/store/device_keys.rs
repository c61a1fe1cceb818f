//! The `device_keys` table: one row per device registered for direct ingestion, its secrets
//! sealed (associated data = the row id, so a sealed secret copied onto another row does
//! not open).
//!
//! Rows are looked up by `urn_key`, the [`crate::senml::device_key`] of the URN, which is
//! what an uplink's `bn` normalises to. Removal is soft: the row stays (without secrets) as
//! the history of a registration, and the URN can be registered again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::sealed_secrets;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceKeyRow {
    pub id: Uuid,
    pub urn_key: String,
    pub urn: String,
    pub kind: String,
    pub secret_sealed: Vec<u8>,
    pub previous_sealed: Option<Vec<u8>>,
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, urn_key, urn, kind, secret_sealed, previous_sealed, \
                       previous_expires_at, created_at";

pub struct NewDeviceKey {
    pub id: Uuid,
    pub urn_key: String,
    pub urn: String,
    pub kind: &'static str,
    pub secret_sealed: Vec<u8>,
}

/// Registers a device. A live registration of the same `urn_key` makes this fail with a
/// unique violation (`device_keys_urn_key`).
pub async fn insert(pool: &PgPool, new: &NewDeviceKey) -> Result<DeviceKeyRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO device_keys (id, urn_key, urn, kind, secret_sealed) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(&new.urn_key)
    .bind(&new.urn)
    .bind(new.kind)
    .bind(&new.secret_sealed)
    .fetch_one(pool)
    .await
}

/// Every live registration, in URN key order (stable for people and for the cache).
pub async fn list_live(pool: &PgPool) -> Result<Vec<DeviceKeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_keys WHERE removed_at IS NULL ORDER BY urn_key"
    )))
    .fetch_all(pool)
    .await
}

/// What a process needs to verify uplinks: every live registration's key and secrets, with
/// a previous secret only while it is still accepted.
pub async fn load_live(pool: &PgPool) -> Result<Vec<LiveDeviceKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, urn_key, secret_sealed, \
             CASE WHEN previous_expires_at > now() THEN previous_sealed END AS previous_sealed, \
             CASE WHEN previous_expires_at > now() THEN previous_expires_at END \
                 AS previous_expires_at \
         FROM device_keys WHERE removed_at IS NULL ORDER BY urn_key",
    )
    .fetch_all(pool)
    .await
}

/// One row of [`load_live`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveDeviceKey {
    pub id: Uuid,
    pub urn_key: String,
    pub secret_sealed: Vec<u8>,
    pub previous_sealed: Option<Vec<u8>>,
    pub previous_expires_at: Option<DateTime<Utc>>,
}

/// The live registration of a normalised URN.
pub async fn get(pool: &PgPool, urn_key: &str) -> Result<Option<DeviceKeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_keys WHERE urn_key = $1 AND removed_at IS NULL"
    )))
    .bind(urn_key)
    .fetch_optional(pool)
    .await
}

/// Makes `secret_sealed` the current secret; the old one stays valid for `overlap`.
/// `None` when the registration was removed meanwhile.
pub async fn rotate(
    pool: &PgPool,
    id: Uuid,
    secret_sealed: &[u8],
    overlap: Duration,
) -> Result<Option<DeviceKeyRow>, sqlx::Error> {
    sealed_secrets::rotate(pool, "device_keys", COLUMNS, id, secret_sealed, overlap).await
}

/// Marks a registration removed and forgets its secrets; the device's stored data stays.
pub async fn remove(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sealed_secrets::remove(pool, "device_keys", id).await
}

/// Whether a registration of this normalised URN was removed.
pub async fn was_removed(pool: &PgPool, urn_key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM device_keys WHERE urn_key = $1 AND removed_at IS NOT NULL)",
    )
    .bind(urn_key)
    .fetch_one(pool)
    .await
}
