//! `GET /api/v1/stream`: newly stored measurements as Server-Sent Events.
//!
//! Each event is `event: measurement`, `id:` the measurement id, and the measurement as JSON
//! (the same shape as in `GET /measurements`). A subscriber that falls too far behind gets a
//! final `event: dropped` and the stream ends; reconnecting resumes with new measurements
//! (use `GET /measurements` to fill the gap).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::admin::{ApiKey, Scope};
use crate::api::measurements::Item;
use crate::api::params;
use crate::error::{AppError, ErrorBody};
use crate::live::LiveHub;
use crate::senml::device_key;
use crate::store::live::LiveRow;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Only this device (URN, any case); it need not have been seen yet.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    device: Option<String>,
    /// Only this measurement name.
    #[param(pattern = "^[^\\u0000]*$", max_length = 1000)]
    name: Option<String>,
}

/// Newly stored measurements, live, as Server-Sent Events.
#[utoipa::path(
    get, path = "/stream", tag = "measurements",
    params(StreamParams),
    responses(
        (status = 200, description = "An event stream: `event: measurement` with a Measurement as data; `event: dropped` before the server ends a stream that fell behind", content((String = "text/event-stream"))),
        (status = 400, description = "A parameter is invalid", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn stream(
    State(live): State<Arc<LiveHub>>,
    key: ApiKey,
    query: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    key.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| AppError::bad_parameter("query", e.body_text()))?;
    let device = params::text("device", q.device)?.map(|d| device_key(&d));
    let name = params::text("name", q.name)?;
    let receiver = live.subscribe();
    let closing = live.closing();

    struct Subscription {
        receiver: tokio::sync::broadcast::Receiver<Arc<LiveRow>>,
        device: Option<String>,
        name: Option<String>,
        closing: tokio_util::sync::CancellationToken,
        done: bool,
    }
    let subscription = Subscription {
        receiver,
        device,
        name,
        closing,
        done: false,
    };
    let events = futures_util::stream::unfold(subscription, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let received = tokio::select! {
                _ = s.closing.cancelled() => return None,
                received = s.receiver.recv() => received,
            };
            match received {
                Ok(m) => {
                    if s.device.as_ref().is_some_and(|d| *d != m.urn_key)
                        || s.name.as_ref().is_some_and(|n| *n != m.measurement.name)
                    {
                        continue;
                    }
                    let event = Event::default()
                        .event("measurement")
                        .id(m.measurement.id.to_string())
                        .json_data(Item::from(m.measurement.clone()))
                        .unwrap_or_else(|_| Event::default().comment("unencodable"));
                    return Some((Ok(event), s));
                }
                Err(RecvError::Lagged(missed)) => {
                    s.done = true;
                    let event = Event::default().event("dropped").data(format!(
                        "this stream fell {missed} measurements behind and is closed; reconnect"
                    ));
                    return Some((Ok(event), s));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
