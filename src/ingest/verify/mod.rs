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

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::secrets::{SealError, SecretKey};

/// A sender's opened secrets: the current one, and the previous one with the end of its
/// overlap (dropped when it does not open: it is only a grace).
pub(crate) type OpenedSecrets = (Vec<u8>, Option<(Vec<u8>, DateTime<Utc>)>);

/// Opens a row's sealed secrets, sealed with its `id` as associated data.
pub(crate) fn open_secrets(
    key: &SecretKey,
    id: Uuid,
    current: &[u8],
    previous: Option<&[u8]>,
    previous_until: Option<DateTime<Utc>>,
) -> Result<OpenedSecrets, SealError> {
    let context = id.as_bytes();
    let current = key.open(current, context)?;
    let previous = match (previous, previous_until) {
        (Some(sealed), Some(until)) => key.open(sealed, context).ok().map(|s| (s, until)),
        _ => None,
    };
    Ok((current, previous))
}
