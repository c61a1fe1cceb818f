//! The one place where the request state is put together from the started parts: the
//! writer, the spool and its replayer, the pipeline, the live hub and what the handlers read.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::ServeArgs;
use crate::downlink::worker::Running;
use crate::ingest::events::{Recorder, RecorderTask, WriterLimits};
use crate::ingest::pipeline::Pipeline;
use crate::ingest::spool::Spool;
use crate::ingest::verify::destinations::SecretCache;
use crate::ingest::verify::devices::DeviceKeyCache;
use crate::ingest::writer::{Writer, WriterConfig, WriterTask};
use crate::ingest::{DoorLimits, IngestState};
use crate::secrets::SecretKey;
use crate::store::Database;
use crate::web::state::{ApiKeyState, AppState};

/// The request state and what `run` stops by hand at shutdown.
pub(super) struct Wired {
    pub state: AppState,
    /// Finished after the listener has stopped, so every accepted delivery is written.
    pub writer_task: WriterTask,
    /// Finished after the writer: flushes the door events still queued.
    pub recorder_task: RecorderTask,
}

/// The caches the doors verify senders against, loaded and kept current by `run`.
pub(super) struct Senders {
    pub destinations: Arc<SecretCache>,
    pub devices: Arc<DeviceKeyCache>,
}

/// Starts the writer, opens the spool under `data_dir/spool` and starts its replayer and
/// the live listener (both stop on `tasks`), and builds the state the router serves.
pub(super) fn build(
    database: &Database,
    args: &ServeArgs,
    data_dir: &Path,
    key: &SecretKey,
    senders: &Senders,
    downlink_worker: Option<&Running>,
    tasks: &CancellationToken,
) -> anyhow::Result<Wired> {
    let writer_config = WriterConfig {
        max_batch: args.writer_batch,
        concurrency: args.writer_concurrency,
        ..WriterConfig::default()
    };
    let (writer, writer_task) = Writer::start(database.pool.clone(), writer_config);
    let spool_dir = data_dir.join("spool");
    let spool = Spool::open(&spool_dir, args.spool_max as u64)
        .with_context(|| format!("cannot open the spool in {}", spool_dir.display()))?;
    spool.spawn_replayer(writer.clone(), database.pool.clone(), tasks.clone());
    let downloads = Arc::new(crate::firmware::downloads::DownloadCache::new(
        database.pool.clone(),
    ));
    downloads.clone().spawn_listener(tasks.clone());
    let files = crate::firmware::http::FileServer {
        downloads,
        images: Arc::new(crate::firmware::cache::ImageCache::new(
            database.pool.clone(),
            crate::firmware::cache::bound_for(args.max_firmware),
        )),
        progress: Arc::default(),
    };
    files
        .progress
        .clone()
        .spawn_writer(database.pool.clone(), tasks.clone());
    let mut api = crate::api::ApiSettings::new(
        args.max_series_points,
        database.stream_pool.clone(),
        downlink_worker.is_some(),
        args.downlink.downlink_ttl,
    );
    api.fota = crate::api::FotaSettings {
        max_firmware: args.max_firmware,
        base_url: args.fota.fota_base_url.clone(),
        version_name: args.fota.fota_version_name.clone(),
    };
    let (events, recorder_task) = Recorder::start(
        database.pool.clone(),
        WriterLimits {
            rate: f64::from(args.rejections_rate),
            max_bytes: args.rejections_max_bytes as u64,
        },
    );
    let live = Arc::new(crate::live::LiveHub::default());
    live.clone()
        .spawn_listener(database.stream_pool.clone(), tasks.clone());
    let state = AppState {
        pool: database.pool.clone(),
        ingest: IngestState::new(
            senders.destinations.clone(),
            senders.devices.clone(),
            Pipeline::new(writer, spool, args.spool_after),
            DoorLimits {
                max_inflight: args.max_inflight,
                max_body: args.max_body,
                device_max_body: args.device_max_body,
            },
            events,
        ),
        api_keys: ApiKeyState {
            pool: database.pool.clone(),
            limiter: Arc::default(),
            session_ttl: args.console_session_ttl,
        },
        live,
        api,
        admin: crate::api::admin::AdminState {
            key: key.clone(),
            secrets: senders.destinations.clone(),
            devices: senders.devices.clone(),
        },
        metrics: crate::metrics::install(),
        downlink_worker: downlink_worker.map(|w| w.health.clone()),
        files,
        notifier: crate::firmware::notification::Notifier { key: key.clone() },
    };
    Ok(Wired {
        state,
        writer_task,
        recorder_task,
    })
}
