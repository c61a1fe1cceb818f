//! Downlinks that ride on the answer to a device's uplink (transport `response`).
//!
//! Inside the uplink's own transaction: each new uplink takes the oldest queued downlink of its
//! device (FIFO) and marks it `delivered` with the id of the message it rides on, so the answer
//! (sent only after the commit) and the outbox always agree. A retry of that uplink finds the
//! same downlink again by the message id: a device that lost the answer does not lose the
//! command. A downlink whose ttl has passed is `expired`, never sent.
//!
//! Rows another transaction has locked are skipped rather than waited for: two concurrent
//! uplinks of one device take two different downlinks, and no lock order can deadlock.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::deliveries::{Delivery, DeviceReply, ReplyDownlink, Sender, StoreOutcome};

/// One reply per delivery of `batch` (`None` for those that answer no device), given the
/// outcomes the batch's messages got.
pub(super) async fn replies(
    tx: &mut PgConnection,
    batch: &[Delivery],
    outcomes: &[StoreOutcome],
) -> Result<Vec<Option<DeviceReply>>, sqlx::Error> {
    let mut replies: Vec<Option<DeviceReply>> = vec![None; batch.len()];
    // (index, registration, message id) of new uplinks; (index, registration, token) of retries.
    let mut new = Vec::new();
    let mut retries = Vec::new();
    for (i, (delivery, outcome)) in batch.iter().zip(outcomes).enumerate() {
        let Sender::Device { key_id, .. } = &delivery.raw.sender else {
            continue;
        };
        if !delivery.answers_device {
            continue;
        }
        replies[i] = Some(DeviceReply::default());
        match outcome {
            StoreOutcome::Stored { message_id } | StoreOutcome::Quarantined { message_id } => {
                new.push((i, *key_id, *message_id))
            }
            StoreOutcome::Duplicate => retries.push((i, *key_id, delivery.raw.token.0)),
        }
    }
    if new.is_empty() && retries.is_empty() {
        return Ok(replies);
    }

    if !new.is_empty() {
        let keys: Vec<Uuid> = new.iter().map(|(_, k, _)| *k).collect();
        let messages: Vec<i64> = new.iter().map(|(_, _, m)| *m).collect();
        let delivered = deliver_oldest(tx, &keys, &messages).await?;
        for (i, _, message_id) in &new {
            if let Some(downlink) = delivered.get(message_id) {
                set_downlink(&mut replies[*i], downlink.clone());
            }
        }
    }
    if !retries.is_empty() {
        let keys: Vec<Uuid> = retries.iter().map(|(_, k, _)| *k).collect();
        let tokens: Vec<&[u8]> = retries.iter().map(|(_, _, t)| &t[..]).collect();
        let earlier = delivered_before(tx, &keys, &tokens).await?;
        for (n, (i, _, _)) in retries.iter().enumerate() {
            if let Some(downlink) = earlier.get(&(n as i64 + 1)) {
                set_downlink(&mut replies[*i], downlink.clone());
            }
        }
    }

    let answering: Vec<(usize, Uuid)> = new
        .iter()
        .map(|(i, k, _)| (*i, *k))
        .chain(retries.iter().map(|(i, k, _)| (*i, *k)))
        .collect();
    let mut keys: Vec<Uuid> = answering.iter().map(|(_, k)| *k).collect();
    keys.sort_unstable();
    keys.dedup();
    let pending = expire_and_count(tx, &keys).await?;
    for (i, key) in answering {
        if let Some(reply) = &mut replies[i] {
            reply.pending = pending.get(&key).copied().unwrap_or(0);
        }
    }
    Ok(replies)
}

fn set_downlink(reply: &mut Option<DeviceReply>, downlink: ReplyDownlink) {
    if let Some(reply) = reply {
        reply.downlink = Some(downlink);
    }
}

/// Marks the oldest queued downlinks delivered: for each registration, as many as it has new
/// messages here, paired with them in order. Returns the downlink of each message that got one.
async fn deliver_oldest(
    tx: &mut PgConnection,
    keys: &[Uuid],
    messages: &[i64],
) -> Result<HashMap<i64, ReplyDownlink>, sqlx::Error> {
    let rows: Vec<(i64, Uuid, String)> = sqlx::query_as(
        "WITH wanted AS ( \
             SELECT k, m, row_number() OVER (PARTITION BY k ORDER BY o) AS rank \
             FROM UNNEST($1::uuid[], $2::int8[]) WITH ORDINALITY AS u(k, m, o)), \
         candidates AS ( \
             SELECT id, device_key_id, seq FROM downlinks \
             WHERE device_key_id = ANY($1) AND transport = 'response' AND status = 'queued' \
               AND expires_at > now() \
             FOR UPDATE SKIP LOCKED), \
         ranked AS ( \
             SELECT id, device_key_id AS k, \
                    row_number() OVER (PARTITION BY device_key_id ORDER BY seq) AS rank \
             FROM candidates) \
         UPDATE downlinks dl SET status = 'delivered', message_id = w.m, updated_at = now(), \
             finished_at = now() \
         FROM ranked r JOIN wanted w ON w.k = r.k AND w.rank = r.rank \
         WHERE dl.id = r.id \
         RETURNING w.m, dl.id, dl.body",
    )
    .bind(keys)
    .bind(messages)
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        metrics::counter!("things_downlinks_total", "state" => "delivered", "transport" => "response")
            .increment(rows.len() as u64);
    }
    Ok(rows
        .into_iter()
        .map(|(message, id, body)| (message, ReplyDownlink { id, body }))
        .collect())
}

/// The downlink each retried uplink's first delivery carried, by the retry's position
/// (1-based) in `keys`/`tokens`.
async fn delivered_before(
    tx: &mut PgConnection,
    keys: &[Uuid],
    tokens: &[&[u8]],
) -> Result<HashMap<i64, ReplyDownlink>, sqlx::Error> {
    let rows: Vec<(i64, Uuid, String)> = sqlx::query_as(
        "SELECT u.o, dl.id, dl.body \
         FROM UNNEST($1::uuid[], $2::bytea[]) WITH ORDINALITY AS u(k, t, o) \
         JOIN messages m ON m.device_key_id = u.k AND m.token = u.t \
         JOIN downlinks dl ON dl.message_id = m.id AND dl.status = 'delivered'",
    )
    .bind(keys)
    .bind(tokens)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(position, id, body)| (position, ReplyDownlink { id, body }))
        .collect())
}

/// Expires the registrations' overdue downlinks and counts those still waiting.
async fn expire_and_count(
    tx: &mut PgConnection,
    keys: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let expired = sqlx::query(
        "UPDATE downlinks SET status = 'expired', updated_at = now(), finished_at = now() \
         WHERE id IN (SELECT id FROM downlinks \
                      WHERE device_key_id = ANY($1) AND transport = 'response' \
                        AND status = 'queued' AND expires_at <= now() \
                      FOR UPDATE SKIP LOCKED)",
    )
    .bind(keys)
    .execute(&mut *tx)
    .await?;
    if expired.rows_affected() > 0 {
        metrics::counter!("things_downlinks_total", "state" => "expired", "transport" => "response")
            .increment(expired.rows_affected());
    }
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT device_key_id, count(*) FROM downlinks \
         WHERE device_key_id = ANY($1) AND transport = 'response' AND status = 'queued' \
           AND expires_at > now() \
         GROUP BY device_key_id",
    )
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Expires every overdue `response` downlink, whichever device it waits for (devices that
/// stopped posting would otherwise show theirs as queued forever). Returns how many.
pub async fn expire_overdue<'e>(db: impl sqlx::PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE downlinks SET status = 'expired', updated_at = now(), finished_at = now() \
         WHERE id IN (SELECT id FROM downlinks \
                      WHERE transport = 'response' AND status = 'queued' AND expires_at <= now() \
                      FOR UPDATE SKIP LOCKED)",
    )
    .execute(db)
    .await?;
    if done.rows_affected() > 0 {
        metrics::counter!("things_downlinks_total", "state" => "expired", "transport" => "response")
            .increment(done.rows_affected());
    }
    Ok(done.rows_affected())
}
