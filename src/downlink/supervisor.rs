//! Keeps the downlink worker running: a worker that panics or stops on its own is logged,
//! counted and started again after a growing pause, and its state is there for `/readyz`.
//!
//! The worker handles every error it knows of itself; this is the net for what it does not
//! know of, so that one unforeseen answer cannot stop downlinks for good while the process
//! looks healthy.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// First pause before a restart; doubled per failure in a row, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A worker that ran this long before failing starts over with the shortest pause.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What `/readyz` tells about the worker.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    running: AtomicBool,
    restarts: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// A copy of [`WorkerHealth`] at one moment, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub running: bool,
    pub restarts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl WorkerHealth {
    pub fn report(&self) -> HealthReport {
        HealthReport {
            running: self.running.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_failure: self.lock_failure().clone(),
        }
    }

    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The lock only guards a string; a panic elsewhere cannot leave it half written.
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `start()` until `shutdown`, starting it again whenever it panics or returns before
/// `shutdown`. Returns once a run ends after `shutdown` (a run is expected to finish what it
/// holds first).
pub async fn supervise<F, Fut>(
    name: &'static str,
    health: &WorkerHealth,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = FIRST_PAUSE;
    loop {
        health.running.store(true, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let outcome = tokio::spawn(start()).await;
        health.running.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            if let Err(e) = outcome
                && e.is_panic()
            {
                tracing::error!(worker = name, "{name} panicked while stopping");
            }
            return;
        }
        let failure = match outcome {
            Ok(()) => "stopped on its own".to_owned(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
            Err(e) => format!("was cancelled: {e}"),
        };
        if started.elapsed() >= STABLE_AFTER {
            pause = FIRST_PAUSE;
        }
        let restarts = health.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            worker = name,
            restarts,
            restart_in_s = pause.as_secs_f64(),
            "{name} {failure}; restarting it"
        );
        metrics::counter!("things_worker_restarts_total", "worker" => name).increment(1);
        *health.lock_failure() = Some(failure);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = pause.saturating_mul(2).min(MAX_PAUSE);
    }
}

/// The message a panic carried, when it is text.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn a_panicking_worker_is_restarted_and_reported() {
        let health = Arc::new(WorkerHealth::default());
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let supervisor = {
            let (health, shutdown, runs) = (health.clone(), shutdown.clone(), runs.clone());
            tokio::spawn(async move {
                let stop = shutdown.clone();
                supervise("test worker", &health, shutdown, move || {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let stop = stop.clone();
                    async move {
                        match run {
                            0 => {}
                            1 => panic!("strange answer {run}"),
                            _ => stop.cancelled().await,
                        }
                    }
                })
                .await
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 || !health.report().running {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = health.report();
        assert_eq!(report.restarts, 2);
        assert!(report.running);
        // The latest failure: the first run returned early, the second panicked.
        assert_eq!(
            report.last_failure.as_deref(),
            Some("panicked: strange answer 1")
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), supervisor)
            .await
            .expect("supervisor stops on shutdown")
            .expect("supervisor does not panic");
        assert!(!health.report().running);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn panic_messages_are_kept() {
        assert_eq!(panic_text(Box::new("static")), "static");
        assert_eq!(panic_text(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_text(Box::new(7_u8)), "(no message)");
    }
}
