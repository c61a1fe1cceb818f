//! Reading accepted deliveries (messages) back: listing and the raw body.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub plug: Option<Uuid>,
    pub destination: Option<String>,
    pub received_at: DateTime<Utc>,
    pub device: Option<String>,
    pub status: String,
    pub decode_error: Option<String>,
    pub record_count: i32,
    pub headers: Json<BTreeMap<String, String>>,
    pub door: String,
}

#[derive(Debug, Default)]
pub struct MessageFilter {
    pub status: Option<&'static str>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, i64)>,
    pub limit: i64,
}

/// Up to `limit` messages matching `filter`, newest first by (received_at, id).
pub async fn list(pool: &PgPool, filter: &MessageFilter) -> Result<Vec<MessageRow>, sqlx::Error> {
    let mut query = select(filter);
    query.push(" LIMIT ").push_bind(filter.limit);
    query.build_query_as().fetch_all(pool).await
}

/// The query for messages matching `filter`, newest first, without a limit.
pub fn select(filter: &MessageFilter) -> QueryBuilder<Postgres> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT m.id, x.plug, x.name AS destination, m.received_at, d.urn AS device, m.status, \
                m.decode_error, m.record_count, m.headers, m.door \
         FROM messages m LEFT JOIN destinations x ON x.id = m.destination_id \
         LEFT JOIN devices d ON d.id = m.device_id WHERE TRUE",
    );
    if let Some(status) = filter.status {
        query.push(" AND m.status = ").push_bind(status);
    }
    if let Some(from) = filter.from {
        query.push(" AND m.received_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND m.received_at < ").push_bind(to);
    }
    if let Some((time, id)) = filter.after {
        query
            .push(" AND (m.received_at, m.id) < (")
            .push_bind(time)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    query.push(" ORDER BY m.received_at DESC, m.id DESC");
    query
}

/// The body of a message exactly as it was received.
pub async fn raw_body(pool: &PgPool, id: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM messages WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
