//! The shutdown trigger `run` obeys: the first trigger starts the graceful shutdown, a
//! second one forces it. Who pulls it is up to the caller (OS signals for `serve`, a test for
//! an in-process server), so `run` itself never listens for signals.

use tokio_util::sync::CancellationToken;

/// Cheap to clone; every clone pulls the same trigger.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the graceful shutdown, or forces it if it had already started.
    pub fn trigger(&self) {
        if self.graceful.is_cancelled() {
            self.force.cancel();
        } else {
            self.graceful.cancel();
        }
    }

    /// Stops at once, without waiting for requests in flight.
    pub fn force(&self) {
        self.graceful.cancel();
        self.force.cancel();
    }

    /// Resolves once the graceful shutdown has been asked for.
    pub async fn started(&self) {
        self.graceful.cancelled().await;
    }

    /// Resolves once the shutdown has been forced.
    pub async fn forced(&self) {
        self.force.cancelled().await;
    }
}
