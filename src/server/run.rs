//! `run`: starts everything one server is made of on an already bound listener, serves until
//! the shutdown is triggered, then stops it all in order. It waits for no OS signal and
//! installs nothing process-wide that a second call would trip over, so a test can run
//! several servers in one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hardening::{ConnectionLimits, GuardAcceptor};
use crate::ingest::verify::destinations::SecretCache;
use crate::ingest::verify::devices::DeviceKeyCache;
use crate::store::{answer_downlinks, device_uplinks, key_check, partitions};
use crate::tls;
use crate::web::router;

use super::banner::print_banner;
use super::device_listener::DeviceListener;
use super::http::harden;
use super::settings::Settings;
use super::shutdown::Shutdown;
use super::state;
use super::tls_setup::TlsSetup;

/// How long in-flight requests may take to finish once shutdown starts.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Serves on `listener` until `shutdown` is triggered (a second trigger stops at once), then
/// finishes the writes of accepted deliveries, stops the background tasks and closes the
/// database. Returns once everything has stopped.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Settings {
        data_dir,
        serve: args,
        key,
        tls,
        database,
        banner,
    } = settings;
    let served = async {
        key_check::verify_or_init(&database.pool, &key).await?;
        // Stops the background tasks once the listener and the writer are done.
        let tasks = CancellationToken::new();
        // Not fatal: the DEFAULT partition takes every row until the monthly ones exist, and
        // the maintenance task tries again.
        if let Err(e) = partitions::ensure(&database.pool, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "cannot create measurements partitions yet");
        }
        spawn_maintenance(database.pool.clone(), args.retention, tasks.clone());
        spawn_downlink_expiry(database.pool.clone(), tasks.clone());
        let secrets = SecretCache::load(database.pool.clone(), key.clone())
            .await
            .context("cannot load destinations")?;
        let devices = DeviceKeyCache::load(database.pool.clone(), key.clone())
            .await
            .context("cannot load device registrations")?;
        crate::ingest::verify::refresher::spawn(
            database.pool.clone(),
            secrets.clone(),
            devices.clone(),
            tasks.clone(),
        );
        let senders = state::Senders {
            destinations: secrets.clone(),
            devices,
        };
        let downlink_worker = crate::downlink::worker::start(&database.pool, &args, &tasks)?;
        let TlsSetup {
            config: mut rustls_config,
            reloader,
            acme,
            source: cert_source,
        } = tls;
        if let Some(reloader) = reloader {
            reloader.spawn(tasks.clone());
        }
        if let Some(acme) = acme {
            rustls_config = Some(Arc::new(acme.spawn(tasks.clone())));
        }

        let wired = state::build(
            &database,
            &args,
            &data_dir,
            &key,
            &senders,
            downlink_worker.as_ref(),
            &tasks,
        )?;
        let live = wired.state.live.clone();
        let files = wired.state.files.clone();
        spawn_fota_timeout(database.pool.clone(), args.fota_timeout, tasks.clone());
        let metrics_bound = match args.metrics_listen {
            Some(addr) => Some(
                crate::web::metrics::spawn_listener(addr, wired.state.clone(), tasks.clone())
                    .await?,
            ),
            None => None,
        };
        let device_listener = match args.device_listen {
            Some(addr) => {
                Some(DeviceListener::start(addr, wired.state.clone(), &args.limits).await?)
            }
            None => None,
        };
        let device_bound = device_listener.as_ref().map(|l| l.bound);
        let app = router(wired.state).into_make_service_with_connect_info::<SocketAddr>();

        let local = listener.local_addr()?;
        let handle: Handle<SocketAddr> = Handle::new();
        let server = {
            let handle = handle.clone();
            let limits = args.limits.clone();
            async move {
                let guard = GuardAcceptor::new(ConnectionLimits {
                    max_connections: limits.max_connections as usize,
                    max_connections_per_ip: limits.max_connections_per_ip as usize,
                    idle_timeout: limits.idle_timeout,
                    request_timeout: limits.request_timeout,
                    request_cap: Some(super::http::file_request_cap()),
                });
                let server = axum_server::Server::<SocketAddr>::from_listener(listener);
                match rustls_config {
                    Some(config) => {
                        let acceptor = tls::acme::ChallengeCloser(
                            RustlsAcceptor::new(RustlsConfig::from_config(config))
                                .handshake_timeout(limits.tls_handshake_timeout)
                                .acceptor(guard),
                        );
                        let server = server.acceptor(acceptor);
                        harden(server, &limits).handle(handle).serve(app).await
                    }
                    None => {
                        let server = server.acceptor(guard);
                        harden(server, &limits).handle(handle).serve(app).await
                    }
                }
            }
        };
        let mut server = tokio::spawn(server);

        let Some(bound) = handle.listening().await else {
            // The server task ended before listening: report its error.
            let error = match server.await {
                Ok(Err(e)) => anyhow::Error::new(e),
                Ok(Ok(())) => anyhow::anyhow!("the server stopped before listening"),
                Err(e) => anyhow::Error::new(e),
            };
            return Err(error.context(format!("cannot listen on {local}")));
        };
        if banner {
            print_banner(
                bound,
                &args,
                &database,
                &cert_source,
                &data_dir,
                key.origin(),
                &secrets,
                metrics_bound,
                device_bound,
            );
        }

        tokio::select! {
            _ = shutdown.started() => {}
            // The listener failed on its own: stop the rest as for a shutdown.
            result = &mut server => {
                tracing::error!("the listener stopped unexpectedly");
                result??;
            }
        }
        tracing::info!("shutting down: finishing requests in flight");
        live.close();
        handle.graceful_shutdown(Some(GRACE_PERIOD));
        if !server.is_finished() {
            // A second trigger forces the exit.
            tokio::select! {
                result = server => { result??; }
                _ = shutdown.forced() => {
                    tracing::warn!("second signal: stopping now");
                    handle.shutdown();
                }
            }
        }
        if let Some(devices) = device_listener {
            devices.stop(GRACE_PERIOD).await;
        }
        wired.writer_task.finish().await;
        wired.recorder_task.finish().await;
        tasks.cancel();
        // The progress of the last parts served, which the periodic writer may have missed.
        if let Err(e) = files.progress.flush(&database.pool).await {
            tracing::warn!(error = %e, "cannot write the last firmware download progress");
        }
        if let Some(worker) = downlink_worker {
            // It settles the downlinks it holds (each call is bounded by --kpn-timeout).
            let _ = worker.task.await;
        }
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    database.close().await;
    served
}

/// Every minute: downlinks for registered devices whose ttl passed become `expired` (an
/// uplink expires its own device's too, so this is for devices that stopped posting), and
/// device uplink tokens far past the retry window are forgotten.
fn spawn_downlink_expiry(pool: sqlx::PgPool, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = answer_downlinks::expire_overdue(&pool).await {
                tracing::warn!(error = %e, "cannot expire overdue downlinks");
            }
            if let Err(e) = device_uplinks::prune(&pool).await {
                tracing::warn!(error = %e, "cannot prune old device uplink tokens");
            }
        }
    });
}

/// Marks failed the campaign devices that made no progress for `timeout`: every minute, or
/// more often for a short timeout, so a device is failed within a quarter of it late.
fn spawn_fota_timeout(pool: sqlx::PgPool, timeout: Duration, shutdown: CancellationToken) {
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match crate::store::fota::fail_stalled(&pool, timeout).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(devices = n, "firmware campaign devices failed: no progress")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check firmware campaigns for timeouts")
                }
            }
        }
    });
}

/// Hourly: partitions for the coming months, and retention.
fn spawn_maintenance(pool: sqlx::PgPool, retention: Option<Duration>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = chrono::Utc::now();
            if let Err(e) = partitions::ensure(&pool, now).await {
                tracing::warn!(error = %e, "cannot create measurements partitions");
            }
            if let Some(retention) = retention
                && let Err(e) = partitions::drop_expired(&pool, now, retention).await
            {
                tracing::warn!(error = %e, "cannot drop expired measurements partitions");
            }
        }
    });
}
