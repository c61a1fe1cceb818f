//! Reading measurements back, newest first, with keyset pagination.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MeasurementRow {
    pub id: i64,
    pub device: String,
    pub name: String,
    pub unit: Option<String>,
    pub time: DateTime<Utc>,
    #[sqlx(flatten)]
    pub stored: StoredValue,
}

/// The value columns of a measurement, as `measurements` and `latest_values` both store
/// them: one of number, string, boolean or data, or only a sum.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredValue {
    pub value: Option<f64>,
    /// As stored: see [`StoredValue::string`].
    pub string_value: Option<String>,
    pub string_escaped: Option<bool>,
    pub bool_value: Option<bool>,
    pub data_value: Option<Vec<u8>>,
    pub sum: Option<f64>,
}

impl StoredValue {
    /// The string value exactly as received.
    pub fn string(&mut self) -> Option<String> {
        let text = self.string_value.take()?;
        Some(super::stored_text::from_storage(text, self.string_escaped))
    }
}

#[derive(Debug, Default)]
pub struct MeasurementFilter {
    pub device_id: Option<i64>,
    pub name: Option<String>,
    /// Inclusive lower bound on time.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on time.
    pub to: Option<DateTime<Utc>>,
    /// Continue strictly after this (time, id), in descending order.
    pub after: Option<(DateTime<Utc>, i64)>,
    pub limit: i64,
}

/// The columns of a [`MeasurementRow`], for `m` joined with its series `s` and device `d`.
pub(crate) const ROW_COLUMNS: &str = "m.id, d.urn AS device, s.name, s.unit, m.time, m.value, \
     m.string_value, m.string_escaped, m.bool_value, m.data_value, m.sum";

/// The first time window the newest measurements are looked for in; each further one is
/// [`WIDER`] times longer, until the window reaches `from` (or has no lower bound).
const FIRST_WINDOW_SECONDS: i64 = 3600;
const WIDER: i32 = 16;
/// Windows tried before the last, unbounded one.
const MAX_WINDOWS: usize = 6;

/// Up to `limit` measurements matching `filter`, ordered by (time, id) descending.
///
/// For one device: the newest `limit` of each of its series (one backward range of the
/// `(series_id, time)` index each), merged. Across devices there is no B-tree on time (it
/// would cost about a third of the storage); the BRIN index on time finds the rows of a time
/// window instead, so the newest rows are looked for in windows growing backwards from the
/// newest delivery (or the upper bound asked for) until one holds `limit` rows. A window's
/// lower bound only narrows the search, never the answer: the newest `limit` rows inside a
/// window that holds at least `limit` of them are the newest of all, since every row outside
/// it is older.
pub async fn list(
    pool: &PgPool,
    filter: &MeasurementFilter,
) -> Result<Vec<MeasurementRow>, sqlx::Error> {
    if let Some(device_id) = filter.device_id {
        let mut query = by_device(filter, device_id, Some(filter.limit));
        return query.build_query_as().fetch_all(pool).await;
    }
    let upper = [filter.to, filter.after.map(|(time, _)| time)]
        .into_iter()
        .flatten()
        .min();
    let newest: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT max(received_at) FROM messages")
        .fetch_one(pool)
        .await?;
    let anchor = match (upper, newest) {
        (Some(upper), Some(newest)) => upper.min(newest),
        (upper, newest) => upper.or(newest).unwrap_or_else(Utc::now),
    };
    let mut window = TimeDelta::seconds(FIRST_WINDOW_SECONDS);
    for attempt in 0..=MAX_WINDOWS {
        let lower = anchor
            .checked_sub_signed(window)
            .filter(|lower| attempt < MAX_WINDOWS && filter.from.is_none_or(|from| *lower > from));
        let mut query = newest_across_devices(filter, lower.or(filter.from));
        let rows: Vec<MeasurementRow> = query.build_query_as().fetch_all(pool).await?;
        if rows.len() as i64 >= filter.limit || lower.is_none() {
            return Ok(rows);
        }
        window = window.checked_mul(WIDER).unwrap_or(TimeDelta::MAX);
    }
    Ok(Vec::new())
}

/// The query for measurements matching `filter`, ordered by (time, id) descending, without a
/// limit (an export streams all of it).
pub fn select(filter: &MeasurementFilter) -> QueryBuilder<Postgres> {
    match filter.device_id {
        Some(device_id) => by_device(filter, device_id, None),
        None => across_devices(filter, filter.from),
    }
}

/// The newest `filter.limit` measurements of every device matching `filter`, from `from` on.
/// Without a name, the rows are picked before they are joined to their series and devices.
fn newest_across_devices(
    filter: &MeasurementFilter,
    from: Option<DateTime<Utc>>,
) -> QueryBuilder<Postgres> {
    if filter.name.is_some() {
        let mut query = across_devices(filter, from);
        query.push(" LIMIT ").push_bind(filter.limit);
        return query;
    }
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {ROW_COLUMNS} FROM (SELECT * FROM measurements m WHERE TRUE"
    ));
    time_conditions(&mut query, filter, from);
    query
        .push(" ORDER BY m.time DESC, m.id DESC LIMIT ")
        .push_bind(filter.limit)
        .push(
            ") m JOIN series s ON s.id = m.series_id JOIN devices d ON d.id = s.device_id \
             ORDER BY m.time DESC, m.id DESC",
        );
    query
}

/// Measurements of every device matching `filter`, from `from` on.
fn across_devices(
    filter: &MeasurementFilter,
    from: Option<DateTime<Utc>>,
) -> QueryBuilder<Postgres> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {ROW_COLUMNS} FROM measurements m JOIN series s ON s.id = m.series_id \
         JOIN devices d ON d.id = s.device_id WHERE TRUE"
    ));
    if let Some(name) = &filter.name {
        query.push(" AND s.name = ").push_bind(name.clone());
    }
    time_conditions(&mut query, filter, from);
    query.push(" ORDER BY m.time DESC, m.id DESC");
    query
}

/// Measurements of one device's series matching `filter`: with a limit, the newest `limit`
/// of each series, merged.
fn by_device(
    filter: &MeasurementFilter,
    device_id: i64,
    limit: Option<i64>,
) -> QueryBuilder<Postgres> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {ROW_COLUMNS} FROM series s JOIN devices d ON d.id = s.device_id \
         CROSS JOIN LATERAL (SELECT * FROM measurements m WHERE m.series_id = s.id"
    ));
    time_conditions(&mut query, filter, filter.from);
    if let Some(limit) = limit {
        query
            .push(" ORDER BY m.time DESC, m.id DESC LIMIT ")
            .push_bind(limit);
    }
    query.push(") m WHERE s.device_id = ").push_bind(device_id);
    if let Some(name) = &filter.name {
        query.push(" AND s.name = ").push_bind(name.clone());
    }
    query.push(" ORDER BY m.time DESC, m.id DESC");
    if let Some(limit) = limit {
        query.push(" LIMIT ").push_bind(limit);
    }
    query
}

/// `from`, `filter.to` and the cursor, on `m`. The cursor is spelled out so that its time
/// bound is an index condition.
fn time_conditions(
    query: &mut QueryBuilder<Postgres>,
    filter: &MeasurementFilter,
    from: Option<DateTime<Utc>>,
) {
    if let Some(from) = from {
        query.push(" AND m.time >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND m.time < ").push_bind(to);
    }
    if let Some((time, id)) = filter.after {
        query
            .push(" AND m.time <= ")
            .push_bind(time)
            .push(" AND (m.time < ")
            .push_bind(time)
            .push(" OR m.id < ")
            .push_bind(id)
            .push(")");
    }
}
