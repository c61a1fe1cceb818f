//! The front doors: one HTTP handler per way deliveries arrive. Each checks what it can
//! from the request head, reads the body under the limit, verifies it against a cache in
//! `ingest::verify`, and hands it to the pipeline; each contributes its routes here.

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{MethodFilter, on};

use crate::ingest::IngestState;

pub mod kpn;

/// The door routes, for any router state the [`IngestState`] can be taken from. Each door
/// reads its body itself, under `--max-body`, once the head has been checked.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    IngestState: FromRef<S>,
{
    // GET with a body: a KPN destination can be configured to send that.
    Router::new().route(
        "/ingest/kpn",
        on(MethodFilter::POST.or(MethodFilter::GET), kpn::receive),
    )
}
