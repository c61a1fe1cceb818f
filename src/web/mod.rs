//! The HTTP layer on top: the router, the state and its substates, error answers, API-key
//! authentication and its rate limit, health, readiness, metrics and request ids.
//!
//! Each area below contributes its own routes (the ingest door, `api::routes()`, the docs
//! page); this layer merges them and adds what every request shares. Nothing below it imports
//! it: only `server` does.

pub mod auth;
pub mod auth_limit;
pub mod console;
pub mod error;
pub mod health;
pub mod metrics;
pub mod readiness;
pub mod request_id;
pub mod session;
pub mod state;

use axum::Router;
use axum::routing::get;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// Everything the main listener serves.
pub fn router(state: AppState) -> Router {
    // The doors read their bodies themselves, under their limits, once the head is checked.
    let routes = Router::new()
        .merge(crate::ingest::doors::routes())
        .merge(crate::firmware::http::routes())
        .nest("/api/v1", crate::api::routes())
        .route("/metrics", get(metrics::render))
        .merge(crate::api::docs::router())
        .merge(console::routes())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    shared_layers(routes).with_state(state)
}

/// What the plain-HTTP device listener serves: the device doors and the firmware file server,
/// nothing else (no API, no console, no KPN destination door), so exposing it to a private
/// APN exposes only them.
pub fn device_router(state: AppState) -> Router {
    let routes = crate::ingest::doors::device_routes().merge(crate::firmware::http::routes());
    shared_layers(routes).with_state(state)
}

/// The layers every request shares, on either listener.
fn shared_layers(routes: Router<AppState>) -> Router<AppState> {
    routes
        // Outermost last: an unusable incoming id is dropped, an id set (kept or made), the
        // answer given the same id, and the request traced in a span that names it.
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(
            request_id::X_REQUEST_ID,
            MakeRequestUuid,
        ))
        .layer(MapRequestLayer::new(request_id::drop_unusable))
}

/// The OpenAPI document of `/api/v1`, as served and as checked into `docs/openapi.json`.
pub fn document_json() -> String {
    let (_, mut openapi) = crate::api::documented::<AppState>().split_for_parts();
    utoipa::Modify::modify(&crate::api::docs::SharedErrors, &mut openapi);
    crate::api::docs::to_json(&openapi)
}
