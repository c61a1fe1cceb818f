//! Rotation and removal of a row's sealed secrets, shared by every table that keeps a
//! current secret, a previous one with its expiry, and a soft-removal time (`destinations`,
//! `device_keys`): the rules of an overlap are one piece of SQL, not one per table.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// Makes `secret_sealed` the current secret of row `id` in `table`; the old one stays valid
/// for `overlap`. Returns the row (`columns` of it), or `None` when it was removed meanwhile.
pub(super) async fn rotate<T>(
    pool: &PgPool,
    table: &'static str,
    columns: &'static str,
    id: Uuid,
    secret_sealed: &[u8],
    overlap: Duration,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let overlap_micros = i64::try_from(overlap.as_micros()).unwrap_or(i64::MAX);
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET previous_sealed = secret_sealed, \
             previous_expires_at = now() + make_interval(secs => $3::float8 / 1e6), \
             secret_sealed = $2 \
         WHERE id = $1 AND removed_at IS NULL RETURNING {columns}"
    )))
    .bind(id)
    .bind(secret_sealed)
    .bind(overlap_micros as f64)
    .fetch_optional(pool)
    .await
}

/// Marks row `id` of `table` removed and forgets its secrets; what it stored stays.
pub(super) async fn remove(
    pool: &PgPool,
    table: &'static str,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET removed_at = now(), secret_sealed = '\\x'::bytea, \
             previous_sealed = NULL, previous_expires_at = NULL \
         WHERE id = $1 AND removed_at IS NULL"
    )))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
