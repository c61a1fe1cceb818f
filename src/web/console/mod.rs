//! The console: one page and its assets under `/console`, compiled into the binary, and the
//! sign-in that turns an API key into a session cookie (`/console/session`).
//!
//! The page is the same for every path under `/console` (a permalink such as
//! `/console/deliveries/42` loads it, and its router shows the delivery); the data comes from
//! the `/api/v1` endpoints, authenticated by the cookie. Only the main listener serves it.

mod assets;
mod sign_in;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;

use crate::web::state::ApiKeyState;

/// The console's routes.
pub fn routes<S>() -> Router<S>
where
    ApiKeyState: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/console", get(assets::page))
        .route("/console/", get(assets::page))
        .route(
            "/console/session",
            get(sign_in::current)
                .post(sign_in::sign_in)
                .delete(sign_in::sign_out),
        )
        .route("/console/assets/{*file}", get(assets::asset))
        .route("/console/{*path}", get(assets::page))
}
