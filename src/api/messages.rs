//! `GET /api/v1/messages`, `GET /api/v1/messages/{id}` and `GET /api/v1/messages/{id}/raw`:
//! accepted deliveries, including quarantined ones, one with what its page shows, and their
//! bodies exactly as received.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admin::{ApiKey, Scope};
use crate::api::ApiSettings;
use crate::api::export::{self, ExportRow, Format};
use crate::api::page::{self, Page};
use crate::api::{cursor, params};
use crate::error::{AppError, ErrorBody};
use crate::senml;
use crate::store::messages::{self, MessageFilter, MessageRow};
use crate::store::{deliveries_list, message_detail};
use crate::time_format::format_time;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `stored` or `quarantined` (not valid SenML, kept as received).
    #[param(pattern = "^(stored|quarantined)?$")]
    status: Option<String>,
    /// Received at or after (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Received before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Items per page, 1 to 1000 (default 100); ignored by exports.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One accepted delivery.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Message)]
pub struct Item {
    id: i64,
    plug: Option<Uuid>,
    /// The KPN destination's name; absent for an uplink through a device door.
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_error: Option<String>,
    record_count: i32,
    headers: BTreeMap<String, String>,
    /// How it arrived: `destination` (KPN), `m2m` or `ip` (a device door).
    door: String,
}

impl From<MessageRow> for Item {
    fn from(row: MessageRow) -> Self {
        Item {
            id: row.id,
            plug: row.plug,
            destination: row.destination,
            received_at: format_time(row.received_at),
            device: row.device,
            status: row.status,
            decode_error: row.decode_error,
            record_count: row.record_count,
            headers: row.headers.0,
            door: row.door,
        }
    }
}

impl ExportRow for MessageRow {
    const CSV_HEADER: &'static str =
        "id,plug,destination,received_at,device,status,decode_error,record_count,headers,door";

    fn write_csv(self, out: &mut Vec<u8>) {
        let item = Item::from(self);
        let id = item.id.to_string();
        let plug = item.plug.map(|p| p.to_string());
        let count = item.record_count.to_string();
        let headers = serde_json::to_string(&item.headers).unwrap_or_default();
        export::csv_line(
            out,
            &[
                Some(&id),
                plug.as_deref(),
                item.destination.as_deref(),
                Some(&item.received_at),
                item.device.as_deref(),
                Some(&item.status),
                item.decode_error.as_deref(),
                Some(&count),
                Some(&headers),
                Some(&item.door),
            ],
        );
    }

    fn write_json(self, out: &mut Vec<u8>) {
        // Serializing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &Item::from(self));
    }
}

/// Accepted deliveries, newest first. With `Accept: text/csv` or `Accept: application/x-ndjson`
/// every matching message is streamed, without pages.
#[utoipa::path(
    get, path = "/messages", tag = "messages", operation_id = "list_messages",
    params(ListParams),
    responses(
        (status = 200, content(
            (Page<Item> = "application/json"),
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    State(settings): State<ApiSettings>,
    key: ApiKey,
    headers: HeaderMap,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let format = Format::from_headers(&headers);
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("stored") => Some("stored"),
        Some("quarantined") => Some("quarantined"),
        Some(_) => {
            return Err(AppError::bad_parameter(
                "status",
                "expected stored or quarantined",
            ));
        }
    };
    let limit = params::limit(q.limit.as_deref())?;
    let filter = MessageFilter {
        status,
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        after: params::cursor(q.cursor.as_deref())?,
        limit: page::fetch_limit(limit),
    };
    if format != Format::Json {
        let query = messages::select(&filter);
        return export::stream::<MessageRow>(&settings.stream_pool, query, format, "messages")
            .await;
    }
    let rows = messages::list(&pool, &filter).await?;
    let page = Page::of(
        rows,
        limit,
        |r| cursor::encode(r.received_at, r.id),
        Item::from,
    );
    Ok(Json(page).into_response())
}

/// A delivery's body exactly as received.
#[utoipa::path(
    get, path = "/messages/{id}/raw", tag = "messages",
    params(("id" = i64, Path, description = "The message id")),
    responses(
        (status = 200, description = "The body bytes", content((String = "application/octet-stream"))),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn raw(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    key.require(Scope::Read)?;
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a message id"))?;
    let body = messages::raw_body(&pool, id)
        .await?
        .ok_or(AppError::NotFound("message".into()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// A record of the body resolved again as ingestion resolved it; exactly one of the value
/// fields is present (or only `sum`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MessageRecord)]
pub struct Record {
    device: String,
    name: String,
    unit: Option<String>,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bool: Option<bool>,
    /// Base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sum: Option<f64>,
}

impl From<senml::Measurement> for Record {
    fn from(m: senml::Measurement) -> Self {
        let mut record = Record {
            device: m.device,
            name: m.name,
            unit: m.unit,
            time: format_time(m.time),
            value: None,
            string: None,
            bool: None,
            data: None,
            sum: m.sum,
        };
        match m.value {
            Some(senml::Value::Number(v)) => record.value = Some(v),
            Some(senml::Value::String(s)) => record.string = Some(s),
            Some(senml::Value::Bool(b)) => record.bool = Some(b),
            Some(senml::Value::Data(d)) => record.data = Some(STANDARD.encode(d)),
            None => {}
        }
        record
    }
}

/// The downlink that rode on a device's answer to this message.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiddenDownlink {
    id: Uuid,
    status: String,
    /// The SenML pack it carried.
    #[schema(value_type = Object)]
    body: serde_json::Value,
    created_at: String,
}

/// The firmware notification that rode on a device's answer to this message.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiddenFota {
    campaign: Uuid,
    target: Uuid,
    state: String,
}

/// One message with its body's digest, its answer and its records.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MessageDetail)]
pub struct Detail {
    #[serde(flatten)]
    item: Item,
    /// SHA-256 of the exact body, hex.
    sha256: String,
    size: usize,
    /// The HTTP status the sender was answered.
    status_code: i32,
    records: Vec<Record>,
    /// Why it is not a valid SenML pack (quarantined).
    quarantine_reason: Option<String>,
    downlink: Option<RiddenDownlink>,
    fota: Option<RiddenFota>,
    /// The rejection this message was replayed from.
    replay_of: Option<Uuid>,
}

/// One message: the list's item, the digest and size of its body, what we answered, its
/// records resolved again exactly as ingestion did (at its receipt time), and what rode on
/// a device's answer.
#[utoipa::path(
    get, path = "/messages/{id}", tag = "messages", operation_id = "get_message",
    params(("id" = i64, Path, description = "The message id")),
    responses(
        (status = 200, body = Detail),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn show(
    State(pool): State<PgPool>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Detail>, AppError> {
    key.require(Scope::Read)?;
    let id: i64 = id
        .parse()
        .map_err(|_| AppError::bad_parameter("id", "expected a message id"))?;
    let not_found = || AppError::NotFound("message".into());
    let detail = message_detail::get(&pool, id)
        .await?
        .ok_or_else(not_found)?;
    let listed = deliveries_list::message(&pool, id)
        .await?
        .ok_or_else(not_found)?;
    let (downlink, fota) = tokio::try_join!(
        message_detail::downlink(&pool, id),
        message_detail::fota(&pool, id)
    )?;
    // The same function ingestion resolved it with, at the same receipt time. A quarantined
    // message stored no records (a device's pack naming another device resolves, but was
    // refused as a whole), so it shows none.
    let records = if detail.row.status == "quarantined" {
        Vec::new()
    } else {
        senml::resolve(&detail.body, detail.row.received_at)
            .map(|records| records.into_iter().map(Record::from).collect())
            .unwrap_or_default()
    };
    Ok(Json(Detail {
        sha256: hex::encode(Sha256::digest(&detail.body)),
        size: detail.body.len(),
        status_code: listed.status,
        records,
        quarantine_reason: detail.row.decode_error.clone(),
        downlink: downlink.map(|d| RiddenDownlink {
            id: d.id,
            status: d.status,
            body: serde_json::from_str(&d.body).unwrap_or(serde_json::Value::String(d.body)),
            created_at: format_time(d.created_at),
        }),
        fota: fota.map(|f| RiddenFota {
            campaign: f.campaign,
            target: f.target,
            state: f.state,
        }),
        replay_of: listed.replay_of,
        item: Item::from(detail.row),
    }))
}
