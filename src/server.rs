//! `serve`: opens the database, loads the secrets, binds the listener, prints the banner, and
//! shuts everything down in order on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, router};
use crate::config::{DbArgs, LimitArgs, ServeArgs};
use crate::hardening::{ConnectionLimits, GuardAcceptor, LimitReached};
use crate::ingest::IngestState;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::spool::Spool;
use crate::ingest::verify::destinations::SecretCache;
use crate::ingest::writer::{Writer, WriterConfig};
use crate::secrets::SecretKey;
use crate::store::{Database, PoolSettings, key_check, partitions};
use crate::tls;
use crate::tls::reload::{CertPair, Reloader};
use crate::tls::resolver::CertResolver;

/// How long in-flight requests may take to finish once shutdown starts.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// How often certificate files are checked for changes.
const CERT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where the certificate came from, for the banner.
enum CertSource {
    Files(Vec<PathBuf>),
    Acme(Vec<String>),
    Development(PathBuf),
    None,
}

/// The TLS side of `serve`: the server configuration and what keeps its certificates fresh.
struct TlsSetup {
    config: Option<Arc<rustls::ServerConfig>>,
    reloader: Option<Reloader>,
    acme: Option<tls::acme::Acme>,
    source: CertSource,
}

pub async fn run(db_args: &DbArgs, args: &ServeArgs) -> anyhow::Result<()> {
    let key = open_secret_key(db_args)?;
    let tls_setup = tls_config(db_args, args)?;

    let settings = PoolSettings {
        max_connections: args.db_pool,
        acquire_timeout: args.db_timeout,
        stream_connections: args.limits.db_stream_pool,
    };
    let database = Database::open(db_args, &settings).await?;
    let result = serve_with(&database, key, tls_setup, db_args, args).await;
    database.close().await;
    result
}

async fn serve_with(
    database: &Database,
    key: SecretKey,
    tls_setup: TlsSetup,
    db_args: &DbArgs,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    key_check::verify_or_init(&database.pool, &key).await?;
    let shutdown = CancellationToken::new();
    // Not fatal: the DEFAULT partition takes every row until the monthly ones exist, and
    // the maintenance task tries again.
    if let Err(e) = partitions::ensure(&database.pool, chrono::Utc::now()).await {
        tracing::warn!(error = %e, "cannot create measurements partitions yet");
    }
    spawn_maintenance(database.pool.clone(), args.retention, shutdown.clone());
    let secrets = SecretCache::load(database.pool.clone(), key.clone())
        .await
        .context("cannot load destinations")?;
    secrets.clone().spawn_refresher(shutdown.clone());
    let downlink_worker = crate::downlink::worker::start(&database.pool, args, &shutdown)?;
    let TlsSetup {
        config: mut rustls_config,
        reloader,
        acme,
        source: cert_source,
    } = tls_setup;
    if let Some(reloader) = reloader {
        reloader.spawn(shutdown.clone());
    }
    if let Some(acme) = acme {
        rustls_config = Some(Arc::new(acme.spawn(shutdown.clone())));
    }

    let writer_config = WriterConfig {
        max_batch: args.writer_batch,
        concurrency: args.writer_concurrency,
        ..WriterConfig::default()
    };
    let (writer, writer_task) = Writer::start(database.pool.clone(), writer_config);
    let spool_dir = db_args.data_dir.join("spool");
    let spool = Spool::open(&spool_dir, args.spool_max as u64)
        .with_context(|| format!("cannot open the spool in {}", spool_dir.display()))?;
    spool.spawn_replayer(writer.clone(), database.pool.clone(), shutdown.clone());
    let api = Arc::new(crate::api::ApiState::new(
        args.max_series_points,
        database.stream_pool.clone(),
    ));
    api.live
        .clone()
        .spawn_listener(database.stream_pool.clone(), shutdown.clone());
    let state = Arc::new(AppState {
        pool: database.pool.clone(),
        ingest: IngestState::new(
            secrets.clone(),
            Pipeline::new(writer, spool, args.spool_after),
            args.max_inflight,
            args.max_body,
        ),
        metrics: crate::metrics::install(),
        downlinks_enabled: downlink_worker.is_some(),
        downlink_worker: downlink_worker.as_ref().map(|w| w.health.clone()),
        key: key.clone(),
        api: api.clone(),
    });
    let metrics_bound = match args.metrics_listen {
        Some(addr) => {
            Some(crate::metrics::spawn_listener(addr, state.clone(), shutdown.clone()).await?)
        }
        None => None,
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();

    let handle: Handle<SocketAddr> = Handle::new();
    let server = {
        let handle = handle.clone();
        let listen = args.listen;
        let limits = args.limits.clone();
        async move {
            let guard = GuardAcceptor::new(ConnectionLimits {
                max_connections: limits.max_connections as usize,
                max_connections_per_ip: limits.max_connections_per_ip as usize,
                idle_timeout: limits.idle_timeout,
                request_timeout: limits.request_timeout,
            });
            match rustls_config {
                Some(config) => {
                    let acceptor = tls::acme::ChallengeCloser(
                        RustlsAcceptor::new(RustlsConfig::from_config(config))
                            .handshake_timeout(limits.tls_handshake_timeout)
                            .acceptor(guard),
                    );
                    let server = axum_server::bind(listen).acceptor(acceptor);
                    harden(server, &limits).handle(handle).serve(app).await
                }
                None => {
                    let server = axum_server::bind(listen).acceptor(guard);
                    harden(server, &limits).handle(handle).serve(app).await
                }
            }
        }
    };
    let server = tokio::spawn(server);

    let Some(bound) = handle.listening().await else {
        // The server task ended before listening: report its error.
        let error = match server.await {
            Ok(Err(e)) => anyhow::Error::new(e),
            Ok(Ok(())) => anyhow::anyhow!("the server stopped before listening"),
            Err(e) => anyhow::Error::new(e),
        };
        return Err(error.context(format!("cannot listen on {}", args.listen)));
    };
    print_banner(
        bound,
        args,
        database,
        &cert_source,
        db_args,
        key.origin(),
        &secrets,
        metrics_bound,
    );

    wait_for_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    api.live.close();
    handle.graceful_shutdown(Some(GRACE_PERIOD));
    // A second signal forces the exit.
    tokio::select! {
        result = server => { result??; }
        _ = wait_for_signal() => {
            tracing::warn!("second signal: stopping now");
            handle.shutdown();
        }
    }
    writer_task.finish().await;
    shutdown.cancel();
    if let Some(worker) = downlink_worker {
        // It settles the downlinks it holds (each call is bounded by --kpn-timeout).
        let _ = worker.task.await;
    }
    tracing::info!("stopped");
    Ok(())
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

/// Streams one HTTP/2 connection may have open at once; more are refused (REFUSED_STREAM)
/// and well-behaved clients queue them. KPN delivers over few connections with few
/// requests each; 32 leaves room for dashboards.
const H2_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Request body bytes a client may send on one stream before the handler reads them.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Request body bytes a client may send on the whole connection before handlers read them:
/// what unread uploads can cost per connection, however many streams it opens.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest decoded header block (HTTP/1.1 has the same order of limit, hyper's default).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Response bytes buffered per stream ahead of the client's window.
const H2_MAX_SEND_BUFFER: usize = 128 * 1024;
/// How often a quiet HTTP/2 connection is probed with a PING, and how long the answer may
/// take: finds dead peers under a live stream. PINGs (ours or the client's) are not
/// activity for `--idle-timeout`.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the HTTP-level limits; the connection-level ones are in the acceptors. Memory per
/// HTTP/2 connection stays bounded by the figures above: at most 1 MiB of unread request
/// bodies, 32 streams, 128 KiB of queued answer per stream, 16 KiB of headers per request.
fn harden<A>(
    mut server: axum_server::Server<SocketAddr, A>,
    limits: &LimitArgs,
) -> axum_server::Server<SocketAddr, A> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    server
        .http_builder()
        .http2()
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let server = server
        .first_request_timeout(limits.header_read_timeout)
        .accept_error_handler(|peer, error| {
            // Refusals over the connection caps are counted and logged by the acceptor.
            if !error.get_ref().is_some_and(|e| e.is::<LimitReached>()) {
                tracing::debug!(?peer, %error, "connection failed before its first request");
            }
        });
    if limits.no_http2 {
        server.http1_only()
    } else {
        server
    }
}

fn open_secret_key(db_args: &DbArgs) -> anyhow::Result<SecretKey> {
    let env_key = std::env::var("THINGS_SECRET_KEY").ok();
    let path = db_args.secret_key_path();
    // Only the default location is created automatically: an explicitly named file that
    // does not exist is a configuration mistake, not a first run.
    let create = db_args.secret_key_file.is_none();
    Ok(SecretKey::load(env_key.as_deref(), &path, create)?)
}

pub(crate) fn open_key_for_cli(db_args: &DbArgs) -> anyhow::Result<SecretKey> {
    open_secret_key(db_args)
}

fn tls_config(db_args: &DbArgs, args: &ServeArgs) -> anyhow::Result<TlsSetup> {
    if args.plain_http {
        return Ok(TlsSetup {
            config: None,
            reloader: None,
            acme: None,
            source: CertSource::None,
        });
    }
    if !args.acme.acme_domain.is_empty() {
        let settings = tls::acme::AcmeSettings {
            domains: args.acme.acme_domain.clone(),
            email: args.acme.acme_email.clone(),
            directory: args.acme.acme_directory.clone(),
            ca_root: args.acme.acme_ca_root.clone(),
            cache_dir: db_args.data_dir.join("acme"),
        };
        let mut acme = tls::acme::Acme::new(&settings)?;
        if args.limits.no_http2 {
            acme.config.alpn_protocols.retain(|p| p.as_slice() != b"h2");
        }
        return Ok(TlsSetup {
            config: None,
            reloader: None,
            acme: Some(acme),
            source: CertSource::Acme(settings.domains),
        });
    }
    if args.tls_cert.len() != args.tls_key.len() {
        anyhow::bail!(
            "{} --tls-cert but {} --tls-key: give them in pairs, each key after its certificate",
            args.tls_cert.len(),
            args.tls_key.len()
        );
    }
    let (pairs, source) = if args.tls_cert.is_empty() {
        let (cert, key) = tls::dev_certificate(&db_args.data_dir.join("tls"))?;
        let pairs = vec![CertPair {
            cert: cert.clone(),
            key,
        }];
        (pairs, CertSource::Development(cert))
    } else {
        let pairs = args
            .tls_cert
            .iter()
            .zip(&args.tls_key)
            .map(|(cert, key)| CertPair {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect();
        (pairs, CertSource::Files(args.tls_cert.clone()))
    };
    let keys = tls::reload::load_pairs(&pairs)?;
    tls::reload::warn_if_expiring(&keys);
    let resolver = Arc::new(CertResolver::new(keys));
    let mut config = tls::server_config_with_resolver(resolver.clone())?;
    if args.limits.no_http2 {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let reloader = matches!(source, CertSource::Files(_)).then(|| Reloader {
        pairs,
        resolver,
        interval: CERT_WATCH_INTERVAL,
    });
    Ok(TlsSetup {
        config: Some(Arc::new(config)),
        reloader,
        acme: None,
        source,
    })
}

// Everything the banner names comes from a different part of the start.
#[allow(clippy::too_many_arguments)]
fn print_banner(
    bound: SocketAddr,
    args: &ServeArgs,
    database: &Database,
    cert: &CertSource,
    db_args: &DbArgs,
    key_origin: &str,
    secrets: &SecretCache,
    metrics: Option<SocketAddr>,
) {
    let scheme = if args.plain_http { "http" } else { "https" };
    let host = if bound.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        bound.ip().to_string()
    };
    let port = bound.port();
    let data_dir = db_args.data_dir.display();
    let (bound_count, pending, _) = secrets.stats();
    let mut lines = vec![
        format!(
            "things-receiver {} listening on {scheme}://{bound}",
            env!("CARGO_PKG_VERSION")
        ),
        format!("  ingest:      POST {scheme}://{host}:{port}/ingest/kpn"),
        format!("  api:         {scheme}://{host}:{port}/api/v1/measurements"),
        format!("  health:      {scheme}://{host}:{port}/healthz, /readyz"),
        match metrics {
            Some(addr) => format!("  metrics:     http://{addr}/metrics (no key: keep it private)"),
            None => format!("  metrics:     {scheme}://{host}:{port}/metrics (read key)"),
        },
        format!("  database:    {}", database.description()),
        format!(
            "  secret key:  {key_origin} (keep it: without it stored secrets cannot be opened)"
        ),
        format!("  destinations: {bound_count} active, {pending} pending"),
    ];
    match cert {
        CertSource::Files(paths) => {
            for path in paths {
                lines.push(format!(
                    "  certificate: {} (reloaded on change or SIGHUP)",
                    path.display()
                ));
            }
        }
        CertSource::Acme(domains) => lines.push(format!(
            "  certificate: ACME for {} (TLS-ALPN-01 on this port; cached under {data_dir}/acme)",
            domains.join(", ")
        )),
        CertSource::Development(path) => lines.push(format!(
            "  certificate: {} (DEV ONLY: self-signed; KPN Things requires a certificate from a public CA)",
            path.display()
        )),
        CertSource::None => lines.push(
            "  tls:         none (--plain-http: run behind a TLS-terminating proxy only)".to_owned(),
        ),
    }
    if let Some(cluster) = database.cluster() {
        if cluster.relocated {
            lines.push(format!(
                "  cluster:     {} (the postgres user cannot reach {data_dir}; recorded in {data_dir}/{})",
                cluster.dir.display(),
                crate::store::embedded::LOCATION_FILE
            ));
        }
        lines.push(format!(
            "  DEV ONLY: embedded PostgreSQL in {}; set DATABASE_URL for production",
            cluster.dir.display()
        ));
    }
    lines.push(String::new());
    lines.push("Next steps:".to_owned());
    lines.push(format!(
        "  things-receiver --data-dir {data_dir} destinations add --name my-destination"
    ));
    lines.push(format!(
        "  things-receiver --data-dir {data_dir} api-keys create --name dashboard --scope read"
    ));
    lines.push("Stop with Ctrl-C (or SIGTERM): requests in flight finish first.".to_owned());
    println!("{}", lines.join("\n"));
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
