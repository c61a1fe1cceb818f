//! Shared state and the HTTP router.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::auth::{ApiKey, Scope};
use crate::ingest::IngestState;
use crate::readiness::Readiness;
use crate::request_id;

/// What every request handler can reach.
pub struct AppState {
    pub pool: PgPool,
    /// What the ingest doors use: secret cache, pipeline, in-flight slots, body limit.
    pub ingest: IngestState,
    /// Renders the Prometheus metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether KPN credentials are configured, so that downlinks can be sent.
    pub downlinks_enabled: bool,
    /// The downlink worker's state (restarts, last failure), when downlinks are enabled.
    pub downlink_worker: Option<Arc<crate::downlink::supervisor::WorkerHealth>>,
    /// Seals the secrets of destinations created or rotated through the admin API.
    pub key: crate::secrets::SecretKey,
    /// The dashboard API's own state: live stream, limits, failed-authentication limiter.
    pub api: Arc<crate::api::ApiState>,
}

impl FromRef<Arc<AppState>> for IngestState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.ingest.clone()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(crate::ingest::doors::routes())
        .nest("/api/v1", crate::api::router())
        .route("/metrics", get(crate::metrics::render))
        .merge(crate::api::docs::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Outermost last: an unusable incoming id is dropped, an id set (kept or made), the
        // answer given the same id, and the request traced in a span that names it.
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(
            request_id::X_REQUEST_ID,
            MakeRequestUuid,
        ))
        .layer(MapRequestLayer::new(request_id::drop_unusable))
        .with_state(state)
}

/// The process is up. Says nothing about the database, so an orchestrator does not restart
/// us for a database outage.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take deliveries: the database answers and every migration is applied, or the
/// database is unreachable but the spool still takes deliveries ("degraded: spooling", still
/// 200: a load balancer must not pull a replica that still stores).
///
/// Without credentials the answer is the status alone; with a `read` API key (Bearer) it
/// carries the details below. Every condition goes here: record its detail, and `fail` or
/// `degrade` the readiness when it is not met.
async fn readyz(State(state): State<Arc<AppState>>, mut parts: Parts) -> Response {
    // A key that is given must be valid: a wrong one is 401 (and counted), not the status.
    let detailed = if parts.headers.contains_key(AUTHORIZATION) {
        match ApiKey::from_request_parts(&mut parts, &state)
            .await
            .and_then(|key| key.require(Scope::Read))
        {
            Ok(()) => true,
            Err(e) => return e.into_response(),
        }
    } else {
        false
    };
    let mut readiness = Readiness::default();

    let database = match crate::store::migrations_applied(&state.pool).await {
        Ok(true) => "ok".to_owned(),
        Ok(false) => {
            readiness.fail();
            "migrations pending".to_owned()
        }
        Err(e) => {
            if state.ingest.pipeline.spool().accepting() {
                readiness.degrade("spooling");
            } else {
                readiness.fail();
            }
            format!("unreachable: {e}")
        }
    };
    readiness.detail("database", database);

    let (bound, pending, version) = state.ingest.secrets.stats();
    readiness.detail(
        "destinations",
        serde_json::json!({
            "bound": bound,
            "pending": pending,
            "version": format!("{version:016x}"),
            "current": state.ingest.secrets.is_current(),
        }),
    );

    let (spooled, spool_bytes) = state.ingest.pipeline.spool().depth();
    readiness.detail(
        "spool",
        serde_json::json!({ "deliveries": spooled, "bytes": spool_bytes }),
    );

    // Reported, not a condition: ingestion does not depend on the downlink worker.
    readiness.detail(
        "downlink_worker",
        serde_json::to_value(state.downlink_worker.as_ref().map(|w| w.report()))
            .unwrap_or_default(),
    );

    if detailed {
        readiness.detailed()
    } else {
        readiness.public()
    }
}
