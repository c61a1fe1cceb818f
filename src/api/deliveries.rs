//! `GET /api/v1/deliveries`: every delivery the doors answered, newest first: stored and
//! quarantined messages and the door events (rejections, duplicates, spooled deliveries) in
//! one list, for the console.

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admin::{ApiKey, Scope};
use crate::api::page::{self, Page};
use crate::api::params;
use crate::error::{AppError, ErrorBody};
use crate::senml::{device_key, time::storable};
use crate::store::deliveries_list::{self, DeliveryFilter, DeliveryRow, Position, Source};
use crate::time_format::format_time;

/// Most items one page may hold.
const MAX_LIMIT: i64 = 500;

/// The filters the list and its live stream share.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// `destination` (KPN), `m2m` or `ip` (the device doors).
    #[param(pattern = "^(destination|m2m|ip)?$")]
    door: Option<String>,
    /// A destination's name or plug (removed destinations included).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    destination: Option<String>,
    /// A device URN (any case).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    device: Option<String>,
    /// `stored`, `quarantined`, `duplicate`, `spooled` or `rejected`.
    #[param(pattern = "^(stored|quarantined|duplicate|spooled|rejected)?$")]
    verdict: Option<String>,
    /// An event's reason (the error code of a refusal); messages have none.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    reason: Option<String>,
    /// Received at or after (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Received before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Text the body contains (bytes, case-sensitive).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    q: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `destination` (KPN), `m2m` or `ip` (the device doors).
    #[param(pattern = "^(destination|m2m|ip)?$")]
    door: Option<String>,
    /// A destination's name or plug (removed destinations included).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    destination: Option<String>,
    /// A device URN (any case).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    device: Option<String>,
    /// `stored`, `quarantined`, `duplicate`, `spooled` or `rejected`.
    #[param(pattern = "^(stored|quarantined|duplicate|spooled|rejected)?$")]
    verdict: Option<String>,
    /// An event's reason (the error code of a refusal); messages have none.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    reason: Option<String>,
    /// Received at or after (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Received before (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Text the body contains (bytes, case-sensitive).
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    q: Option<String>,
    /// Items per page, 1 to 500 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl ListParams {
    fn filter(self) -> (FilterParams, Option<String>, Option<String>) {
        let filter = FilterParams {
            door: self.door,
            destination: self.destination,
            device: self.device,
            verdict: self.verdict,
            reason: self.reason,
            from: self.from,
            to: self.to,
            q: self.q,
        };
        (filter, self.limit, self.cursor)
    }
}

/// One delivery: a stored message (`kind` `message`) or a door event (`kind` `event`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Delivery)]
pub struct Item {
    /// `message` or `event`.
    kind: &'static str,
    /// The message id (as text) or the event's UUID.
    id: String,
    received_at: String,
    /// `destination`, `m2m` or `ip`.
    door: String,
    destination: Option<String>,
    plug: Option<Uuid>,
    device: Option<String>,
    /// `stored`, `quarantined`, `duplicate`, `spooled` or `rejected`.
    verdict: String,
    /// An event's reason; null for a message.
    reason: Option<String>,
    /// The HTTP status the sender was answered.
    status: i32,
    record_count: i32,
    /// Bytes of the body.
    size: i64,
    /// The stored message (a duplicate's: the one it repeats).
    message_id: Option<i64>,
    /// The rejection this message was replayed from.
    replay_of: Option<Uuid>,
}

impl From<DeliveryRow> for Item {
    fn from(row: DeliveryRow) -> Self {
        let (kind, id) = match row.source {
            Source::Message(id) => ("message", id.to_string()),
            Source::Event(id) => ("event", id.to_string()),
        };
        Item {
            kind,
            id,
            received_at: format_time(row.received_at),
            door: row.door,
            destination: row.destination,
            plug: row.plug,
            device: row.device,
            verdict: row.verdict,
            reason: row.reason,
            status: row.status,
            record_count: row.record_count,
            size: row.size,
            message_id: row.message_id,
            replay_of: row.replay_of,
        }
    }
}

/// The position after `row`, as an opaque cursor: its time, and which source and id it was.
fn encode_cursor(position: &Position) -> String {
    let micros = position.received_at.timestamp_micros();
    let text = match &position.after {
        Source::Message(id) => format!("m.{micros}.{id}"),
        Source::Event(id) => format!("e.{micros}.{id}"),
    };
    URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(text: &str) -> Option<Position> {
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    let raw = std::str::from_utf8(&raw).ok()?;
    let mut parts = raw.splitn(3, '.');
    let (kind, micros, id) = (parts.next()?, parts.next()?, parts.next()?);
    let received_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    if !storable(received_at) {
        return None;
    }
    let after = match kind {
        "m" => Source::Message(id.parse().ok()?),
        "e" => Source::Event(Uuid::parse_str(id).ok()?),
        _ => return None,
    };
    Some(Position { received_at, after })
}

/// The query's filters, checked and resolved to what rows carry (a destination's name or
/// plug to its ids, a URN to its normalised key).
pub async fn filter(pool: &PgPool, q: FilterParams) -> Result<DeliveryFilter, AppError> {
    let door = params::text("door", q.door)?;
    if door
        .as_deref()
        .is_some_and(|d| !matches!(d, "destination" | "m2m" | "ip"))
    {
        return Err(AppError::bad_parameter(
            "door",
            "expected destination, m2m or ip",
        ));
    }
    let verdict = params::text("verdict", q.verdict)?;
    if verdict.as_deref().is_some_and(|v| {
        !matches!(
            v,
            "stored" | "quarantined" | "duplicate" | "spooled" | "rejected"
        )
    }) {
        return Err(AppError::bad_parameter(
            "verdict",
            "expected stored, quarantined, duplicate, spooled or rejected",
        ));
    }
    let destination = match params::text("destination", q.destination)? {
        Some(name) => Some(deliveries_list::destinations_named(pool, &name).await?),
        None => None,
    };
    Ok(DeliveryFilter {
        door,
        destination,
        device_key: params::text("device", q.device)?.map(|d| device_key(&d)),
        verdict,
        reason: params::text("reason", q.reason)?,
        from: params::time("from", q.from.as_deref())?,
        to: params::time("to", q.to.as_deref())?,
        q: params::text("q", q.q)?,
    })
}

/// Deliveries, newest first: messages and door events merged.
#[utoipa::path(
    get, path = "/deliveries", tag = "deliveries", operation_id = "list_deliveries",
    params(ListParams),
    responses(
        (status = 200, body = Page<Item>),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(pool): State<PgPool>,
    key: ApiKey,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Item>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let (q, limit, cursor) = q.filter();
    let limit = match limit.as_deref().filter(|v| !v.is_empty()) {
        None => params::DEFAULT_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AppError::bad_parameter(
                    "limit",
                    format!("expected a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let position = match cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            AppError::bad_parameter("cursor", "not a cursor returned by this API")
        })?),
    };
    let filter = filter(&pool, q).await?;
    let rows =
        deliveries_list::list(&pool, &filter, position.as_ref(), page::fetch_limit(limit)).await?;
    Ok(Json(Page::of(
        rows,
        limit,
        |r| encode_cursor(&r.position()),
        Item::from,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        for after in [Source::Message(42), Source::Event(Uuid::now_v7())] {
            let p = Position {
                received_at: t,
                after,
            };
            assert_eq!(decode_cursor(&encode_cursor(&p)), Some(p));
        }
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("x.1.2")), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("e.1.notauuid")), None);
        let far = format!("m.{}.1", 8_000_000_000_000_000_000i64);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode(far)), None);
    }
}
