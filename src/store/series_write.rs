//! Finding a batch's series: the id of every (device, name, unit) its records name, from the
//! writer's memory of committed ones (`known_ids`) where it has them, else from the database,
//! inserting the series that do not exist yet (`deliveries::store_batch`).
//!
//! A measurement row refers to its series without a foreign key: the series is found or
//! written in the batch's transaction before the rows that point at it, or known from one
//! that committed, so the reference holds by construction and no per-row trigger has to look
//! it up again.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgConnection;

use crate::senml::{Measurement, device_key};

use super::known_ids::{KnownIds, SeriesName};

/// A series: device id, name and unit, as a record gives them.
type SeriesKey<'a> = (i64, &'a str, Option<&'a str>);

/// The series of a batch's records with their ids (0 where not known yet).
pub struct BatchSeries<'a> {
    ids: BTreeMap<SeriesKey<'a>, i32>,
}

impl<'a> BatchSeries<'a> {
    /// The series of `records`, whose devices `device_ids` holds by normalised key, with the
    /// ids `known` remembers.
    pub fn of(
        records: impl IntoIterator<Item = &'a Measurement>,
        device_ids: &HashMap<String, i64>,
        known: &KnownIds,
    ) -> Result<Self, sqlx::Error> {
        let mut ids: BTreeMap<SeriesKey<'a>, i32> = BTreeMap::new();
        for record in records {
            let device = device_ids
                .get(&device_key(&record.device))
                .copied()
                .ok_or(sqlx::Error::RowNotFound)?;
            ids.insert((device, &record.name, record.unit.as_deref()), 0);
        }
        let remembered = known.series(ids.keys().copied());
        for (slot, id) in ids.values_mut().zip(remembered) {
            *slot = id.unwrap_or(0);
        }
        Ok(BatchSeries { ids })
    }

    /// Whether every series is known, so that the batch needs no look-up.
    pub fn complete(&self) -> bool {
        self.ids.values().all(|id| *id != 0)
    }

    /// The id of a record's series, once [complete](Self::complete).
    pub fn id(&self, device_id: i64, record: &Measurement) -> Option<i32> {
        self.ids
            .get(&(device_id, record.name.as_str(), record.unit.as_deref()))
            .copied()
            .filter(|id| *id != 0)
    }

    /// Finds the ids not known yet in the database, inserting the series that do not exist;
    /// returns them, to remember once the transaction has committed.
    pub async fn resolve(
        &mut self,
        tx: &mut PgConnection,
    ) -> Result<Vec<(SeriesName, i32)>, sqlx::Error> {
        let mut unknown: BTreeMap<SeriesKey<'a>, i32> = self
            .ids
            .iter()
            .filter(|(_, id)| **id == 0)
            .map(|(k, _)| (*k, 0))
            .collect();
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        resolve(tx, &mut unknown).await?;
        self.ids.extend(unknown.iter().map(|(k, id)| (*k, *id)));
        Ok(unknown
            .into_iter()
            .map(|((device_id, name, unit), id)| {
                let name = SeriesName {
                    device_id,
                    name: name.to_owned(),
                    unit: unit.map(str::to_owned),
                };
                (name, id)
            })
            .collect())
    }
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
