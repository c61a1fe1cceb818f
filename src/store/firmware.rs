//! The `firmware` table: immutable images with their size and digests, shared by every
//! replica (a device may download its parts from any of them).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// An image's description, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FirmwareRow {
    pub id: Uuid,
    pub version: String,
    pub name: Option<String>,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub crc32: i64,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, version, name, size, sha256, crc32, created_at";

pub struct NewFirmware<'a> {
    pub id: Uuid,
    pub version: &'a str,
    pub name: Option<&'a str>,
    pub sha256: [u8; 32],
    pub crc32: u32,
    pub image: &'a [u8],
}

/// Stores an image; the same version twice fails with a unique violation.
pub async fn insert(pool: &PgPool, new: &NewFirmware<'_>) -> Result<FirmwareRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO firmware (id, version, name, size, sha256, crc32, image) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.version)
    .bind(new.name)
    .bind(new.image.len() as i64)
    .bind(&new.sha256[..])
    .bind(i64::from(new.crc32))
    .bind(new.image)
    .fetch_one(pool)
    .await
}

/// Every image, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<FirmwareRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM firmware ORDER BY created_at DESC, version"
    )))
    .fetch_all(pool)
    .await
}

pub async fn get_by_version(
    pool: &PgPool,
    version: &str,
) -> Result<Option<FirmwareRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM firmware WHERE version = $1"
    )))
    .bind(version)
    .fetch_optional(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct WithImage {
    #[sqlx(flatten)]
    row: FirmwareRow,
    image: Vec<u8>,
}

/// The bytes of an image, with its description.
pub async fn image(pool: &PgPool, id: Uuid) -> Result<Option<(FirmwareRow, Vec<u8>)>, sqlx::Error> {
    let found: Option<WithImage> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, image FROM firmware WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|f| (f.row, f.image)))
}

/// What removing a version did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Removed,
    NotFound,
    /// A campaign with devices not yet finished uses it.
    InUse,
}

/// Removes a version unless an unfinished campaign uses it. The image row is locked first,
/// and whether a campaign uses it is asked in a statement of its own after that lock, so a
/// campaign started concurrently (it holds the row `FOR SHARE` until it commits) is seen.
pub async fn remove(pool: &PgPool, version: &str) -> Result<Removed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM firmware WHERE version = $1 FOR UPDATE")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(id) = id else {
        return Ok(Removed::NotFound);
    };
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fota_campaigns c JOIN fota_targets t \
                        ON t.campaign_id = c.id \
                        WHERE c.firmware_id = $1 \
                          AND t.state IN ('pending', 'notified', 'downloading', 'downloaded'))",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if busy {
        return Ok(Removed::InUse);
    }
    sqlx::query("DELETE FROM firmware WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Removed::Removed)
}
