//! Time buckets of a device's series (`date_bin`), for charts.
//!
//! Every query here finds the device's series of the requested names (one name may have
//! several, one per unit) and reads the `(series_id, time)` index over exactly the requested
//! range, so its cost follows the number of points in the range, not the table size.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

/// How the values in one bucket become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
}

impl Aggregate {
    pub const ALL: [Aggregate; 7] = [
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Sum,
        Aggregate::Count,
        Aggregate::First,
        Aggregate::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
            Aggregate::First => "first",
            Aggregate::Last => "last",
        }
    }

    pub fn parse(text: &str) -> Option<Aggregate> {
        Aggregate::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The SQL aggregate over one bucket. Only numeric values take part, except in `count`,
    /// which counts every record (a string or boolean reading is a reading too).
    fn sql(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg(m.value)",
            Aggregate::Min => "min(m.value)",
            Aggregate::Max => "max(m.value)",
            Aggregate::Sum => "sum(m.value)",
            Aggregate::Count => "count(*)::float8",
            Aggregate::First => {
                "(array_agg(m.value ORDER BY m.time, m.id) FILTER (WHERE m.value IS NOT NULL))[1]"
            }
            Aggregate::Last => {
                "(array_agg(m.value ORDER BY m.time DESC, m.id DESC) FILTER (WHERE m.value IS NOT NULL))[1]"
            }
        }
    }
}

/// Bucket starts and their aggregated values, in time order.
pub type Buckets = Vec<(DateTime<Utc>, Option<f64>)>;

pub struct SeriesQuery<'a> {
    pub device_id: i64,
    pub names: &'a [String],
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive.
    pub to: DateTime<Utc>,
    pub every: TimeDelta,
    pub aggregate: Aggregate,
}

/// Aggregated value per (name, bucket start); buckets without records are absent.
///
/// Buckets start at the Unix epoch plus a whole number of `every`, so that the same `every`
/// always gives the same boundaries (midnight UTC, whole hours, ...) whatever the range.
pub async fn buckets(
    pool: &PgPool,
    query: &SeriesQuery<'_>,
) -> Result<HashMap<String, Buckets>, sqlx::Error> {
    let sql = format!(
        "SELECT s.name, date_bin($5, m.time, TIMESTAMPTZ 'epoch') AS bucket, {} AS value \
         FROM series s JOIN measurements m ON m.series_id = s.id \
         WHERE s.device_id = $1 AND s.name = ANY($2) AND m.time >= $3 AND m.time < $4 \
         GROUP BY s.name, bucket ORDER BY s.name, bucket",
        query.aggregate.sql()
    );
    let rows: Vec<(String, DateTime<Utc>, Option<f64>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.device_id)
        .bind(query.names)
        .bind(query.from)
        .bind(query.to)
        .bind(query.every)
        .fetch_all(pool)
        .await?;
    let mut by_name: HashMap<String, Buckets> = HashMap::new();
    for (name, bucket, value) in rows {
        by_name.entry(name).or_default().push((bucket, value));
    }
    Ok(by_name)
}

/// The last numeric value of each name before `before`, to carry into the first empty
/// buckets when filling with the previous value. One index probe per series.
pub async fn values_before(
    pool: &PgPool,
    device_id: i64,
    names: &[String],
    before: DateTime<Utc>,
) -> Result<HashMap<String, f64>, sqlx::Error> {
    let rows: Vec<(String, Option<f64>)> = sqlx::query_as(
        "SELECT n, (SELECT l.value FROM series s CROSS JOIN LATERAL \
                        (SELECT m.value, m.time, m.id FROM measurements m \
                         WHERE m.series_id = s.id AND m.time < $3 AND m.value IS NOT NULL \
                         ORDER BY m.time DESC, m.id DESC LIMIT 1) l \
                    WHERE s.device_id = $1 AND s.name = n \
                    ORDER BY l.time DESC, l.id DESC LIMIT 1) \
         FROM UNNEST($2::text[]) AS n",
    )
    .bind(device_id)
    .bind(names)
    .bind(before)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect())
}

/// The unit of each name, from the latest values.
pub async fn units(
    pool: &PgPool,
    device_id: i64,
    names: &[String],
) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, unit FROM latest_values WHERE device_id = $1 AND name = ANY($2)",
    )
    .bind(device_id)
    .bind(names)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, unit)| unit.map(|u| (name, u)))
        .collect())
}
