//! Monthly partitions of `measurements`: created ahead of time, dropped whole for retention.
//!
//! Rows whose time falls outside every monthly partition (a device clock years off) land in
//! the DEFAULT partition. Creating a month that the DEFAULT partition already has rows for
//! would fail, so those rows are moved into the new partition in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sqlx::PgPool;

/// How many months beyond the current one always exist.
pub const MONTHS_AHEAD: u32 = 2;

/// First instant of the month `offset` months after the month of `t`.
fn month_start(t: DateTime<Utc>, offset: i32) -> DateTime<Utc> {
    let months = t.year() * 12 + t.month0() as i32 + offset;
    let date = NaiveDate::from_ymd_opt(months.div_euclid(12), months.rem_euclid(12) as u32 + 1, 1)
        .expect("the first of a month is a valid date");
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

fn partition_name(start: DateTime<Utc>) -> String {
    format!("measurements_y{:04}m{:02}", start.year(), start.month())
}

/// Makes sure the partitions from `from`'s month through `MONTHS_AHEAD` months after `now`
/// exist. Returns how many were created.
pub async fn ensure(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let mut created = 0;
    for offset in 0..=MONTHS_AHEAD as i32 {
        let start = month_start(now, offset);
        if create_month(pool, start).await? {
            created += 1;
        }
    }
    Ok(created)
}

async fn create_month(pool: &PgPool, start: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let name = partition_name(start);
    let end = month_start(start, 1);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(pool)
        .await?;
    if exists {
        return Ok(false);
    }
    let mut tx = pool.begin().await?;
    // Serialise partition management across processes.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('things_measurements_partitions'))")
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Ok(false);
    }
    let (from, to) = (start.to_rfc3339(), end.to_rfc3339());
    // Measurements have no foreign keys, so ATTACH locks only the partitioned table (in a
    // mode ingest's inserts do not conflict with), the new table and the DEFAULT partition,
    // which is locked first. Ingest into the DEFAULT partition pauses for the moment this
    // takes; it happens once a month.
    let sql = format!(
        "LOCK TABLE measurements_default IN ACCESS EXCLUSIVE MODE; \
         CREATE TABLE {name} (LIKE measurements INCLUDING DEFAULTS); \
         WITH moved AS (DELETE FROM measurements_default WHERE time >= '{from}' AND time < '{to}' RETURNING *) \
         INSERT INTO {name} SELECT * FROM moved; \
         ALTER TABLE measurements ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}');"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(partition = %name, "created measurements partition");
    Ok(true)
}

/// Drops every monthly partition that ends before `now - retention`. Returns their names.
pub async fn drop_expired(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    let retention = chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    let Some(cutoff) = now.checked_sub_signed(retention) else {
        return Ok(Vec::new());
    };
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'measurements' AND c.relname ~ '^measurements_y[0-9]{4}m[0-9]{2}$' \
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for name in partitions {
        let (Ok(year), Ok(month)) = (name[14..18].parse::<i32>(), name[19..21].parse::<u32>())
        else {
            continue;
        };
        let Some(start) = NaiveDate::from_ymd_opt(year, month, 1) else {
            continue;
        };
        let end = month_start(
            Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).expect("midnight")),
            1,
        );
        if end <= cutoff {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                .execute(pool)
                .await?;
            tracing::info!(partition = %name, "dropped measurements partition past retention");
            dropped.push(name);
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let t = Utc.with_ymd_and_hms(2024, 12, 15, 10, 0, 0).unwrap();
        assert_eq!(
            month_start(t, 0),
            Utc.with_ymd_and_hms(2024, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            month_start(t, 1),
            Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            month_start(t, -12),
            Utc.with_ymd_and_hms(2023, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(partition_name(month_start(t, 1)), "measurements_y2025m01");
    }
}
