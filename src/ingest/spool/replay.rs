//! Replay: spool segments fed back through the writer once the database answers, oldest
//! first, each deleted once all of it is stored; a record the database refuses for good is
//! moved to the spool's quarantine so that it does not hold up the rest.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Spool;
use super::record::{encode, frame, read_segment};
use super::segment::{quarantine_record, segments};
use crate::ingest::delivery::{Delivery, RawDelivery, Sender, StoreOutcome};
use crate::ingest::writer::{WriteError, Writer};
use crate::store::downlinks;

/// Records replayed per round trip through the writer.
const REPLAY_CHUNK: usize = 256;

impl Spool {
    /// Replays the spool through `writer` whenever it holds anything and the database
    /// answers, until `shutdown`.
    pub fn spawn_replayer(&self, writer: Writer, pool: sqlx::PgPool, shutdown: CancellationToken) {
        let spool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                // Only when the database answers: each replay round seals the open segment,
                // and a long outage should not leave thousands of tiny ones.
                // Bytes, not records: a segment holding only a torn record still has to go.
                if spool.depth().1 == 0 || sqlx::query("SELECT 1").execute(&pool).await.is_err() {
                    continue;
                }
                if let Err(e) = spool.replay_once(&writer, &pool, &shutdown).await {
                    tracing::debug!(error = %e, "spool replay paused");
                }
            }
        });
    }

    /// Replays every closed segment, oldest first, deleting each once all of it is stored.
    async fn replay_once(
        &self,
        writer: &Writer,
        pool: &sqlx::PgPool,
        shutdown: &CancellationToken,
    ) -> Result<(), WriteError> {
        let Some(sealed) = self.seal().await else {
            return Err(WriteError::Closed);
        };
        let list = segments(&self.shared.dir).map_err(|e| WriteError::Unavailable(e.into()))?;
        for (seq, path) in list {
            // A segment numbered above `sealed` was opened after the seal and is still
            // being appended to.
            if seq > sealed || shutdown.is_cancelled() {
                continue;
            }
            let records = read_segment(&path).map_err(|e| WriteError::Unavailable(e.into()))?;
            for (n, chunk) in records.chunks(REPLAY_CHUNK).enumerate() {
                let submits = chunk.iter().map(|raw| replay_one(writer, pool, raw));
                let results = futures_util::future::join_all(submits).await;
                for (i, (raw, result)) in chunk.iter().zip(results).enumerate() {
                    if result.is_err() {
                        let at = (seq, n * REPLAY_CHUNK + i);
                        self.retry_or_quarantine(writer, pool, raw, at).await?;
                    }
                }
            }
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(|e| WriteError::Unavailable(e.into()))?;
            self.shared.bytes.fetch_sub(
                len.min(self.shared.bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            let n = records.len() as u64;
            self.shared.records.fetch_sub(
                n.min(self.shared.records.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            self.shared.replayed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("things_spool_replayed_records_total").increment(n);
            tracing::info!(records = n, segment = %path.display(), "replayed spool segment");
            self.publish_metrics();
        }
        Ok(())
    }
}

async fn replay_one(
    writer: &Writer,
    pool: &sqlx::PgPool,
    raw: &RawDelivery,
) -> Result<(), WriteError> {
    let receipt = writer.submit(Delivery::resolve(raw.clone())).await?;
    // A spooled device uplink was answered without a downlink or notification. Found stored
    // already, its first attempt's commit landed after the answer gave up on it, and may have
    // marked a downlink delivered (or a firmware target notified) that never left: back to
    // the queue.
    if let (StoreOutcome::Duplicate, Sender::Device { key_id, .. }) = (receipt.outcome, &raw.sender)
    {
        let mut conn = pool.acquire().await.map_err(WriteError::Unavailable)?;
        let requeued =
            downlinks::requeue_unanswered(&mut conn, *key_id, &raw.token.0, raw.received_at)
                .await
                .map_err(WriteError::Unavailable)?;
        if requeued > 0 {
            tracing::warn!(sender = %raw.sender, requeued, "a spooled uplink's late commit had taken a downlink or firmware notification its answer never carried; queued it again");
        }
    }
    Ok(())
}

impl Spool {
    /// A record that failed in its chunk is tried once more on its own. If that fails too
    /// while the database answers (checked, then tried a last time), the database will never
    /// take it (the writer already fell back to storing it raw as quarantined): it is moved
    /// to `quarantine/` byte for byte, so that it no longer holds up its segment and every
    /// one after it. While the database does not answer, the replay pauses instead and the
    /// segment stays.
    async fn retry_or_quarantine(
        &self,
        writer: &Writer,
        pool: &sqlx::PgPool,
        raw: &RawDelivery,
        at: (u64, usize),
    ) -> Result<(), WriteError> {
        let error = match replay_one(writer, pool, raw).await {
            Ok(()) => return Ok(()),
            Err(e @ (WriteError::Overloaded | WriteError::Closed)) => return Err(e),
            Err(e) => e,
        };
        if let Err(down) = sqlx::query("SELECT 1").execute(pool).await {
            return Err(WriteError::Unavailable(down));
        }
        // Once more now that the database is known to answer, so that a connection lost
        // during the retry cannot send a good delivery to the quarantine.
        let error = match replay_one(writer, pool, raw).await {
            Ok(()) => return Ok(()),
            Err(e @ (WriteError::Overloaded | WriteError::Closed)) => return Err(e),
            Err(_) => error,
        };
        let path = quarantine_record(&self.shared.dir, at, &frame(&encode(raw)))
            .map_err(|e| WriteError::Unavailable(e.into()))?;
        metrics::counter!("things_spool_quarantined_records_total").increment(1);
        tracing::error!(%error, sender = %raw.sender, file = %path.display(),
            "a spooled delivery failed twice although the database answers; moved it to the \
             spool's quarantine and went on with the rest");
        Ok(())
    }
}
