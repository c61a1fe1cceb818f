//! The per-process ring of recent door events: bounded in count and in body bytes, oldest
//! out first, so a flood of junk costs a fixed amount of memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use crate::store::door_events::NewDoorEvent;

/// Events the ring keeps at most.
pub const RING_EVENTS: usize = 1024;
/// Body bytes the ring keeps at most.
pub const RING_BYTES: usize = 16 * 1024 * 1024;

/// One event, and whether the writer has put it in `door_events`.
#[derive(Debug)]
pub struct Entry {
    pub event: NewDoorEvent,
    persisted: AtomicBool,
}

impl Entry {
    pub fn new(event: NewDoorEvent) -> Self {
        Entry {
            event,
            persisted: AtomicBool::new(false),
        }
    }

    pub fn persisted(&self) -> bool {
        self.persisted.load(Ordering::Acquire)
    }

    pub fn set_persisted(&self) {
        self.persisted.store(true, Ordering::Release);
    }

    fn bytes(&self) -> usize {
        self.event.body.as_ref().map_or(0, |b| b.len())
    }
}

pub struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Ring {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    /// Adds `entry`, dropping the oldest until both bounds hold again.
    pub fn push(&mut self, entry: Arc<Entry>) {
        self.bytes += entry.bytes();
        self.entries.push_back(entry);
        while self.entries.len() > self.max_events
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.bytes();
            }
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Entry>> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.event.id == id)
            .cloned()
    }

    /// The entries no writer has persisted (yet), oldest first.
    pub fn unpersisted(&self) -> Vec<Arc<Entry>> {
        self.entries
            .iter()
            .filter(|e| !e.persisted())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize) -> Arc<Entry> {
        Arc::new(Entry::new(NewDoorEvent {
            id: Uuid::now_v7(),
            received_at: chrono::Utc::now(),
            door: "destination",
            verdict: "rejected",
            status: 401,
            reason: "not_verified",
            detail: None,
            plug: None,
            device_urn: None,
            device_key: None,
            destination_id: None,
            device_key_id: None,
            token: None,
            headers: Default::default(),
            body: Some(bytes::Bytes::from(vec![b'x'; body])),
            body_size: Some(body as i64),
            body_truncated: false,
        }))
    }

    #[test]
    fn oldest_out_by_count_and_by_bytes() {
        let mut ring = Ring::new(3, 100);
        let first = entry(10);
        ring.push(first.clone());
        for _ in 0..3 {
            ring.push(entry(10));
        }
        assert!(ring.get(first.event.id).is_none());
        assert_eq!(ring.unpersisted().len(), 3);
        let big = entry(95);
        ring.push(big.clone());
        assert_eq!(ring.unpersisted().len(), 1, "only the big one fits");
        big.set_persisted();
        assert!(ring.unpersisted().is_empty());
        assert!(ring.get(big.event.id).is_some());
    }
}
