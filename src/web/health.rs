//! `/healthz` and `/readyz`.

use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::admin::{ApiKey, Scope};
use crate::web::readiness::Readiness;
use crate::web::state::AppState;

/// The process is up. Says nothing about the database, so an orchestrator does not restart
/// us for a database outage.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take deliveries: the database answers and every migration is applied, or the
/// database is unreachable but the spool still takes deliveries ("degraded: spooling", still
/// 200: a load balancer must not pull a replica that still stores).
///
/// Without credentials the answer is the status alone; with a `read` API key (Bearer) it
/// carries the details below. Every condition goes here: record its detail, and `fail` or
/// `degrade` the readiness when it is not met.
pub async fn readyz(State(state): State<AppState>, mut parts: Parts) -> Response {
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

    let (registered, version) = state.ingest.devices.stats();
    readiness.detail(
        "devices",
        serde_json::json!({
            "registered": registered,
            "version": format!("{version:016x}"),
            "current": state.ingest.devices.is_current(),
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
