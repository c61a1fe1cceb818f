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

use super::known_ids::KnownIds;
use super::series_write::BatchSeries;
use super::{answer_downlinks, batch_write, device_uplinks, fota_answers};

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

    /// Whether this is a destination that is bound to its plug. A batch of such deliveries
    /// only is written as one statement once the ids of its devices and series are known
    /// ([`store_batch`]): a device's uplink may take a downlink and a firmware notice with
    /// it, and a pending destination's first delivery binds it, in a transaction.
    pub fn is_bound_destination(&self) -> bool {
        matches!(
            self,
            Sender::Destination {
                bind_plug: None,
                ..
            }
        )
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
pub(super) type DeliveryKey = ((bool, Uuid), [u8; 32]);

fn delivery_key(raw: &RawDelivery) -> DeliveryKey {
    (raw.sender.key(), raw.token.0)
}

/// Stores `batch` on `conn`, all of it or nothing, and returns one receipt per delivery, in
/// order.
///
/// A delivery that repeats an earlier one in the same batch, or one stored before, is a
/// duplicate. Ids of devices and series are taken from `known` where it has them, and what
/// the database told is remembered there once the batch has committed. A batch whose ids are
/// all known and that writes nothing but its messages and measurements (destination
/// deliveries, the steady state) is one statement, its own transaction; any other batch runs
/// in a transaction this function begins and commits. Either way it has committed when this
/// returns `Ok`.
pub async fn store_batch(
    conn: &mut PgConnection,
    batch: &[Delivery],
    known: &KnownIds,
) -> Result<Vec<Receipt>, sqlx::Error> {
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
    let seen = batch
        .iter()
        .map(|d| d.raw.received_at)
        .max()
        .unwrap_or_else(Utc::now);
    if batch.iter().all(|d| d.raw.sender.is_bound_destination()) {
        let devices = BatchDevices::of(batch, &unique, known);
        if devices.due.is_empty() {
            let series = BatchSeries::of(records_of(batch, &unique), &devices.ids, known)?;
            if series.complete() {
                let message_ids =
                    batch_write::write(conn, batch, &unique, &devices.ids, &series).await?;
                return Ok(outcomes(batch, &unique, &message_ids)
                    .into_iter()
                    .map(|outcome| Receipt {
                        outcome,
                        reply: None,
                    })
                    .collect());
            }
        }
    }

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
    // A device's token repeated outside the retry window is a new reading, not a retry.
    let unique = device_uplinks::keep_new(&mut tx, batch, unique).await?;
    // Devices and series first, so each message and row is written once with its ids.
    let mut devices = BatchDevices::of(batch, &unique, known);
    devices.upsert_due(&mut tx, seen).await?;
    let mut series = BatchSeries::of(records_of(batch, &unique), &devices.ids, known)?;
    let learnt_series = series.resolve(&mut tx).await?;
    let message_ids = batch_write::write(&mut tx, batch, &unique, &devices.ids, &series).await?;
    let outcomes = outcomes(batch, &unique, &message_ids);

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

/// The records of the resolved packs at `indices`.
fn records_of<'a>(
    batch: &'a [Delivery],
    indices: &[usize],
) -> impl Iterator<Item = &'a Measurement> {
    indices
        .iter()
        .filter_map(|&i| batch[i].decoded.as_ref().ok())
        .flatten()
}

/// What each delivery of `batch` came to, given the ids of the messages the batch inserted:
/// the deliveries at `unique` without one, and all others, are duplicates.
fn outcomes(
    batch: &[Delivery],
    unique: &[usize],
    message_ids: &HashMap<DeliveryKey, i64>,
) -> Vec<StoreOutcome> {
    let mut outcomes = vec![StoreOutcome::Duplicate; batch.len()];
    for &i in unique {
        let delivery = &batch[i];
        let Some(&id) = message_ids.get(&delivery_key(&delivery.raw)) else {
            continue;
        };
        outcomes[i] = match &delivery.decoded {
            Ok(_) => StoreOutcome::Stored { message_id: id },
            Err(_) => StoreOutcome::Quarantined { message_id: id },
        };
    }
    outcomes
}

/// The channel the ingest statement announces its new messages on, `min_id,max_id` (the
/// console's live deliveries list, in every process; delivered at commit).
pub const MESSAGES_CHANNEL: &str = "things_messages_inserted";

/// The devices of a batch's resolved packs by normalised key: the ids known, the devices
/// the database has to be asked about (those this process has not remembered), and what to
/// remember of those once the batch has committed. A known device needs nothing more: the
/// ingest statement refreshes its `last_seen` with its message counter.
struct BatchDevices<'a> {
    ids: HashMap<String, i64>,
    due: BTreeMap<String, &'a str>,
    learnt: Vec<(String, i64)>,
}

impl<'a> BatchDevices<'a> {
    /// The devices of the packs at `indices`.
    fn of(batch: &'a [Delivery], indices: &[usize], known: &KnownIds) -> Self {
        let mut devices: BTreeMap<String, &'a str> = BTreeMap::new();
        for record in records_of(batch, indices) {
            devices
                .entry(device_key(&record.device))
                .or_insert(&record.device);
        }
        let mut ids = HashMap::with_capacity(devices.len());
        let remembered = known.devices(devices.keys().map(String::as_str));
        let due = devices
            .into_iter()
            .zip(remembered)
            .filter_map(|((key, urn), id)| match id {
                Some(id) => {
                    ids.insert(key, id);
                    None
                }
                None => Some((key, urn)),
            })
            .collect();
        BatchDevices {
            ids,
            due,
            learnt: Vec::new(),
        }
    }

    /// Asks the database about the devices that are due.
    async fn upsert_due(
        &mut self,
        tx: &mut PgConnection,
        seen: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if self.due.is_empty() {
            return Ok(());
        }
        let learnt = upsert_devices(tx, &self.due, seen).await?;
        self.ids.extend(learnt.iter().cloned());
        self.learnt = learnt;
        Ok(())
    }
}

/// Inserts the unseen devices of `devices` (normalised key to URN), locks no row otherwise,
/// and returns every one with its id. (Their `last_seen` is the ingest statement's.)
async fn upsert_devices(
    tx: &mut PgConnection,
    devices: &BTreeMap<String, &str>,
    seen: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let keys: Vec<&str> = devices.keys().map(String::as_str).collect();
    let urns: Vec<&str> = devices.values().copied().collect();
    let kinds: Vec<&str> = devices
        .values()
        .map(|urn| device_kind(urn).as_str())
        .collect();
    // Sorted keys: concurrent transactions inserting the same new devices lock in one order.
    // The look-up is one index probe per key (LATERAL ... LIMIT 1), whatever the planner
    // believes of the table's size.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "WITH new AS ( \
             INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
             SELECT k, u, t, $4, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(k, u, t) \
             ON CONFLICT (urn_key) DO NOTHING RETURNING urn_key, id) \
         SELECT urn_key, id FROM new \
         UNION ALL SELECT d.urn_key, d.id \
             FROM UNNEST($1::text[]) AS k(key) \
             CROSS JOIN LATERAL (SELECT urn_key, id FROM devices \
                                 WHERE urn_key = k.key LIMIT 1) d",
    )
    .bind(&keys)
    .bind(&urns)
    .bind(&kinds)
    .bind(seen)
    .fetch_all(&mut *tx)
    .await?;
    let mut found: HashMap<String, i64> = rows.into_iter().collect();
    // A device inserted by a concurrent transaction that committed while ours waited on it is
    // skipped by DO NOTHING yet invisible to this statement's snapshot; a new statement sees it.
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !found.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT urn_key, id FROM devices WHERE urn_key = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?;
        found.extend(rows);
    }
    if found.len() < keys.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(found.into_iter().collect())
}
