//! One message with what the console's delivery page shows beside it: the body and its
//! receipt, the downlink or firmware notice that rode on its answer.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::messages::MessageRow;

#[derive(Debug, sqlx::FromRow)]
pub struct MessageDetail {
    #[sqlx(flatten)]
    pub row: MessageRow,
    pub body: Vec<u8>,
}

/// The downlink a device's answer carried.
#[derive(Debug, sqlx::FromRow)]
pub struct RiddenDownlink {
    pub id: Uuid,
    pub status: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// The firmware notification a device's answer carried.
#[derive(Debug, sqlx::FromRow)]
pub struct RiddenFota {
    pub campaign: Uuid,
    pub target: Uuid,
    pub state: String,
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<MessageDetail>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.id, x.plug, x.name AS destination, m.received_at, \
                coalesce(d.urn, k.urn) AS device, m.status, m.decode_error, m.record_count, \
                m.headers, m.door, m.body \
         FROM messages m LEFT JOIN destinations x ON x.id = m.destination_id \
         LEFT JOIN devices d ON d.id = m.device_id \
         LEFT JOIN device_keys k ON k.id = m.device_key_id WHERE m.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn downlink(
    pool: &PgPool,
    message_id: i64,
) -> Result<Option<RiddenDownlink>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, body, created_at FROM downlinks WHERE message_id = $1 \
         ORDER BY seq LIMIT 1",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await
}

pub async fn fota(pool: &PgPool, message_id: i64) -> Result<Option<RiddenFota>, sqlx::Error> {
    sqlx::query_as(
        "SELECT campaign_id AS campaign, id AS target, state FROM fota_targets \
         WHERE notified_message_id = $1 LIMIT 1",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await
}
