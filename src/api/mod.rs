//! The dashboard API under `/api/v1`: read access to what was stored, for API-key holders,
//! and the admin operations.

pub mod admin;
pub mod auth;
pub mod auth_limit;
pub mod cursor;
pub mod devices;
pub mod docs;
pub mod downlinks;
pub mod export;
pub mod live;
pub mod measurements;
pub mod messages;
pub mod params;
pub mod series;
pub mod stream;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Default of `--max-series-points`.
pub const DEFAULT_MAX_SERIES_POINTS: u64 = 10_000;

/// What the API keeps per process.
pub struct ApiState {
    pub live: Arc<live::LiveHub>,
    pub auth_limiter: auth_limit::AuthLimiter,
    /// Most points one `/series` answer may hold.
    pub max_series_points: u64,
    /// The pool exports read from (`store::Database::stream_pool`), apart from ingestion's.
    pub stream_pool: sqlx::PgPool,
}

impl ApiState {
    pub fn new(max_series_points: u64, stream_pool: sqlx::PgPool) -> ApiState {
        ApiState {
            stream_pool,
            live: Arc::new(live::LiveHub::default()),
            auth_limiter: auth_limit::AuthLimiter::default(),
            max_series_points: max_series_points.max(1),
        }
    }
}

/// Every documented route: the router and the OpenAPI document come from this one list, so
/// they cannot diverge.
fn documented() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(devices::list))
        .routes(routes!(devices::get))
        .routes(routes!(devices::latest))
        .routes(routes!(series::series))
        .routes(routes!(measurements::list))
        .routes(routes!(stream::stream))
        .routes(routes!(messages::list))
        .routes(routes!(messages::raw))
        .routes(routes!(admin::list_destinations, admin::add_destination))
        .routes(routes!(admin::rotate_destination))
        .routes(routes!(admin::remove_destination))
        .routes(routes!(admin::list_api_keys, admin::create_api_key))
        .routes(routes!(admin::revoke_api_key))
        .routes(routes!(downlinks::queue))
        .routes(routes!(downlinks::list))
        .routes(routes!(downlinks::show, downlinks::cancel))
}

pub fn router() -> Router<Arc<AppState>> {
    let (router, _) = documented().split_for_parts();
    router.route("/openapi.json", get(docs::openapi_json))
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().split_for_parts().1
}
