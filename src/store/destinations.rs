//! The `destinations` table: one row per KPN Things destination, secrets sealed.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::sealed_secrets;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DestinationRow {
    pub id: Uuid,
    pub plug: Option<Uuid>,
    pub name: String,
    pub secret_sealed: Vec<u8>,
    pub previous_sealed: Option<Vec<u8>>,
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub response_code: i16,
    pub required_headers: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, plug, name, secret_sealed, previous_sealed, previous_expires_at, \
                       response_code, required_headers, created_at";

pub struct NewDestination {
    pub id: Uuid,
    pub plug: Option<Uuid>,
    pub name: String,
    pub secret_sealed: Vec<u8>,
    pub response_code: u16,
    pub required_headers: BTreeMap<String, String>,
}

/// Every destination that is not removed, oldest first.
pub async fn list_active(pool: &PgPool) -> Result<Vec<DestinationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM destinations WHERE removed_at IS NULL ORDER BY created_at, id"
    )))
    .fetch_all(pool)
    .await
}

/// Finds an active destination by plug UUID or, failing that, by name.
pub async fn find(
    pool: &PgPool,
    plug_or_name: &str,
) -> Result<Option<DestinationRow>, sqlx::Error> {
    let plug = Uuid::try_parse(plug_or_name).ok();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM destinations WHERE removed_at IS NULL AND (plug = $1 OR name = $2) \
         ORDER BY (plug = $1) DESC NULLS LAST LIMIT 1"
    )))
    .bind(plug)
    .bind(plug_or_name)
    .fetch_optional(pool)
    .await
}

pub async fn insert(pool: &PgPool, new: &NewDestination) -> Result<DestinationRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO destinations (id, plug, name, secret_sealed, response_code, required_headers) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.plug)
    .bind(&new.name)
    .bind(&new.secret_sealed)
    .bind(new.response_code as i16)
    .bind(Json(&new.required_headers))
    .fetch_one(pool)
    .await
}

/// Makes `secret_sealed` the current secret; the old one stays valid for `overlap`.
pub async fn rotate(
    pool: &PgPool,
    id: Uuid,
    secret_sealed: &[u8],
    overlap: Duration,
) -> Result<Option<DestinationRow>, sqlx::Error> {
    sealed_secrets::rotate(pool, "destinations", COLUMNS, id, secret_sealed, overlap).await
}

/// Marks a destination removed and forgets its secrets; its messages stay.
pub async fn remove(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sealed_secrets::remove(pool, "destinations", id).await
}

/// Binds a pending destination to the plug of its first verified delivery. Returns false if
/// another delivery bound it first (to this or another plug).
pub async fn bind_plug<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    plug: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE destinations SET plug = $2 WHERE id = $1 AND plug IS NULL AND removed_at IS NULL",
    )
    .bind(id)
    .bind(plug)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The name of a removed destination that had this plug, newest removal first.
pub async fn removed_with_plug(pool: &PgPool, plug: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT name FROM destinations WHERE plug = $1 AND removed_at IS NOT NULL \
         ORDER BY removed_at DESC LIMIT 1",
    )
    .bind(plug)
    .fetch_optional(pool)
    .await
}
