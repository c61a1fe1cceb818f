//! Prometheus metrics at `GET /metrics`.
//!
//! Every module records through the `metrics` facade; this installs the Prometheus recorder
//! once per process and renders it. The page says which plugs fail verification and how, so
//! it is served only to loopback clients or to holders of an API key with the `read` scope.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

pub async fn render(
    State(state): State<Arc<AppState>>,
    mut parts: Parts,
) -> Result<Response, AppError> {
    let loopback = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    if !loopback {
        let key = ApiKey::from_request_parts(&mut parts, &state).await?;
        key.require(Scope::Read)?;
    }
    let pool = &state.pool;
    metrics::gauge!("things_db_pool_connections").set(pool.size() as f64);
    metrics::gauge!("things_db_pool_idle").set(pool.num_idle() as f64);
    let (records, bytes) = state.pipeline.spool().depth();
    metrics::gauge!("things_spool_records").set(records as f64);
    metrics::gauge!("things_spool_bytes").set(bytes as f64);
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
