//! Firmware images over the API (scope `admin`): upload (the raw body, under
//! `--max-firmware`), list, remove. The same operations as `things-receiver firmware`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::IntoParams;

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::error::{AppError, ErrorBody};
use crate::firmware::files::{self, FirmwareView};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddParams {
    /// The version devices will report once they run it, e.g. `1.2.0`.
    version: String,
    /// A name for people.
    name: Option<String>,
    /// Refuse the image unless its SHA-256 is this (hex).
    sha256: Option<String>,
}

/// Stores a firmware image (the raw request body). Its size, SHA-256 and CRC-32 are
/// computed now; it never changes afterwards.
#[utoipa::path(
    post, path = "/firmware", tag = "firmware", operation_id = "add_firmware",
    params(AddParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = FirmwareView),
        (status = 400, description = "No version given", body = ErrorBody),
        (status = 409, description = "This version exists", body = ErrorBody),
        (status = 413, description = "Larger than --max-firmware", body = ErrorBody),
        (status = 422, description = "Empty image, bad version or name, or another SHA-256", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn add(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
    key: ApiKey,
    query: Result<Query<AddParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FirmwareView>), AppError> {
    key.require(Scope::Admin)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let max = settings.fota.max_firmware;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(AppError::PayloadTooLarge(max));
    }
    let image = axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            AppError::PayloadTooLarge(max)
        } else {
            AppError::BadBody
        }
    })?;
    let added = files::add(
        &pool,
        &q.version,
        q.name.as_deref(),
        &image,
        max,
        q.sha256.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Every firmware image, newest first.
#[utoipa::path(
    get, path = "/firmware", tag = "firmware", operation_id = "list_firmware",
    responses((status = 200, body = Vec<FirmwareView>)),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    key: ApiKey,
) -> Result<Json<Vec<FirmwareView>>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(files::list(&pool).await?))
}

/// Removes a firmware image that no unfinished campaign uses.
#[utoipa::path(
    delete, path = "/firmware/{version}", tag = "firmware", operation_id = "remove_firmware",
    params(("version" = String, Path, description = "The firmware version")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 409, description = "A campaign that is not finished uses it", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn remove(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(version): Path<String>,
) -> Result<StatusCode, AppError> {
    key.require(Scope::Admin)?;
    files::remove(&pool, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}
