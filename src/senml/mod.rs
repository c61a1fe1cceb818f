//! SenML (Sensor Measurement Lists, RFC 8428) as KPN Things sends it.
//!
//! A SenML pack is a JSON array of records. Each record carries one
//! measurement (`n` name, `u` unit, one of `v`/`vs`/`vb`/`vd` value, `s` sum,
//! `t` time) and may also carry *base* fields (`bn`, `bt`, `bu`, `bv`, `bs`,
//! `bver`) that hold for that record and every later one, so repeated parts
//! (device name, timestamp) are written once. Resolving a pack applies the
//! base fields to each record to get self-contained measurements.
//!
//! KPN uses JSON SenML for device uplinks forwarded to a destination:
//!
//! - the device is identified by a URN in `bn` with a trailing colon
//!   (`urn:dev:DEVEUI:…:` for LoRa, `urn:dev:IMEI:…:` for M2M,
//!   `urn:dev:DVNUUID:…:` for Internet devices), in varying case;
//! - legacy packs start with a base-only record carrying `bn`/`bt` and no
//!   value, which strict RFC parsers reject and we accept;
//! - packs without any time mean "now", i.e. the receipt time.
//!
//! [`resolve()`] turns a request body into [`Measurement`]s; [`device_key`]
//! and [`device_kind`] normalise and classify device URNs for lookup while
//! the original spelling is kept for display.
//!
//! Files: `record` reads one record's fields, `resolve` applies base fields,
//! `name`, `time` and `data` hold the per-field rules, `urn` the device URN
//! rules, `error` the error type.

mod data;
mod error;
mod name;
mod peek;
mod record;
mod resolve;
pub mod time;
mod urn;

pub use error::SenmlError;
pub use peek::{PeekError, peek_device};
pub use resolve::{Measurement, Value, resolve};
pub use urn::{DeviceKind, device_key, device_kind};
