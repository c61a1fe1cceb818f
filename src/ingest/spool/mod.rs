//! The local spool: where verified deliveries go when PostgreSQL cannot take them.
//!
//! KPN makes at most three delivery attempts and then drops the data, so a database outage
//! of a few minutes must not turn into lost deliveries. When the writer cannot commit in time,
//! the delivery is appended to a segment file under `DATA_DIR/spool/`, fsynced, and only then
//! acknowledged. A background task replays the segments into PostgreSQL, oldest first, through
//! the same writer; because `(destination, token)` is unique, replaying a record twice (after a
//! crash mid-replay, or for a delivery whose slow commit did land after all) stores it once.
//!
//! Segment format: a sequence of records `MAGIC u32 | len u32 | crc32 u32 | payload`, little
//! endian. A crash can tear only the last record (every acknowledged append was fsynced
//! before its answer); a record that is short or fails its checksum ends the segment.

mod append;
mod record;
mod replay;
mod segment;
#[cfg(test)]
mod tests;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use self::append::{AppendState, append_loop};
use self::record::{encode, frame, read_segment};
use self::segment::{create_segment_file, make_private_dir, segments};
use crate::ingest::delivery::RawDelivery;

/// A segment is closed and a new one started beyond this size.
const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// Where records the database refuses for good are kept, under the spool directory.
pub const QUARANTINE_DIR: &str = "quarantine";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    #[error("cannot write the spool: {0}")]
    Io(#[from] std::io::Error),
    #[error("the spool has stopped")]
    Closed,
}

pub(super) enum Command {
    Append {
        record: Vec<u8>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Close the open segment so the replayer may read it. The answer is the highest
    /// segment number that is closed for good: every later segment gets a higher number.
    Seal { reply: oneshot::Sender<u64> },
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    bytes: AtomicU64,
    records: AtomicU64,
    replayed: AtomicU64,
    /// Set while appends fail (a full or broken disk), cleared by the next fsync that works.
    failing: AtomicBool,
    /// Size of the last record refused for want of room: the spool counts as full until
    /// that much is free again.
    refused_len: AtomicU64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, counting what earlier runs left there.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        make_private_dir(dir)?;
        let mut bytes = 0;
        let mut records = 0;
        let mut next_segment = 1;
        for (seq, path) in segments(dir)? {
            // Earlier versions left segments readable by everyone.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            bytes += std::fs::metadata(&path)?.len();
            records += read_segment(&path)?.len() as u64;
            next_segment = seq + 1;
        }
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            max_bytes,
            bytes: AtomicU64::new(bytes),
            records: AtomicU64::new(records),
            replayed: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            refused_len: AtomicU64::new(0),
        });
        if records > 0 {
            tracing::warn!(
                records,
                bytes,
                "spool holds deliveries from an earlier run; replaying them"
            );
        }
        let (tx, rx) = mpsc::channel(4096);
        let state = AppendState {
            shared: shared.clone(),
            create: Box::new(create_segment_file),
            segment_max: SEGMENT_MAX,
            next_segment,
            open: None,
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || append_loop(state, rx))?;
        let spool = Spool {
            commands: tx,
            shared,
        };
        spool.publish_metrics();
        Ok(spool)
    }

    /// Deliveries and bytes waiting for replay.
    pub fn depth(&self) -> (u64, u64) {
        (
            self.shared.records.load(Ordering::Relaxed),
            self.shared.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether an append can be expected to succeed now: the writer thread runs, the spool is
    /// under `--spool-max`, and the last write reached the disk. For `/readyz`: a replica
    /// whose database is down still stores deliveries while this holds.
    pub fn accepting(&self) -> bool {
        let room_needed = self.shared.refused_len.load(Ordering::Relaxed).max(1);
        !self.commands.is_closed()
            && self.shared.bytes.load(Ordering::Relaxed) + room_needed <= self.shared.max_bytes
            && !self.shared.failing.load(Ordering::Relaxed)
    }

    /// Appends `delivery` durably: returns once it is fsynced.
    pub async fn append(&self, delivery: &RawDelivery) -> Result<(), SpoolError> {
        let record = frame(&encode(delivery));
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { record, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        let result = answer.await.map_err(|_| SpoolError::Closed)?;
        self.publish_metrics();
        result
    }

    /// Closes the open segment; returns the highest segment number now closed for good.
    async fn seal(&self) -> Option<u64> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Seal { reply }).await.ok()?;
        answer.await.ok()
    }

    fn publish_metrics(&self) {
        let (records, bytes) = self.depth();
        metrics::gauge!("things_spool_records").set(records as f64);
        metrics::gauge!("things_spool_bytes").set(bytes as f64);
        metrics::gauge!("things_spool_replayed_total")
            .set(self.shared.replayed.load(Ordering::Relaxed) as f64);
    }
}
