//! Shared state and the HTTP router.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use crate::ingest::destination;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::secret_cache::SecretCache;

/// What every request handler can reach.
pub struct AppState {
    pub pool: PgPool,
    pub secrets: Arc<SecretCache>,
    /// Makes verified deliveries durable (writer, then spool).
    pub pipeline: Pipeline,
    /// Ingest requests allowed in flight at once.
    pub ingest_slots: tokio::sync::Semaphore,
    /// Largest accepted ingest body, in bytes.
    pub max_body: usize,
    /// Renders the Prometheus metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether KPN credentials are configured, so that downlinks can be sent.
    pub downlinks_enabled: bool,
    /// Seals the secrets of destinations created or rotated through the admin API.
    pub key: crate::secrets::SecretKey,
    /// The dashboard API's own state: live stream, limits, failed-authentication limiter.
    pub api: Arc<crate::api::ApiState>,
}

pub fn router(state: Arc<AppState>) -> Router {
    // The door reads its body itself, under `--max-body`, once the head has been checked.
    Router::new()
        .route(
            "/ingest/kpn",
            on(
                MethodFilter::POST.or(MethodFilter::GET),
                destination::receive,
            ),
        )
        .nest("/api/v1", crate::api::router())
        .route("/metrics", get(crate::metrics::render))
        .merge(crate::api::docs::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The process is up. Says nothing about the database, so an orchestrator does not restart
/// us for a database outage.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take deliveries: the database answers and every migration is applied.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (bound, pending, version) = state.secrets.stats();
    let database = crate::store::migrations_applied(&state.pool).await;
    let (status, database) = match database {
        Ok(true) => (StatusCode::OK, "ok".to_owned()),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "migrations pending".to_owned(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unreachable: {e}")),
    };
    let (spooled, spool_bytes) = state.pipeline.spool().depth();
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "database": database,
        "destinations": {
            "bound": bound,
            "pending": pending,
            "version": format!("{version:016x}"),
            "current": state.secrets.is_current(),
        },
        "spool": { "deliveries": spooled, "bytes": spool_bytes },
    });
    (status, axum::Json(body)).into_response()
}
