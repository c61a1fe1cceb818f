//! Prometheus metrics at `GET /metrics`.
//!
//! Every module records through the `metrics` facade; this installs the Prometheus recorder
//! once per process and renders it. The page tells an unknown plug from a wrong token, so on
//! the public listener it needs an API key with the `read` scope, whatever the client's
//! address (behind a reverse proxy every client is a loopback one). `--metrics-listen` serves
//! it without a key on a separate listener, for a scraper on a private network.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::api::auth::{ApiKey, Scope};
use crate::app::AppState;
use crate::error::AppError;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                ])
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// `GET /metrics` on the public listener: a `read` key is required.
pub async fn render(_key: ReadKey, State(state): State<Arc<AppState>>) -> Response {
    text(&state)
}

/// The router of the `--metrics-listen` listener: `/metrics` without a key.
pub fn open_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<Arc<AppState>>| async move { text(&state) }),
        )
        .with_state(state)
}

/// Binds `--metrics-listen` and serves [`open_router`] there until `shutdown`; returns the
/// bound address (for the banner).
pub async fn spawn_listener(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, open_router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

/// Proof that the request carries a key with the `read` scope.
pub struct ReadKey;

impl FromRequestParts<Arc<AppState>> for ReadKey {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        ApiKey::from_request_parts(parts, state)
            .await?
            .require(Scope::Read)?;
        Ok(ReadKey)
    }
}

fn text(state: &AppState) -> Response {
    let pool = &state.pool;
    metrics::gauge!("things_db_pool_connections").set(pool.size() as f64);
    metrics::gauge!("things_db_pool_idle").set(pool.num_idle() as f64);
    let (records, bytes) = state.ingest.pipeline.spool().depth();
    metrics::gauge!("things_spool_records").set(records as f64);
    metrics::gauge!("things_spool_bytes").set(bytes as f64);
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
