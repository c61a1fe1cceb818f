//! Ingestion: the path from bytes on the wire to rows in PostgreSQL.
//!
//! Every front door follows the same order, chosen so that nothing unauthenticated costs
//! more than a hash and nothing authenticated is lost:
//!
//! 1. size limit (the body is read at most up to the limit),
//! 2. the door's headers (`Things-Plug-UUID`, `Things-Message-Token`),
//! 3. secret from an in-memory cache in [`verify`], constant-time token check,
//! 4. only then parsing the SenML (a verified body that does not parse is quarantined, not
//!    rejected: KPN would retry it three times and then drop it),
//! 5. the [`writer`] commits it with other concurrent deliveries in one transaction (message,
//!    devices, measurements, latest values), or the [`spool`] keeps it while the database
//!    cannot,
//! 6. the answer, only after the commit.
//!
//! The doors ([`doors`]) are HTTP handlers; everything after verification is theirs in
//! common ([`pipeline`]). Nothing here knows the router or the dashboard API: a door is
//! given an [`IngestState`] and nothing else.

pub mod delivery;
pub mod diagnosis;
pub mod doors;
pub mod events;
pub mod headers;
pub mod pipeline;
pub mod spool;
mod state;
pub mod verify;
pub mod writer;

pub use state::{DoorLimits, IngestState};
