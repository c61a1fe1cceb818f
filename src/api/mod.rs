//! The dashboard API under `/api/v1`: read access to what was stored, for API-key holders.

pub mod auth;
pub mod cursor;
pub mod downlinks;
pub mod measurements;
pub mod messages;
pub mod params;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/measurements", get(measurements::list))
        .route("/messages", get(messages::list))
        .route("/messages/{id}/raw", get(messages::raw))
        .route("/devices/{urn}/downlinks", post(downlinks::queue))
        .route("/downlinks", get(downlinks::list))
        .route(
            "/downlinks/{id}",
            get(downlinks::show).delete(downlinks::cancel),
        )
}
