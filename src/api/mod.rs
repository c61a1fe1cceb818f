//! The dashboard API under `/api/v1`: read access to what was stored, for API-key holders,
//! and the admin operations.

pub mod admin;
pub mod campaigns;
pub mod cursor;
pub mod deliveries;
pub mod deliveries_stream;
pub mod destination_stats;
pub mod devices;
pub mod docs;
pub mod downlinks;
pub mod export;
pub mod firmware;
pub mod measurements;
pub mod messages;
pub mod page;
pub mod params;
pub mod registrations;
pub mod rejections;
pub mod series;
pub mod stream;
pub mod timeline;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::routing::get;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::ApiKey;
use crate::ingest::IngestState;
use crate::live::LiveHub;
use admin::AdminState;

/// The API's settings, fixed at start.
#[derive(Clone)]
pub struct ApiSettings {
    /// Most points one `/series` answer may hold.
    pub max_series_points: u64,
    /// The pool exports read from (`store::Database::stream_pool`), apart from ingestion's.
    pub stream_pool: PgPool,
    /// Whether KPN credentials are configured, so that downlinks can be sent through KPN.
    pub downlinks_enabled: bool,
    /// How long a downlink for a registered device waits for an uplink by default.
    pub downlink_ttl: std::time::Duration,
    /// What firmware uploads and campaigns started through the API get.
    pub fota: FotaSettings,
}

/// `--max-firmware`, `--fota-base-url` and `--fota-version-name`.
#[derive(Clone, Debug)]
pub struct FotaSettings {
    pub max_firmware: usize,
    pub base_url: Option<String>,
    pub version_name: String,
}

impl Default for FotaSettings {
    fn default() -> Self {
        FotaSettings {
            max_firmware: 16 * 1024 * 1024,
            base_url: None,
            version_name: crate::firmware::DEFAULT_VERSION_NAME.into(),
        }
    }
}

impl ApiSettings {
    pub fn new(
        max_series_points: u64,
        stream_pool: PgPool,
        downlinks_enabled: bool,
        downlink_ttl: std::time::Duration,
    ) -> Self {
        ApiSettings {
            max_series_points: max_series_points.max(1),
            stream_pool,
            downlinks_enabled,
            downlink_ttl,
            fota: FotaSettings::default(),
        }
    }
}

/// Every documented route: the router and the OpenAPI document come from this one list, so
/// they cannot diverge. Generic over the state: a handler asks for the substates it uses,
/// and the top layer provides them.
pub fn documented<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
    ApiSettings: FromRef<S>,
    AdminState: FromRef<S>,
    Arc<LiveHub>: FromRef<S>,
    IngestState: FromRef<S>,
    ApiKey: FromRequestParts<S>,
{
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(devices::list, registrations::register))
        .routes(routes!(devices::get))
        .routes(routes!(devices::latest))
        .routes(routes!(timeline::timeline))
        .routes(routes!(series::series))
        .routes(routes!(measurements::list))
        .routes(routes!(stream::stream))
        .routes(routes!(messages::list))
        .routes(routes!(messages::show))
        .routes(routes!(messages::raw))
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries_stream::stream))
        .routes(routes!(admin::list_destinations, admin::add_destination))
        .routes(routes!(destination_stats::stats))
        .routes(routes!(admin::rotate_destination))
        .routes(routes!(admin::remove_destination))
        .routes(routes!(admin::list_api_keys, admin::create_api_key))
        .routes(routes!(admin::revoke_api_key))
        .routes(routes!(registrations::rotate))
        .routes(routes!(registrations::unregister))
        .routes(routes!(downlinks::queue))
        .routes(routes!(downlinks::list))
        .routes(routes!(downlinks::show, downlinks::cancel))
        .routes(routes!(firmware::list, firmware::add))
        .routes(routes!(firmware::remove))
        .routes(routes!(campaigns::list, campaigns::start))
        .routes(routes!(campaigns::get))
        .routes(routes!(campaigns::cancel))
        .routes(routes!(rejections::list))
        .routes(routes!(rejections::get))
        .routes(routes!(rejections::replay))
}

/// The routes under `/api/v1`, with the OpenAPI document (`/openapi.json`) made from them.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PgPool: FromRef<S>,
    ApiSettings: FromRef<S>,
    AdminState: FromRef<S>,
    Arc<LiveHub>: FromRef<S>,
    IngestState: FromRef<S>,
    ApiKey: FromRequestParts<S>,
{
    let (router, mut openapi) = documented::<S>().split_for_parts();
    utoipa::Modify::modify(&docs::SharedErrors, &mut openapi);
    let document = axum::body::Bytes::from(docs::to_json(&openapi));
    router.route(
        "/openapi.json",
        get(move || docs::openapi_json(document.clone())),
    )
}
