//! Writing one verified delivery: the raw message, its devices, measurements and latest
//! values, all in one transaction, so an answer of success always means all of it is durable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::senml::{Measurement, Value, device_key, device_kind};
use crate::token::Token;

/// A delivery whose token has been verified, ready to store.
pub struct Delivery<'a> {
    pub destination_id: Uuid,
    /// Set when this delivery is the first for a pending destination: bind it to this plug.
    pub bind_plug: Option<Uuid>,
    pub token: Token,
    pub received_at: DateTime<Utc>,
    pub body: &'a [u8],
    pub headers: &'a BTreeMap<String, String>,
    /// The resolved pack, or why it is not a valid SenML pack (then it is quarantined).
    pub decoded: Result<Vec<Measurement>, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored {
        message_id: i64,
    },
    Quarantined {
        message_id: i64,
    },
    /// The same (destination, token) was stored before: nothing was written.
    Duplicate,
}

pub async fn store(pool: &PgPool, delivery: Delivery<'_>) -> Result<StoreOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(plug) = delivery.bind_plug
        && !crate::store::destinations::bind_plug(&mut *tx, delivery.destination_id, plug).await?
    {
        tracing::info!(%plug, "pending destination was bound by a concurrent delivery");
    }

    let (status, decode_error, record_count) = match &delivery.decoded {
        Ok(records) => ("stored", None, records.len() as i32),
        Err(reason) => ("quarantined", Some(reason.as_str()), 0),
    };
    // ON CONFLICT DO NOTHING makes a retry (same token) a no-op, also when the first attempt
    // is still in flight in another transaction: this one waits for it and then sees the row.
    let message_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO messages (destination_id, token, received_at, body, headers, status, decode_error, record_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT ON CONSTRAINT messages_delivery_key DO NOTHING RETURNING id",
    )
    .bind(delivery.destination_id)
    .bind(&delivery.token.0[..])
    .bind(delivery.received_at)
    .bind(delivery.body)
    .bind(sqlx::types::Json(delivery.headers))
    .bind(status)
    .bind(decode_error)
    .bind(record_count)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(message_id) = message_id else {
        tx.commit().await?;
        return Ok(StoreOutcome::Duplicate);
    };

    let outcome = match &delivery.decoded {
        Err(_) => StoreOutcome::Quarantined { message_id },
        Ok(records) if records.is_empty() => StoreOutcome::Stored { message_id },
        Ok(records) => {
            let device_ids = upsert_devices(&mut tx, records, delivery.received_at).await?;
            insert_measurements(&mut tx, records, &device_ids, message_id).await?;
            upsert_latest(&mut tx, records, &device_ids, message_id).await?;
            let first_device = device_ids.get(&device_key(&records[0].device)).copied();
            sqlx::query("UPDATE messages SET device_id = $2 WHERE id = $1")
                .bind(message_id)
                .bind(first_device)
                .execute(&mut *tx)
                .await?;
            StoreOutcome::Stored { message_id }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Inserts unseen devices and bumps `last_seen`; returns device id by normalised key.
///
/// Keys are sorted so that concurrent transactions lock device rows in the same order and
/// cannot deadlock.
async fn upsert_devices(
    tx: &mut sqlx::PgConnection,
    records: &[Measurement],
    seen: DateTime<Utc>,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut devices: BTreeMap<String, &str> = BTreeMap::new();
    for record in records {
        devices
            .entry(device_key(&record.device))
            .or_insert(&record.device);
    }
    let keys: Vec<&str> = devices.keys().map(String::as_str).collect();
    let urns: Vec<&str> = devices.values().copied().collect();
    let kinds: Vec<&str> = devices
        .values()
        .map(|urn| device_kind(urn).as_str())
        .collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
         SELECT k, u, t, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(k, u, t) \
         ON CONFLICT (urn_key) DO UPDATE SET last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen) \
         RETURNING urn_key, id",
    )
    .bind(&keys)
    .bind(&urns)
    .bind(&kinds)
    .bind(seen)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Column vectors for an UNNEST insert of measurement-shaped rows.
#[derive(Default)]
struct Columns<'a> {
    device_id: Vec<i64>,
    time: Vec<DateTime<Utc>>,
    name: Vec<&'a str>,
    unit: Vec<Option<&'a str>>,
    value: Vec<Option<f64>>,
    string_value: Vec<Option<&'a str>>,
    bool_value: Vec<Option<bool>>,
    data_value: Vec<Option<&'a [u8]>>,
    sum: Vec<Option<f64>>,
}

impl<'a> Columns<'a> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            device_id: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            unit: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            string_value: Vec::with_capacity(n),
            bool_value: Vec::with_capacity(n),
            data_value: Vec::with_capacity(n),
            sum: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, device_id: i64, m: &'a Measurement) {
        self.device_id.push(device_id);
        self.time.push(m.time);
        self.name.push(&m.name);
        self.unit.push(m.unit.as_deref());
        let (mut v, mut s, mut b, mut d) = (None, None, None, None);
        match &m.value {
            Some(Value::Number(x)) => v = Some(*x),
            Some(Value::String(x)) => s = Some(x.as_str()),
            Some(Value::Bool(x)) => b = Some(*x),
            Some(Value::Data(x)) => d = Some(x.as_slice()),
            None => {}
        }
        self.value.push(v);
        self.string_value.push(s);
        self.bool_value.push(b);
        self.data_value.push(d);
        self.sum.push(m.sum);
    }

    fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.device_id)
            .bind(&self.time)
            .bind(&self.name)
            .bind(&self.unit)
            .bind(&self.value)
            .bind(&self.string_value)
            .bind(&self.bool_value)
            .bind(&self.data_value)
            .bind(&self.sum)
    }
}

const UNNEST_COLUMNS: &str = "UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::text[], \
     $5::float8[], $6::text[], $7::bool[], $8::bytea[], $9::float8[])";

async fn insert_measurements(
    tx: &mut sqlx::PgConnection,
    records: &[Measurement],
    device_ids: &BTreeMap<String, i64>,
    message_id: i64,
) -> Result<(), sqlx::Error> {
    let mut columns = Columns::with_capacity(records.len());
    for record in records {
        columns.push(device_ids[&device_key(&record.device)], record);
    }
    let sql = format!(
        "INSERT INTO measurements (device_id, time, name, unit, value, string_value, bool_value, data_value, sum, message_id) \
         SELECT *, $10 FROM {UNNEST_COLUMNS}"
    );
    columns
        .bind_to(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Keeps `latest_values` at the newest measurement per (device, name).
///
/// One statement may not touch a row twice, so the newest record per key is picked here
/// first; rows are sorted by key for a stable lock order.
async fn upsert_latest(
    tx: &mut sqlx::PgConnection,
    records: &[Measurement],
    device_ids: &BTreeMap<String, i64>,
    message_id: i64,
) -> Result<(), sqlx::Error> {
    let mut newest: BTreeMap<(i64, &str), &Measurement> = BTreeMap::new();
    for record in records {
        let key = (
            device_ids[&device_key(&record.device)],
            record.name.as_str(),
        );
        newest
            .entry(key)
            .and_modify(|m| {
                if record.time >= m.time {
                    *m = record;
                }
            })
            .or_insert(record);
    }
    let mut columns = Columns::with_capacity(newest.len());
    for ((device_id, _), record) in &newest {
        columns.push(*device_id, record);
    }
    let sql = format!(
        "INSERT INTO latest_values (device_id, time, name, unit, value, string_value, bool_value, data_value, sum, message_id) \
         SELECT *, $10 FROM {UNNEST_COLUMNS} \
         ON CONFLICT (device_id, name) DO UPDATE SET time = EXCLUDED.time, unit = EXCLUDED.unit, \
             value = EXCLUDED.value, string_value = EXCLUDED.string_value, bool_value = EXCLUDED.bool_value, \
             data_value = EXCLUDED.data_value, sum = EXCLUDED.sum, message_id = EXCLUDED.message_id \
         WHERE latest_values.time <= EXCLUDED.time"
    );
    columns
        .bind_to(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
