//! The console's deliveries list: stored messages and `door_events` in one newest-first
//! order, read as two keyset queries (each `LIMIT n + 1` in `(received_at DESC, id DESC)`)
//! merged in Rust, so that every page costs two short index scans however deep it is.
//!
//! At equal receipt times a message comes before an event; the position after an item
//! ([`Position`]) therefore says where both scans resume. Per-page extras (what the device
//! was answered, the rejection a message was replayed from) are read for the page's rows
//! only, by primary or partial index.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// Which of the two sources an item comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Message(i64),
    Event(Uuid),
}

/// Where a page ended: the receipt time and identity of its last item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub received_at: DateTime<Utc>,
    pub after: Source,
}

/// The filters of the list and of the live stream, resolved to what rows carry.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub door: Option<String>,
    /// The destinations a `destination` filter names (removed ones included), and the plug
    /// itself when it was given as one (events of an unknown plug carry only that).
    pub destination: Option<DestinationMatch>,
    /// `senml::device_key` of the `device` filter.
    pub device_key: Option<String>,
    /// Which verdicts: `None` is all of them.
    pub verdict: Option<String>,
    pub reason: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Bytes the body must contain.
    pub q: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct DestinationMatch {
    pub ids: Vec<Uuid>,
    pub plugs: Vec<Uuid>,
}

impl DeliveryFilter {
    /// Whether messages can match at all (verdict and reason restrict the sources).
    pub fn reads_messages(&self) -> bool {
        self.reason.is_none()
            && self
                .verdict
                .as_deref()
                .is_none_or(|v| v == "stored" || v == "quarantined")
    }

    pub fn reads_events(&self) -> bool {
        self.verdict
            .as_deref()
            .is_none_or(|v| matches!(v, "duplicate" | "spooled" | "rejected"))
    }

    /// The same decision as the SQL, for rows the live stream publishes.
    pub fn matches(&self, row: &DeliveryRow, body: &[u8]) -> bool {
        let is_message = matches!(row.source, Source::Message(_));
        if (is_message && !self.reads_messages()) || (!is_message && !self.reads_events()) {
            return false;
        }
        if self.door.as_ref().is_some_and(|d| *d != row.door)
            || self.verdict.as_ref().is_some_and(|v| *v != row.verdict)
            || self
                .reason
                .as_ref()
                .is_some_and(|r| Some(r) != row.reason.as_ref())
            || self.from.is_some_and(|f| row.received_at < f)
            || self.to.is_some_and(|t| row.received_at >= t)
        {
            return false;
        }
        if let Some(d) = &self.destination {
            let by_id = row.destination_id.is_some_and(|id| d.ids.contains(&id));
            let by_plug = !is_message && row.plug.is_some_and(|p| d.plugs.contains(&p));
            if !by_id && !by_plug {
                return false;
            }
        }
        if let Some(key) = &self.device_key
            && !row.device_keys.iter().any(|k| k == key)
        {
            return false;
        }
        if let Some(q) = &self.q {
            let needle = q.as_bytes();
            if !body.windows(needle.len()).any(|w| w == needle) {
                return false;
            }
        }
        true
    }
}

/// One item of the list, as read.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub source: Source,
    pub received_at: DateTime<Utc>,
    pub door: String,
    pub destination: Option<String>,
    pub destination_id: Option<Uuid>,
    pub plug: Option<Uuid>,
    pub device: Option<String>,
    /// Normalised URNs a delivery belongs to (a message's device and registration, an
    /// event's first `bn`), for the stream's device filter.
    pub device_keys: Vec<String>,
    pub verdict: String,
    pub reason: Option<String>,
    pub status: i32,
    pub record_count: i32,
    pub size: i64,
    pub message_id: Option<i64>,
    pub replay_of: Option<Uuid>,
}

impl DeliveryRow {
    pub fn position(&self) -> Position {
        Position {
            received_at: self.received_at,
            after: self.source.clone(),
        }
    }

    /// The merge order: newest first, a message before an event at the same time, then by
    /// id descending.
    fn order_key(&self) -> (DateTime<Utc>, u8, i64, Uuid) {
        match &self.source {
            Source::Message(id) => (self.received_at, 1, *id, Uuid::nil()),
            Source::Event(id) => (self.received_at, 0, 0, *id),
        }
    }
}

#[derive(sqlx::FromRow)]
struct MessageRecord {
    id: i64,
    received_at: DateTime<Utc>,
    door: String,
    destination: Option<String>,
    destination_id: Option<Uuid>,
    plug: Option<Uuid>,
    device: Option<String>,
    device_key: Option<String>,
    registration_key: Option<String>,
    verdict: String,
    record_count: i32,
    size: i64,
    response_code: Option<i16>,
}

#[derive(sqlx::FromRow)]
struct EventRecord {
    id: Uuid,
    received_at: DateTime<Utc>,
    door: String,
    destination: Option<String>,
    destination_id: Option<Uuid>,
    plug: Option<Uuid>,
    device: Option<String>,
    device_key: Option<String>,
    verdict: String,
    reason: String,
    status: i16,
    size: Option<i64>,
    message_id: Option<i64>,
}

const MESSAGE_COLUMNS: &str = "SELECT m.id, m.received_at, m.door, x.name AS destination, \
        m.destination_id, x.plug, coalesce(d.urn, k.urn) AS device, d.urn_key AS device_key, \
        k.urn_key AS registration_key, m.status AS verdict, m.record_count, \
        octet_length(m.body)::int8 AS size, x.response_code \
     FROM messages m LEFT JOIN destinations x ON x.id = m.destination_id \
     LEFT JOIN devices d ON d.id = m.device_id \
     LEFT JOIN device_keys k ON k.id = m.device_key_id";

const EVENT_COLUMNS: &str = "SELECT e.id, e.received_at, e.door, \
        coalesce(x.name, y.name) AS destination, coalesce(e.destination_id, y.id) AS destination_id, \
        coalesce(e.plug, x.plug) AS plug, e.device_urn AS device, e.device_key, e.verdict, \
        e.reason, e.status, \
        e.body_size AS size, e.message_id \
     FROM door_events e LEFT JOIN destinations x ON x.id = e.destination_id \
     LEFT JOIN destinations y ON e.destination_id IS NULL AND y.plug = e.plug \
                              AND y.removed_at IS NULL";

/// Up to `limit` items matching `filter` after `position`, newest first (`limit + 1` asked
/// for by the caller to know whether another page follows).
pub async fn list(
    pool: &PgPool,
    filter: &DeliveryFilter,
    position: Option<&Position>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let messages = async {
        if !filter.reads_messages() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::new("");
        if filter.device_key.is_some() {
            // A device's messages are two index ranges: by its `devices` row, newest first
            // through the per-device index, and a registration's messages without one
            // (quarantined). An OR of the two would walk the received-time index instead.
            query.push("SELECT * FROM ((");
            message_branch(&mut query, filter, position, limit, DeviceBranch::Device);
            query.push(") UNION ALL (");
            message_branch(
                &mut query,
                filter,
                position,
                limit,
                DeviceBranch::Registration,
            );
            query
                .push(")) m ORDER BY m.received_at DESC, m.id DESC LIMIT ")
                .push_bind(limit);
        } else {
            message_branch(&mut query, filter, position, limit, DeviceBranch::Device);
        }
        query
            .build_query_as::<MessageRecord>()
            .fetch_all(pool)
            .await
    };
    let events = async {
        if !filter.reads_events() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::new(EVENT_COLUMNS);
        query.push(" WHERE TRUE");
        event_conditions(&mut query, filter);
        match position {
            Some(Position {
                received_at,
                after: Source::Event(id),
            }) => {
                query
                    .push(" AND (e.received_at, e.id) < (")
                    .push_bind(*received_at)
                    .push(", ")
                    .push_bind(*id)
                    .push(")");
            }
            Some(Position { received_at, .. }) => {
                query.push(" AND e.received_at <= ").push_bind(*received_at);
            }
            None => {}
        }
        query
            .push(" ORDER BY e.received_at DESC, e.id DESC LIMIT ")
            .push_bind(limit);
        query.build_query_as::<EventRecord>().fetch_all(pool).await
    };
    let (messages, events) = tokio::try_join!(messages, events)?;
    let mut rows: Vec<DeliveryRow> = messages
        .into_iter()
        .map(DeliveryRow::from)
        .chain(events.into_iter().map(DeliveryRow::from))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.order_key()));
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    complete(pool, &mut rows).await?;
    Ok(rows)
}

/// Which half of a device filter a messages query reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DeviceBranch {
    Device,
    Registration,
}

/// One ordered, limited messages query after `position`.
fn message_branch(
    query: &mut QueryBuilder<Postgres>,
    filter: &DeliveryFilter,
    position: Option<&Position>,
    limit: i64,
    branch: DeviceBranch,
) {
    // A registration's messages without a device row are few: read them by the
    // registration's index behind a fence (OFFSET 0), then sort, so the planner cannot walk
    // the received-time index looking for them.
    if branch == DeviceBranch::Registration {
        query.push("SELECT * FROM (");
    }
    query.push(MESSAGE_COLUMNS).push(" WHERE TRUE");
    message_conditions(query, filter, branch);
    match position {
        Some(Position {
            received_at,
            after: Source::Message(id),
        }) => {
            query
                .push(" AND (m.received_at, m.id) < (")
                .push_bind(*received_at)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        Some(Position { received_at, .. }) => {
            query.push(" AND m.received_at < ").push_bind(*received_at);
        }
        None => {}
    }
    if branch == DeviceBranch::Registration {
        query.push(" OFFSET 0) m");
    }
    query
        .push(" ORDER BY m.received_at DESC, m.id DESC LIMIT ")
        .push_bind(limit);
}

fn message_conditions(
    query: &mut QueryBuilder<Postgres>,
    filter: &DeliveryFilter,
    branch: DeviceBranch,
) {
    if let Some(door) = &filter.door {
        query.push(" AND m.door = ").push_bind(door.clone());
    }
    if let Some(d) = &filter.destination {
        query
            .push(" AND m.destination_id = ANY(")
            .push_bind(d.ids.clone())
            .push(")");
    }
    match (&filter.device_key, branch) {
        (Some(key), DeviceBranch::Device) => {
            query
                .push(" AND m.device_id = (SELECT id FROM devices WHERE urn_key = ")
                .push_bind(key.clone())
                .push(")");
        }
        (Some(key), DeviceBranch::Registration) => {
            query
                .push(" AND m.device_id IS NULL AND m.device_key_id = ANY(ARRAY(")
                .push("SELECT id FROM device_keys WHERE urn_key = ")
                .push_bind(key.clone())
                .push("))");
        }
        (None, _) => {}
    }
    if let Some(verdict) = &filter.verdict {
        query.push(" AND m.status = ").push_bind(verdict.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND m.received_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND m.received_at < ").push_bind(to);
    }
    if let Some(q) = &filter.q {
        query
            .push(" AND position(convert_to(")
            .push_bind(q.clone())
            .push(", 'UTF8') in m.body) > 0");
    }
}

fn event_conditions(query: &mut QueryBuilder<Postgres>, filter: &DeliveryFilter) {
    if let Some(door) = &filter.door {
        query.push(" AND e.door = ").push_bind(door.clone());
    }
    if let Some(d) = &filter.destination {
        query
            .push(" AND (e.destination_id = ANY(")
            .push_bind(d.ids.clone())
            .push(") OR (e.destination_id IS NULL AND e.plug = ANY(")
            .push_bind(d.plugs.clone())
            .push(")))");
    }
    if let Some(key) = &filter.device_key {
        query.push(" AND e.device_key = ").push_bind(key.clone());
    }
    if let Some(verdict) = &filter.verdict {
        query.push(" AND e.verdict = ").push_bind(verdict.clone());
    }
    if let Some(reason) = &filter.reason {
        query.push(" AND e.reason = ").push_bind(reason.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND e.received_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND e.received_at < ").push_bind(to);
    }
    if let Some(q) = &filter.q {
        query
            .push(" AND position(convert_to(")
            .push_bind(q.clone())
            .push(", 'UTF8') in e.body) > 0");
    }
}

/// The destinations a `destination` filter names: by name or by plug, removed ones too.
pub async fn destinations_named(
    pool: &PgPool,
    name_or_plug: &str,
) -> Result<DestinationMatch, sqlx::Error> {
    let plug = Uuid::parse_str(name_or_plug).ok();
    let rows: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT id, plug FROM destinations WHERE name = $1 OR plug = $2")
            .bind(name_or_plug)
            .bind(plug)
            .fetch_all(pool)
            .await?;
    let mut found = DestinationMatch::default();
    for (id, p) in rows {
        found.ids.push(id);
        found.plugs.extend(p);
    }
    found.plugs.extend(plug);
    Ok(found)
}

impl From<MessageRecord> for DeliveryRow {
    fn from(m: MessageRecord) -> Self {
        DeliveryRow {
            source: Source::Message(m.id),
            received_at: m.received_at,
            door: m.door,
            destination: m.destination,
            destination_id: m.destination_id,
            plug: m.plug,
            device: m.device,
            device_keys: m.device_key.into_iter().chain(m.registration_key).collect(),
            verdict: m.verdict,
            reason: None,
            // A device door's answer is completed by `complete`.
            status: m.response_code.map_or(202, i32::from),
            record_count: m.record_count,
            size: m.size,
            message_id: Some(m.id),
            replay_of: None,
        }
    }
}

impl From<EventRecord> for DeliveryRow {
    fn from(e: EventRecord) -> Self {
        DeliveryRow {
            source: Source::Event(e.id),
            received_at: e.received_at,
            door: e.door,
            destination: e.destination,
            destination_id: e.destination_id,
            plug: e.plug,
            device: e.device,
            device_keys: e.device_key.into_iter().collect(),
            verdict: e.verdict,
            reason: Some(e.reason),
            status: i32::from(e.status),
            record_count: 0,
            size: e.size.unwrap_or(0),
            message_id: e.message_id,
            replay_of: None,
        }
    }
}

/// What only a page's own messages need: a device door answered 200 when a downlink or a
/// firmware notice rode on the answer (202 otherwise), and the rejection a message was
/// replayed from. Two index probes per message id, for the page's rows only.
async fn complete(pool: &PgPool, rows: &mut [DeliveryRow]) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = rows
        .iter()
        .filter_map(|r| match r.source {
            Source::Message(id) => Some(id),
            Source::Event(_) => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let answered: HashSet<i64> = sqlx::query_scalar(
        "SELECT message_id FROM downlinks WHERE message_id = ANY($1) \
         UNION SELECT notified_message_id FROM fota_targets WHERE notified_message_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let replays: HashMap<i64, Uuid> = sqlx::query_as(
        "SELECT replayed_message_id, id FROM door_events WHERE replayed_message_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    for row in rows {
        if let Source::Message(id) = row.source {
            if row.door != "destination" && answered.contains(&id) {
                row.status = 200;
            }
            row.replay_of = replays.get(&id).copied();
        }
    }
    Ok(())
}

/// The messages ingest transactions announced, each as `(min, max)` of its ids: the rows in
/// each range written by the same transaction as its first (rows of concurrent batches in a
/// range are announced by their own notification).
pub async fn announced_messages(
    pool: &PgPool,
    ranges: &[(i64, i64)],
) -> Result<Vec<(DeliveryRow, Vec<u8>)>, sqlx::Error> {
    let (lows, highs): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
    // Each announced range holds its transaction's rows, and may hold rows of concurrent
    // ones (identity values are handed out before commit): those are told apart by `xmin`,
    // the transaction that wrote the range's first row. One statement for every range.
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT m.id, m.body FROM UNNEST($1::int8[], $2::int8[]) AS r(lo, hi) \
         JOIN messages m ON m.id BETWEEN r.lo AND r.hi \
          AND m.xmin = (SELECT g.xmin FROM messages g WHERE g.id = r.lo) \
         ORDER BY m.id",
    )
    .bind(&lows)
    .bind(&highs)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let mut bodies: HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    let mut items: Vec<DeliveryRow> = sqlx::query_as::<_, MessageRecord>(sqlx::AssertSqlSafe(
        format!("{MESSAGE_COLUMNS} WHERE m.id = ANY($1) ORDER BY m.id"),
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(DeliveryRow::from)
    .collect();
    complete(pool, &mut items).await?;
    Ok(items
        .into_iter()
        .map(|r| {
            let body = match r.source {
                Source::Message(id) => bodies.remove(&id).unwrap_or_default(),
                Source::Event(_) => Vec::new(),
            };
            (r, body)
        })
        .collect())
}

/// The door events a notification announced, by id.
pub async fn announced_events(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<(DeliveryRow, Vec<u8>)>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, body FROM door_events WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    let mut bodies: HashMap<Uuid, Vec<u8>> = rows
        .into_iter()
        .map(|(id, b)| (id, b.unwrap_or_default()))
        .collect();
    let mut items: Vec<DeliveryRow> = sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(
        format!("{EVENT_COLUMNS} WHERE e.id = ANY($1) ORDER BY e.received_at, e.id"),
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(DeliveryRow::from)
    .collect();
    items.sort_by_key(|r| r.order_key());
    Ok(items
        .into_iter()
        .map(|r| {
            let body = match r.source {
                Source::Event(id) => bodies.remove(&id).unwrap_or_default(),
                Source::Message(_) => Vec::new(),
            };
            (r, body)
        })
        .collect())
}

/// One message as the list shows it (its answer and replay origin included).
pub async fn message(pool: &PgPool, id: i64) -> Result<Option<DeliveryRow>, sqlx::Error> {
    let Some(record) = sqlx::query_as::<_, MessageRecord>(sqlx::AssertSqlSafe(format!(
        "{MESSAGE_COLUMNS} WHERE m.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let mut rows = [DeliveryRow::from(record)];
    complete(pool, &mut rows).await?;
    let [row] = rows;
    Ok(Some(row))
}
