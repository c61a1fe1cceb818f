//! Campaigns and their per-device downloads (`fota_campaigns`, `fota_targets`): start,
//! status, cancel, what the file server reads per request, the batched progress writes and
//! the timeout sweep. What happens inside an uplink's transaction is `store::fota_answers`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The states a device is in while its campaign still waits for it.
pub const OPEN_STATES: &str = "('pending', 'notified', 'downloading', 'downloaded')";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CampaignRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub firmware_version: String,
    pub base_url: String,
    pub version_name: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

const CAMPAIGN_COLUMNS: &str =
    "id, name, firmware_version, base_url, version_name, created_at, cancelled_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetRow {
    pub id: Uuid,
    pub campaign_id: Uuid,
    pub urn: String,
    pub state: String,
    pub reported_version: Option<String>,
    pub failure: Option<String>,
    pub bytes_served: i64,
    pub parts: i32,
    pub last_part_at: Option<DateTime<Utc>>,
    pub pending_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub downloading_at: Option<DateTime<Utc>>,
    pub downloaded_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

const TARGET_COLUMNS: &str = "id, campaign_id, urn, state, reported_version, failure, \
     bytes_served, parts, last_part_at, pending_at, notified_at, downloading_at, \
     downloaded_at, updated_at, failed_at, cancelled_at";

pub struct NewCampaign<'a> {
    pub id: Uuid,
    pub name: Option<&'a str>,
    pub firmware_id: Uuid,
    pub firmware_version: &'a str,
    pub base_url: &'a str,
    pub version_name: &'a str,
    pub targets: Vec<NewTarget>,
}

pub struct NewTarget {
    pub id: Uuid,
    pub device_key_id: Uuid,
    pub urn: String,
    pub token_hash: [u8; 32],
}

/// Why a campaign did not start.
#[derive(Debug)]
pub enum StartRefused {
    /// These devices are already in a campaign that is not finished.
    Busy(Vec<String>),
    /// The image was removed while the campaign was being started.
    FirmwareGone,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StartRefused {
    fn from(error: sqlx::Error) -> Self {
        StartRefused::Database(error)
    }
}

/// Starts a campaign in one transaction: the campaign, one `pending` target per device, and
/// `updated` at once for a device whose latest reported version already is the desired one.
pub async fn start(pool: &PgPool, new: &NewCampaign<'_>) -> Result<CampaignRow, StartRefused> {
    let mut tx = pool.begin().await?;
    // Held until the campaign is committed: a removal of the image waits for it, then sees
    // the campaign (`firmware::remove` checks in a statement of its own after its lock).
    let present: Option<i32> = sqlx::query_scalar("SELECT 1 FROM firmware WHERE id = $1 FOR SHARE")
        .bind(new.firmware_id)
        .fetch_optional(&mut *tx)
        .await?;
    if present.is_none() {
        return Err(StartRefused::FirmwareGone);
    }
    let keys: Vec<Uuid> = new.targets.iter().map(|t| t.device_key_id).collect();
    let busy: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT urn FROM fota_targets WHERE device_key_id = ANY($1) AND state IN {OPEN_STATES} \
         ORDER BY urn"
    )))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    if !busy.is_empty() {
        return Err(StartRefused::Busy(busy));
    }
    let campaign: CampaignRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO fota_campaigns (id, name, firmware_id, firmware_version, base_url, \
                                     version_name) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CAMPAIGN_COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.name)
    .bind(new.firmware_id)
    .bind(new.firmware_version)
    .bind(new.base_url)
    .bind(new.version_name)
    .fetch_one(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = new.targets.iter().map(|t| t.id).collect();
    let urns: Vec<&str> = new.targets.iter().map(|t| t.urn.as_str()).collect();
    let hashes: Vec<&[u8]> = new.targets.iter().map(|t| &t.token_hash[..]).collect();
    let inserted = sqlx::query(
        "INSERT INTO fota_targets (id, campaign_id, device_key_id, urn, token_hash, state) \
         SELECT i, $1, k, u, h, 'pending' \
         FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::bytea[]) AS x(i, k, u, h)",
    )
    .bind(new.id)
    .bind(&ids)
    .bind(&keys)
    .bind(&urns)
    .bind(&hashes)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        // A concurrent start took one of the devices first.
        if e.as_database_error()
            .is_some_and(|d| d.is_unique_violation())
        {
            return Err(StartRefused::Busy(Vec::new()));
        }
        return Err(e.into());
    }
    sqlx::query(
        "UPDATE fota_targets t SET state = 'updated', updated_at = now(), progress_at = now(), \
             reported_version = lv.string_value \
         FROM device_keys k \
         JOIN devices d ON d.urn_key = k.urn_key \
         JOIN latest_values lv ON lv.device_id = d.id AND lv.name = $2 \
         WHERE t.campaign_id = $1 AND k.id = t.device_key_id AND lv.string_value = $3 \
           AND NOT lv.string_escaped IS TRUE",
    )
    .bind(new.id)
    .bind(new.version_name)
    .bind(new.firmware_version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(campaign)
}

pub async fn campaigns(pool: &PgPool) -> Result<Vec<CampaignRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM fota_campaigns ORDER BY created_at DESC, id"
    )))
    .fetch_all(pool)
    .await
}

pub async fn campaign(pool: &PgPool, id: Uuid) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM fota_campaigns WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The devices of the campaigns `ids`, by URN.
pub async fn targets(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<TargetRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM fota_targets WHERE campaign_id = ANY($1) ORDER BY urn"
    )))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Cancels a campaign: every device not yet `updated` (nor `failed`) becomes `cancelled`,
/// so a notification not yet sent never will be. Returns false for an unknown campaign.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE fota_campaigns SET cancelled_at = COALESCE(cancelled_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE fota_targets SET state = 'cancelled', cancelled_at = now(), progress_at = now() \
         WHERE campaign_id = $1 AND state IN {OPEN_STATES}"
    )))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(found)
}

/// What the file server needs of a download, read once per request by primary key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Download {
    pub token_hash: Vec<u8>,
    pub state: String,
    pub parts: i32,
    /// `None` once the image was removed (its campaign being finished).
    pub firmware_id: Option<Uuid>,
    pub cancelled: bool,
}

pub async fn download(pool: &PgPool, id: Uuid) -> Result<Option<Download>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.token_hash, t.state, t.parts, c.firmware_id, \
                c.cancelled_at IS NOT NULL AS cancelled \
         FROM fota_targets t JOIN fota_campaigns c ON c.id = t.campaign_id WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Progress of one download gathered in memory since the last write.
#[derive(Debug, Clone)]
pub struct ProgressDelta {
    pub id: Uuid,
    pub parts: i32,
    pub bytes: i64,
    /// The byte ranges served, as a multirange literal (`{[0,256),[512,768)}`).
    pub ranges: String,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Writes the progress of many downloads in one statement: counts, covered bytes, and the
/// transitions to `downloading` (first part) and `downloaded` (every byte served once).
/// Coverage is judged on the row as updated, not on the statement's snapshot: two replicas
/// flushing the two halves of one image at once must still end `downloaded`.
pub async fn add_progress(pool: &PgPool, deltas: &[ProgressDelta]) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    // Sorted ids: two processes writing the same downloads lock them in one order.
    let mut deltas = deltas.to_vec();
    deltas.sort_by_key(|d| d.id);
    let ids: Vec<Uuid> = deltas.iter().map(|d| d.id).collect();
    let parts: Vec<i32> = deltas.iter().map(|d| d.parts).collect();
    let bytes: Vec<i64> = deltas.iter().map(|d| d.bytes).collect();
    let ranges: Vec<&str> = deltas.iter().map(|d| d.ranges.as_str()).collect();
    let first: Vec<DateTime<Utc>> = deltas.iter().map(|d| d.first_at).collect();
    let last: Vec<DateTime<Utc>> = deltas.iter().map(|d| d.last_at).collect();
    sqlx::query(
        "WITH u AS ( \
             SELECT x.*, f.size \
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::text[], $5::timestamptz[], \
                         $6::timestamptz[]) AS x(id, p, b, r, f0, l) \
             JOIN fota_targets t ON t.id = x.id \
             JOIN fota_campaigns c ON c.id = t.campaign_id \
             JOIN firmware f ON f.id = c.firmware_id) \
         UPDATE fota_targets t SET \
             parts = t.parts + u.p, \
             bytes_served = t.bytes_served + u.b, \
             covered = t.covered + u.r::int8multirange, \
             last_part_at = GREATEST(t.last_part_at, u.l), \
             progress_at = GREATEST(t.progress_at, u.l), \
             state = CASE WHEN t.state NOT IN ('pending', 'notified', 'downloading') THEN t.state \
                          WHEN (t.covered + u.r::int8multirange) @> int8range(0, u.size) \
                              THEN 'downloaded' ELSE 'downloading' END, \
             downloading_at = CASE WHEN t.state IN ('pending', 'notified') \
                                   THEN COALESCE(t.downloading_at, u.f0) \
                                   ELSE t.downloading_at END, \
             downloaded_at = CASE WHEN t.state IN ('pending', 'notified', 'downloading') \
                                       AND (t.covered + u.r::int8multirange) @> int8range(0, u.size) \
                                   THEN u.l ELSE t.downloaded_at END \
         FROM u WHERE t.id = u.id",
    )
    .bind(&ids)
    .bind(&parts)
    .bind(&bytes)
    .bind(&ranges)
    .bind(&first)
    .bind(&last)
    .execute(pool)
    .await?;
    Ok(())
}

/// Devices that made no progress (no transition, no part served) for `timeout` become
/// `failed`, so that a silent device cannot keep its campaign unfinished. Returns how many.
pub async fn fail_stalled(pool: &PgPool, timeout: std::time::Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE fota_targets SET state = 'failed', failed_at = now(), progress_at = now(), \
             failure = 'no progress within ' || $2 \
         WHERE state IN {OPEN_STATES} AND progress_at < now() - make_interval(secs => $1)"
    )))
    .bind(timeout.as_secs_f64())
    .bind(humantime::format_duration(timeout).to_string())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
