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

use super::deliveries::{Delivery, DeviceReply, FotaNotice, ReplyDownlink, Sender, StoreOutcome};

/// One reply per delivery of `batch` (`None` for those that answer no device), given the
/// outcomes the batch's messages got. A delivery whose answer carries a firmware notification
/// (`notices`) takes no downlink, since an answer carries one pack: it only counts them.
pub(super) async fn replies(
    tx: &mut PgConnection,
    batch: &[Delivery],
    outcomes: &[StoreOutcome],
    notices: &[Option<FotaNotice>],
) -> Result<Vec<Option<DeviceReply>>, sqlx::Error> {
    let mut replies: Vec<Option<DeviceReply>> = vec![None; batch.len()];
    // (index, registration, message id) of new uplinks; (index, registration, token) of retries.
    let mut new = Vec::new();
    let mut retries = Vec::new();
    // (index, registration) of answers that carry a notification and only count.
    let mut counting = Vec::new();
    for (i, (delivery, outcome)) in batch.iter().zip(outcomes).enumerate() {
        let Sender::Device { key_id, .. } = &delivery.raw.sender else {
            continue;
        };
        if !delivery.answers_device {
            continue;
        }
        replies[i] = Some(DeviceReply::default());
        if notices.get(i).is_some_and(Option::is_some) {
            counting.push((i, *key_id));
            continue;
        }
        match outcome {
            StoreOutcome::Stored { message_id } | StoreOutcome::Quarantined { message_id } => {
                new.push((i, *key_id, *message_id))
            }
            StoreOutcome::Duplicate => retries.push((i, *key_id, delivery.raw.token.0)),
        }
    }
    if new.is_empty() && retries.is_empty() && counting.is_empty() {
        return Ok(replies);
    }

    // One round trip for the new uplinks: deliver, expire, count.
    let keys: Vec<Uuid> = new.iter().map(|(_, k, _)| *k).collect();
    let messages: Vec<i64> = new.iter().map(|(_, _, m)| *m).collect();
    let mut answering: Vec<Uuid> = keys
        .iter()
        .copied()
        .chain(retries.iter().map(|(_, k, _)| *k))
        .chain(counting.iter().map(|(_, k)| *k))
        .collect();
    answering.sort_unstable();
    answering.dedup();
    let round = deliver_expire_count(tx, &answering, &keys, &messages).await?;
    for (i, _, message_id) in &new {
        if let Some(downlink) = round.delivered.get(message_id) {
            set_downlink(&mut replies[*i], downlink.clone());
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
    for (i, key, _) in &new {
        set_pending(&mut replies[*i], round.pending(key));
    }
    for (i, key, _) in &retries {
        set_pending(&mut replies[*i], round.pending(key));
    }
    for (i, key) in &counting {
        set_pending(&mut replies[*i], round.pending(key));
    }
    Ok(replies)
}

fn set_pending(reply: &mut Option<DeviceReply>, pending: i64) {
    if let Some(reply) = reply {
        reply.pending = pending;
    }
}

fn set_downlink(reply: &mut Option<DeviceReply>, downlink: ReplyDownlink) {
    if let Some(reply) = reply {
        reply.downlink = Some(downlink);
    }
}

/// What one round of [`deliver_expire_count`] found.
struct Round {
    /// The downlink each new message got.
    delivered: HashMap<i64, ReplyDownlink>,
    /// Per registration: queued and unexpired before this round, and delivered in it.
    queued: HashMap<Uuid, i64>,
    delivered_per_key: HashMap<Uuid, i64>,
}

impl Round {
    /// How many downlinks still wait for `key` after this round.
    fn pending(&self, key: &Uuid) -> i64 {
        let queued = self.queued.get(key).copied().unwrap_or(0);
        let taken = self.delivered_per_key.get(key).copied().unwrap_or(0);
        (queued - taken).max(0)
    }
}

/// In one statement: marks the oldest queued downlinks delivered (for each registration in
/// `keys`, as many as it has new messages in `messages`, paired with them in order), expires
/// the overdue ones of every registration in `answering`, and counts what was queued before.
/// The count shares the statement's snapshot, so it still includes the rows this statement
/// delivers: [`Round::pending`] subtracts them.
async fn deliver_expire_count(
    tx: &mut PgConnection,
    answering: &[Uuid],
    keys: &[Uuid],
    messages: &[i64],
) -> Result<Round, sqlx::Error> {
    type Row = (Option<i64>, Option<Uuid>, Option<String>, Uuid, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH wanted AS ( \
             SELECT k, m, row_number() OVER (PARTITION BY k ORDER BY o) AS rank \
             FROM UNNEST($2::uuid[], $3::int8[]) WITH ORDINALITY AS u(k, m, o)), \
         wanted_per_key AS (SELECT k, count(*) AS n FROM wanted GROUP BY k), \
         candidates AS ( \
             SELECT c.id, c.device_key_id, c.seq FROM wanted_per_key w \
             CROSS JOIN LATERAL ( \
                 SELECT id, device_key_id, seq FROM downlinks \
                 WHERE device_key_id = w.k AND transport = 'response' AND status = 'queued' \
                   AND expires_at > now() \
                 ORDER BY seq LIMIT w.n \
                 FOR UPDATE SKIP LOCKED) c), \
         ranked AS ( \
             SELECT id, device_key_id AS k, \
                    row_number() OVER (PARTITION BY device_key_id ORDER BY seq) AS rank \
             FROM candidates), \
         delivered AS ( \
             UPDATE downlinks dl SET status = 'delivered', message_id = w.m, \
                 updated_at = now(), finished_at = now() \
             FROM ranked r JOIN wanted w ON w.k = r.k AND w.rank = r.rank \
             WHERE dl.id = r.id \
             RETURNING w.m, dl.id, dl.body, dl.device_key_id), \
         expired AS ( \
             UPDATE downlinks SET status = 'expired', updated_at = now(), finished_at = now() \
             WHERE id IN (SELECT id FROM downlinks \
                          WHERE device_key_id = ANY($1) AND transport = 'response' \
                            AND status = 'queued' AND expires_at <= now() \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING device_key_id) \
         SELECT m, id, body, device_key_id, 0::int8 FROM delivered \
         UNION ALL \
         SELECT NULL, NULL, NULL, device_key_id, -count(*) FROM expired GROUP BY device_key_id \
         UNION ALL \
         SELECT NULL, NULL, NULL, device_key_id, count(*) FROM downlinks \
         WHERE device_key_id = ANY($1) AND transport = 'response' AND status = 'queued' \
           AND expires_at > now() \
         GROUP BY device_key_id",
    )
    .bind(answering)
    .bind(keys)
    .bind(messages)
    .fetch_all(&mut *tx)
    .await?;
    let mut round = Round {
        delivered: HashMap::new(),
        queued: HashMap::new(),
        delivered_per_key: HashMap::new(),
    };
    let mut expired = 0;
    for (message, id, body, key, count) in rows {
        match (message, id, body) {
            (Some(message), Some(id), Some(body)) => {
                *round.delivered_per_key.entry(key).or_default() += 1;
                round.delivered.insert(message, ReplyDownlink { id, body });
            }
            _ if count < 0 => expired += -count,
            _ => {
                round.queued.insert(key, count);
            }
        }
    }
    if !round.delivered.is_empty() {
        metrics::counter!("things_downlinks_total", "state" => "delivered", "transport" => "response")
            .increment(round.delivered.len() as u64);
    }
    if expired > 0 {
        metrics::counter!("things_downlinks_total", "state" => "expired", "transport" => "response")
            .increment(expired as u64);
    }
    Ok(round)
}

/// The downlink each retried uplink's first delivery (the latest uplink with its token)
/// carried, by the retry's position
/// (1-based) in `keys`/`tokens`.
async fn delivered_before(
    tx: &mut PgConnection,
    keys: &[Uuid],
    tokens: &[&[u8]],
) -> Result<HashMap<i64, ReplyDownlink>, sqlx::Error> {
    let rows: Vec<(i64, Uuid, String)> = sqlx::query_as(
        "SELECT u.o, dl.id, dl.body \
         FROM UNNEST($1::uuid[], $2::bytea[]) WITH ORDINALITY AS u(k, t, o) \
         CROSS JOIN LATERAL (SELECT id FROM messages \
                             WHERE device_key_id = u.k AND token = u.t \
                             ORDER BY id DESC LIMIT 1) m \
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
