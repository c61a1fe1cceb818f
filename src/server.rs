//! `serve`: opens the database, loads the secrets, binds the listener, prints the banner, and
//! shuts everything down in order on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, router};
use crate::config::{DbArgs, ServeArgs};
use crate::ingest::secret_cache::SecretCache;
use crate::secrets::SecretKey;
use crate::store::{Database, PoolSettings, key_check};
use crate::tls;

/// How long in-flight requests may take to finish once shutdown starts.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Where the certificate came from, for the banner.
enum CertSource {
    Files(PathBuf),
    Development(PathBuf),
    None,
}

pub async fn run(db_args: &DbArgs, args: &ServeArgs) -> anyhow::Result<()> {
    let key = open_secret_key(db_args)?;
    let (rustls_config, cert_source) = tls_config(db_args, args)?;

    let settings = PoolSettings {
        max_connections: args.db_pool,
        acquire_timeout: args.db_timeout,
    };
    let database = Database::open(db_args, &settings).await?;
    let result = serve_with(&database, key, rustls_config, cert_source, db_args, args).await;
    database.close().await;
    result
}

async fn serve_with(
    database: &Database,
    key: SecretKey,
    rustls_config: Option<RustlsConfig>,
    cert_source: CertSource,
    db_args: &DbArgs,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    key_check::verify_or_init(&database.pool, &key).await?;
    let shutdown = CancellationToken::new();
    let secrets = SecretCache::load(database.pool.clone(), key.clone())
        .await
        .context("cannot load destinations")?;
    secrets.clone().spawn_refresher(shutdown.clone());

    let api = Arc::new(crate::api::ApiState::new(args.max_series_points));
    api.live
        .clone()
        .spawn_listener(database.pool.clone(), shutdown.clone());
    let state = Arc::new(AppState {
        pool: database.pool.clone(),
        secrets: secrets.clone(),
        max_body: args.max_body,
        key: key.clone(),
        api: api.clone(),
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();

    let handle: Handle<SocketAddr> = Handle::new();
    let server = {
        let handle = handle.clone();
        let listen = args.listen;
        async move {
            match rustls_config {
                Some(config) => {
                    axum_server::bind_rustls(listen, config)
                        .handle(handle)
                        .serve(app)
                        .await
                }
                None => axum_server::bind(listen).handle(handle).serve(app).await,
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
    shutdown.cancel();
    tracing::info!("stopped");
    Ok(())
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

fn tls_config(
    db_args: &DbArgs,
    args: &ServeArgs,
) -> anyhow::Result<(Option<RustlsConfig>, CertSource)> {
    if args.plain_http {
        return Ok((None, CertSource::None));
    }
    let (cert, key, source) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), CertSource::Files(cert.clone())),
        _ => {
            let (cert, key) = tls::dev_certificate(&db_args.data_dir.join("tls"))?;
            (cert.clone(), key, CertSource::Development(cert))
        }
    };
    let (chain, private_key) = tls::load_pem(&cert, &key)?;
    let config = tls::server_config(chain, private_key)?;
    Ok((Some(RustlsConfig::from_config(Arc::new(config))), source))
}

fn print_banner(
    bound: SocketAddr,
    args: &ServeArgs,
    database: &Database,
    cert: &CertSource,
    db_args: &DbArgs,
    key_origin: &str,
    secrets: &SecretCache,
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
        format!("  database:    {}", database.description()),
        format!(
            "  secret key:  {key_origin} (keep it: without it stored secrets cannot be opened)"
        ),
        format!("  destinations: {bound_count} active, {pending} pending"),
    ];
    match cert {
        CertSource::Files(path) => lines.push(format!("  certificate: {}", path.display())),
        CertSource::Development(path) => lines.push(format!(
            "  certificate: {} (DEV ONLY: self-signed; KPN Things requires a certificate from a public CA)",
            path.display()
        )),
        CertSource::None => lines.push(
            "  tls:         none (--plain-http: run behind a TLS-terminating proxy only)".to_owned(),
        ),
    }
    if database.is_embedded() {
        lines.push(format!(
            "  DEV ONLY: embedded PostgreSQL under {data_dir}; set DATABASE_URL for production"
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
