//! Per destination: deliveries of the last hour and day by verdict (messages and door
//! events), the last stored delivery (one backward probe of the destination's index), and
//! the rotation overlap. For the console's destinations page.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Counts by verdict over one window.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub stored: i64,
    pub quarantined: i64,
    pub duplicate: i64,
    pub spooled: i64,
    pub rejected: i64,
}

impl Counts {
    fn add(&mut self, verdict: &str, n: i64) {
        match verdict {
            "stored" => self.stored += n,
            "quarantined" => self.quarantined += n,
            "duplicate" => self.duplicate += n,
            "spooled" => self.spooled += n,
            "rejected" => self.rejected += n,
            _ => {}
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DestinationRecord {
    id: Uuid,
    name: String,
    plug: Option<Uuid>,
    last_stored_at: Option<DateTime<Utc>>,
    silent_for_seconds: Option<i64>,
    overlap_until: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct DestinationStats {
    pub name: String,
    pub plug: Option<Uuid>,
    pub last_stored_at: Option<DateTime<Utc>>,
    pub silent_for_seconds: Option<i64>,
    pub overlap_until: Option<DateTime<Utc>>,
    pub hour: Counts,
    pub day: Counts,
}

/// Every destination not removed, by name.
pub async fn read(pool: &PgPool) -> Result<Vec<DestinationStats>, sqlx::Error> {
    let destinations: Vec<DestinationRecord> = sqlx::query_as(
        "SELECT d.id, d.name, d.plug, l.t AS last_stored_at, \
                floor(extract(epoch FROM now() - l.t))::int8 AS silent_for_seconds, \
                CASE WHEN d.previous_expires_at > now() THEN d.previous_expires_at END \
                    AS overlap_until \
         FROM destinations d, LATERAL (SELECT max(m.received_at) AS t FROM messages m \
                                       WHERE m.destination_id = d.id AND m.status = 'stored') l \
         WHERE d.removed_at IS NULL ORDER BY d.name",
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = destinations.iter().map(|d| d.id).collect();
    // (destination, verdict, last hour, last day)
    type Window = (Option<Uuid>, String, i64, i64);
    let messages = sqlx::query_as::<_, Window>(
        "SELECT destination_id, status, \
                count(*) FILTER (WHERE received_at >= now() - interval '1 hour'), count(*) \
         FROM messages WHERE destination_id = ANY($1) \
           AND received_at >= now() - interval '1 day' \
         GROUP BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(pool);
    // An event names its destination once verified (duplicate, spooled), else by the plug
    // it was sent to.
    let events = sqlx::query_as::<_, Window>(
        "SELECT coalesce(e.destination_id, y.id), e.verdict, \
                count(*) FILTER (WHERE e.received_at >= now() - interval '1 hour'), count(*) \
         FROM door_events e LEFT JOIN destinations y \
              ON e.destination_id IS NULL AND y.plug = e.plug AND y.removed_at IS NULL \
         WHERE e.door = 'destination' AND e.received_at >= now() - interval '1 day' \
         GROUP BY 1, 2",
    )
    .fetch_all(pool);
    let (messages, events) = tokio::try_join!(messages, events)?;
    let mut windows: HashMap<Uuid, (Counts, Counts)> = HashMap::new();
    for (id, verdict, hour, day) in messages.into_iter().chain(events) {
        let Some(id) = id else { continue };
        let (h, d) = windows.entry(id).or_default();
        h.add(&verdict, hour);
        d.add(&verdict, day);
    }
    Ok(destinations
        .into_iter()
        .map(|d| {
            let (hour, day) = windows.get(&d.id).copied().unwrap_or_default();
            DestinationStats {
                name: d.name,
                plug: d.plug,
                last_stored_at: d.last_stored_at,
                silent_for_seconds: d.silent_for_seconds,
                overlap_until: d.overlap_until,
                hour,
                day,
            }
        })
        .collect())
}
