//! The OpenAPI document (`/api/v1/openapi.json`) and an interactive page (`/api/docs`).
//!
//! The page is one self-contained HTML file compiled into the binary: it reads the document
//! and offers a form per operation, with no script or style from elsewhere, so it works on a
//! network without internet access.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::app::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "things-receiver API",
        description = "Devices, series, measurements, messages, live stream, downlinks and administration \
            of a things-receiver. Authenticate with `Authorization: Bearer KEY`; keys have the \
            scopes read, downlink and admin (admin implies the others). Errors are \
            `{\"error\": code, \"detail\": reason}`."
    ),
    servers((url = "/api/v1")),
    modifiers(&BearerKey),
    tags(
        (name = "devices", description = "Devices and their latest values"),
        (name = "series", description = "Time-bucketed values for charts"),
        (name = "measurements", description = "Stored measurements: pages, exports, live stream"),
        (name = "messages", description = "Accepted deliveries as received"),
        (name = "downlinks", description = "Commands for devices, sent through KPN (scope downlink)"),
        (name = "admin", description = "Destinations and API keys (scope admin)"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `things-receiver api-keys create`"))
                    .build(),
            ),
        );
    }
}

/// The document as served and as checked into `docs/openapi.json`.
pub fn document_json() -> String {
    let mut text = crate::api::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document_json);

pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

const PAGE: &str = include_str!("docs.html");

/// `/api/docs`: the interactive page.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/docs",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (
                            header::CONTENT_SECURITY_POLICY,
                            "default-src 'none'; script-src 'unsafe-inline'; \
                             style-src 'unsafe-inline'; connect-src 'self'",
                        ),
                    ],
                    PAGE,
                )
            }),
        )
        .route(
            "/api/docs/",
            get(|| async { Redirect::permanent("/api/docs") }),
        )
}
