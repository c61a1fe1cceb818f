//! The front doors: one HTTP handler per way deliveries arrive. Each checks what it can
//! from the request head, reads the body under the limit, verifies it against a cache in
//! `ingest::verify`, and hands it to the pipeline; each contributes its routes here.

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{MethodFilter, on, post};

use crate::firmware::notification::Notifier;
use crate::ingest::IngestState;

pub mod device;
mod head;
pub mod kpn;

/// KPN's device-side ingestion paths.
pub const M2M_PATH: &str = "/ingestion/m2m/senml/v1";
pub const IP_PATH: &str = "/ingestion/ip/senml/v1";

/// The door routes, for any router state the [`IngestState`] can be taken from. Each door
/// reads its body itself, under its limit (`--max-body`, `--device-max-body`), once the head
/// has been checked.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    IngestState: FromRef<S>,
    Notifier: FromRef<S>,
{
    // GET with a body: a KPN destination can be configured to send that.
    Router::new()
        .route(
            "/ingest/kpn",
            on(MethodFilter::POST.or(MethodFilter::GET), kpn::receive),
        )
        .merge(device_routes())
}

/// The device doors alone: all that the plain-HTTP device listener serves of ingestion.
pub fn device_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    IngestState: FromRef<S>,
    Notifier: FromRef<S>,
{
    Router::new()
        .route(M2M_PATH, post(device::m2m))
        .route(IP_PATH, post(device::ip))
}
