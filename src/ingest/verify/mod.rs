//! Verification: the in-memory caches a door checks a delivery's signature against, so
//! that verifying never touches the database (an unauthenticated request costs a hash and
//! nothing else, and an unknown sender costs the same as a known one with a wrong token).
//!
//! One file per kind of sender, both kept current through one listener ([`refresher`]):
//! [`destinations`] for KPN destinations (plug and shared secret), [`devices`] for devices
//! registered for the device doors (URN and device secret).

pub mod destinations;
pub mod devices;
pub mod refresher;
