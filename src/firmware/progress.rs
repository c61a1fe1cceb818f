//! Download progress gathered in memory and written in batches: a part costs no database
//! write of its own. Every few hundred milliseconds (and at shutdown) one statement adds what
//! each download was served (parts, bytes, the byte ranges) and moves it to `downloading` or
//! `downloaded` (`store::fota::add_progress`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::fota::{self, ProgressDelta};

/// How often gathered progress is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Delta {
    parts: i32,
    bytes: i64,
    /// Half-open byte ranges served, merged when written.
    ranges: Vec<(u64, u64)>,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct Progress {
    pending: Mutex<HashMap<Uuid, Delta>>,
    /// Per download, parts this process served and parts of those whose write committed
    /// (both only grow), so that the part limit can be checked against a cached count.
    counts: Mutex<HashMap<Uuid, (i64, i64)>>,
}

impl Progress {
    /// Records that bytes `start..end` of download `id` were served as one part.
    pub fn record(&self, id: Uuid, start: u64, end: u64) {
        let now = Utc::now();
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let delta = pending.entry(id).or_insert_with(|| Delta {
            parts: 0,
            bytes: 0,
            ranges: Vec::new(),
            first_at: now,
            last_at: now,
        });
        delta.parts += 1;
        delta.bytes += (end - start) as i64;
        if let Ok(mut counts) = self.counts.lock() {
            counts.entry(id).or_default().0 += 1;
        }
        delta.last_at = now;
        match delta.ranges.last_mut() {
            // Sequential parts, the usual case, stay one range.
            Some(last) if last.1 == start => last.1 = end,
            _ => delta.ranges.push((start, end)),
        }
    }

    /// Parts of `id` this process served, and how many of those are known written.
    pub fn counts(&self, id: Uuid) -> (i64, i64) {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(&id).copied())
            .unwrap_or((0, 0))
    }

    /// Writes what was gathered; on failure keeps it for the next attempt.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let taken: HashMap<Uuid, Delta> = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(()),
        };
        if taken.is_empty() {
            return Ok(());
        }
        let deltas: Vec<ProgressDelta> = taken
            .iter()
            .map(|(id, d)| ProgressDelta {
                id: *id,
                parts: d.parts,
                bytes: d.bytes,
                ranges: multirange(&d.ranges),
                first_at: d.first_at,
                last_at: d.last_at,
            })
            .collect();
        let result = fota::add_progress(pool, &deltas).await;
        if result.is_ok()
            && let Ok(mut counts) = self.counts.lock()
        {
            for d in &deltas {
                counts.entry(d.id).or_default().1 += i64::from(d.parts);
            }
        }
        if result.is_err()
            && let Ok(mut pending) = self.pending.lock()
        {
            for (id, old) in taken {
                match pending.get_mut(&id) {
                    Some(new) => {
                        new.parts += old.parts;
                        new.bytes += old.bytes;
                        new.ranges.extend(old.ranges);
                        new.first_at = new.first_at.min(old.first_at);
                    }
                    None => {
                        pending.insert(id, old);
                    }
                }
            }
        }
        result
    }

    /// Writes every [`FLUSH_EVERY`] until `shutdown`; the last write is the caller's
    /// ([`Progress::flush`] once the listeners have stopped).
    pub fn spawn_writer(self: std::sync::Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = self.flush(&pool).await {
                    tracing::warn!(error = %e, "cannot write firmware download progress yet");
                }
            }
        });
    }
}

/// `{[a,b),[c,d)}`, the ranges sorted and merged.
fn multirange(ranges: &[(u64, u64)]) -> String {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let parts: Vec<String> = merged.iter().map(|(a, b)| format!("[{a},{b})")).collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_merged() {
        assert_eq!(multirange(&[]), "{}");
        assert_eq!(
            multirange(&[(512, 768), (0, 256), (256, 300)]),
            "{[0,300),[512,768)}"
        );
        assert_eq!(multirange(&[(0, 10), (5, 8)]), "{[0,10)}");
    }

    #[test]
    fn sequential_parts_stay_one_range() {
        let progress = Progress::default();
        let id = Uuid::new_v4();
        for n in 0..10 {
            progress.record(id, n * 256, (n + 1) * 256);
        }
        assert_eq!(progress.counts(id), (10, 0));
        let pending = progress.pending.lock().unwrap();
        assert_eq!(pending[&id].ranges, vec![(0, 2560)]);
        assert_eq!(pending[&id].bytes, 2560);
    }
}
