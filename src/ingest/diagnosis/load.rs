//! Loads what a diagnosis compares a recorded request with: every live destination or device
//! registration with its opened secrets (the previous one even past its overlap), and what
//! removed ones tell about the recorded plug or device.

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::{Candidate, Recorded, Senders};
use crate::ingest::verify::open_secrets;
use crate::secrets::SecretKey;
use crate::store::{destinations, device_keys};

/// The senders of the recorded event's door. A row whose secrets do not open is skipped.
pub async fn load(
    pool: &PgPool,
    key: &SecretKey,
    event: &Recorded<'_>,
) -> Result<Senders, sqlx::Error> {
    let mut senders = Senders::default();
    if event.door == "destination" {
        for row in destinations::list_active(pool).await? {
            let Ok((current, previous)) = open_secrets(
                key,
                row.id,
                &row.secret_sealed,
                row.previous_sealed.as_deref(),
                row.previous_expires_at,
            ) else {
                continue;
            };
            senders.candidates.push(Candidate {
                name: row.name,
                plug: row.plug,
                urn_key: None,
                current,
                previous,
                required_headers: row
                    .required_headers
                    .0
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect::<BTreeMap<_, _>>(),
            });
        }
        if let Some(plug) = event.plug {
            senders.removed_destination = destinations::removed_with_plug(pool, plug).await?;
        }
    } else {
        for row in device_keys::list_live(pool).await? {
            let Ok((current, previous)) = open_secrets(
                key,
                row.id,
                &row.secret_sealed,
                row.previous_sealed.as_deref(),
                row.previous_expires_at,
            ) else {
                continue;
            };
            senders.candidates.push(Candidate {
                name: row.urn,
                plug: None,
                urn_key: Some(row.urn_key),
                current,
                previous,
                required_headers: BTreeMap::new(),
            });
        }
        if let Some(device) = event.device_key {
            senders.removed_registration = device_keys::was_removed(pool, device).await?;
        }
    }
    Ok(senders)
}
