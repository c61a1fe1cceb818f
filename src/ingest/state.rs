//! What the doors need, and nothing else: the router's state hands them this by `FromRef`.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ingest::pipeline::Pipeline;
use crate::ingest::verify::destinations::SecretCache;

/// The state of every ingest door; cheap to clone (the router clones it per request).
#[derive(Clone)]
pub struct IngestState {
    /// The destinations and their opened secrets, kept current by their listener.
    pub secrets: Arc<SecretCache>,
    /// Makes verified deliveries durable (writer, then spool).
    pub pipeline: Arc<Pipeline>,
    /// Ingest requests allowed in flight at once, shared by every door.
    pub slots: Arc<Semaphore>,
    /// Largest accepted ingest body, in bytes.
    pub max_body: usize,
}

impl IngestState {
    /// `max_inflight` is at least one: a door that refuses everything would be no door.
    pub fn new(
        secrets: Arc<SecretCache>,
        pipeline: Pipeline,
        max_inflight: usize,
        max_body: usize,
    ) -> Self {
        IngestState {
            secrets,
            pipeline: Arc::new(pipeline),
            slots: Arc::new(Semaphore::new(max_inflight.max(1))),
            max_body,
        }
    }
}
