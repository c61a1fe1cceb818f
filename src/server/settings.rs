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
        let key = crate::secrets::open_key(db_args)?;
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
