//! The `api_keys` table. Only a SHA-256 of each key is stored: keys are long random strings,
//! so a fast hash is enough to make a leaked table useless, and lookup stays one index probe.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// An API key as shown to people: never the key.
#[derive(Debug, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ApiKey)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    pool: &PgPool,
    name: &str,
    key_hash: &[u8],
    scopes: &[String],
) -> Result<ApiKeyRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, scopes, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(key_hash)
    .bind(scopes)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys \
         ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
}

pub async fn revoke(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The hashes of every live key: one query however many keys an address over the
/// failed-authentication limit tries.
pub async fn live_hashes(pool: &PgPool) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE revoked_at IS NULL")
        .fetch_all(pool)
        .await
}

/// The scopes of the live key with this hash, recording its use (at most once a minute, so
/// that reads do not turn into a write per request).
pub async fn authenticate(
    pool: &PgPool,
    key_hash: &[u8],
) -> Result<Option<Vec<String>>, sqlx::Error> {
    let row: Option<(Uuid, Vec<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, scopes, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await?;
    let Some((id, scopes, last_used)) = row else {
        return Ok(None);
    };
    if last_used.is_none_or(|t| Utc::now() - t > chrono::TimeDelta::minutes(1)) {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    }
    Ok(Some(scopes))
}
