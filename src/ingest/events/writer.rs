//! The recorder's background writer: takes events off the queue, lets through at most
//! `rate` a second (a token bucket with a burst of one second's worth), inserts them in
//! batches into `door_events` and prunes the table to its size cap every few seconds. What
//! the bucket refuses stays in the ring only, shown as not persisted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ring::Entry;
use crate::store::door_events;

/// Most events one insert statement carries.
const MAX_BATCH: usize = 256;
/// How often the table is pruned at most (a sum over the table each time).
pub const PRUNE_EVERY: Duration = Duration::from_secs(2);
/// How long the last flush at shutdown may take.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// The writer's limits (`--rejections-rate`, `--rejections-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    pub rate: f64,
    pub max_bytes: u64,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        let rate = rate.max(0.0);
        Bucket {
            rate,
            tokens: rate.max(1.0),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let burst = self.rate.max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 && self.rate > 0.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Stops the writer after flushing what is queued.
pub struct RecorderTask {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl RecorderTask {
    /// Flushes what is queued (under the rate, within a few seconds) and stops the writer.
    pub async fn finish(self) {
        self.stop.cancel();
        if tokio::time::timeout(FLUSH_WITHIN, self.handle)
            .await
            .is_err()
        {
            tracing::warn!("door events not all written at shutdown");
        }
    }
}

pub(super) fn spawn(
    pool: PgPool,
    mut queue: mpsc::Receiver<Arc<Entry>>,
    limits: WriterLimits,
) -> RecorderTask {
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let handle = tokio::spawn(async move {
        let mut bucket = Bucket::new(limits.rate);
        let max_bytes = i64::try_from(limits.max_bytes).unwrap_or(i64::MAX);
        let mut last_prune = Instant::now();
        let mut inserted_since_prune = false;
        let mut batch: Vec<Arc<Entry>> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = stopping.cancelled() => None,
                next = queue.recv() => next,
                // Prunes a table that grew while we were idle, too.
                _ = tokio::time::sleep(PRUNE_EVERY), if inserted_since_prune => {
                    prune(&pool, max_bytes).await;
                    last_prune = Instant::now();
                    inserted_since_prune = false;
                    continue;
                }
            };
            let Some(first) = first else { break };
            take(&mut bucket, first, &mut batch);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => take(&mut bucket, next, &mut batch),
                    Err(_) => break,
                }
            }
            if write(&pool, &mut batch).await {
                inserted_since_prune = true;
            }
            if inserted_since_prune && last_prune.elapsed() >= PRUNE_EVERY {
                prune(&pool, max_bytes).await;
                last_prune = Instant::now();
                inserted_since_prune = false;
            }
        }
        // Shutdown: what is queued still goes, under the same rate.
        queue.close();
        while let Some(next) = queue.recv().await {
            take(&mut bucket, next, &mut batch);
            if batch.len() >= MAX_BATCH {
                write(&pool, &mut batch).await;
            }
        }
        write(&pool, &mut batch).await;
        prune(&pool, max_bytes).await;
    });
    RecorderTask { stop, handle }
}

fn take(bucket: &mut Bucket, entry: Arc<Entry>, batch: &mut Vec<Arc<Entry>>) {
    if bucket.take() {
        batch.push(entry);
    } else {
        metrics::counter!("things_door_events_total", "fate" => "ring_only").increment(1);
    }
}

/// Inserts the batch and marks its entries persisted; true when something was written.
async fn write(pool: &PgPool, batch: &mut Vec<Arc<Entry>>) -> bool {
    if batch.is_empty() {
        return false;
    }
    let events: Vec<_> = batch.iter().map(|e| e.event.clone()).collect();
    let written = match door_events::insert_batch(pool, &events).await {
        Ok(_) => {
            for entry in batch.iter() {
                entry.set_persisted();
            }
            metrics::counter!("things_door_events_total", "fate" => "persisted")
                .increment(batch.len() as u64);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, events = batch.len(), "cannot write door events; the ring keeps them");
            metrics::counter!("things_door_events_total", "fate" => "ring_only")
                .increment(batch.len() as u64);
            false
        }
    };
    batch.clear();
    written
}

async fn prune(pool: &PgPool, max_bytes: i64) {
    match door_events::prune(pool, max_bytes).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "pruned the oldest door events"),
        Err(e) => tracing::warn!(error = %e, "cannot prune door events"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_seconds_worth_through_then_refuses() {
        let mut bucket = Bucket::new(5.0);
        let taken = (0..50).filter(|_| bucket.take()).count();
        assert_eq!(taken, 5);
        // Refilled by elapsed time: a second later, another five.
        bucket.at -= Duration::from_secs(1);
        assert_eq!((0..50).filter(|_| bucket.take()).count(), 5);
        let mut off = Bucket::new(0.0);
        assert!(!off.take(), "a rate of 0 persists nothing");
    }
}
