//! The admin API (scope `admin`): destinations and API keys.
//!
//! Every handler calls the same `crate::admin` functions as the CLI, so both enforce the same
//! rules. Secrets and keys appear only in the answer that creates them (a generated secret on
//! creation or rotation, a new API key); listings never show them. A destination change takes
//! effect in this process before the answer, and in every other process through the
//! `things_destinations_changed` notification.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::api_keys;
use crate::admin::destinations::{self, AddRequest, DestinationInfo, WithSecret};
use crate::admin::{ApiKey, Scope};
use crate::error::{AppError, ErrorBody};
use crate::ingest::verify::destinations::SecretCache;
use crate::ingest::verify::devices::DeviceKeyCache;
use crate::secrets::SecretKey;
use crate::store::api_keys::ApiKeyRow;

/// What the destination operations need beyond the pool: the key that seals secrets, and
/// this process's secret cache, reloaded after a change so it takes effect before the answer.
#[derive(Clone)]
pub struct AdminState {
    pub key: SecretKey,
    pub secrets: Arc<SecretCache>,
    /// The device-door key cache, reloaded after a registration changes.
    pub devices: Arc<DeviceKeyCache>,
}

/// How long the previous secret stays valid after a rotation, unless told otherwise.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A destination to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDestination {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    /// KPN's Things-Plug-UUID, if known; otherwise the first verified delivery binds it.
    plug: Option<Uuid>,
    /// The shared secret configured at KPN (at least 30 printable characters); generated and
    /// returned once when absent.
    #[schema(pattern = "^[!-~]{30,}$")]
    secret: Option<String>,
    /// The status answered to KPN for accepted deliveries (2xx, default 200).
    #[schema(minimum = 200, maximum = 299)]
    response_code: Option<u16>,
    /// Static headers KPN sends on every delivery, required here too.
    #[schema(schema_with = header_map_schema)]
    required_headers: Option<BTreeMap<String, String>>,
}

/// A secret rotation; every field is optional (an empty body is fine).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The new secret; generated and returned once when absent.
    #[schema(pattern = "^[!-~]{30,}$")]
    secret: Option<String>,
    /// How long the previous secret stays valid, e.g. `24h` (default), `30m`, `0s` (at most
    /// 366 days; other humantime spellings such as `1day` work too).
    #[schema(
        pattern = "^([0-9]{1,4}(s|m)|[0-9]{1,3}h|([0-9]{1,2}|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
    )]
    overlap: Option<String>,
}

/// An API key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    /// One or more of `read`, `downlink`, `admin` (admin implies the others).
    #[schema(min_items = 1, value_type = Vec<ScopeName>)]
    scopes: Vec<String>,
}

/// A scope an API key can have.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ScopeName {
    Read,
    Downlink,
    Admin,
}

/// Header names (HTTP tokens) to header values (visible text).
fn header_map_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$")),
        ))
        .build()
}

/// A new API key: `key` is shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    key: String,
    #[serde(flatten)]
    info: ApiKeyRow,
}

/// Active destinations (never their secrets).
#[utoipa::path(
    get, path = "/destinations", tag = "admin",
    responses(
        (status = 200, body = Vec<DestinationInfo>),
    ),
    security(("api_key" = []))
)]
pub async fn list_destinations(
    State(pool): State<PgPool>,
    key: ApiKey,
) -> Result<Json<Vec<DestinationInfo>>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(destinations::list(&pool).await?))
}

/// Adds a destination; effective at once in every process.
#[utoipa::path(
    post, path = "/destinations", tag = "admin",
    request_body = NewDestination,
    responses(
        (status = 201, description = "Added; `secret` is present only when it was generated", body = WithSecret),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 409, description = "The name or plug is taken", body = ErrorBody),
        (status = 422, description = "The destination breaks a rule", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn add_destination(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    body: Result<Json<NewDestination>, JsonRejection>,
) -> Result<(StatusCode, Json<WithSecret>), AppError> {
    key.require(Scope::Admin)?;
    let Json(new) = body?;
    let added = destinations::add(
        &pool,
        &admin.key,
        AddRequest {
            name: new.name,
            plug: new.plug,
            secret: new.secret,
            response_code: new.response_code.unwrap_or(200),
            required_headers: new.required_headers.unwrap_or_default(),
        },
    )
    .await?;
    reload(&admin).await;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Replaces a destination's secret; the previous one stays valid for the overlap.
#[utoipa::path(
    post, path = "/destinations/{plug}/rotate", tag = "admin",
    params(("plug" = String, Path, description = "The destination's plug UUID or name")),
    request_body(content = Option<Rotation>, description = "Optional"),
    responses(
        (status = 200, description = "Rotated; `secret` is present only when it was generated", body = WithSecret),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "No such destination", body = ErrorBody),
        (status = 422, description = "The secret or overlap breaks a rule", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn rotate_destination(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(plug): Path<String>,
    body: Bytes,
) -> Result<Json<WithSecret>, AppError> {
    key.require(Scope::Admin)?;
    let plug = path_text("plug", plug)?;
    let rotation: Rotation = optional_body(&body)?;
    let overlap = overlap(rotation.overlap.as_deref())?;
    if overlap > Duration::from_secs(366 * 24 * 3600) {
        return Err(AppError::unprocessable("overlap must be at most 366 days"));
    }
    let rotated = destinations::rotate(&pool, &admin.key, &plug, rotation.secret, overlap).await?;
    reload(&admin).await;
    Ok(Json(rotated))
}

/// Removes a destination; its stored messages stay.
#[utoipa::path(
    delete, path = "/destinations/{plug}", tag = "admin",
    params(("plug" = String, Path, description = "The destination's plug UUID or name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The plug or name is not acceptable text", body = ErrorBody),
        (status = 404, description = "No such destination", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn remove_destination(
    State(pool): State<PgPool>,
    State(admin): State<AdminState>,
    key: ApiKey,
    Path(plug): Path<String>,
) -> Result<StatusCode, AppError> {
    key.require(Scope::Admin)?;
    let plug = path_text("plug", plug)?;
    destinations::remove(&pool, &plug).await?;
    reload(&admin).await;
    Ok(StatusCode::NO_CONTENT)
}

/// API keys, live and revoked (never the keys themselves).
#[utoipa::path(
    get, path = "/api-keys", tag = "admin",
    responses(
        (status = 200, body = Vec<ApiKeyRow>),
    ),
    security(("api_key" = []))
)]
pub async fn list_api_keys(
    State(pool): State<PgPool>,
    key: ApiKey,
) -> Result<Json<Vec<ApiKeyRow>>, AppError> {
    key.require(Scope::Admin)?;
    Ok(Json(api_keys::list(&pool).await?))
}

/// Creates an API key; the key is in this answer only.
#[utoipa::path(
    post, path = "/api-keys", tag = "admin",
    request_body = NewApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 409, description = "A live key has that name", body = ErrorBody),
        (status = 422, description = "The name or scopes break a rule", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_api_key(
    State(pool): State<PgPool>,
    key: ApiKey,
    body: Result<Json<NewApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AppError> {
    key.require(Scope::Admin)?;
    let Json(new) = body?;
    let (key, info) = api_keys::create(&pool, &new.name, &new.scopes).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { key, info })))
}

/// Revokes the live API key with this name.
#[utoipa::path(
    delete, path = "/api-keys/{name}", tag = "admin",
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "The name is not acceptable text", body = ErrorBody),
        (status = 404, description = "No live key has that name", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn revoke_api_key(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    key.require(Scope::Admin)?;
    let name = path_text("name", name)?;
    api_keys::revoke(&pool, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An optional JSON body: empty or blank is `T::default()`; text that is not JSON is 400,
/// JSON of the wrong shape 422.
pub(super) fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            AppError::unprocessable(e.to_string())
        } else {
            AppError::bad_parameter("body", e.to_string())
        }
    })
}

/// A rotation's overlap as written in a body (`24h`, `30m`, `0s`, ...), 24 hours when
/// absent. The upper bound is the caller's rule.
pub(super) fn overlap(text: Option<&str>) -> Result<Duration, AppError> {
    match text {
        None => Ok(DEFAULT_OVERLAP),
        Some(text) => humantime::parse_duration(text).map_err(|_| {
            AppError::unprocessable(format!(
                "overlap {text:?} is not a duration: use e.g. 24h, 30m, 0s"
            ))
        }),
    }
}

pub(super) fn path_text(name: &'static str, value: String) -> Result<String, AppError> {
    crate::api::params::text(name, Some(value))?
        .ok_or_else(|| AppError::bad_parameter(name, "must not be empty"))
}

/// Makes a registration change effective in this process now; other processes follow the
/// notification the change fired. A failed reload is retried by the periodic refresh.
pub(super) async fn reload_devices(admin: &AdminState) {
    if let Err(e) = admin.devices.reload().await {
        tracing::warn!(error = %e, "registration changed but reloading the device keys failed");
    }
}

/// Makes a destination change effective in this process now; other processes follow the
/// notification the change fired. A failed reload is retried by the periodic refresh.
async fn reload(admin: &AdminState) {
    if let Err(e) = admin.secrets.reload().await {
        tracing::warn!(error = %e, "destination changed but reloading the secrets failed");
    }
}
