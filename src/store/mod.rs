//! PostgreSQL: connecting (embedded cluster or external server), migrations, and one module
//! per family of tables.
//!
//! PostgreSQL is the only shared state: every process (the server, the CLI, replicas) talks to
//! the same database and nothing else, so the CLI works the same whether or not `serve` runs.

pub mod answer_downlinks;
pub mod api_keys;
mod batch_write;
pub mod console_sessions;
pub mod deliveries;
pub mod deliveries_list;
pub mod destination_stats;
pub mod destinations;
pub mod device_keys;
pub mod device_uplinks;
pub mod devices;
pub mod door_events;
pub mod downlinks;
pub mod embedded;
pub mod firmware;
pub mod fota;
mod fota_answers;
pub mod key_check;
pub mod known_ids;
pub mod listen;
pub mod live;
pub mod measurements;
pub mod message_detail;
pub mod messages;
pub mod partitions;
mod sealed_secrets;
pub mod series;
pub mod series_write;
pub mod stored_text;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DbArgs;
use embedded::{EmbeddedOptions, EmbeddedPostgres};

/// Name of the database the embedded cluster holds our tables in.
const EMBEDDED_DATABASE: &str = "things";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("invalid DATABASE_URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How a process wants its pools.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Size of [`Database::stream_pool`].
    pub stream_connections: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            stream_connections: 2,
        }
    }
}

/// An open, migrated database, and the embedded cluster behind it if we started one.
pub struct Database {
    pub pool: PgPool,
    /// For work whose length the client decides: CSV/NDJSON exports (held while the client
    /// reads) and the live stream's listener (held for ever). Separate from `pool`, so that
    /// however many of them run, ingestion and the API keep their connections. Connects
    /// lazily: the CLI never opens it.
    pub stream_pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
    /// Where the embedded cluster lives, when there is one.
    cluster: Option<embedded::ClusterLocation>,
    description: String,
}

impl Database {
    /// Connects as configured: `--database-url` if given, else the embedded cluster of the
    /// data directory, in `DATA_DIR/pg` or where `DATA_DIR/pg.location` says (started here, or
    /// attached to if another process of ours runs it).
    /// Applies pending migrations either way.
    pub async fn open(args: &DbArgs, settings: &PoolSettings) -> Result<Database, StoreError> {
        let mut cluster = None;
        let (options, embedded, description) = match &args.database_url {
            Some(url) => {
                let options = PgConnectOptions::from_str(url).map_err(StoreError::Url)?;
                let description = format!(
                    "PostgreSQL at {}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("(default)")
                );
                (options, None, description)
            }
            None => {
                let data_dir = absolute_data_dir(&args.data_dir)?;
                let location = embedded::cluster_location(&data_dir)?;
                let cluster_dir = location.dir.clone();
                let pg = EmbeddedPostgres::start(&cluster_dir, &EmbeddedOptions { durable: true })
                    .await?;
                cluster = Some(location);
                let base = PgConnectOptions::new()
                    .socket(pg.socket_dir())
                    .port(pg.port())
                    .username(pg.user());
                create_database_if_missing(&base, EMBEDDED_DATABASE).await?;
                let description = format!("embedded PostgreSQL in {}", cluster_dir.display());
                (base.database(EMBEDDED_DATABASE), Some(pg), description)
            }
        };
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::Connect)?;
        MIGRATOR.run(&pool).await?;
        let stream_pool = PgPoolOptions::new()
            .max_connections(settings.stream_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Database {
            pool,
            stream_pool,
            embedded,
            cluster,
            description,
        })
    }

    /// Human description of where the data is, for banners and logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The embedded cluster's location, for the banner.
    pub fn cluster(&self) -> Option<&embedded::ClusterLocation> {
        self.cluster.as_ref()
    }

    /// Closes the pool and stops the embedded cluster if this process started it.
    pub async fn close(self) {
        self.stream_pool.close().await;
        self.pool.close().await;
        if let Some(pg) = self.embedded
            && let Err(e) = pg.stop().await
        {
            tracing::error!(error = %e, "embedded PostgreSQL did not stop cleanly");
        }
    }
}

/// Whether all migrations known to this binary are applied (for `/readyz`).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .all(|m| applied.contains(&m.version)))
}

fn absolute_data_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    })?;
    std::fs::canonicalize(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    })
}

async fn create_database_if_missing(base: &PgConnectOptions, name: &str) -> Result<(), StoreError> {
    let mut conn = base
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(StoreError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .map_err(StoreError::Connect)?;
    if !exists {
        // Two processes may race here; the loser's "already exists" is success.
        let sql = format!("CREATE DATABASE \"{name}\"");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(StoreError::Connect(e));
            }
        }
    }
    Ok(())
}
