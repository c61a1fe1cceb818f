//! things-receiver: a verified, durable receiver for KPN Things destinations.
//!
//! See `ARCHITECTURE.md` for the request path and the tables.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod downlink;
pub mod error;
pub mod firmware;
pub mod hardening;
pub mod ingest;
pub mod kpn;
pub mod live;
pub mod metrics;
pub mod secrets;
pub mod senml;
pub mod server;
pub mod store;
pub mod time_format;
pub mod tls;
pub mod token;
pub mod web;
