//! The one way this service listens to PostgreSQL notifications: listen, reconnect, resync.
//!
//! A notification is sent once and lost when no connection listens at that moment, so a
//! listener that only reacted to notifications would drift from the table it follows after
//! any reconnection. Every user therefore gets the same contract: after every (re)connect,
//! before any notification, [`Subscriber::resync`] reads the whole state again; then each
//! notification (and, optionally, a quiet spell) is delivered; a failure drops the
//! connection and, after a pause that doubles up to [`RETRY_MAX`], starts over.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;

/// Pause before the first reconnection attempt; doubled per failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a listener does with what it hears.
pub trait Subscriber: Send {
    /// Called after every (re)connect, once LISTEN is in place: whatever was announced
    /// while nobody listened is lost, so read the whole state again. An error drops the
    /// connection and starts over.
    fn resync(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Called for every notification, and with `None` after [`Listen::idle`] without one.
    /// An error drops the connection and starts over.
    fn notified(
        &mut self,
        notification: Option<PgNotification>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The connection was lost: until the next [`Subscriber::resync`] succeeds,
    /// notifications may be missed.
    fn lost(&mut self) {}
}

/// Which channels to listen on, and how.
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    /// Names the listener in logs.
    pub name: &'static str,
    pub channels: &'a [&'a str],
    /// Call [`Subscriber::notified`] with `None` after this long without a notification,
    /// for a periodic refresh that does not depend on notifications at all.
    pub idle: Option<Duration>,
}

/// Listens until `shutdown`, reconnecting for as long as it takes.
pub async fn listen(
    pool: &PgPool,
    what: Listen<'_>,
    subscriber: &mut impl Subscriber,
    shutdown: &CancellationToken,
) {
    let mut pause = RETRY_FIRST;
    loop {
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            result = session(pool, what, subscriber, &mut pause) => result,
        };
        subscriber.lost();
        if let Err(e) = result {
            tracing::warn!(listener = what.name, error = %e, retry_in = ?pause,
                "notification listener failed; reconnecting");
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// One connection: LISTEN, resync, then notifications until something fails.
async fn session(
    pool: &PgPool,
    what: Listen<'_>,
    subscriber: &mut impl Subscriber,
    pause: &mut Duration,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(what.channels.iter().copied()).await?;
    subscriber.resync().await?;
    // Connected and in step: the next failure starts its pauses from the beginning.
    *pause = RETRY_FIRST;
    loop {
        let received = match what.idle {
            Some(idle) => match tokio::time::timeout(idle, listener.try_recv()).await {
                Ok(received) => received?,
                Err(_quiet) => {
                    subscriber.notified(None).await?;
                    continue;
                }
            },
            None => listener.try_recv().await?,
        };
        match received {
            Some(notification) => subscriber.notified(Some(notification)).await?,
            // The connection dropped and was re-established (LISTEN included) before
            // `try_recv` returned: what was sent in between is lost.
            None => {
                subscriber.lost();
                subscriber.resync().await?;
            }
        }
    }
}
