//! The outbox operations shared by the API and the CLI: queue, look up, list, cancel.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::Status;
use super::request::{Checked, RequestError};
use crate::senml::device_key;
use crate::store::devices;
use crate::store::downlinks::{self, DownlinkRow, ListFilter, NewRow};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no data was ever received from device {0}")]
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

/// The device a request targets: must be known (some data of it was stored).
pub async fn known_device(pool: &PgPool, urn: &str) -> Result<(i64, String), OutboxError> {
    let key = device_key(urn.trim());
    match devices::find(pool, &key).await? {
        Some(device) => Ok((device.id, key)),
        None => Err(OutboxError::UnknownDevice(urn.trim().to_owned())),
    }
}

/// Queues a checked downlink for the device `device_id`.
pub async fn queue(
    pool: &PgPool,
    device_id: i64,
    urn_key: &str,
    checked: &Checked,
    idempotency_key: Option<&str>,
) -> Result<Queued, OutboxError> {
    if let Some(key) = idempotency_key {
        check_idempotency_key(key)?;
    }
    let hash = request_hash(urn_key, checked);
    let id = Uuid::new_v4();
    let row = NewRow {
        id,
        device_id,
        port: checked.port,
        payload_hex: checked.payload_hex.as_deref(),
        body: &checked.body,
        idempotency_key,
        request_hash: &hash,
    };
    match downlinks::insert(pool, &row).await? {
        Ok(()) => {
            metrics::counter!("things_downlinks_total", "state" => Status::Queued.as_str())
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
fn request_hash(urn_key: &str, checked: &Checked) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(urn_key.as_bytes());
    hash.update([0]);
    hash.update(checked.port.unwrap_or(0).to_be_bytes());
    hash.update(checked.body.as_bytes());
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
        metrics::counter!("things_downlinks_total", "state" => Status::Cancelled.as_str())
            .increment(1);
        Ok(row)
    } else {
        Err(OutboxError::NotCancellable {
            id,
            status: row.status,
        })
    }
}
