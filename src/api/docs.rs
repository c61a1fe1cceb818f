//! The OpenAPI document (`/api/v1/openapi.json`) and an interactive page (`/api/docs`).
//!
//! The page is one self-contained HTML file compiled into the binary: it reads the document
//! and offers a form per operation, with no script or style from elsewhere, so it works on a
//! network without internet access.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};

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
        (name = "deliveries", description = "Every delivery the doors answered (stored, quarantined, duplicate, spooled, rejected), live and history, and per-destination statistics"),
        (name = "downlinks", description = "Commands for devices, sent through KPN (scope downlink)"),
        (name = "admin", description = "Destinations, API keys and device registrations (scope admin)"),
        (name = "firmware", description = "Firmware images and update campaigns (scope admin)"),
        (name = "rejections", description = "What the doors refused, why, and its replay (diagnosis and replay: scope admin)"),
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

/// Adds the error answers every operation shares (401, 403, 429, 503), so that the handlers'
/// annotations list only their own. An operation that documents one of them itself (the
/// downlink queue's 503) keeps its own. Runs on the finished document, after every route was
/// added: `ApiDoc`'s own modifiers run before that, on an empty document.
pub struct SharedErrors;

/// The scope each tag's operations require, named in their 403.
const SCOPE_OF_TAG: [(&str, &str); 8] = [
    ("devices", "read"),
    ("series", "read"),
    ("measurements", "read"),
    ("messages", "read"),
    ("deliveries", "read"),
    ("downlinks", "downlink"),
    ("admin", "admin"),
    ("firmware", "admin"),
];

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let scope = operation
                    .tags
                    .iter()
                    .flatten()
                    .find_map(|tag| SCOPE_OF_TAG.iter().find(|(t, _)| t == tag))
                    .map_or("read", |(_, scope)| scope);
                let shared = [
                    ("401", "Missing or unknown API key".to_owned()),
                    ("403", format!("The key lacks the {scope} scope")),
                    ("429", "Too many failed authentications".to_owned()),
                    ("503", "The database is unavailable".to_owned()),
                ];
                for (status, description) in shared {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description).into());
                }
            }
        }
    }
}

fn error_response(description: String) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// A document as served and as checked into `docs/openapi.json`.
pub fn to_json(openapi: &utoipa::openapi::OpenApi) -> String {
    let mut text = openapi
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `/api/v1/openapi.json`: the document, made once when the router is built.
pub async fn openapi_json(document: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}

const PAGE: &str = include_str!("docs.html");

/// `/api/docs`: the interactive page.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
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
