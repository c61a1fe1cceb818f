//! The outbox worker: claims due downlinks, sends them, records the outcome.
//!
//! It sleeps until a `things_downlinks_queued` notification (sent by a trigger on insert),
//! the next row's due time, or at most [`IDLE_POLL`]; so an idle service costs one cheap
//! query every few seconds and a new downlink leaves at once. Claimed rows carry a lease:
//! should this process die mid-send, another takes the row over when the lease runs out.
//! That row may then reach KPN twice; both calls carry the same `externalReference`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::PgPool;
use sqlx::postgres::PgNotification;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Status;
use super::backoff::Backoff;
use super::supervisor::{WorkerHealth, supervise};
use crate::kpn::client::Downlink;
use crate::kpn::{KpnClient, SendOutcome};
use crate::store::downlinks::{self, Claimed};
use crate::store::listen::{self, Listen, Subscriber};

pub const CHANNEL: &str = "things_downlinks_queued";
/// Longest sleep without a notification, in case one was missed.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause after a database error.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Downlinks claimed and sent concurrently per round.
const BATCH: i64 = 32;
/// How many KPN calls one attempt may make at worst (token, context switch, call, and the
/// same again after a 401/302); the lease must outlast them all.
pub const CALLS_PER_ATTEMPT: u32 = 6;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub lease: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--downlink-lease ({lease:?}) must be longer than {CALLS_PER_ATTEMPT} times --kpn-timeout ({timeout:?}): a live sender must never lose its lease"
    )]
    LeaseTooShort { lease: Duration, timeout: Duration },
    #[error("--downlink-retry-base must be at least 10ms and at most --downlink-retry-max")]
    Backoff,
}

impl Settings {
    pub fn validate(&self, kpn_timeout: Duration) -> Result<(), SettingsError> {
        if self.lease <= kpn_timeout * CALLS_PER_ATTEMPT {
            return Err(SettingsError::LeaseTooShort {
                lease: self.lease,
                timeout: kpn_timeout,
            });
        }
        let Backoff { base, max } = self.backoff;
        if base < Duration::from_millis(10) || base > max {
            return Err(SettingsError::Backoff);
        }
        Ok(())
    }
}

/// The running worker: its supervisor task, and its health for `/readyz`.
pub struct Running {
    /// Ends after `shutdown`, once the downlinks the worker holds are settled.
    pub task: JoinHandle<()>,
    pub health: Arc<WorkerHealth>,
}

/// Starts the worker under a supervisor that restarts it should it panic or stop.
pub fn spawn(
    pool: PgPool,
    client: Arc<KpnClient>,
    settings: Settings,
    shutdown: CancellationToken,
) -> Running {
    let health = Arc::new(WorkerHealth::default());
    let worker = Arc::new(Worker {
        pool,
        client,
        settings,
    });
    let task = {
        let health = health.clone();
        tokio::spawn(async move {
            let stop = shutdown.clone();
            supervise("downlink worker", &health, shutdown, move || {
                let (worker, stop) = (worker.clone(), stop.clone());
                async move { worker.run(stop).await }
            })
            .await;
        })
    };
    Running { task, health }
}

struct Worker {
    pool: PgPool,
    client: Arc<KpnClient>,
    settings: Settings,
}

impl Worker {
    /// Works until `shutdown`, woken by the listener; the listener stops only once the
    /// work has (so that the sends held at shutdown finish first).
    async fn run(&self, shutdown: CancellationToken) {
        let wake = Notify::new();
        let stop_listening = CancellationToken::new();
        let what = Listen {
            name: "downlinks",
            channels: &[CHANNEL],
            idle: None,
        };
        let mut waker = Wake(&wake);
        let listening = listen::listen(&self.pool, what, &mut waker, &stop_listening);
        let working = async {
            self.work(&wake, &shutdown).await;
            stop_listening.cancel();
        };
        tokio::join!(listening, working);
        tracing::debug!("downlink worker stopped");
    }

    /// Rounds until `shutdown`; idle, it sleeps until woken, the next due time or an error
    /// pause. Without a listener (the database refuses it) this is plain polling.
    async fn work(&self, wake: &Notify, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            let wait = match self.round().await {
                Ok(true) => continue,
                Ok(false) => self.idle_time().await,
                Err(e) => {
                    tracing::warn!(error = %e, "downlink worker: database error");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims and sends one batch; whether there was anything to do.
    async fn round(&self) -> Result<bool, sqlx::Error> {
        let claimed = downlinks::claim(&self.pool, BATCH, self.settings.lease).await?;
        if claimed.is_empty() {
            return Ok(false);
        }
        join_all(claimed.into_iter().map(|c| self.send(c))).await;
        Ok(true)
    }

    /// How long to sleep: until the next row is due, at most [`IDLE_POLL`].
    async fn idle_time(&self) -> Duration {
        match downlinks::pending(&self.pool).await {
            Ok((due, queued, sending)) => {
                metrics::gauge!("things_downlinks_pending", "state" => Status::Queued.as_str())
                    .set(queued as f64);
                metrics::gauge!("things_downlinks_pending", "state" => Status::Sending.as_str())
                    .set(sending as f64);
                due.map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default())
                    .map_or(IDLE_POLL, |d| d.min(IDLE_POLL))
                    // A little past the due time, so the row is due when we look.
                    .saturating_add(Duration::from_millis(5))
            }
            Err(e) => {
                tracing::warn!(error = %e, "downlink worker: database error");
                ERROR_PAUSE
            }
        }
    }

    async fn send(&self, claimed: Claimed) {
        let downlink = Downlink {
            port: claimed.port.and_then(|p| u16::try_from(p).ok()),
            external_reference: claimed.id,
            body: &claimed.body,
        };
        let outcome = self.client.send_downlink(downlink).await;
        let (id, attempt) = (claimed.id, claimed.attempts);
        let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
        let (state, written) = match &outcome {
            SendOutcome::Accepted { status, answer } => {
                tracing::info!(%id, attempt, status, "downlink accepted by KPN");
                (
                    Status::Accepted.as_str(),
                    downlinks::mark_accepted(&self.pool, id, attempt, *status, answer).await,
                )
            }
            SendOutcome::Rejected {
                reason,
                status,
                answer,
            } => {
                tracing::warn!(%id, attempt, %reason, "downlink refused by KPN");
                (
                    Status::Failed.as_str(),
                    downlinks::mark_failed(
                        &self.pool,
                        id,
                        attempt,
                        reason,
                        *status,
                        answer.as_deref(),
                    )
                    .await,
                )
            }
            SendOutcome::Retry { reason, .. } if attempts >= self.settings.max_attempts => {
                let reason = format!("gave up after {attempts} attempts: {reason}");
                tracing::warn!(%id, %reason, "downlink failed");
                (
                    Status::Failed.as_str(),
                    downlinks::mark_failed(&self.pool, id, attempt, &reason, None, None).await,
                )
            }
            SendOutcome::Retry { reason, after } => {
                let delay = self.settings.backoff.delay(attempts, *after);
                tracing::info!(%id, attempt, %reason, retry_in_s = delay.as_secs_f64(), "downlink will be retried");
                (
                    "retried",
                    downlinks::reschedule(&self.pool, id, attempt, reason, delay).await,
                )
            }
        };
        match written {
            Ok(true) => {
                metrics::counter!("things_downlinks_total", "state" => state, "transport" => "kpn")
                    .increment(1);
            }
            Ok(false) => {
                tracing::warn!(%id, attempt, "downlink was taken over by another process before its outcome was recorded");
            }
            Err(e) => {
                // The row stays "sending" until its lease ends, then it is sent again.
                tracing::error!(%id, attempt, error = %e, "cannot record a downlink's outcome");
            }
        }
    }
}

/// Wakes the worker for every notification, and after every (re)connect, since a row may
/// have been queued while nobody listened.
struct Wake<'a>(&'a Notify);

impl Subscriber for Wake<'_> {
    async fn resync(&mut self) -> Result<(), sqlx::Error> {
        self.0.notify_one();
        Ok(())
    }

    async fn notified(&mut self, _: Option<PgNotification>) -> Result<(), sqlx::Error> {
        self.0.notify_one();
        Ok(())
    }
}

/// Starts the worker as `serve` is configured; `None` (logged) when no KPN credentials are
/// configured: the service then runs and refuses downlink requests.
pub fn start(
    pool: &PgPool,
    args: &crate::config::ServeArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Running>> {
    let Some(client) = crate::kpn::client_from_args(&args.kpn)? else {
        tracing::info!(
            "downlinks disabled: {}",
            crate::kpn::credentials::HOW_TO_CONFIGURE
        );
        return Ok(None);
    };
    let settings = Settings {
        max_attempts: args.downlink.downlink_max_attempts,
        backoff: Backoff {
            base: args.downlink.downlink_retry_base,
            max: args.downlink.downlink_retry_max,
        },
        lease: args.downlink.downlink_lease,
    };
    settings.validate(client.config().timeout)?;
    tracing::info!(
        api = %client.config().api_url,
        token_url = %client.config().token_url,
        "downlinks enabled"
    );
    Ok(Some(spawn(
        pool.clone(),
        Arc::new(client),
        settings,
        shutdown.clone(),
    )))
}
