//! The one statement that writes a batch: its messages, their measurements, the latest values,
//! each device's message counter and `last_seen`, and the two live-stream notifications.
//!
//! Every id it needs is known before it runs (devices and series are found first, mostly in
//! the writer's memory), so a batch in the steady state is this statement alone: one round
//! trip, which `deliveries::store_batch` runs without an explicit transaction when nothing
//! else has to be written with it (the statement is then its own transaction, committed,
//! durably, before its answer arrives). A message that was stored before (a retry) is skipped
//! by the insert, and so are its measurements: the rows are joined to the messages the insert
//! returned.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::senml::{Measurement, Value, device_key};

use super::deliveries::{Delivery, DeliveryKey, MESSAGES_CHANNEL, Sender};
use super::series_write::BatchSeries;
use super::stored_text;

/// Writes the deliveries of `batch` at `indices` (unique in the batch) and returns the ids of
/// the messages it inserted, by delivery key; those stored before are not among them.
pub(super) async fn write(
    conn: &mut PgConnection,
    batch: &[Delivery],
    indices: &[usize],
    device_ids: &HashMap<String, i64>,
    series: &BatchSeries<'_>,
) -> Result<HashMap<DeliveryKey, i64>, sqlx::Error> {
    let messages = Messages::of(batch, indices, device_ids);
    let mut rows = Rows::with_capacity(messages.records);
    for (ordinal, &i) in indices.iter().enumerate() {
        if let Ok(records) = &batch[i].decoded {
            for record in records {
                let device_id = device_ids
                    .get(&device_key(&record.device))
                    .copied()
                    .ok_or(sqlx::Error::RowNotFound)?;
                let series_id = series
                    .id(device_id, record)
                    .ok_or(sqlx::Error::RowNotFound)?;
                rows.push(ordinal as i32 + 1, series_id, device_id, record);
            }
        }
    }
    let v = &rows.values;
    // Each device's counter and `last_seen` are one update of its row: the messages it is
    // the device of, and every device with a record in an inserted message (a pack may carry
    // several), seen at that message's reception. A retry's deliveries are not a sign of
    // life: they insert nothing.
    // The counters' devices are matched by `= ANY(ARRAY[...])`, a condition the planner
    // cannot hash or merge on, so it probes the primary key once per device. On a plain
    // equality it hashes a sequential scan of every device whenever `devices` looks small
    // to it (a young database whose statistics are not gathered yet), a cost per batch that
    // grows with the fleet (0.39 of 2.3 ms for a batch of 12 at 1,000 devices).
    // id, destination_id, device_key_id and token of each inserted message, and the
    // notifications' (empty) results, selected so that no plan can leave them out.
    type Inserted = (
        i64,
        Option<Uuid>,
        Option<Uuid>,
        Vec<u8>,
        Option<String>,
        Option<String>,
    );
    let inserted: Vec<Inserted> = sqlx::query_as(
        "WITH u AS MATERIALIZED ( \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::timestamptz[], $4::bytea[], \
                                  $5::text[], $6::text[], $7::text[], $8::int4[], $9::int8[], \
                                  $10::text[], $11::uuid[]) \
                  WITH ORDINALITY AS u(d, t, r, b, h, s, e, c, v, o, k, n)), \
         i AS ( \
             INSERT INTO messages (destination_id, token, received_at, body, headers, status, \
                                   decode_error, record_count, device_id, door, device_key_id) \
             SELECT d, t, r, b, h::jsonb, s, e, c, v, o, k FROM u ORDER BY n \
             ON CONFLICT DO NOTHING \
             RETURNING id, destination_id, device_key_id, token, device_id, received_at), \
         im AS ( \
             SELECT u.n, i.id, i.received_at FROM i JOIN u ON u.t = i.token \
                 AND u.d IS NOT DISTINCT FROM i.destination_id \
                 AND u.k IS NOT DISTINCT FROM i.device_key_id), \
         r AS MATERIALIZED ( \
             SELECT x.*, im.id AS message_id, im.received_at \
             FROM UNNEST($12::int4[], $13::int4[], $14::timestamptz[], $15::float8[], \
                         $16::text[], $17::bool[], $18::bool[], $19::bytea[], $20::float8[], \
                         $21::int8[], $22::text[], $23::text[]) \
                  WITH ORDINALITY AS x(mn, sid, t, v, s, e, b, dv, su, dev, name, unit, o) \
             JOIN im ON im.n = x.mn), \
         m AS ( \
             INSERT INTO measurements (series_id, time, value, string_value, string_escaped, \
                                       bool_value, data_value, sum) \
             SELECT sid, t, v, s, e, b, dv, su FROM r ORDER BY o \
             RETURNING id), \
         l AS ( \
             INSERT INTO latest_values (device_id, name, unit, time, value, string_value, \
                                        string_escaped, bool_value, data_value, sum, message_id) \
             SELECT DISTINCT ON (dev, name) dev, name, unit, t, v, s, e, b, dv, su, message_id \
             FROM r ORDER BY dev, name, t DESC, o DESC \
             ON CONFLICT (device_id, name) DO UPDATE SET time = EXCLUDED.time, \
                 unit = EXCLUDED.unit, value = EXCLUDED.value, \
                 string_value = EXCLUDED.string_value, string_escaped = EXCLUDED.string_escaped, \
                 bool_value = EXCLUDED.bool_value, data_value = EXCLUDED.data_value, \
                 sum = EXCLUDED.sum, message_id = EXCLUDED.message_id \
             WHERE latest_values.time <= EXCLUDED.time), \
         counted AS ( \
             UPDATE devices d SET message_count = d.message_count + c.n, \
                                  last_seen = GREATEST(d.last_seen, c.seen) \
             FROM (SELECT dev, sum(n) AS n, max(seen) AS seen \
                   FROM (SELECT device_id AS dev, 1 AS n, received_at AS seen FROM i \
                         WHERE device_id IS NOT NULL \
                         UNION ALL SELECT dev, 0, received_at FROM r) x \
                   GROUP BY dev) c \
             WHERE d.id = ANY(ARRAY[c.dev])), \
         sent AS ( \
             SELECT pg_notify($24, min(id)::text || ',' || max(id)::text)::text AS p \
             FROM i HAVING count(*) > 0), \
         rows_sent AS ( \
             SELECT pg_notify($25, CASE WHEN length(p) > 7000 \
                                   THEN split_part(p, ',', 1) || ',' || split_part(p, ',', 2) \
                                   ELSE p END)::text AS p \
             FROM (SELECT min(m.id)::text || ',' || max(m.id)::text \
                          || (SELECT ',' || string_agg(DISTINCT message_id::text COLLATE \"C\", ',') \
                              FROM r) AS p \
                   FROM m) x \
             WHERE p IS NOT NULL) \
         SELECT i.id, i.destination_id, i.device_key_id, i.token, sent.p, rows_sent.p \
         FROM i LEFT JOIN sent ON true LEFT JOIN rows_sent ON true",
    )
    .bind(&messages.destination)
    .bind(&messages.token)
    .bind(&messages.received)
    .bind(&messages.body)
    .bind(&messages.headers)
    .bind(&messages.status)
    .bind(&messages.error)
    .bind(&messages.count)
    .bind(&messages.device)
    .bind(&messages.door)
    .bind(&messages.device_key_id)
    .bind(&rows.message)
    .bind(&rows.series_id)
    .bind(&v.time)
    .bind(&v.value)
    .bind(&v.string_value)
    .bind(&v.string_escaped)
    .bind(&v.bool_value)
    .bind(&v.data_value)
    .bind(&v.sum)
    .bind(&rows.device_id)
    .bind(&rows.name)
    .bind(&rows.unit)
    .bind(MESSAGES_CHANNEL)
    .bind(super::live::CHANNEL)
    .fetch_all(conn)
    .await?;
    Ok(inserted
        .into_iter()
        .filter_map(|(id, destination, key_id, token, _, _)| {
            let sender = match (destination, key_id) {
                (Some(d), None) => (false, d),
                (None, Some(k)) => (true, k),
                _ => return None,
            };
            Some(((sender, token.try_into().ok()?), id))
        })
        .collect())
}

/// The message columns of a batch, as UNNEST arrays in batch order.
struct Messages<'a> {
    door: Vec<&'static str>,
    destination: Vec<Option<Uuid>>,
    device_key_id: Vec<Option<Uuid>>,
    token: Vec<&'a [u8]>,
    received: Vec<DateTime<Utc>>,
    body: Vec<&'a [u8]>,
    headers: Vec<String>,
    status: Vec<&'static str>,
    error: Vec<Option<&'a str>>,
    count: Vec<i32>,
    device: Vec<Option<i64>>,
    /// How many records all of them hold.
    records: usize,
}

impl<'a> Messages<'a> {
    fn of(batch: &'a [Delivery], indices: &[usize], device_ids: &HashMap<String, i64>) -> Self {
        let n = indices.len();
        let mut m = Messages {
            door: Vec::with_capacity(n),
            destination: Vec::with_capacity(n),
            device_key_id: Vec::with_capacity(n),
            token: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            records: 0,
        };
        for &i in indices {
            let (d, decoded) = (&batch[i].raw, &batch[i].decoded);
            m.door.push(d.sender.door());
            match &d.sender {
                Sender::Destination { id, .. } => {
                    m.destination.push(Some(*id));
                    m.device_key_id.push(None);
                }
                Sender::Device { key_id, .. } => {
                    m.destination.push(None);
                    m.device_key_id.push(Some(*key_id));
                }
            }
            m.token.push(&d.token.0[..]);
            m.received.push(d.received_at);
            m.body.push(&d.body[..]);
            m.headers
                .push(serde_json::to_string(&d.headers).unwrap_or_else(|_| "{}".into()));
            match decoded {
                Ok(records) => {
                    m.device.push(
                        records
                            .first()
                            .and_then(|r| device_ids.get(&device_key(&r.device)).copied()),
                    );
                    m.status.push("stored");
                    m.error.push(None);
                    m.count.push(records.len() as i32);
                    m.records += records.len();
                }
                Err(reason) => {
                    m.device.push(None);
                    m.status.push("quarantined");
                    m.error.push(Some(reason.as_str()));
                    m.count.push(0);
                }
            }
        }
        m
    }
}

/// The value columns of measurement-shaped rows, as UNNEST arrays.
struct Values<'a> {
    time: Vec<DateTime<Utc>>,
    value: Vec<Option<f64>>,
    string_value: Vec<Option<Cow<'a, str>>>,
    string_escaped: Vec<Option<bool>>,
    bool_value: Vec<Option<bool>>,
    data_value: Vec<Option<&'a [u8]>>,
    sum: Vec<Option<f64>>,
}

impl<'a> Values<'a> {
    fn with_capacity(n: usize) -> Self {
        Values {
            time: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            string_value: Vec::with_capacity(n),
            string_escaped: Vec::with_capacity(n),
            bool_value: Vec::with_capacity(n),
            data_value: Vec::with_capacity(n),
            sum: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, m: &'a Measurement) {
        self.time.push(m.time);
        let (mut v, mut s, mut e, mut b, mut d) = (None, None, None, None, None);
        match &m.value {
            Some(Value::Number(x)) => v = Some(*x),
            Some(Value::String(x)) => {
                let (text, escaped) = stored_text::to_storage(x);
                (s, e) = (Some(text), escaped);
            }
            Some(Value::Bool(x)) => b = Some(*x),
            Some(Value::Data(x)) => d = Some(x.as_slice()),
            None => {}
        }
        self.value.push(v);
        self.string_value.push(s);
        self.string_escaped.push(e);
        self.bool_value.push(b);
        self.data_value.push(d);
        self.sum.push(m.sum);
    }
}

/// Measurement rows in record order: the ordinal of their message in the batch, their series,
/// their values, and the (device, name, unit) the latest values are kept by.
struct Rows<'a> {
    message: Vec<i32>,
    series_id: Vec<i32>,
    values: Values<'a>,
    device_id: Vec<i64>,
    name: Vec<&'a str>,
    unit: Vec<Option<&'a str>>,
}

impl<'a> Rows<'a> {
    fn with_capacity(n: usize) -> Self {
        Rows {
            message: Vec::with_capacity(n),
            series_id: Vec::with_capacity(n),
            values: Values::with_capacity(n),
            device_id: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            unit: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, message: i32, series_id: i32, device_id: i64, m: &'a Measurement) {
        self.message.push(message);
        self.series_id.push(series_id);
        self.values.push(m);
        self.device_id.push(device_id);
        self.name.push(&m.name);
        self.unit.push(m.unit.as_deref());
    }
}
