//! The outbox operations shared by the API and the CLI: queue, look up, list, cancel.
//!
//! A downlink for a device registered for the device doors rides on the answer to its next
//! uplink (transport `response`); one for a device known only from KPN's deliveries goes
//! through KPN's API (transport `kpn`).

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use std::time::Duration;

use super::Status;
use super::answer;
use super::request::{Checked, RequestError, check_json};
use crate::senml::device_key;
use crate::store::downlinks::{self, DownlinkRow, ListFilter, NewRow, Target};
use crate::store::{device_keys, devices};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("device {0} is not registered and no data was ever received from it")]
    UnknownDevice(String),
    #[error("the Idempotency-Key was already used for a different downlink")]
    IdempotencyConflict,
    #[error("downlink {0} not found")]
    NotFound(Uuid),
    #[error("downlink {id} is {status}: only a queued downlink can be cancelled")]
    NotCancellable { id: Uuid, status: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The answer to a queue request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = QueuedDownlink)]
pub struct Queued {
    pub id: Uuid,
    /// `queued`, unless an earlier request with the same `Idempotency-Key` queued it already.
    #[schema(value_type = Status)]
    pub status: String,
    /// False when an earlier request with the same idempotency key queued it.
    #[serde(skip)]
    pub created: bool,
}

/// The device a request targets, and so how its downlink travels.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// Known only from its data (through KPN): sent through KPN's API.
    Kpn { device_id: i64, urn_key: String },
    /// Registered for the device doors: carried in the answer to its next uplink.
    Registered {
        device_key_id: Uuid,
        urn_key: String,
        /// As registered: the pack's base name.
        urn: String,
    },
}

impl Recipient {
    pub fn urn_key(&self) -> &str {
        match self {
            Recipient::Kpn { urn_key, .. } | Recipient::Registered { urn_key, .. } => urn_key,
        }
    }
}

/// The device a request targets: registered for the device doors, or else known (some data
/// of it was stored).
pub async fn recipient(pool: &PgPool, urn: &str) -> Result<Recipient, OutboxError> {
    let key = device_key(urn.trim());
    if let Some(registration) = device_keys::get(pool, &key).await? {
        return Ok(Recipient::Registered {
            device_key_id: registration.id,
            urn_key: key,
            urn: registration.urn,
        });
    }
    match devices::find(pool, &key).await? {
        Some(device) => Ok(Recipient::Kpn {
            device_id: device.id,
            urn_key: key,
        }),
        None => Err(OutboxError::UnknownDevice(urn.trim().to_owned())),
    }
}

/// Checks a queue request for `recipient`: what will be sent, and how it travels. `ttl` (in
/// the request, else `default_ttl`) applies to registered devices only.
pub fn check_for(
    recipient: &Recipient,
    request: &serde_json::Value,
    default_ttl: Duration,
) -> Result<(Target, Checked), OutboxError> {
    match recipient {
        Recipient::Kpn { device_id, urn_key } => {
            if request.get("ttl").is_some() {
                return Err(RequestError::Invalid {
                    field: "ttl",
                    reason: "only downlinks for registered devices, which ride on the \
                             device's answers, have a ttl; KPN keeps its own"
                        .into(),
                }
                .into());
            }
            let checked = check_json(urn_key, request)?;
            Ok((
                Target::Kpn {
                    device_id: *device_id,
                },
                checked,
            ))
        }
        Recipient::Registered {
            device_key_id, urn, ..
        } => {
            let checked = answer::check(urn, request)?;
            let ttl = answer::ttl(request, default_ttl)?;
            Ok((
                Target::Response {
                    device_key_id: *device_key_id,
                    ttl,
                },
                checked,
            ))
        }
    }
}

/// Queues a checked downlink for `target`.
pub async fn queue(
    pool: &PgPool,
    target: Target,
    urn_key: &str,
    checked: &Checked,
    idempotency_key: Option<&str>,
) -> Result<Queued, OutboxError> {
    if let Some(key) = idempotency_key {
        check_idempotency_key(key)?;
    }
    let hash = request_hash(urn_key, checked, &target);
    let id = Uuid::new_v4();
    let transport = match target {
        Target::Kpn { .. } => "kpn",
        Target::Response { .. } => "response",
    };
    let row = NewRow {
        id,
        target,
        port: checked.port,
        payload_hex: checked.payload_hex.as_deref(),
        body: &checked.body,
        idempotency_key,
        request_hash: &hash,
    };
    match downlinks::insert(pool, &row).await? {
        Ok(()) => {
            metrics::counter!("things_downlinks_total", "state" => Status::Queued.as_str(), "transport" => transport)
                .increment(1);
            Ok(Queued {
                id,
                status: Status::Queued.as_str().to_owned(),
                created: true,
            })
        }
        Err((existing, existing_hash)) if existing_hash == hash => {
            let row = downlinks::get(pool, existing)
                .await?
                .ok_or(OutboxError::NotFound(existing))?;
            Ok(Queued {
                id: existing,
                status: row.status,
                created: false,
            })
        }
        Err(_) => Err(OutboxError::IdempotencyConflict),
    }
}

fn check_idempotency_key(key: &str) -> Result<(), OutboxError> {
    let fine = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| b.is_ascii_graphic());
    if fine {
        Ok(())
    } else {
        Err(RequestError::Malformed {
            field: "Idempotency-Key",
            reason: format!("expected 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        }
        .into())
    }
}

/// Identifies what was asked, to tell a retry from a reuse of the key for something else.
fn request_hash(urn_key: &str, checked: &Checked, target: &Target) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(urn_key.as_bytes());
    hash.update([0]);
    hash.update(checked.port.unwrap_or(0).to_be_bytes());
    hash.update(checked.body.as_bytes());
    // The ttl is part of what was asked (KPN downlinks keep their hash as before).
    if let Target::Response { ttl, .. } = target {
        hash.update([0]);
        hash.update(ttl.as_millis().to_be_bytes());
    }
    hash.finalize().to_vec()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<DownlinkRow, OutboxError> {
    downlinks::get(pool, id)
        .await?
        .ok_or(OutboxError::NotFound(id))
}

pub async fn list(
    pool: &PgPool,
    device: Option<&str>,
    status: Option<Status>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<DownlinkRow>, OutboxError> {
    let key = device.map(|d| device_key(d.trim()));
    let filter = ListFilter {
        device_key: key.as_deref(),
        status: status.map(Status::as_str),
        before_seq,
        limit,
    };
    Ok(downlinks::list(pool, &filter).await?)
}

/// Cancels a downlink not yet sent (queued, also between retries).
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<DownlinkRow, OutboxError> {
    let cancelled = downlinks::cancel(pool, id).await?;
    let row = get(pool, id).await?;
    if cancelled {
        metrics::counter!("things_downlinks_total", "state" => Status::Cancelled.as_str(), "transport" => row.transport.clone())
            .increment(1);
        Ok(row)
    } else {
        Err(OutboxError::NotCancellable {
            id,
            status: row.status,
        })
    }
}
