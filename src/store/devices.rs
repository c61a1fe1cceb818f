//! Reading devices and their latest values for dashboards.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::measurements::StoredValue;

#[derive(Debug, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: i64,
    pub urn: String,
    pub kind: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub message_count: i64,
    /// Whether the device has a live registration for direct ingestion (`device_keys`).
    pub registered: bool,
}

#[derive(Debug, Default)]
pub struct DeviceFilter {
    /// Case-insensitive substring of the URN.
    pub search: Option<String>,
    pub kind: Option<String>,
    /// Continue strictly after this device id.
    pub after: Option<i64>,
    pub limit: i64,
}

/// `registered` is one probe of the partial unique index `device_keys_urn_key` per row, in
/// the same statement: a page of devices never costs a query per device.
const COLUMNS: &str = "id, urn, kind, first_seen, last_seen, message_count, \
                       EXISTS (SELECT 1 FROM device_keys k \
                               WHERE k.urn_key = devices.urn_key AND k.removed_at IS NULL) \
                           AS registered";

/// Devices matching `filter` in id order (the order they were first seen).
pub async fn list(pool: &PgPool, filter: &DeviceFilter) -> Result<Vec<DeviceRow>, sqlx::Error> {
    let mut query: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM devices WHERE TRUE"));
    if let Some(search) = &filter.search {
        // Escape LIKE's wildcards in the input: it is a plain substring.
        let pattern = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query
            .push(" AND urn_key ILIKE ")
            .push_bind(format!("%{pattern}%"));
    }
    if let Some(kind) = &filter.kind {
        query.push(" AND kind = ").push_bind(kind.clone());
    }
    if let Some(after) = filter.after {
        query.push(" AND id > ").push_bind(after);
    }
    query.push(" ORDER BY id LIMIT ").push_bind(filter.limit);
    query.build_query_as().fetch_all(pool).await
}

/// The device with this normalised URN key (`senml::device_key`), if data of it was ever
/// stored: the one lookup of a device by its key, for the API, the outbox and filters.
pub async fn find(pool: &PgPool, urn_key: &str) -> Result<Option<DeviceRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM devices WHERE urn_key = $1"
    )))
    .bind(urn_key)
    .fetch_optional(pool)
    .await
}

/// The newest measurement of one name of a device.
#[derive(Debug, sqlx::FromRow)]
pub struct LatestRow {
    pub name: String,
    pub time: DateTime<Utc>,
    pub unit: Option<String>,
    #[sqlx(flatten)]
    pub stored: StoredValue,
}

/// The newest value of every measurement name of a device: one primary-key range read.
pub async fn latest(pool: &PgPool, device_id: i64) -> Result<Vec<LatestRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, time, unit, value, string_value, string_escaped, bool_value, data_value, sum \
         FROM latest_values WHERE device_id = $1 ORDER BY name",
    )
    .bind(device_id)
    .fetch_all(pool)
    .await
}
