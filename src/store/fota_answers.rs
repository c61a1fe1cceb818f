//! Firmware campaigns inside a device uplink's transaction: the version the uplink reports
//! (which may finish the device's campaign), then the url/token notification its answer
//! carries when the device is `pending`.
//!
//! Both run before `store::answer_downlinks`: a device reporting the desired version is not
//! notified, and an answer carrying the notification takes no ordinary downlink (one pack per
//! answer; the downlink stays queued for the next uplink). A retried uplink finds the target
//! its first delivery notified by the message id, so it carries the same pack.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::deliveries::{Delivery, FotaNotice, Sender, StoreOutcome};
use super::fota::OPEN_STATES;
use crate::senml::Value;

/// Applies the reports of `batch` and returns, per delivery, the notification its answer
/// carries (only for deliveries that answer a device).
pub(super) async fn apply(
    tx: &mut PgConnection,
    batch: &[Delivery],
    outcomes: &[StoreOutcome],
) -> Result<Vec<Option<FotaNotice>>, sqlx::Error> {
    let mut notices = vec![None; batch.len()];
    let (mut report_keys, mut report_names, mut report_values) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut new, mut retries) = (Vec::new(), Vec::new());
    for (i, (delivery, outcome)) in batch.iter().zip(outcomes).enumerate() {
        let Sender::Device { key_id, .. } = &delivery.raw.sender else {
            continue;
        };
        if let (StoreOutcome::Stored { .. }, Ok(records)) = (outcome, &delivery.decoded) {
            for record in records {
                // No version holds U+0000, which a text parameter cannot carry.
                if let Some(Value::String(value)) = &record.value
                    && !value.contains('\0')
                {
                    report_keys.push(*key_id);
                    report_names.push(record.name.as_str());
                    report_values.push(value.as_str());
                }
            }
        }
        if !delivery.answers_device {
            continue;
        }
        match outcome {
            StoreOutcome::Stored { message_id } | StoreOutcome::Quarantined { message_id } => {
                new.push((i, *key_id, *message_id))
            }
            StoreOutcome::Duplicate => retries.push((i, *key_id, delivery.raw.token.0)),
        }
    }
    if !report_keys.is_empty() {
        report(tx, &report_keys, &report_names, &report_values).await?;
    }
    if !new.is_empty() {
        let keys: Vec<Uuid> = new.iter().map(|(_, k, _)| *k).collect();
        let messages: Vec<i64> = new.iter().map(|(_, _, m)| *m).collect();
        let notified = notify(tx, &keys, &messages).await?;
        for (i, _, message_id) in &new {
            notices[*i] = notified.get(message_id).cloned();
        }
    }
    if !retries.is_empty() {
        let keys: Vec<Uuid> = retries.iter().map(|(_, k, _)| *k).collect();
        let tokens: Vec<&[u8]> = retries.iter().map(|(_, _, t)| &t[..]).collect();
        let earlier = notified_before(tx, &keys, &tokens).await?;
        for (n, (i, _, _)) in retries.iter().enumerate() {
            notices[*i] = earlier.get(&(n as i64 + 1)).cloned();
        }
    }
    Ok(notices)
}

/// The reported versions: for each device in an unfinished campaign, the last string record
/// of the uplinks named as its campaign's `version_name`. The desired version makes it
/// `updated`; another one after `downloaded` makes it `failed` (it installed something else,
/// or rolled back); before that it is only recorded.
async fn report(
    tx: &mut PgConnection,
    keys: &[Uuid],
    names: &[&str],
    values: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH r AS ( \
             SELECT DISTINCT ON (t.id) t.id, x.v, c.firmware_version AS want \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS x(k, n, v, o) \
             JOIN fota_targets t ON t.device_key_id = x.k AND t.state IN {OPEN_STATES} \
             JOIN fota_campaigns c ON c.id = t.campaign_id AND c.version_name = x.n \
             ORDER BY t.id, x.o DESC) \
         UPDATE fota_targets t SET \
             reported_version = r.v, \
             state = CASE WHEN r.v = r.want THEN 'updated' \
                          WHEN t.state = 'downloaded' THEN 'failed' ELSE t.state END, \
             updated_at = CASE WHEN r.v = r.want THEN now() ELSE t.updated_at END, \
             failed_at = CASE WHEN r.v <> r.want AND t.state = 'downloaded' THEN now() \
                              ELSE t.failed_at END, \
             failure = CASE WHEN r.v <> r.want AND t.state = 'downloaded' \
                            THEN 'reported version ' || r.v || ' after the download' \
                            ELSE t.failure END, \
             progress_at = CASE WHEN r.v = r.want OR t.state = 'downloaded' THEN now() \
                                ELSE t.progress_at END \
         FROM r WHERE t.id = r.id AND t.state IN {OPEN_STATES}"
    )))
    .bind(keys)
    .bind(names)
    .bind(values)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves the `pending` target of each device in `keys` (of a campaign not cancelled) to
/// `notified` with the first of its new messages; returns the notice per message id. Rows
/// another transaction holds are skipped: that uplink carries the notification instead.
async fn notify(
    tx: &mut PgConnection,
    keys: &[Uuid],
    messages: &[i64],
) -> Result<HashMap<i64, FotaNotice>, sqlx::Error> {
    let rows: Vec<(i64, Uuid, String, String)> = sqlx::query_as(
        "WITH w AS ( \
             SELECT DISTINCT ON (k) k, m FROM UNNEST($1::uuid[], $2::int8[]) \
                 WITH ORDINALITY AS x(k, m, o) ORDER BY k, o), \
         p AS ( \
             SELECT t.id FROM fota_targets t \
             WHERE t.device_key_id = ANY($1) AND t.state = 'pending' \
             FOR UPDATE SKIP LOCKED) \
         UPDATE fota_targets t SET state = 'notified', notified_at = now(), \
             progress_at = now(), notified_message_id = w.m \
         FROM p, w, fota_campaigns c \
         WHERE t.id = p.id AND w.k = t.device_key_id AND c.id = t.campaign_id \
           AND c.cancelled_at IS NULL \
         RETURNING w.m, t.id, t.urn, c.base_url",
    )
    .bind(keys)
    .bind(messages)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(message, target, urn, base_url)| {
            (
                message,
                FotaNotice {
                    target,
                    urn,
                    base_url,
                },
            )
        })
        .collect())
}

/// The notification each retried uplink's first delivery (the latest uplink with its token)
/// carried, by the retry's position
/// (1-based) in `keys`/`tokens`.
async fn notified_before(
    tx: &mut PgConnection,
    keys: &[Uuid],
    tokens: &[&[u8]],
) -> Result<HashMap<i64, FotaNotice>, sqlx::Error> {
    let rows: Vec<(i64, Uuid, String, String)> = sqlx::query_as(
        "SELECT x.o, t.id, t.urn, c.base_url \
         FROM UNNEST($1::uuid[], $2::bytea[]) WITH ORDINALITY AS x(k, tk, o) \
         CROSS JOIN LATERAL (SELECT id FROM messages \
                             WHERE device_key_id = x.k AND token = x.tk \
                             ORDER BY id DESC LIMIT 1) m \
         JOIN fota_targets t ON t.notified_message_id = m.id AND t.device_key_id = x.k \
         JOIN fota_campaigns c ON c.id = t.campaign_id",
    )
    .bind(keys)
    .bind(tokens)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(position, target, urn, base_url)| {
            (
                position,
                FotaNotice {
                    target,
                    urn,
                    base_url,
                },
            )
        })
        .collect())
}
