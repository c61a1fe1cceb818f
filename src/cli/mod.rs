//! The administrative commands: thin wrappers that open the same database as `serve` and
//! call the shared [`crate::admin`] operations.

pub mod api_keys;
pub mod destinations;
pub mod devices;
pub mod doctor;
pub mod downlinks;
pub mod firmware;
pub mod fota;
pub mod send;

use crate::config::DbArgs;
use crate::secrets::SecretKey;
use crate::store::{Database, PoolSettings, key_check};

/// Opens the database (starting the embedded cluster if `serve` is not running) and checks
/// the secret key against it.
pub async fn open(db_args: &DbArgs) -> anyhow::Result<(Database, SecretKey)> {
    let key = crate::secrets::open_key(db_args)?;
    let database = Database::open(db_args, &PoolSettings::default()).await?;
    if let Err(e) = key_check::verify_or_init(&database.pool, &key).await {
        database.close().await;
        return Err(e.into());
    }
    Ok((database, key))
}
