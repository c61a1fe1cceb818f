//! Verification: the in-memory caches a door checks a delivery's signature against, so
//! that verifying never touches the database (an unauthenticated request costs a hash and
//! nothing else, and an unknown sender costs the same as a known one with a wrong token).
//!
//! One file per kind of sender: [`destinations`] for KPN destinations (plug and shared
//! secret). The caches of device keys for the device doors belong here too, each kept
//! current by the same `store::listen` helper.

pub mod destinations;
