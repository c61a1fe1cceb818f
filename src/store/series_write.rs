//! Writing a batch's measurements: their series, the measurement rows and the latest values,
//! inside the batch's transaction (`deliveries::store_batch`). Series ids come from the
//! writer's memory of committed ones (`known_ids`) where it has them.
//!
//! A measurement row refers to its series without a foreign key: the series is found or
//! written in this same transaction before the rows that point at it, so the reference holds
//! by construction and no per-row trigger has to look it up again. The same statement that
//! inserts the rows upserts the latest values and announces the rows to the live stream.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::senml::{Measurement, Value, device_key};

use super::known_ids::{KnownIds, SeriesName};
use super::stored_text;

/// A series: device id, name and unit, as a record gives them.
type SeriesKey<'a> = (i64, &'a str, Option<&'a str>);

/// Stores the measurements of newly stored messages (`(message id, records)`), whose devices
/// `device_ids` holds by normalised key: finds their series (in `known`, else in the
/// database, inserting the new ones), then inserts the rows and keeps `latest_values` at the
/// newest record per (device, name) in one statement. Returns the series the database was
/// asked about, to remember once the transaction has committed.
pub async fn write(
    tx: &mut PgConnection,
    messages: &[(i64, &[Measurement])],
    device_ids: &HashMap<String, i64>,
    known: &KnownIds,
) -> Result<Vec<(SeriesName, i32)>, sqlx::Error> {
    let total: usize = messages.iter().map(|(_, r)| r.len()).sum();
    // Every record's device once, then every record's series once.
    let mut devices: Vec<i64> = Vec::with_capacity(total);
    let mut keys: BTreeMap<SeriesKey<'_>, i32> = BTreeMap::new();
    for (_, records) in messages {
        for record in *records {
            let device = device_ids
                .get(&device_key(&record.device))
                .copied()
                .ok_or(sqlx::Error::RowNotFound)?;
            devices.push(device);
            keys.insert((device, &record.name, record.unit.as_deref()), 0);
        }
    }
    let remembered = known.series(keys.keys().copied());
    let mut unknown: BTreeMap<SeriesKey<'_>, i32> = BTreeMap::new();
    for ((key, slot), id) in keys.iter_mut().zip(remembered) {
        match id {
            Some(id) => *slot = id,
            None => {
                unknown.insert(*key, 0);
            }
        }
    }
    let learnt = if unknown.is_empty() {
        Vec::new()
    } else {
        resolve(tx, &mut unknown).await?;
        for (key, id) in &unknown {
            keys.insert(*key, *id);
        }
        unknown
            .into_iter()
            .map(|((device_id, name, unit), id)| {
                let name = SeriesName {
                    device_id,
                    name: name.to_owned(),
                    unit: unit.map(str::to_owned),
                };
                (name, id)
            })
            .collect()
    };

    let mut rows = Rows::with_capacity(total);
    let mut newest: BTreeMap<(i64, &str), (&Measurement, i64)> = BTreeMap::new();
    let mut device = devices.iter();
    for (message_id, records) in messages {
        for record in *records {
            let device_id = *device.next().ok_or(sqlx::Error::RowNotFound)?;
            let series_id = keys[&(device_id, record.name.as_str(), record.unit.as_deref())];
            rows.push(series_id, record);
            // One statement may not touch a row twice: the newest record per key only.
            newest
                .entry((device_id, record.name.as_str()))
                .and_modify(|(m, id)| {
                    if record.time >= m.time {
                        *m = record;
                        *id = *message_id;
                    }
                })
                .or_insert((record, *message_id));
        }
    }
    // Sorted by key, for a stable lock order between concurrent batches.
    let mut latest = Latest::with_capacity(newest.len());
    for ((device_id, _), (record, message_id)) in &newest {
        latest.push(*device_id, record, *message_id);
    }
    let announced = announced_messages(messages);
    insert(tx, &rows, &latest, &announced).await?;
    Ok(learnt)
}

/// Finds the id of every series in `unknown`, inserting those that do not exist yet.
///
/// Inserted in key order, so concurrent batches lock them in one order; one that a concurrent
/// batch inserted first is waited for and skipped, and the next statement's snapshot sees it.
async fn resolve(
    tx: &mut PgConnection,
    unknown: &mut BTreeMap<SeriesKey<'_>, i32>,
) -> Result<(), sqlx::Error> {
    if find(tx, unknown).await? {
        return Ok(());
    }
    let missing = SeriesKeys::of(unknown.iter().filter(|(_, id)| **id == 0).map(|(k, _)| k));
    sqlx::query(
        "INSERT INTO series (device_id, name, unit) \
         SELECT d, n, u FROM UNNEST($1::int8[], $2::text[], $3::text[]) \
              WITH ORDINALITY AS k(d, n, u, i) ORDER BY i \
         ON CONFLICT ON CONSTRAINT series_key DO NOTHING",
    )
    .bind(&missing.device_id)
    .bind(&missing.name)
    .bind(&missing.unit)
    .execute(&mut *tx)
    .await?;
    if find(tx, unknown).await? {
        return Ok(());
    }
    Err(sqlx::Error::RowNotFound)
}

/// Fills in the ids of the series of `unknown` that exist (those still 0); whether all do.
/// One index probe per key (LATERAL ... LIMIT 1), whatever the planner believes of the
/// table's size.
async fn find(
    tx: &mut PgConnection,
    unknown: &mut BTreeMap<SeriesKey<'_>, i32>,
) -> Result<bool, sqlx::Error> {
    let keys = SeriesKeys::of(unknown.iter().filter(|(_, id)| **id == 0).map(|(k, _)| k));
    let found: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT k.i, s.id \
         FROM UNNEST($1::int8[], $2::text[], $3::text[]) WITH ORDINALITY AS k(d, n, u, i) \
         CROSS JOIN LATERAL (SELECT id FROM series \
                             WHERE device_id = k.d AND name = k.n \
                               AND unit IS NOT DISTINCT FROM k.u LIMIT 1) s",
    )
    .bind(&keys.device_id)
    .bind(&keys.name)
    .bind(&keys.unit)
    .fetch_all(&mut *tx)
    .await?;
    // 1-based ordinals of the keys still without an id, in key order.
    let mut slots: Vec<&mut i32> = unknown.values_mut().filter(|id| **id == 0).collect();
    for (ordinal, id) in found {
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| slots.get_mut(i))
        {
            **slot = id;
        }
    }
    Ok(unknown.values().all(|id| *id != 0))
}

/// Series keys as arrays, in key order.
struct SeriesKeys<'a> {
    device_id: Vec<i64>,
    name: Vec<&'a str>,
    unit: Vec<Option<&'a str>>,
}

impl<'a> SeriesKeys<'a> {
    fn of<'k>(keys: impl Iterator<Item = &'k SeriesKey<'a>>) -> Self
    where
        'a: 'k,
    {
        let mut out = SeriesKeys {
            device_id: Vec::new(),
            name: Vec::new(),
            unit: Vec::new(),
        };
        for (device_id, name, unit) in keys {
            out.device_id.push(*device_id);
            out.name.push(name);
            out.unit.push(*unit);
        }
        out
    }
}

/// The message part of the live-stream payload: `,id,id,...` for the messages the rows
/// belong to, in the order of their decimal text (the order `string_agg(DISTINCT id::text)`
/// gave when a trigger wrote it), so that listeners see the same payload as before.
fn announced_messages(messages: &[(i64, &[Measurement])]) -> String {
    let mut ids: Vec<String> = messages
        .iter()
        .filter(|(_, records)| !records.is_empty())
        .map(|(id, _)| id.to_string())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().fold(String::new(), |mut out, id| {
        out.push(',');
        out.push_str(id);
        out
    })
}

/// Inserts the rows (in record order, so ids follow it), upserts the latest values and
/// notifies `store::live::CHANNEL` with `min_id,max_id[,message,...]` of the rows (past 7000
/// bytes, without the messages), all in one statement; the notification is delivered at
/// commit, to every listening process.
async fn insert(
    tx: &mut PgConnection,
    rows: &Rows<'_>,
    latest: &Latest<'_>,
    announced: &str,
) -> Result<(), sqlx::Error> {
    let (v, l) = (&rows.values, &latest.values);
    let _: (Option<String>,) = sqlx::query_as(
        "WITH m AS ( \
             INSERT INTO measurements (series_id, time, value, string_value, string_escaped, \
                                       bool_value, data_value, sum) \
             SELECT r.k, r.t, r.v, r.s, r.e, r.b, r.d, r.su \
             FROM UNNEST($1::int4[], $2::timestamptz[], $3::float8[], $4::text[], $5::bool[], \
                         $6::bool[], $7::bytea[], $8::float8[]) \
                  WITH ORDINALITY AS r(k, t, v, s, e, b, d, su, o) \
             ORDER BY r.o \
             RETURNING id), \
         l AS ( \
             INSERT INTO latest_values (device_id, name, unit, time, value, string_value, \
                                        string_escaped, bool_value, data_value, sum, message_id) \
             SELECT * FROM UNNEST($9::int8[], $10::text[], $11::text[], $12::timestamptz[], \
                                  $13::float8[], $14::text[], $15::bool[], $16::bool[], \
                                  $17::bytea[], $18::float8[], $19::int8[]) \
             ON CONFLICT (device_id, name) DO UPDATE SET time = EXCLUDED.time, \
                 unit = EXCLUDED.unit, value = EXCLUDED.value, \
                 string_value = EXCLUDED.string_value, string_escaped = EXCLUDED.string_escaped, \
                 bool_value = EXCLUDED.bool_value, data_value = EXCLUDED.data_value, \
                 sum = EXCLUDED.sum, message_id = EXCLUDED.message_id \
             WHERE latest_values.time <= EXCLUDED.time) \
         SELECT (SELECT pg_notify($21, CASE WHEN length(p) > 7000 \
                                  THEN split_part(p, ',', 1) || ',' || split_part(p, ',', 2) \
                                  ELSE p END)::text \
                 FROM (SELECT min(id)::text || ',' || max(id)::text || $20 AS p FROM m) n \
                 WHERE p IS NOT NULL)",
    )
    .bind(&rows.series_id)
    .bind(&v.time)
    .bind(&v.value)
    .bind(&v.string_value)
    .bind(&v.string_escaped)
    .bind(&v.bool_value)
    .bind(&v.data_value)
    .bind(&v.sum)
    .bind(&latest.device_id)
    .bind(&latest.name)
    .bind(&latest.unit)
    .bind(&l.time)
    .bind(&l.value)
    .bind(&l.string_value)
    .bind(&l.string_escaped)
    .bind(&l.bool_value)
    .bind(&l.data_value)
    .bind(&l.sum)
    .bind(&latest.message_id)
    .bind(announced)
    .bind(super::live::CHANNEL)
    .fetch_one(tx)
    .await?;
    Ok(())
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

/// Measurement rows, each with the id of its series.
struct Rows<'a> {
    series_id: Vec<i32>,
    values: Values<'a>,
}

impl<'a> Rows<'a> {
    fn with_capacity(n: usize) -> Self {
        Rows {
            series_id: Vec::with_capacity(n),
            values: Values::with_capacity(n),
        }
    }

    fn push(&mut self, series_id: i32, m: &'a Measurement) {
        self.series_id.push(series_id);
        self.values.push(m);
    }
}

struct Latest<'a> {
    device_id: Vec<i64>,
    name: Vec<&'a str>,
    unit: Vec<Option<&'a str>>,
    values: Values<'a>,
    message_id: Vec<i64>,
}

impl<'a> Latest<'a> {
    fn with_capacity(n: usize) -> Self {
        Latest {
            device_id: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            unit: Vec::with_capacity(n),
            values: Values::with_capacity(n),
            message_id: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, device_id: i64, m: &'a Measurement, message_id: i64) {
        self.device_id.push(device_id);
        self.name.push(&m.name);
        self.unit.push(m.unit.as_deref());
        self.values.push(m);
        self.message_id.push(message_id);
    }
}
