//! Ids of devices and series that earlier batches committed, kept in memory by the writer.
//!
//! A batch names its devices by URN and its series by (device, name, unit); the rows it writes
//! need their ids. Looking them up in PostgreSQL on every batch was most of the database's
//! work for small batches: joining a few keys against the whole `series` and `devices` tables
//! costs more than inserting the rows. Ids never change once committed (nothing deletes a
//! device or a series), so a batch in the steady state takes them from here and asks the
//! database only for the keys it has not seen.
//!
//! Only ids of committed transactions are remembered: an id read or inserted by a transaction
//! that then rolls back is never kept, so no row can be written against a series that does not
//! exist. Committed rows can still go when the database itself is replaced (a backup restored,
//! a standby that lagged promoted); that always ends our connections, so the writer forgets
//! everything whenever the database becomes unavailable. The maps are bounded: one that would grow past its bound is emptied first, and a fleet
//! larger than the bound pays the look-ups it paid before.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most devices remembered (about 100 bytes each).
const MAX_DEVICES: usize = 100_000;
/// Most series remembered (about 100 bytes each).
const MAX_SERIES: usize = 250_000;

/// A series as its rows name it: device id, measurement name and unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesName {
    pub device_id: i64,
    pub name: String,
    pub unit: Option<String>,
}

/// The writer's memory of committed ids; shared by its transactions.
#[derive(Debug, Default)]
pub struct KnownIds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<String, i64>,
    series: HashMap<SeriesName, i32>,
}

impl KnownIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// The remembered id of each device's normalised key, `None` where unknown.
    pub fn devices<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<Option<i64>> {
        let inner = self.lock();
        keys.into_iter()
            .map(|k| inner.devices.get(k).copied())
            .collect()
    }

    /// The remembered id of each series, `None` where unknown.
    pub fn series<'a>(
        &self,
        keys: impl IntoIterator<Item = (i64, &'a str, Option<&'a str>)>,
    ) -> Vec<Option<i32>> {
        let inner = self.lock();
        keys.into_iter()
            .map(|(device_id, name, unit)| {
                inner
                    .series
                    .get(&SeriesName {
                        device_id,
                        name: name.to_owned(),
                        unit: unit.map(str::to_owned),
                    })
                    .copied()
            })
            .collect()
    }

    /// Remembers what a transaction that has committed wrote or read.
    pub fn remember(&self, devices: Vec<(String, i64)>, series: Vec<(SeriesName, i32)>) {
        if devices.is_empty() && series.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.devices.len() + devices.len() > MAX_DEVICES {
            inner.devices.clear();
        }
        inner.devices.extend(devices);
        if inner.series.len() + series.len() > MAX_SERIES {
            inner.series.clear();
        }
        inner.series.extend(series);
    }

    /// Forgets everything, for when the database may not be the one the ids came from.
    pub fn forget(&self) {
        let mut inner = self.lock();
        inner.devices.clear();
        inner.series.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent: every entry is
        // written whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(device_id: i64, name: &str, unit: Option<&str>) -> SeriesName {
        SeriesName {
            device_id,
            name: name.into(),
            unit: unit.map(Into::into),
        }
    }

    #[test]
    fn a_series_is_known_by_device_name_and_unit() {
        let known = KnownIds::new();
        known.remember(
            Vec::new(),
            vec![(series(1, "t", Some("Cel")), 7), (series(1, "t", None), 8)],
        );
        assert_eq!(
            known.series([
                (1, "t", Some("Cel")),
                (1, "t", None),
                (2, "t", Some("Cel")),
                (1, "t", Some("K")),
            ]),
            vec![Some(7), Some(8), None, None]
        );
    }

    #[test]
    fn a_device_is_known_by_its_key() {
        let known = KnownIds::new();
        known.remember(vec![("a".into(), 3)], Vec::new());
        assert_eq!(known.devices(["a", "b"]), vec![Some(3), None]);
    }

    #[test]
    fn forgetting_empties_both_maps() {
        let known = KnownIds::new();
        known.remember(vec![("a".into(), 3)], vec![(series(3, "t", None), 7)]);
        known.forget();
        assert_eq!(known.devices(["a"]), vec![None]);
        assert_eq!(known.series([(3, "t", None)]), vec![None]);
    }

    #[test]
    fn a_full_map_starts_over_instead_of_growing() {
        let known = KnownIds::new();
        let many: Vec<_> = (0..MAX_SERIES as i64)
            .map(|i| (series(i, "n", None), i as i32))
            .collect();
        known.remember(Vec::new(), many);
        assert_eq!(known.series([(0, "n", None)]), vec![Some(0)]);
        known.remember(Vec::new(), vec![(series(-1, "n", None), 9)]);
        assert_eq!(
            known.series([(0, "n", None), (-1, "n", None)]),
            vec![None, Some(9)]
        );
        assert_eq!(known.lock().series.len(), 1);
    }
}
