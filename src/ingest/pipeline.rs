//! What every front door does once a delivery is verified: resolve the SenML, then make the
//! delivery durable, in PostgreSQL through the group-commit writer or, if the database cannot
//! take it in time, in the local spool.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::ingest::delivery::{Delivery, RawDelivery, Receipt, Sender};
use crate::ingest::spool::{Spool, SpoolError};
use crate::ingest::writer::{WriteError, Writer};

/// Where an accepted delivery now lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// In PostgreSQL, with what the answer to a device carries.
    Stored(Receipt),
    /// In the local spool, to be replayed into PostgreSQL.
    Spooled,
}

impl Accepted {
    pub fn as_str(&self) -> &'static str {
        match self {
            Accepted::Stored(receipt) => receipt.outcome.as_str(),
            Accepted::Spooled => "spooled",
        }
    }
}

/// Why a verified delivery was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Neither the database nor the spool could take it: the sender must retry, since
    /// nothing of it was kept.
    #[error("neither the database nor the spool can take the delivery: {0}")]
    NotDurable(SpoolError),
}

/// The durable-storage half of the ingest path.
pub struct Pipeline {
    writer: Writer,
    spool: Spool,
    /// How long a delivery may wait for its commit before it is spooled instead.
    spool_after: Duration,
    /// Until when (Unix milliseconds) the database is presumed down after a failure: deliveries
    /// go straight to the spool instead of each waiting for a doomed commit.
    suspect_until: AtomicI64,
}

/// How long a database failure sends deliveries straight to the spool.
const SUSPECT_FOR: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

impl Pipeline {
    pub fn new(writer: Writer, spool: Spool, spool_after: Duration) -> Self {
        Pipeline {
            writer,
            spool,
            spool_after,
            suspect_until: AtomicI64::new(0),
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Resolves and stores a verified delivery; returns only once it is durable.
    pub async fn accept(&self, raw: RawDelivery) -> Result<Accepted, PipelineError> {
        let answers_device = matches!(raw.sender, Sender::Device { .. });
        self.accept_as(raw, answers_device).await
    }

    /// As [`accept`](Self::accept), for a delivery nobody waits for the answer of (an
    /// admin's replay of a recorded uplink): no queued downlink or firmware notification
    /// rides on it, so none is lost.
    pub async fn accept_unanswered(&self, raw: RawDelivery) -> Result<Accepted, PipelineError> {
        self.accept_as(raw, false).await
    }

    async fn accept_as(
        &self,
        raw: RawDelivery,
        answers_device: bool,
    ) -> Result<Accepted, PipelineError> {
        let now = Utc::now().timestamp_millis();
        // Skip the database only while it is suspect and the spool is not yet drained: an
        // empty spool means the replayer (or nobody) has found the database down since.
        let suspect = now < self.suspect_until.load(Ordering::Relaxed);
        if !suspect || self.spool.depth().0 == 0 {
            let mut delivery = Delivery::resolve(raw.clone());
            // The sender is waiting for this answer: a device's may carry a downlink.
            delivery.answers_device = answers_device;
            let reason =
                match tokio::time::timeout(self.spool_after, self.writer.submit(delivery)).await {
                    Ok(Ok(receipt)) => return Ok(Accepted::Stored(receipt)),
                    Ok(Err(WriteError::Overloaded)) => "the writer queue is full".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no commit within {:?}", self.spool_after),
                };
            self.suspect_until.store(
                (Utc::now() + SUSPECT_FOR).timestamp_millis(),
                Ordering::Relaxed,
            );
            tracing::warn!(%reason, "spooling deliveries: the database cannot take them now");
        }
        match self.spool.append(&raw).await {
            Ok(()) => Ok(Accepted::Spooled),
            Err(e) => Err(PipelineError::NotDurable(e)),
        }
    }
}
