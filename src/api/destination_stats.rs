//! `GET /api/v1/destinations/stats`: per destination, what arrived in the last hour and day
//! by verdict, and how long it has been silent (KPN stops sending without a word).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::{ApiKey, Scope};
use crate::error::AppError;
use crate::store::destination_stats::{self, Counts};
use crate::time_format::format_time;

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DestinationStats)]
pub struct Item {
    name: String,
    plug: Option<Uuid>,
    /// No delivery has bound a plug yet.
    pending: bool,
    /// The newest stored delivery.
    last_stored_at: Option<String>,
    silent_for_seconds: Option<i64>,
    hour: Counts,
    day: Counts,
    /// Until when the previous secret is still accepted, while a rotation overlaps.
    overlap_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DestinationStatsList)]
pub struct Stats {
    items: Vec<Item>,
}

/// Every destination (not removed) with its counts and silence.
#[utoipa::path(
    get, path = "/destinations/stats", tag = "deliveries",
    responses((status = 200, body = Stats)),
    security(("api_key" = []))
)]
pub async fn stats(State(pool): State<PgPool>, key: ApiKey) -> Result<Json<Stats>, AppError> {
    key.require(Scope::Read)?;
    let items = destination_stats::read(&pool)
        .await?
        .into_iter()
        .map(|d| Item {
            name: d.name,
            pending: d.plug.is_none(),
            plug: d.plug,
            last_stored_at: d.last_stored_at.map(format_time),
            silent_for_seconds: d.silent_for_seconds,
            hour: d.hour,
            day: d.day,
            overlap_until: d.overlap_until.map(format_time),
        })
        .collect();
    Ok(Json(Stats { items }))
}
