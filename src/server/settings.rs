//! Everything [`run`](super::run) needs, built from the command line by `serve` or directly
//! by a test that runs the server inside its own process.

use std::path::PathBuf;

use crate::config::{DbArgs, ServeArgs};
use crate::secrets::SecretKey;
use crate::store::{Database, PoolSettings};

use super::tls_setup::TlsSetup;

/// The opened resources and the flags of one server: owned by `run`, which closes the
/// database once everything has stopped.
pub struct Settings {
    /// `--data-dir`: the spool, the development certificate and the ACME cache live there.
    pub data_dir: PathBuf,
    pub serve: ServeArgs,
    pub key: SecretKey,
    pub tls: TlsSetup,
    pub database: Database,
    /// Print the start banner on stdout once listening (the CLI does; tests need not).
    pub banner: bool,
}

impl Settings {
    /// Opens the key, checks the TLS pairs and opens the database, in that order, so that
    /// configuration mistakes fail before a cluster is started.
    pub async fn from_args(db_args: &DbArgs, args: &ServeArgs) -> anyhow::Result<Settings> {
        let key = open_secret_key(db_args)?;
        let tls = TlsSetup::from_args(&db_args.data_dir, args)?;
        let pools = PoolSettings {
            max_connections: args.db_pool,
            acquire_timeout: args.db_timeout,
            stream_connections: args.limits.db_stream_pool,
        };
        let database = Database::open(db_args, &pools).await?;
        Ok(Settings {
            data_dir: db_args.data_dir.clone(),
            serve: args.clone(),
            key,
            tls,
            database,
            banner: true,
        })
    }
}

/// The sealing key from `THINGS_SECRET_KEY` or the key file.
pub(super) fn open_secret_key(db_args: &DbArgs) -> anyhow::Result<SecretKey> {
    let env_key = std::env::var("THINGS_SECRET_KEY").ok();
    let path = db_args.secret_key_path();
    // Only the default location is created automatically: an explicitly named file that
    // does not exist is a configuration mistake, not a first run.
    let create = db_args.secret_key_file.is_none();
    Ok(SecretKey::load(env_key.as_deref(), &path, create)?)
}
