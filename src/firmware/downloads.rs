//! What the file server reads of a download (token hash, state, parts, image), cached per
//! process for a moment, so that a device fetching part after part costs no database read per
//! part. A cancellation reaches every process at once through `things_fota_cancelled` (sent
//! by triggers, migration 0012); while that listener is disconnected nothing is taken from
//! the cache. Entries older than [`FRESH_FOR`] are read again, which bounds how late another
//! replica's parts count toward the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgNotification;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::fota::{self, Download};
use crate::store::listen::{self, Listen, Subscriber};

pub const CHANNEL: &str = "things_fota_cancelled";
/// How long a cached download is used before it is read again.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// Downloads cached at most (a few hundred bytes each).
const MAX_ENTRIES: usize = 100_000;

pub struct DownloadCache {
    pool: PgPool,
    /// A download, when it was read, and the caller's figure taken just before the read.
    entries: Mutex<HashMap<Uuid, (Download, Instant, i64)>>,
    /// Bumped by every invalidation: a read that began before one is not cached.
    generation: AtomicU64,
    /// Whether the listener is connected (and has resynchronised) so the cache can be trusted.
    current: AtomicBool,
}

impl DownloadCache {
    pub fn new(pool: PgPool) -> DownloadCache {
        DownloadCache {
            pool,
            entries: Mutex::default(),
            generation: AtomicU64::new(0),
            current: AtomicBool::new(false),
        }
    }

    /// The download `id` (`None` if unknown), with `at_read()` as it was just before the
    /// database read the answer comes from (the part count's reference point).
    pub async fn get(
        &self,
        id: Uuid,
        at_read: impl Fn() -> i64,
    ) -> Result<Option<(Download, i64)>, sqlx::Error> {
        let trusted = self.current.load(Ordering::Acquire);
        if trusted
            && let Ok(entries) = self.entries.lock()
            && let Some((download, read_at, figure)) = entries.get(&id)
            && read_at.elapsed() < FRESH_FOR
        {
            return Ok(Some((download.clone(), *figure)));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let read_at = Instant::now();
        let figure = at_read();
        let Some(download) = fota::download(&self.pool, id).await? else {
            return Ok(None);
        };
        if trusted
            && let Ok(mut entries) = self.entries.lock()
            && self.generation.load(Ordering::Acquire) == generation
        {
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, (_, at, _)| at.elapsed() < FRESH_FOR);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(id, (download.clone(), read_at, figure));
        }
        Ok(Some((download, figure)))
    }

    /// Forgets `id`, or everything.
    fn invalidate(&self, id: Option<Uuid>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            match id {
                Some(id) => {
                    entries.remove(&id);
                }
                None => entries.clear(),
            }
        }
    }

    /// Follows cancellations until `shutdown`.
    pub fn spawn_listener(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let what = Listen {
                name: "firmware cancellations",
                channels: &[CHANNEL],
                idle: None,
            };
            // A connection of its own, held for ever: it must not take one of the
            // `--db-pool` connections ingestion and the API count on.
            let own = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((*self.pool.connect_options()).clone());
            listen::listen(&own, what, &mut Follower(&self), &shutdown).await;
            own.close().await;
        });
    }
}

struct Follower<'a>(&'a DownloadCache);

impl Subscriber for Follower<'_> {
    async fn resync(&mut self) -> Result<(), sqlx::Error> {
        self.0.invalidate(None);
        self.0.current.store(true, Ordering::Release);
        Ok(())
    }

    async fn notified(&mut self, notification: Option<PgNotification>) -> Result<(), sqlx::Error> {
        if let Some(notification) = notification {
            self.0.invalidate(notification.payload().parse().ok());
        }
        Ok(())
    }

    fn lost(&mut self) {
        self.0.current.store(false, Ordering::Release);
        self.0.invalidate(None);
    }
}
