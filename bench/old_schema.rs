//! The measurement schema before series (migrations 0001 to 0007) and its write path, kept
//! so that one bench run measures the bulk-insert ceiling of both side by side.
//!
//! Devices and messages are written as `store_batch` wrote them then (a device's `last_seen`
//! refreshed when 10 s stale); the rows after them differ: here each measurement carries its device and name, with the four B-trees and
//! the two foreign keys of that schema, and latest values keep their foreign keys.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use things_receiver::senml::{Measurement, Value, device_key, device_kind};

/// What migrations 0001 to 0007 left: the same tables as the new schema minus series, with
/// measurements as they were.
pub async fn migrate(conn: &mut PgConnection) {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 8)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(conn).await.unwrap();
}

/// One delivery as the old path took it.
pub struct Old {
    pub token: [u8; 32],
    pub received_at: DateTime<Utc>,
    pub body: Vec<u8>,
    pub records: Vec<Measurement>,
}

/// The old `store_batch` for deliveries that all resolved, in one transaction.
pub async fn store_batch(conn: &mut PgConnection, destination: uuid::Uuid, batch: &[Old]) {
    let mut tx = sqlx::Connection::begin(conn).await.unwrap();
    let mut devices: BTreeMap<String, &str> = BTreeMap::new();
    for d in batch {
        for r in &d.records {
            devices.entry(device_key(&r.device)).or_insert(&r.device);
        }
    }
    let keys: Vec<&str> = devices.keys().map(String::as_str).collect();
    let urns: Vec<&str> = devices.values().copied().collect();
    let kinds: Vec<&str> = devices.values().map(|u| device_kind(u).as_str()).collect();
    let seen = batch.iter().map(|d| d.received_at).max().unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "WITH new AS ( \
             INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
             SELECT k, u, t, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(k, u, t) \
             ON CONFLICT (urn_key) DO NOTHING RETURNING urn_key, id), \
         refreshed AS ( \
             UPDATE devices SET last_seen = $4 \
             WHERE urn_key = ANY($1) AND last_seen < $4 - interval '10 seconds' \
             RETURNING urn_key, id) \
         SELECT urn_key, id FROM new \
         UNION ALL SELECT urn_key, id FROM devices WHERE urn_key = ANY($1)",
    )
    .bind(&keys)
    .bind(&urns)
    .bind(&kinds)
    .bind(seen)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut ids: HashMap<String, i64> = rows.into_iter().collect();
    // A device the other connection inserted meanwhile is invisible to that statement.
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !ids.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT urn_key, id FROM devices WHERE urn_key = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        ids.extend(rows);
    }
    let device_of = |m: &Measurement| ids[&device_key(&m.device)];

    let n = batch.len();
    let tokens: Vec<&[u8]> = batch.iter().map(|d| &d.token[..]).collect();
    let received: Vec<DateTime<Utc>> = batch.iter().map(|d| d.received_at).collect();
    let bodies: Vec<&[u8]> = batch.iter().map(|d| &d.body[..]).collect();
    let counts: Vec<i32> = batch.iter().map(|d| d.records.len() as i32).collect();
    let message_devices: Vec<i64> = batch.iter().map(|d| device_of(&d.records[0])).collect();
    let messages: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "INSERT INTO messages (destination_id, token, received_at, body, headers, status, record_count, device_id) \
         SELECT $1, t, r, b, '{}'::jsonb, 'stored', c, v \
         FROM UNNEST($2::bytea[], $3::timestamptz[], $4::bytea[], $5::int4[], $6::int8[]) AS u(t, r, b, c, v) \
         ON CONFLICT ON CONSTRAINT messages_delivery_key DO NOTHING RETURNING id, token",
    )
    .bind(destination)
    .bind(&tokens)
    .bind(&received)
    .bind(&bodies)
    .bind(&counts)
    .bind(&message_devices)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(messages.len(), n);
    let message_ids: HashMap<Vec<u8>, i64> = messages.into_iter().map(|(i, t)| (t, i)).collect();

    let mut rows = Columns::default();
    let mut newest: BTreeMap<(i64, &str), (&Measurement, i64)> = BTreeMap::new();
    for d in batch {
        let message = message_ids[&d.token[..]];
        for r in &d.records {
            rows.push(device_of(r), r, message);
            newest
                .entry((device_of(r), r.name.as_str()))
                .and_modify(|(m, id)| {
                    if r.time >= m.time {
                        *m = r;
                        *id = message;
                    }
                })
                .or_insert((r, message));
        }
    }
    rows.execute(&mut tx, INSERT_MEASUREMENTS).await;
    let mut latest = Columns::default();
    for ((device, _), (r, message)) in &newest {
        latest.push(*device, r, *message);
    }
    latest.execute(&mut tx, UPSERT_LATEST).await;
    tx.commit().await.unwrap();
}

#[derive(Default)]
struct Columns<'a> {
    device_id: Vec<i64>,
    time: Vec<DateTime<Utc>>,
    name: Vec<&'a str>,
    unit: Vec<Option<&'a str>>,
    value: Vec<Option<f64>>,
    string_value: Vec<Option<&'a str>>,
    string_escaped: Vec<Option<bool>>,
    bool_value: Vec<Option<bool>>,
    data_value: Vec<Option<&'a [u8]>>,
    sum: Vec<Option<f64>>,
    message_id: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, device_id: i64, m: &'a Measurement, message_id: i64) {
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
        self.string_escaped.push(None);
        self.bool_value.push(b);
        self.data_value.push(d);
        self.sum.push(m.sum);
        self.message_id.push(message_id);
    }

    async fn execute(&self, tx: &mut PgConnection, sql: &'static str) {
        sqlx::query(sql)
            .bind(&self.device_id)
            .bind(&self.time)
            .bind(&self.name)
            .bind(&self.unit)
            .bind(&self.value)
            .bind(&self.string_value)
            .bind(&self.string_escaped)
            .bind(&self.bool_value)
            .bind(&self.data_value)
            .bind(&self.sum)
            .bind(&self.message_id)
            .execute(tx)
            .await
            .unwrap();
    }
}

const INSERT_MEASUREMENTS: &str = "INSERT INTO measurements \
     (device_id, time, name, unit, value, string_value, string_escaped, bool_value, data_value, \
      sum, message_id) \
     SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::text[], $5::float8[], \
                          $6::text[], $7::bool[], $8::bool[], $9::bytea[], $10::float8[], \
                          $11::int8[])";

const UPSERT_LATEST: &str = "INSERT INTO latest_values \
     (device_id, time, name, unit, value, string_value, string_escaped, bool_value, data_value, \
      sum, message_id) \
     SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::text[], $5::float8[], \
                          $6::text[], $7::bool[], $8::bool[], $9::bytea[], $10::float8[], \
                          $11::int8[]) \
     ON CONFLICT (device_id, name) DO UPDATE SET time = EXCLUDED.time, unit = EXCLUDED.unit, \
         value = EXCLUDED.value, string_value = EXCLUDED.string_value, \
         string_escaped = EXCLUDED.string_escaped, bool_value = EXCLUDED.bool_value, \
         data_value = EXCLUDED.data_value, sum = EXCLUDED.sum, message_id = EXCLUDED.message_id \
     WHERE latest_values.time <= EXCLUDED.time";
