//! What the doors need, and nothing else: the router's state hands them this by `FromRef`.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ingest::events::Recorder;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::verify::destinations::SecretCache;
use crate::ingest::verify::devices::DeviceKeyCache;

/// The state of every ingest door; cheap to clone (the router clones it per request).
#[derive(Clone)]
pub struct IngestState {
    /// The destinations and their opened secrets, kept current by their listener.
    pub secrets: Arc<SecretCache>,
    /// The registered devices and their opened secrets, for the device doors.
    pub devices: Arc<DeviceKeyCache>,
    /// Makes verified deliveries durable (writer, then spool).
    pub pipeline: Arc<Pipeline>,
    /// Ingest requests allowed in flight at once, shared by every door.
    pub slots: Arc<Semaphore>,
    /// Largest accepted destination delivery body, in bytes.
    pub max_body: usize,
    /// Largest accepted device uplink body, in bytes.
    pub device_max_body: usize,
    /// Where the doors record refusals, duplicates and spooled deliveries.
    pub events: Recorder,
}

/// The limits every door shares.
#[derive(Debug, Clone, Copy)]
pub struct DoorLimits {
    pub max_inflight: usize,
    pub max_body: usize,
    pub device_max_body: usize,
}

impl IngestState {
    /// `limits.max_inflight` is at least one: a door that refuses everything would be no door.
    pub fn new(
        secrets: Arc<SecretCache>,
        devices: Arc<DeviceKeyCache>,
        pipeline: Pipeline,
        limits: DoorLimits,
        events: Recorder,
    ) -> Self {
        IngestState {
            secrets,
            devices,
            pipeline: Arc::new(pipeline),
            slots: Arc::new(Semaphore::new(limits.max_inflight.max(1))),
            max_body: limits.max_body,
            device_max_body: limits.device_max_body,
            events,
        }
    }
}
