//! Writing verified deliveries: raw messages, devices, measurements and latest values for a
//! whole batch in one transaction, so that an answer of success always means all of it is
//! durable, and so that many concurrent deliveries share one commit (group commit).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::senml::{Measurement, device_key, device_kind};
use crate::token::Token;

use super::known_ids::{KnownDevice, KnownIds};
use super::{answer_downlinks, device_uplinks, fota_answers};

/// Who signed a delivery, which is also what tells a retry from a new delivery: the same
/// sender and the same token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A KPN Things destination, through `/ingest/kpn`.
    Destination {
        id: Uuid,
        /// Set when this delivery is the first for a pending destination: bind it to this plug.
        bind_plug: Option<Uuid>,
    },
    /// A registered device, through one of the device doors.
    Device {
        /// The registration (`device_keys.id`) whose secret signed it.
        key_id: Uuid,
        /// The registration's normalised URN: every record must belong to this device.
        urn_key: String,
        door: DeviceDoor,
    },
}

/// The two doors a device can post through (KPN's M2M and Internet ingestion paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDoor {
    M2m,
    Ip,
}

impl DeviceDoor {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceDoor::M2m => "m2m",
            DeviceDoor::Ip => "ip",
        }
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Destination { id, .. } => write!(f, "destination {id}"),
            Sender::Device { urn_key, door, .. } => {
                write!(f, "device {urn_key} ({})", door.as_str())
            }
        }
    }
}

impl Sender {
    /// The `messages.door` value.
    pub fn door(&self) -> &'static str {
        match self {
            Sender::Destination { .. } => "destination",
            Sender::Device { door, .. } => door.as_str(),
        }
    }

    /// The key a retry is recognised by, with the token: destination or registration id.
    fn key(&self) -> (bool, Uuid) {
        match self {
            Sender::Destination { id, .. } => (false, *id),
            Sender::Device { key_id, .. } => (true, *key_id),
        }
    }
}

/// A verified delivery as it arrived: everything needed to store it, or to spool it and
/// store it later.
#[derive(Debug, Clone)]
pub struct RawDelivery {
    pub sender: Sender,
    pub token: Token,
    pub received_at: DateTime<Utc>,
    pub body: Bytes,
    /// The non-secret extra headers kept with it.
    pub headers: BTreeMap<String, String>,
}

/// A verified delivery with its resolved SenML, ready to store.
#[derive(Debug)]
pub struct Delivery {
    pub raw: RawDelivery,
    /// The resolved pack, or why it is not a valid SenML pack (then it is quarantined).
    pub decoded: Result<Vec<Measurement>, String>,
    /// Whether a device is waiting for this delivery's answer, which can carry one of its
    /// queued downlinks. False for a spool replay: that answer was given long ago.
    pub answers_device: bool,
}

/// What the store did with one delivery of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub outcome: StoreOutcome,
    /// For a delivery that [answers a device](Delivery::answers_device): what its answer carries.
    pub reply: Option<DeviceReply>,
}

/// What the answer to a device's uplink carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceReply {
    /// The downlink that rides on this answer (the same one again for a retry).
    pub downlink: Option<ReplyDownlink>,
    /// How many more downlinks wait for the device.
    pub pending: i64,
    /// The firmware notification that rides on this answer instead of a downlink (the same
    /// one again for a retry).
    pub fota: Option<FotaNotice>,
}

/// A firmware download a device is told of: the answer carries its URL and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FotaNotice {
    /// The target, whose id is the URL's UUID.
    pub target: Uuid,
    /// The device's URN as registered, the pack's `bn`.
    pub urn: String,
    /// The campaign's base URL of the file server.
    pub base_url: String,
}

/// A downlink delivered in an answer: its id and its SenML pack, exactly as queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyDownlink {
    pub id: Uuid,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored {
        message_id: i64,
    },
    Quarantined {
        message_id: i64,
    },
    /// The same (sender, token) was stored before: nothing was written.
    Duplicate,
}

impl StoreOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreOutcome::Stored { .. } => "stored",
            StoreOutcome::Quarantined { .. } => "quarantined",
            StoreOutcome::Duplicate => "duplicate",
        }
    }
}

/// What identifies a delivery: its sender and token.
type DeliveryKey = ((bool, Uuid), [u8; 32]);

fn delivery_key(raw: &RawDelivery) -> DeliveryKey {
    (raw.sender.key(), raw.token.0)
}

/// Stores `batch` in one transaction on `conn` and returns one receipt per delivery, in order.
///
/// A delivery that repeats an earlier one in the same batch, or one stored before, is a
/// duplicate. The caller commits nothing: this function begins and commits its own transaction.
/// Ids of devices and series are taken from `known` where it has them, and what the database
/// told is remembered there once the transaction has committed.
pub async fn store_batch(
    conn: &mut PgConnection,
    batch: &[Delivery],
    known: &KnownIds,
) -> Result<Vec<Receipt>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;

    for delivery in batch {
        if let Sender::Destination {
            id,
            bind_plug: Some(plug),
        } = delivery.raw.sender
            && !crate::store::destinations::bind_plug(&mut *tx, id, plug).await?
        {
            tracing::info!(%plug, "pending destination was bound by a concurrent delivery");
        }
    }

    // The first occurrence of each (sender, token) represents it; later ones in the same
    // batch are duplicates by definition.
    let mut first: HashMap<DeliveryKey, usize> = HashMap::with_capacity(batch.len());
    let mut unique: Vec<usize> = Vec::with_capacity(batch.len());
    for (i, delivery) in batch.iter().enumerate() {
        let key = delivery_key(&delivery.raw);
        if let std::collections::hash_map::Entry::Vacant(slot) = first.entry(key) {
            slot.insert(i);
            unique.push(i);
        }
    }

    // A device's token repeated outside the retry window is a new reading, not a retry.
    let unique = device_uplinks::keep_new(&mut tx, batch, unique).await?;

    // Devices first, so each message row is written once with its device.
    let seen = batch
        .iter()
        .map(|d| d.raw.received_at)
        .max()
        .unwrap_or_else(Utc::now);
    let devices = upsert_devices(&mut tx, batch, &unique, seen, known).await?;
    let device_ids = &devices.ids;
    let message_ids = insert_messages(&mut tx, batch, &unique, device_ids).await?;

    let mut outcomes = vec![StoreOutcome::Duplicate; batch.len()];
    let mut new_messages: Vec<(i64, &[Measurement])> = Vec::new();
    for &i in &unique {
        let delivery = &batch[i];
        let Some(&id) = message_ids.get(&delivery_key(&delivery.raw)) else {
            continue;
        };
        outcomes[i] = match &delivery.decoded {
            Ok(records) => {
                if !records.is_empty() {
                    new_messages.push((id, records));
                }
                StoreOutcome::Stored { message_id: id }
            }
            Err(_) => StoreOutcome::Quarantined { message_id: id },
        };
    }
    let learnt_series = if new_messages.is_empty() {
        Vec::new()
    } else {
        super::series_write::write(&mut tx, &new_messages, device_ids, known).await?
    };
    let notices = fota_answers::apply(&mut tx, batch, &outcomes).await?;
    let mut replies = answer_downlinks::replies(&mut tx, batch, &outcomes, &notices).await?;
    for (reply, notice) in replies.iter_mut().zip(notices) {
        if let (Some(reply), Some(notice)) = (reply, notice) {
            reply.fota = Some(notice);
        }
    }
    tx.commit().await?;
    known.remember(devices.learnt, learnt_series);
    Ok(outcomes
        .into_iter()
        .zip(replies)
        .map(|(outcome, reply)| Receipt { outcome, reply })
        .collect())
}

/// The channel the ingest transaction announces its new messages on, `min_id,max_id` (the
/// console's live deliveries list, in every process; delivered at commit).
pub const MESSAGES_CHANNEL: &str = "things_messages_inserted";

/// Inserts the messages at `indices`, skipping those stored before; returns the new ids.
/// The same statement counts them in `devices.message_count` and announces them, so the hot
/// path gains no round trip and no trigger.
///
/// `ON CONFLICT DO NOTHING` makes a retry a no-op, also when the first attempt is still in
/// flight in another transaction: this one waits for it and then sees the row.
async fn insert_messages(
    tx: &mut PgConnection,
    batch: &[Delivery],
    indices: &[usize],
    device_ids: &HashMap<String, i64>,
) -> Result<HashMap<DeliveryKey, i64>, sqlx::Error> {
    let n = indices.len();
    let mut door = Vec::with_capacity(n);
    let mut destination: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut device_key_id: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut token: Vec<&[u8]> = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    let mut body: Vec<&[u8]> = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut error: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut device: Vec<Option<i64>> = Vec::with_capacity(n);
    for &i in indices {
        let (d, decoded) = (&batch[i].raw, &batch[i].decoded);
        door.push(d.sender.door());
        match &d.sender {
            Sender::Destination { id, .. } => {
                destination.push(Some(*id));
                device_key_id.push(None);
            }
            Sender::Device { key_id, .. } => {
                destination.push(None);
                device_key_id.push(Some(*key_id));
            }
        }
        token.push(&d.token.0[..]);
        received.push(d.received_at);
        body.push(&d.body[..]);
        headers.push(serde_json::to_string(&d.headers).unwrap_or_else(|_| "{}".into()));
        device.push(match decoded {
            Ok(records) => records
                .first()
                .and_then(|r| device_ids.get(&device_key(&r.device)).copied()),
            Err(_) => None,
        });
        match decoded {
            Ok(records) => {
                status.push("stored");
                error.push(None);
                count.push(records.len() as i32);
            }
            Err(reason) => {
                status.push("quarantined");
                error.push(Some(reason.as_str()));
                count.push(0);
            }
        }
    }
    // No conflict target: a retry conflicts on the destination's or on the device's key.
    // id, destination_id, device_key_id, token, and the notification's (empty) result,
    // selected so that no plan can leave the notification out.
    type Inserted = (i64, Option<Uuid>, Option<Uuid>, Vec<u8>, Option<String>);
    let rows: Vec<Inserted> = sqlx::query_as(
        "WITH i AS ( \
             INSERT INTO messages (destination_id, token, received_at, body, headers, status, decode_error, record_count, device_id, door, device_key_id) \
             SELECT d, t, r, b, h::jsonb, s, e, c, v, o, k \
             FROM UNNEST($1::uuid[], $2::bytea[], $3::timestamptz[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int4[], $9::int8[], $10::text[], $11::uuid[]) \
                  AS u(d, t, r, b, h, s, e, c, v, o, k) \
             ON CONFLICT DO NOTHING \
             RETURNING id, destination_id, device_key_id, token, device_id), \
         n AS (SELECT pg_notify($12, min(id)::text || ',' || max(id)::text)::text AS sent \
               FROM i HAVING count(*) > 0), \
         counted AS ( \
             UPDATE devices d SET message_count = d.message_count + c.n \
             FROM (SELECT device_id, count(*) AS n FROM i WHERE device_id IS NOT NULL \
                   GROUP BY device_id) c \
             WHERE d.id = c.device_id) \
         SELECT i.id, i.destination_id, i.device_key_id, i.token, n.sent FROM i LEFT JOIN n ON true",
    )
    .bind(&destination)
    .bind(&token)
    .bind(&received)
    .bind(&body)
    .bind(&headers)
    .bind(&status)
    .bind(&error)
    .bind(&count)
    .bind(&device)
    .bind(&door)
    .bind(&device_key_id)
    .bind(MESSAGES_CHANNEL)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, destination, key_id, token, _)| {
            let sender = match (destination, key_id) {
                (Some(d), None) => (false, d),
                (None, Some(k)) => (true, k),
                _ => return None,
            };
            Some(((sender, token.try_into().ok()?), id))
        })
        .collect())
}

/// How stale `devices.last_seen` may get. Updating it on every delivery would make every
/// concurrent transaction that touches a device wait for the others' commits (row locks are
/// held through the fsync); refreshing it only when this much older costs one update per
/// device per interval.
const LAST_SEEN_RESOLUTION: &str = "10 seconds";
const LAST_SEEN_RESOLUTION_SECS: i64 = 10;

/// Every device of a batch's resolved packs by normalised key, and what to remember of those
/// the database was asked about once the batch has committed.
struct BatchDevices {
    ids: HashMap<String, i64>,
    learnt: Vec<(String, KnownDevice)>,
}

/// Returns the device id of every device in the batch's resolved packs by normalised key:
/// inserts unseen devices, refreshes a stale `last_seen`, and locks no row otherwise. A device
/// `known` holds with a `last_seen` fresh enough costs no statement at all.
async fn upsert_devices(
    tx: &mut PgConnection,
    batch: &[Delivery],
    indices: &[usize],
    seen: DateTime<Utc>,
    known: &KnownIds,
) -> Result<BatchDevices, sqlx::Error> {
    let mut devices: BTreeMap<String, &str> = BTreeMap::new();
    for &i in indices {
        if let Ok(records) = &batch[i].decoded {
            for record in records {
                devices
                    .entry(device_key(&record.device))
                    .or_insert(&record.device);
            }
        }
    }
    let mut ids = HashMap::with_capacity(devices.len());
    let fresh_after = seen - chrono::Duration::seconds(LAST_SEEN_RESOLUTION_SECS);
    let remembered = known.devices(devices.keys().map(String::as_str));
    devices = devices
        .into_iter()
        .zip(remembered)
        .filter_map(|((key, urn), device)| match device {
            Some(device) if device.last_seen >= fresh_after => {
                ids.insert(key, device.id);
                None
            }
            _ => Some((key, urn)),
        })
        .collect();
    if devices.is_empty() {
        return Ok(BatchDevices {
            ids,
            learnt: Vec::new(),
        });
    }
    let keys: Vec<&str> = devices.keys().map(String::as_str).collect();
    let urns: Vec<&str> = devices.values().copied().collect();
    let kinds: Vec<&str> = devices
        .values()
        .map(|urn| device_kind(urn).as_str())
        .collect();
    // Sorted keys: concurrent transactions inserting the same new devices lock in one order.
    // The look-up is one index probe per key (LATERAL ... LIMIT 1), whatever the planner
    // believes of the table's size.
    let rows: Vec<(String, i64, DateTime<Utc>, bool)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH new AS ( \
             INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
             SELECT k, u, t, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(k, u, t) \
             ON CONFLICT (urn_key) DO NOTHING RETURNING urn_key, id, last_seen), \
         refreshed AS ( \
             UPDATE devices SET last_seen = $4 \
             WHERE urn_key = ANY($1) AND last_seen < $4 - interval '{LAST_SEEN_RESOLUTION}' \
             RETURNING urn_key, id, last_seen) \
         SELECT urn_key, id, last_seen, true FROM new \
         UNION ALL SELECT urn_key, id, last_seen, true FROM refreshed \
         UNION ALL SELECT d.urn_key, d.id, d.last_seen, false \
             FROM UNNEST($1::text[]) AS k(key) \
             CROSS JOIN LATERAL (SELECT urn_key, id, last_seen FROM devices \
                                 WHERE urn_key = k.key LIMIT 1) d"
        )))
        .bind(&keys)
        .bind(&urns)
        .bind(&kinds)
        .bind(seen)
        .fetch_all(&mut *tx)
        .await?;
    let mut found: HashMap<String, KnownDevice> = HashMap::with_capacity(keys.len());
    // What this statement wrote wins over what its snapshot read of the same row.
    for (key, id, last_seen, written) in rows {
        let device = KnownDevice { id, last_seen };
        if written {
            found.insert(key, device);
        } else {
            found.entry(key).or_insert(device);
        }
    }
    // A device inserted by a concurrent transaction that committed while ours waited on it is
    // skipped by DO NOTHING yet invisible to this statement's snapshot; a new statement sees it.
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !found.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(String, i64, DateTime<Utc>)> =
            sqlx::query_as("SELECT urn_key, id, last_seen FROM devices WHERE urn_key = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?;
        for (key, id, last_seen) in rows {
            found.insert(key, KnownDevice { id, last_seen });
        }
    }
    if found.len() < keys.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    let learnt: Vec<(String, KnownDevice)> = found.into_iter().collect();
    ids.extend(learnt.iter().map(|(key, device)| (key.clone(), device.id)));
    Ok(BatchDevices { ids, learnt })
}
