//! What the handlers can reach, as one cloneable state with a substate per concern.
//!
//! A handler names only the substate it uses (`State<PgPool>`, `State<ApiSettings>`,
//! `State<Arc<LiveHub>>`, ...), through the [`FromRef`] impls below; so the areas below the
//! web layer (ingest doors, API) stay generic over the state and never import this file.

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::api::ApiSettings;
use crate::api::admin::AdminState;
use crate::downlink::supervisor::WorkerHealth;
use crate::firmware::http::FileServer;
use crate::firmware::notification::Notifier;
use crate::ingest::IngestState;
use crate::live::LiveHub;
use crate::web::auth_limit::AuthLimiter;

/// What authenticating an API key needs: the keys' table and the wrong-key limiter.
#[derive(Clone)]
pub struct ApiKeyState {
    pub pool: PgPool,
    pub limiter: Arc<AuthLimiter>,
    /// How long a console session lasts.
    pub session_ttl: std::time::Duration,
}

/// Every substate of the process; cloning it clones handles, not data.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub ingest: IngestState,
    pub api_keys: ApiKeyState,
    pub live: Arc<LiveHub>,
    pub api: ApiSettings,
    pub admin: AdminState,
    /// Renders the Prometheus metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The downlink worker's state (restarts, last failure), when downlinks are enabled.
    pub downlink_worker: Option<Arc<WorkerHealth>>,
    /// The firmware file server: image cache and download progress.
    pub files: FileServer,
    /// What the device doors write firmware notifications with.
    pub notifier: Notifier,
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> PgPool {
        state.pool.clone()
    }
}

impl FromRef<AppState> for IngestState {
    fn from_ref(state: &AppState) -> IngestState {
        state.ingest.clone()
    }
}

impl FromRef<AppState> for ApiKeyState {
    fn from_ref(state: &AppState) -> ApiKeyState {
        state.api_keys.clone()
    }
}

impl FromRef<AppState> for Arc<LiveHub> {
    fn from_ref(state: &AppState) -> Arc<LiveHub> {
        state.live.clone()
    }
}

impl FromRef<AppState> for ApiSettings {
    fn from_ref(state: &AppState) -> ApiSettings {
        state.api.clone()
    }
}

impl FromRef<AppState> for AdminState {
    fn from_ref(state: &AppState) -> AdminState {
        state.admin.clone()
    }
}

impl FromRef<AppState> for FileServer {
    fn from_ref(state: &AppState) -> FileServer {
        state.files.clone()
    }
}

impl FromRef<AppState> for Notifier {
    fn from_ref(state: &AppState) -> Notifier {
        state.notifier.clone()
    }
}
