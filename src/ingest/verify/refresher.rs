//! Keeps both sender caches current through one listener connection: each listener holds a
//! pool connection for good, and a small `--db-pool` must not lose one per cache.
//!
//! Both caches reload after every (re)connection of the listener, each on its own table's
//! notification, and both every minute regardless; while the listener is disconnected both
//! say they are not current, so the doors answer 503 rather than refuse what may be valid.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgNotification;
use tokio_util::sync::CancellationToken;

use super::destinations::{self, SecretCache};
use super::devices::{self, DeviceKeyCache};
use crate::store::listen::{self, Listen, Subscriber};

const FALLBACK_RELOAD: Duration = Duration::from_secs(60);

/// Keeps `destinations` and `devices` current until `shutdown`.
pub fn spawn(
    pool: PgPool,
    destinations: Arc<SecretCache>,
    devices: Arc<DeviceKeyCache>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let what = Listen {
            name: "senders",
            channels: &[destinations::CHANNEL, devices::CHANNEL],
            idle: Some(FALLBACK_RELOAD),
        };
        let mut refresher = Refresher {
            destinations,
            devices,
        };
        listen::listen(&pool, what, &mut refresher, &shutdown).await;
    });
}

struct Refresher {
    destinations: Arc<SecretCache>,
    devices: Arc<DeviceKeyCache>,
}

impl Subscriber for Refresher {
    /// Anything may have changed while we were not listening.
    async fn resync(&mut self) -> Result<(), sqlx::Error> {
        self.destinations.reload().await?;
        self.devices.reload().await?;
        self.destinations.set_current(true);
        self.devices.set_current(true);
        Ok(())
    }

    async fn notified(&mut self, notification: Option<PgNotification>) -> Result<(), sqlx::Error> {
        match notification.as_ref().map(PgNotification::channel) {
            Some(destinations::CHANNEL) => self.destinations.reload().await,
            Some(devices::CHANNEL) => self.devices.reload().await,
            _ => {
                self.destinations.reload().await?;
                self.devices.reload().await
            }
        }
    }

    fn lost(&mut self) {
        self.destinations.set_current(false);
        self.devices.set_current(false);
    }
}
