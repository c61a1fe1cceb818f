//! The `console_sessions` table: console sign-ins, each an API key exchanged for a cookie.
//!
//! Only the SHA-256 of the cookie is stored, so a leaked table opens no session. A session is
//! found only through a key that is still live, so revoking the key ends its sessions at once.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A live session: the scopes of its key and the CSRF token its page must send back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub scopes: Vec<String>,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// Opens a session for the live key with `key_hash`; `None` when there is no such key.
/// Expired sessions are deleted on the way, so the table holds only what can still be used.
pub async fn create(
    pool: &PgPool,
    key_hash: &[u8],
    token_hash: &[u8],
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query_as(
        "WITH k AS (SELECT id, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL), \
              s AS (INSERT INTO console_sessions (token_hash, api_key_id, csrf, expires_at) \
                    SELECT $2, id, $3, $4 FROM k RETURNING csrf, expires_at) \
         SELECT k.scopes, s.csrf, s.expires_at FROM k, s",
    )
    .bind(key_hash)
    .bind(token_hash)
    .bind(csrf)
    .bind(expires_at)
    .fetch_optional(pool)
    .await
}

/// The session of this cookie hash, if it has not expired and its key is not revoked.
pub async fn find(pool: &PgPool, token_hash: &[u8]) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.scopes, s.csrf, s.expires_at FROM console_sessions s \
         JOIN api_keys k ON k.id = s.api_key_id AND k.revoked_at IS NULL \
         WHERE s.token_hash = $1 AND s.expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}

/// Ends a session (signing out).
pub async fn delete(pool: &PgPool, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}
