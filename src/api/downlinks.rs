//! Downlinks over the API (scope `downlink`): queue one for a device, follow it, list them,
//! cancel one not yet sent.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::api::cursor;
use crate::api::page::{self, Page};
use crate::api::params;
use crate::downlink::Status;
use crate::downlink::outbox::{self, OutboxError, Queued, Recipient};
use crate::downlink::request;
use crate::downlink::view::DownlinkView;
use crate::error::{AppError, ErrorBody};
use crate::kpn::credentials::HOW_TO_CONFIGURE;
use crate::senml::device_key;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A downlink to queue: `payload_hex` (with `port` for a LoRa device) or SenML `records`.
// The body is checked by hand (`request::check_json`) so that a broken shape (400) can be told
// from a value KPN would refuse (422); this type only describes it for the OpenAPI document.
#[derive(ToSchema)]
#[schema(as = NewDownlink)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewDownlink {
    /// The LoRa application port, 1 to 223; required for a DEVEUI device.
    #[schema(minimum = 1, maximum = 223)]
    port: Option<u16>,
    /// The payload in hex, 1 to 242 bytes; give this or `records`.
    #[schema(nullable = false, pattern = "^([0-9A-Fa-f]{2}){1,242}$")]
    payload_hex: Option<String>,
    /// 1 to 64 SenML records for the device (`bn`, if given, must name it); give this or
    /// `payload_hex`.
    #[schema(nullable = false, value_type = Option<Vec<Object>>, min_items = 1, max_items = 64)]
    records: Option<Vec<serde_json::Value>>,
    /// For a registered device only: how long it waits for an uplink before it expires,
    /// e.g. `"6h"` or a number of seconds (default `--downlink-ttl`, 48h; at most 366 days).
    #[schema(nullable = false, value_type = Option<String>)]
    ttl: Option<String>,
}

/// Queues a downlink for a device. For a device registered for the device doors it rides on
/// the answer to the device's next uplink (transport `response`, one per answer, oldest first,
/// until its `ttl` passes); for any other device the worker hands it to KPN (transport `kpn`).
/// A retry with the same `Idempotency-Key` and request answers the downlink queued first.
#[utoipa::path(
    post, path = "/devices/{urn}/downlinks", tag = "downlinks", operation_id = "queue_downlink",
    params(
        ("urn" = String, Path, description = "The device URN (any case)"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: a repeat with the same key and request queues nothing new",
            nullable = false, pattern = "^[!-~]{1,200}$"),
    ),
    request_body = NewDownlink,
    responses(
        (status = 202, description = "Queued (or queued before under this Idempotency-Key)", body = Queued,
            headers(("Location" = String, description = "The downlink, e.g. `/api/v1/downlinks/{id}`"))),
        (status = 400, description = "The body is not a downlink request, or the Idempotency-Key is malformed", body = ErrorBody),
        (status = 404, description = "The device is not registered and no data was ever received from it", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for a different downlink", body = ErrorBody),
        (status = 422, description = "The port, payload or records are not something KPN would send", body = ErrorBody),
        (status = 503, description = "Downlinks through KPN are not configured (`not_configured`), or the database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn queue(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
    key: ApiKey,
    Path(urn): Path<String>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, AppError> {
    key.require(Scope::Downlink)?;
    let urn = params::text("urn", Some(urn))?
        .ok_or_else(|| AppError::bad_parameter("urn", "must not be empty"))?;
    // Registered devices get theirs in their answers and need no KPN credentials; anything
    // else is refused first without them, whatever the request holds.
    let recipient = match outbox::recipient(&pool, &urn).await {
        Ok(Recipient::Kpn { .. }) | Err(OutboxError::UnknownDevice(_))
            if !settings.downlinks_enabled =>
        {
            return Err(AppError::NotConfigured(HOW_TO_CONFIGURE));
        }
        other => other,
    };
    let Json(body) = body.map_err(|e| AppError::bad_parameter("body", e.body_text()))?;
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            AppError::bad_parameter("Idempotency-Key", "expected visible ASCII characters")
        })?),
    };
    // A shape error is a 400 and a refused value a 422 whether or not the device exists.
    request::check_json(&device_key(urn.trim()), &without_ttl(&body)).map_err(OutboxError::from)?;
    let recipient = recipient?;
    let (target, checked) = outbox::check_for(&recipient, &body, settings.downlink_ttl)?;
    let queued = outbox::queue(
        &pool,
        target,
        recipient.urn_key(),
        &checked,
        idempotency_key,
    )
    .await?;
    let location = format!("/api/v1/downlinks/{}", queued.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(queued),
    )
        .into_response())
}

/// One downlink.
#[utoipa::path(
    get, path = "/downlinks/{id}", tag = "downlinks", operation_id = "get_downlink",
    params(("id" = Uuid, Path, description = "The downlink id")),
    responses(
        (status = 200, body = DownlinkView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such downlink", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn show(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<DownlinkView>, AppError> {
    key.require(Scope::Downlink)?;
    let row = outbox::get(&pool, parse_id(&id)?).await?;
    Ok(Json(row.into()))
}

/// Cancels a downlink that is still queued; answers it as cancelled.
#[utoipa::path(
    delete, path = "/downlinks/{id}", tag = "downlinks", operation_id = "cancel_downlink",
    params(("id" = Uuid, Path, description = "The downlink id")),
    responses(
        (status = 200, description = "Cancelled", body = DownlinkView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such downlink", body = ErrorBody),
        (status = 409, description = "The downlink is no longer queued", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn cancel(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<DownlinkView>, AppError> {
    key.require(Scope::Downlink)?;
    let row = outbox::cancel(&pool, parse_id(&id)?).await?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The device URN (any case).
    device: Option<String>,
    /// Only downlinks in this state.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Downlinks, newest first.
#[utoipa::path(
    get, path = "/downlinks", tag = "downlinks", operation_id = "list_downlinks",
    params(ListParams),
    responses(
        (status = 200, body = Page<DownlinkView>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    key: ApiKey,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<DownlinkView>>, AppError> {
    key.require(Scope::Downlink)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            AppError::bad_parameter(
                "status",
                "expected queued, sending, accepted, failed, cancelled, delivered or expired",
            )
        })?),
    };
    let limit = params::limit(q.limit.as_deref())?;
    let before = params::cursor(q.cursor.as_deref())?.map(|(_, seq)| seq);
    let device = params::text("device", q.device)?;
    let fetch = page::fetch_limit(limit);
    let rows = outbox::list(&pool, device.as_deref(), status, before, fetch).await?;
    Ok(Json(Page::of(
        rows,
        limit,
        |r| cursor::encode(r.created_at, r.seq),
        DownlinkView::from,
    )))
}

/// The request without its `ttl`, for the checks every transport shares.
fn without_ttl(body: &serde_json::Value) -> serde_json::Value {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.remove("ttl");
    }
    body
}

fn parse_id(id: &str) -> Result<Uuid, AppError> {
    id.parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a downlink id (UUID)"))
}
