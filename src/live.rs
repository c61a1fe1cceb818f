//! The per-process fan-out of newly stored measurements to live-stream subscribers.
//!
//! The ingest transaction notifies `things_measurements_inserted` once per INSERT into
//! `measurements` (`store::series_write`); PostgreSQL delivers it at commit to every listening
//! process, so a replica streams what another replica stored. Each process listens once,
//! reads the announced rows once (and only while someone subscribes), and publishes them on a
//! bounded broadcast channel. Ingestion never waits for any of this: NOTIFY is queued by
//! PostgreSQL, and a subscriber that falls more than [`CAPACITY`] measurements behind loses
//! its place in the channel and is disconnected instead of holding anything up.
//!
//! The same listener follows the console's deliveries: the ingest transaction announces its
//! new messages on `things_messages_inserted` (`store::deliveries`) and the `door_events`
//! insert trigger its rows on `things_door_events_inserted`; announced rows are read once,
//! only while someone subscribes to them, and published on their own channel, where a
//! subscriber that falls behind is told how many it skipped and goes on.
//!
//! The hub publishes store rows, not any answer's shape: the SSE endpoint (`api::stream`)
//! turns them into its JSON, and another consumer may turn them into something else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgNotification;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::deliveries::MESSAGES_CHANNEL;
use crate::store::deliveries_list::{self, DeliveryRow};
use crate::store::listen::{self, Listen, Subscriber};
use crate::store::live::{self, CHANNEL, Inserted, LiveRow};

/// The channel the `door_events` insert trigger notifies with the new rows' ids.
pub const EVENTS_CHANNEL: &str = "things_door_events_inserted";
/// Deliveries a subscriber may lag behind before it skips (each holds its body, for the
/// text filter).
pub const DELIVERY_CAPACITY: usize = 1024;

/// What the live list hears: a new delivery (the row as the list shows it, and its body), or
/// how many announced deliveries the hub did not read because it fell behind.
#[derive(Clone)]
pub enum LiveDelivery {
    Row(Arc<(DeliveryRow, Vec<u8>)>),
    Skipped(u64),
}

/// Announced message ranges are read together at most this often (and after this long
/// without a notification), so that a busy ingest costs one read of a few hundred rows every
/// tenth of a second, not one per transaction.
const DELIVERY_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Most announced messages one read takes; past it the oldest ranges are skipped, and the
/// subscribers told how many.
const MAX_DELIVERIES_PER_FLUSH: i64 = 2000;

/// Measurements a subscriber may lag behind before it is dropped.
pub const CAPACITY: usize = 4096;
/// Statements announcing more rows than this are not streamed (bulk loads).
const MAX_ROWS_PER_NOTIFICATION: i64 = 100_000;

pub struct LiveHub {
    sender: broadcast::Sender<Arc<LiveRow>>,
    deliveries: broadcast::Sender<LiveDelivery>,
    /// Cancelled when the server shuts down, so open streams end and do not hold it up.
    closing: CancellationToken,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            sender: broadcast::channel(CAPACITY).0,
            deliveries: broadcast::channel(DELIVERY_CAPACITY).0,
            closing: CancellationToken::new(),
        }
    }
}

impl LiveHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveRow>> {
        self.sender.subscribe()
    }

    pub fn subscribe_deliveries(&self) -> broadcast::Receiver<LiveDelivery> {
        self.deliveries.subscribe()
    }

    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ends every open stream.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Listens for notifications until `shutdown`, publishing what they announce. `pool` is
    /// the stream pool: the listener holds one of its connections for ever, which must not be
    /// one ingestion could use.
    pub fn spawn_listener(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let what = Listen {
                name: "live stream",
                channels: &[CHANNEL, MESSAGES_CHANNEL, EVENTS_CHANNEL],
                idle: Some(DELIVERY_FLUSH_EVERY),
            };
            let mut publisher = Publisher {
                hub: &self,
                pool: &pool,
                pending: Vec::new(),
                flushed_at: Instant::now(),
            };
            listen::listen(&pool, what, &mut publisher, &shutdown).await;
        });
    }
}

/// Reads what each notification announces and publishes it, while anyone subscribes.
struct Publisher<'a> {
    hub: &'a LiveHub,
    pool: &'a PgPool,
    /// Announced message ranges not read yet.
    pending: Vec<(i64, i64)>,
    flushed_at: Instant,
}

impl Subscriber for Publisher<'_> {
    /// Nothing to read again: a live stream shows what arrives from now on, and subscribers
    /// that missed rows while the listener was away can read them through the API.
    async fn resync(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn notified(&mut self, notification: Option<PgNotification>) -> Result<(), sqlx::Error> {
        let Some(notification) = notification else {
            // Quiet for a moment: what is pending goes out now.
            return self.flush_messages().await;
        };
        match notification.channel() {
            MESSAGES_CHANNEL => return self.messages(notification.payload()).await,
            EVENTS_CHANNEL => return self.events(notification.payload()).await,
            _ => {}
        }
        if self.hub.sender.receiver_count() == 0 {
            return Ok(());
        }
        let Some(inserted) = Inserted::parse(notification.payload()) else {
            tracing::warn!(
                payload = notification.payload(),
                "unexpected live notification"
            );
            return Ok(());
        };
        if inserted.max_id - inserted.min_id >= MAX_ROWS_PER_NOTIFICATION {
            tracing::info!(
                rows = inserted.max_id - inserted.min_id + 1,
                "not streaming a bulk insert"
            );
            return Ok(());
        }
        for row in live::fetch(self.pool, &inserted).await? {
            // An error only means nobody subscribes right now.
            let _ = self.hub.sender.send(Arc::new(row));
        }
        Ok(())
    }
}

impl Publisher<'_> {
    /// Takes note of the messages one ingest transaction announced (`min_id,max_id`), and
    /// reads what is pending once [`DELIVERY_FLUSH_EVERY`] has passed since the last read.
    async fn messages(&mut self, payload: &str) -> Result<(), sqlx::Error> {
        if self.hub.deliveries.receiver_count() == 0 {
            self.pending.clear();
            return Ok(());
        }
        let range = payload
            .split_once(',')
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
            .filter(|(a, b)| {
                b.checked_sub(*a)
                    .is_some_and(|span| (0..MAX_ROWS_PER_NOTIFICATION).contains(&span))
            });
        let Some(range) = range else {
            tracing::warn!(payload, "unexpected messages notification");
            return Ok(());
        };
        self.pending.push(range);
        if self.flushed_at.elapsed() >= DELIVERY_FLUSH_EVERY {
            self.flush_messages().await?;
        }
        Ok(())
    }

    /// Reads every pending range in one go and publishes the rows. Past
    /// [`MAX_DELIVERIES_PER_FLUSH`] announced rows (the hub fell behind a busy ingest), the
    /// newest ranges are read and the others counted as skipped, so the stream stays current
    /// and says what it left out.
    async fn flush_messages(&mut self) -> Result<(), sqlx::Error> {
        self.flushed_at = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut ranges = std::mem::take(&mut self.pending);
        if self.hub.deliveries.receiver_count() == 0 {
            return Ok(());
        }
        let skipped = newest_within(&mut ranges, MAX_DELIVERIES_PER_FLUSH);
        if skipped > 0 {
            let _ = self.hub.deliveries.send(LiveDelivery::Skipped(skipped));
        }
        for row in deliveries_list::announced_messages(self.pool, &ranges).await? {
            let _ = self.hub.deliveries.send(LiveDelivery::Row(Arc::new(row)));
        }
        Ok(())
    }

    /// Publishes the door events a statement inserted (their comma-separated ids).
    async fn events(&mut self, payload: &str) -> Result<(), sqlx::Error> {
        if self.hub.deliveries.receiver_count() == 0 {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = payload
            .split(',')
            .filter_map(|id| uuid::Uuid::parse_str(id.trim()).ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        for row in deliveries_list::announced_events(self.pool, &ids).await? {
            let _ = self.hub.deliveries.send(LiveDelivery::Row(Arc::new(row)));
        }
        Ok(())
    }
}

/// Keeps the newest of the announced `ranges` that fit in `cap` rows together; returns how
/// many rows the others announced.
fn newest_within(ranges: &mut Vec<(i64, i64)>, cap: i64) -> u64 {
    ranges.sort_unstable_by_key(|&(_, hi)| std::cmp::Reverse(hi));
    let mut taken = 0;
    let mut skipped: u64 = 0;
    ranges.retain(|&(lo, hi)| {
        let rows = hi - lo + 1;
        if taken + rows <= cap {
            taken += rows;
            true
        } else {
            skipped += u64::try_from(rows).unwrap_or(0);
            false
        }
    });
    skipped
}

#[cfg(test)]
mod tests {
    use super::newest_within;

    #[test]
    fn a_read_takes_the_newest_ranges_and_counts_the_rest() {
        let mut ranges = vec![(1, 10), (21, 30), (11, 20), (31, 40)];
        assert_eq!(newest_within(&mut ranges, 25), 20);
        assert_eq!(ranges, vec![(31, 40), (21, 30)]);
        let mut all = vec![(1, 5), (6, 6)];
        assert_eq!(newest_within(&mut all, 2000), 0);
        assert_eq!(all.len(), 2);
    }
}
