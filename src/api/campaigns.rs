//! Firmware campaigns over the API (scope `admin`): start, list, show, cancel. The same
//! operations as `things-receiver fota`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::api::admin::AdminState;
use crate::error::{AppError, ErrorBody};
use crate::firmware::campaigns::{self, CampaignView, StartRequest};

/// A campaign to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// The firmware version to install.
    firmware: String,
    /// URNs of registered devices.
    devices: Vec<String>,
    name: Option<String>,
}

/// Starts a campaign: sets the desired version of each device; each is told of its download
/// in the answer to its next uplink. Needs `--fota-base-url`.
#[utoipa::path(
    post, path = "/campaigns", tag = "firmware", operation_id = "start_campaign",
    request_body = NewCampaign,
    responses(
        (status = 201, body = CampaignView),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "Unknown firmware version or unregistered device", body = ErrorBody),
        (status = 409, description = "A device is already in a campaign that is not finished", body = ErrorBody),
        (status = 422, description = "No devices, or a bad name", body = ErrorBody),
        (status = 503, description = "No --fota-base-url (`not_configured`), or the database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn start(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
    State(admin): State<AdminState>,
    key: ApiKey,
    body: Result<Json<NewCampaign>, JsonRejection>,
) -> Result<(StatusCode, Json<CampaignView>), AppError> {
    key.require(Scope::Admin)?;
    let Json(new) = body?;
    let request = StartRequest {
        firmware: &new.firmware,
        devices: &new.devices,
        name: new.name.as_deref(),
        base_url: settings.fota.base_url.as_deref(),
        version_name: &settings.fota.version_name,
    };
    let campaign = campaigns::start(&pool, &admin.key, &request).await?;
    Ok((StatusCode::CREATED, Json(campaign)))
}

/// Every campaign, newest first, with its counts per state.
#[utoipa::path(
    get, path = "/campaigns", tag = "firmware", operation_id = "list_campaigns",
    responses((status = 200, body = Vec<CampaignView>)),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    key: ApiKey,
) -> Result<Json<Vec<CampaignView>>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(campaigns::list(&pool).await?))
}

/// One campaign: counts per state and each device's state, transitions, bytes and parts.
#[utoipa::path(
    get, path = "/campaigns/{id}", tag = "firmware", operation_id = "get_campaign",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(campaigns::get(&pool, parse_id(&id)?).await?))
}

/// Cancels a campaign: devices not yet updated become `cancelled`, their downloads answer
/// 410 at once, and a notification not yet sent never is.
#[utoipa::path(
    post, path = "/campaigns/{id}/cancel", tag = "firmware", operation_id = "cancel_campaign",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn cancel(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(campaigns::cancel(&pool, parse_id(&id)?).await?))
}

fn parse_id(id: &str) -> Result<Uuid, AppError> {
    id.parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a campaign id (UUID)"))
}
