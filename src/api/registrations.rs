//! The admin API (scope `admin`) for device registrations: M2M and Internet devices that post
//! to the device doors, each with its own secret.
//!
//! The handlers call `crate::admin::devices`, the functions behind `things-receiver devices`,
//! so the API and the CLI refuse and accept the same URNs and secrets. A generated secret
//! appears once, in the answer that made it; nothing else ever shows a device secret. Every
//! change fires `things_device_keys_changed`, which the device key cache of every process
//! follows.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::admin::{AdminState, optional_body, overlap, path_text, reload_devices};
use crate::admin::devices::{self, DeviceWithSecret};
use crate::admin::{ApiKey, Scope};
use crate::error::{AppError, ErrorBody};

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRegistration {
    /// `urn:dev:IMEI:<15 digits>:` (M2M) or `urn:dev:DVNUUID:<uuid>:` (Internet devices),
    /// with the trailing colon; scheme and type in any case.
    #[schema(min_length = 1, max_length = 1000)]
    urn: String,
    /// The device's secret (30 to 100 printable ASCII characters, no space at either end);
    /// generated (40 letters and digits) and returned once when absent.
    #[schema(min_length = 30, max_length = 100, pattern = "^[!-~]([ -~]*[!-~])?$")]
    secret: Option<String>,
}

/// A device secret rotation; every field is optional (an empty body is fine).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRotation {
    /// The new secret (30 to 100 printable ASCII characters); generated and returned once
    /// when absent.
    #[schema(min_length = 30, max_length = 100, pattern = "^[!-~]([ -~]*[!-~])?$")]
    secret: Option<String>,
    /// How long the previous secret stays accepted, e.g. `24h` (default), `30m`, `0s` (at
    /// most 366 days).
    #[schema(
        pattern = "^([0-9]{1,4}(s|m)|[0-9]{1,3}h|([0-9]{1,2}|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
    )]
    overlap: Option<String>,
}

/// Registers a device for direct ingestion through the device doors.
#[utoipa::path(
    post, path = "/devices", tag = "admin", operation_id = "register_device",
    request_body = NewRegistration,
    responses(
        (status = 201, description = "Registered; `secret` is present only when it was generated, and only here", body = DeviceWithSecret),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 409, description = "The device is already registered", body = ErrorBody),
        (status = 422, description = "The URN or secret breaks a rule", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn register(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    body: Result<Json<NewRegistration>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceWithSecret>), AppError> {
    key.require(Scope::Admin)?;
    let Json(new) = body?;
    let added = devices::add(&pool, &admin.key, &new.urn, new.secret).await?;
    reload_devices(&admin).await;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Replaces a registered device's secret; the previous one stays accepted for the overlap.
#[utoipa::path(
    post, path = "/devices/{urn}/rotate", tag = "admin", operation_id = "rotate_device_secret",
    params(("urn" = String, Path, description = "The registered device's URN (any case)")),
    request_body(content = Option<DeviceRotation>, description = "Optional"),
    responses(
        (status = 200, description = "Rotated; `secret` is present only when it was generated, and only here; `previous_secret_valid_until` while the old secret is still accepted", body = DeviceWithSecret),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "The device is not registered", body = ErrorBody),
        (status = 422, description = "The secret or overlap breaks a rule", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn rotate(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(urn): Path<String>,
    body: Bytes,
) -> Result<Json<DeviceWithSecret>, AppError> {
    key.require(Scope::Admin)?;
    let urn = path_text("urn", urn)?;
    let rotation: DeviceRotation = optional_body(&body)?;
    let overlap = overlap(rotation.overlap.as_deref())?;
    let rotated = devices::rotate(&pool, &admin.key, &urn, rotation.secret, overlap).await?;
    reload_devices(&admin).await;
    Ok(Json(rotated))
}

/// Ends a device's registration: its uplinks are refused from now on; its stored data stays,
/// and it can be registered again.
#[utoipa::path(
    delete, path = "/devices/{urn}/registration", tag = "admin", operation_id = "unregister_device",
    params(("urn" = String, Path, description = "The registered device's URN (any case)")),
    responses(
        (status = 204, description = "No longer registered"),
        (status = 400, description = "The URN is not acceptable text", body = ErrorBody),
        (status = 404, description = "The device is not registered", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn unregister(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(urn): Path<String>,
) -> Result<StatusCode, AppError> {
    key.require(Scope::Admin)?;
    let urn = path_text("urn", urn)?;
    devices::remove(&pool, &urn).await?;
    reload_devices(&admin).await;
    Ok(StatusCode::NO_CONTENT)
}
