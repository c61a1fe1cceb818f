//! `GET /api/v1/deliveries/stream`: new deliveries as Server-Sent Events, in the shape of the
//! deliveries list, from every replica (the hub in `live` hears every process's
//! notifications).
//!
//! Each event is `event: delivery` with one list item. A subscriber that falls behind gets
//! `event: skipped` with `{"count": N}` and the stream goes on: the console shows how many it
//! missed and the list fills the gap on demand.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;

use crate::admin::{ApiKey, Scope};
use crate::api::deliveries::{self, FilterParams, Item};
use crate::error::{AppError, ErrorBody};
use crate::live::{LiveDelivery, LiveHub};
use crate::store::deliveries_list::DeliveryFilter;

/// New deliveries, live, as Server-Sent Events.
#[utoipa::path(
    get, path = "/deliveries/stream", tag = "deliveries",
    params(FilterParams),
    responses(
        (status = 200, description = "An event stream: `event: delivery` with a Delivery as data; `event: skipped` with `{\"count\": N}` when the subscriber fell behind (the stream goes on)", content((String = "text/event-stream"))),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn stream(
    State(pool): State<PgPool>,
    State(live): State<Arc<LiveHub>>,
    key: ApiKey,
    query: Result<Query<FilterParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let filter = deliveries::filter(&pool, q).await?;

    struct Subscription {
        receiver: tokio::sync::broadcast::Receiver<LiveDelivery>,
        filter: DeliveryFilter,
        closing: tokio_util::sync::CancellationToken,
    }
    let subscription = Subscription {
        receiver: live.subscribe_deliveries(),
        filter,
        closing: live.closing(),
    };
    let events = futures_util::stream::unfold(subscription, |mut s| async move {
        loop {
            let received = tokio::select! {
                _ = s.closing.cancelled() => return None,
                received = s.receiver.recv() => received,
            };
            match received {
                Ok(LiveDelivery::Skipped(count)) => {
                    let event = Event::default()
                        .event("skipped")
                        .data(format!("{{\"count\":{count}}}"));
                    return Some((Ok(event), s));
                }
                Ok(LiveDelivery::Row(delivery)) => {
                    let (row, body) = &*delivery;
                    if !s.filter.matches(row, body) {
                        continue;
                    }
                    let event = Event::default()
                        .event("delivery")
                        .json_data(Item::from(row.clone()))
                        .unwrap_or_else(|_| Event::default().comment("unencodable"));
                    return Some((Ok(event), s));
                }
                Err(RecvError::Lagged(count)) => {
                    let event = Event::default()
                        .event("skipped")
                        .data(format!("{{\"count\":{count}}}"));
                    return Some((Ok(event), s));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
