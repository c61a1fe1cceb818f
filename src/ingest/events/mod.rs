//! The doors' record of what they answered without storing a new message: every refusal
//! (400, 401, 404, 413), every duplicate and every spooled delivery.
//!
//! A door calls the [`Recorder`] after it has its answer; recording never blocks, never
//! fails the request and never changes the answer. The event goes into a per-process
//! [`ring`] (bounded in count and bytes) and, through a bounded queue (`try_send`: a full
//! queue drops it from persistence, not from the ring), to the background [`writer`], which
//! persists at most `--rejections-rate` a second into `door_events` and prunes the table to
//! `--rejections-max-bytes`. So a flood of junk costs a fixed amount of memory and a capped
//! write rate, and the console still sees what happened after a restart and on other
//! replicas. Nothing here is labelled by why a delivery did not verify: an unknown plug and
//! a wrong token stay indistinguishable from outside, metrics included.

pub mod replay;
pub mod ring;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::AppError;
use crate::store::door_events::{MAX_KEPT_BODY, NewDoorEvent};
pub use ring::Entry;
use ring::{RING_BYTES, RING_EVENTS, Ring};
pub use writer::{RecorderTask, WriterLimits};

/// Events waiting for the writer at most; past it an event stays in the ring only.
const QUEUE: usize = 1024;

/// Headers never recorded: they carry credentials of the sender or of a browser.
const DROPPED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// The cheap, cloneable handle the doors record through.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    ring: Mutex<Ring>,
    queue: Option<mpsc::Sender<Arc<Entry>>>,
}

/// What a door knows of a request when it refuses it.
#[derive(Debug, Default)]
pub struct Seen {
    /// Set once the whole body is in; the time of the refusal otherwise.
    pub received_at: Option<DateTime<Utc>>,
    pub body: Option<Bytes>,
    /// The destination door's plug, once parsed.
    pub plug: Option<Uuid>,
    /// A device door's first `bn` as sent, and its normalised key.
    pub device: Option<(String, String)>,
}

/// What a door knows of a delivery it accepted without storing a new message (besides its
/// headers and the status answered).
#[derive(Debug)]
pub struct Accepted {
    pub door: &'static str,
    /// `duplicate` or `spooled`.
    pub verdict: &'static str,
    pub received_at: DateTime<Utc>,
    pub body_size: usize,
    pub plug: Option<Uuid>,
    pub device: Option<(String, String)>,
    pub destination_id: Option<Uuid>,
    pub device_key_id: Option<Uuid>,
    pub token: [u8; 32],
}

impl Recorder {
    /// Starts the writer on `pool`; the task flushes and stops with [`RecorderTask::finish`].
    pub fn start(pool: PgPool, limits: WriterLimits) -> (Recorder, RecorderTask) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let task = writer::spawn(pool, receiver, limits);
        (Recorder::with_queue(Some(sender)), task)
    }

    /// A recorder that keeps its ring but persists nothing.
    pub fn in_memory() -> Recorder {
        Recorder::with_queue(None)
    }

    fn with_queue(queue: Option<mpsc::Sender<Arc<Entry>>>) -> Recorder {
        Recorder {
            shared: Arc::new(Shared {
                ring: Mutex::new(Ring::new(RING_EVENTS, RING_BYTES)),
                queue,
            }),
        }
    }

    /// Records a refusal the door answered with `error`; answers that are not refusals of
    /// the request itself (503 overload or unavailable, 408) are not recorded.
    pub fn refused(&self, door: &'static str, error: &AppError, headers: &HeaderMap, seen: Seen) {
        let status = error.status().as_u16();
        if !matches!(status, 400 | 401 | 404 | 413) {
            return;
        }
        let (body, body_size, body_truncated) = match &seen.body {
            Some(body) => {
                let kept = if body.len() > MAX_KEPT_BODY {
                    Bytes::copy_from_slice(&body[..MAX_KEPT_BODY])
                } else {
                    body.clone()
                };
                (
                    Some(kept),
                    Some(body.len() as i64),
                    body.len() > MAX_KEPT_BODY,
                )
            }
            None => (None, declared(headers), false),
        };
        let (device_urn, device_key) = seen.device.unzip();
        self.push(NewDoorEvent {
            id: Uuid::now_v7(),
            received_at: seen.received_at.unwrap_or_else(Utc::now),
            door,
            verdict: "rejected",
            status,
            reason: error.code(),
            detail: Some(error.to_string()),
            plug: seen.plug,
            device_urn,
            device_key,
            destination_id: None,
            device_key_id: None,
            token: None,
            headers: kept_headers(headers),
            body,
            body_size,
            body_truncated,
        });
    }

    /// Records a duplicate or a spooled delivery (its body is in the message or the spool).
    pub fn accepted(&self, a: Accepted, status: u16, headers: &HeaderMap) {
        let (device_urn, device_key) = a.device.unzip();
        self.push(NewDoorEvent {
            id: Uuid::now_v7(),
            received_at: a.received_at,
            door: a.door,
            verdict: a.verdict,
            status,
            reason: a.verdict,
            detail: None,
            plug: a.plug,
            device_urn,
            device_key,
            destination_id: a.destination_id,
            device_key_id: a.device_key_id,
            token: (a.verdict == "duplicate").then_some(a.token),
            headers: kept_headers(headers),
            body: None,
            body_size: Some(a.body_size as i64),
            body_truncated: false,
        });
    }

    fn push(&self, event: NewDoorEvent) {
        let entry = Arc::new(Entry::new(event));
        self.shared
            .ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry.clone());
        let queued = self
            .shared
            .queue
            .as_ref()
            .is_some_and(|queue| queue.try_send(entry).is_ok());
        if !queued {
            metrics::counter!("things_door_events_total", "fate" => "ring_only").increment(1);
        }
    }

    /// The ring's entry with this id, if it is still there.
    pub fn get(&self, id: Uuid) -> Option<Arc<Entry>> {
        self.ring().get(id)
    }

    /// The ring's entries not persisted by this process, oldest first.
    pub fn unpersisted(&self) -> Vec<Arc<Entry>> {
        self.ring().unpersisted()
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.shared
            .ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every header but the credentials, names lower case (as `HeaderMap` keeps them), values as
/// text (invalid UTF-8 replaced); a header given twice has its values joined by `, `.
fn kept_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if DROPPED_HEADERS.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        kept.entry(name.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    kept
}

fn declared(headers: &HeaderMap) -> Option<i64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_kept_and_bodies_are_cut() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("cookie", "things_session=x".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let recorder = Recorder::in_memory();
        let body = Bytes::from(vec![b'a'; MAX_KEPT_BODY + 10]);
        let seen = Seen {
            body: Some(body),
            ..Seen::default()
        };
        recorder.refused("destination", &AppError::NotVerified, &headers, seen);
        recorder.refused(
            "destination",
            &AppError::Overloaded,
            &headers,
            Seen::default(),
        );
        let entries = recorder.unpersisted();
        assert_eq!(entries.len(), 1, "a 503 is not recorded");
        let event = &entries[0].event;
        assert_eq!(event.headers.len(), 1);
        assert_eq!(event.headers["x-a"], "1, 2");
        assert_eq!(event.body.as_ref().unwrap().len(), MAX_KEPT_BODY);
        assert!(event.body_truncated);
        assert_eq!(event.body_size, Some(MAX_KEPT_BODY as i64 + 10));
        assert_eq!((event.status, event.reason), (401, "not_verified"));
    }
}
