//! Reading measurements back, newest first, with keyset pagination.

use chrono::{DateTime, Utc};
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

/// Up to `limit` measurements matching `filter`, ordered by (time, id) descending.
pub async fn list(
    pool: &PgPool,
    filter: &MeasurementFilter,
) -> Result<Vec<MeasurementRow>, sqlx::Error> {
    let mut query = select(filter);
    query.push(" LIMIT ").push_bind(filter.limit);
    query.build_query_as().fetch_all(pool).await
}

/// The query for measurements matching `filter`, ordered by (time, id) descending, without a
/// limit (an export streams all of it).
pub fn select(filter: &MeasurementFilter) -> QueryBuilder<Postgres> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT m.id, d.urn AS device, m.name, m.unit, m.time, m.value, m.string_value, \
                m.string_escaped, m.bool_value, m.data_value, m.sum \
         FROM measurements m JOIN devices d ON d.id = m.device_id WHERE TRUE",
    );
    if let Some(device_id) = filter.device_id {
        query.push(" AND m.device_id = ").push_bind(device_id);
    }
    if let Some(name) = &filter.name {
        query.push(" AND m.name = ").push_bind(name.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND m.time >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND m.time < ").push_bind(to);
    }
    if let Some((time, id)) = filter.after {
        query
            .push(" AND (m.time, m.id) < (")
            .push_bind(time)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    query.push(" ORDER BY m.time DESC, m.id DESC");
    query
}
