//! Rate-limited reporting of refused connections: under a flood, one line per interval.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often refused connections are reported.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts refusals for one limit and logs them at most once per [`REFUSAL_LOG_INTERVAL`].
pub(super) struct RefusalLog {
    /// The flag whose limit was reached, for the log line.
    flag: &'static str,
    limit: usize,
    since_last: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl RefusalLog {
    pub(super) fn new(flag: &'static str, limit: usize) -> RefusalLog {
        RefusalLog {
            flag,
            limit,
            since_last: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    pub(super) fn record(&self) {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        let refused = self.since_last.swap(0, Ordering::Relaxed);
        tracing::warn!(
            refused,
            limit = self.limit,
            "connections refused: {} reached",
            self.flag
        );
    }
}
