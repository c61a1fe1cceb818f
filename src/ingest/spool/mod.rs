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

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ingest::writer::{WriteError, Writer};
use crate::store::deliveries::{Delivery, RawDelivery};
use crate::token::Token;

const MAGIC: u32 = 0x5452_5350; // "TRSP"
const HEADER_LEN: usize = 12;
const FORMAT_VERSION: u8 = 1;
/// A segment is closed and a new one started beyond this size.
const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// Records replayed per round trip through the writer.
const REPLAY_CHUNK: usize = 256;
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

enum Command {
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

struct Shared {
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

    /// Replays the spool through `writer` whenever it holds anything and the database
    /// answers, until `shutdown`.
    pub fn spawn_replayer(&self, writer: Writer, pool: sqlx::PgPool, shutdown: CancellationToken) {
        let spool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                // Only when the database answers: each replay round seals the open segment,
                // and a long outage should not leave thousands of tiny ones.
                // Bytes, not records: a segment holding only a torn record still has to go.
                if spool.depth().1 == 0 || sqlx::query("SELECT 1").execute(&pool).await.is_err() {
                    continue;
                }
                if let Err(e) = spool.replay_once(&writer, &pool, &shutdown).await {
                    tracing::debug!(error = %e, "spool replay paused");
                }
            }
        });
    }

    /// Replays every closed segment, oldest first, deleting each once all of it is stored.
    async fn replay_once(
        &self,
        writer: &Writer,
        pool: &sqlx::PgPool,
        shutdown: &CancellationToken,
    ) -> Result<(), WriteError> {
        let Some(sealed) = self.seal().await else {
            return Err(WriteError::Closed);
        };
        let list = segments(&self.shared.dir).map_err(|e| WriteError::Unavailable(e.into()))?;
        for (seq, path) in list {
            // A segment numbered above `sealed` was opened after the seal and is still
            // being appended to.
            if seq > sealed || shutdown.is_cancelled() {
                continue;
            }
            let records = read_segment(&path).map_err(|e| WriteError::Unavailable(e.into()))?;
            for (n, chunk) in records.chunks(REPLAY_CHUNK).enumerate() {
                let submits = chunk.iter().map(|raw| replay_one(writer, raw));
                let results = futures_util::future::join_all(submits).await;
                for (i, (raw, result)) in chunk.iter().zip(results).enumerate() {
                    if result.is_err() {
                        let at = (seq, n * REPLAY_CHUNK + i);
                        self.retry_or_quarantine(writer, pool, raw, at).await?;
                    }
                }
            }
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(|e| WriteError::Unavailable(e.into()))?;
            self.shared.bytes.fetch_sub(
                len.min(self.shared.bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            let n = records.len() as u64;
            self.shared.records.fetch_sub(
                n.min(self.shared.records.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            self.shared.replayed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("things_spool_replayed_records_total").increment(n);
            tracing::info!(records = n, segment = %path.display(), "replayed spool segment");
            self.publish_metrics();
        }
        Ok(())
    }
}

async fn replay_one(writer: &Writer, raw: &RawDelivery) -> Result<(), WriteError> {
    let decoded = crate::senml::resolve(&raw.body, raw.received_at).map_err(|e| e.to_string());
    writer
        .submit(Delivery {
            raw: raw.clone(),
            decoded,
        })
        .await
        .map(|_| ())
}

impl Spool {
    /// A record that failed in its chunk is tried once more on its own. If that fails too
    /// while the database answers (checked, then tried a last time), the database will never
    /// take it (the writer already fell back to storing it raw as quarantined): it is moved
    /// to `quarantine/` byte for byte, so that it no longer holds up its segment and every
    /// one after it. While the database does not answer, the replay pauses instead and the
    /// segment stays.
    async fn retry_or_quarantine(
        &self,
        writer: &Writer,
        pool: &sqlx::PgPool,
        raw: &RawDelivery,
        at: (u64, usize),
    ) -> Result<(), WriteError> {
        let error = match replay_one(writer, raw).await {
            Ok(()) => return Ok(()),
            Err(e @ (WriteError::Overloaded | WriteError::Closed)) => return Err(e),
            Err(e) => e,
        };
        if let Err(down) = sqlx::query("SELECT 1").execute(pool).await {
            return Err(WriteError::Unavailable(down));
        }
        // Once more now that the database is known to answer, so that a connection lost
        // during the retry cannot send a good delivery to the quarantine.
        let error = match replay_one(writer, raw).await {
            Ok(()) => return Ok(()),
            Err(e @ (WriteError::Overloaded | WriteError::Closed)) => return Err(e),
            Err(_) => error,
        };
        let path = quarantine_record(&self.shared.dir, at, &frame(&encode(raw)))
            .map_err(|e| WriteError::Unavailable(e.into()))?;
        metrics::counter!("things_spool_quarantined_records_total").increment(1);
        tracing::error!(%error, destination = %raw.destination_id, file = %path.display(),
            "a spooled delivery failed twice although the database answers; moved it to the \
             spool's quarantine and went on with the rest");
        Ok(())
    }
}

/// Writes one framed record, as it was in its segment, to `DIR/quarantine/`, fsynced, owner
/// only. The file is a valid one-record segment, so it can be inspected or moved back.
fn quarantine_record(
    dir: &Path,
    (segment, index): (u64, usize),
    record: &[u8],
) -> std::io::Result<PathBuf> {
    let quarantine = dir.join(QUARANTINE_DIR);
    make_private_dir(&quarantine)?;
    let path = quarantine.join(format!("segment-{segment:016}-record-{index:06}.spool"));
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => file,
        // The same record, quarantined before a crash kept its segment from being deleted.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(path),
        Err(e) => return Err(e),
    };
    file.write_all(record)?;
    file.sync_all()?;
    File::open(&quarantine)?.sync_all()?;
    Ok(path)
}

/// One segment file as the writer thread sees it. Real segments are files; the tests use one
/// that fails on demand, to prove that no record is acknowledged before its fsync.
pub(crate) trait SegmentFile: Send {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Cuts a partially written record off the end.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> std::io::Result<()>;
}

/// Creates a new, empty segment at the given path, durably (directory entry included).
pub(crate) type CreateSegment =
    Box<dyn FnMut(&Path) -> std::io::Result<Box<dyn SegmentFile>> + Send>;

impl SegmentFile for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Segments are readable by their owner only: they hold raw bodies and kept headers.
fn create_segment_file(path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // Make the new file's directory entry durable too.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(Box::new(file))
}

type Reply = oneshot::Sender<Result<(), SpoolError>>;

/// The segment being appended to, with the appends written to it but not yet fsynced.
struct OpenSegment {
    file: Box<dyn SegmentFile>,
    len: u64,
    /// Answered only by a successful sync of *this* file (or an error).
    unsynced: Vec<Reply>,
}

impl OpenSegment {
    /// Fsyncs the file and answers every append waiting for it with the outcome.
    fn sync_and_answer(&mut self) -> bool {
        if self.unsynced.is_empty() {
            return true;
        }
        let result = self.file.sync();
        for reply in self.unsynced.drain(..) {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Io(std::io::Error::new(e.kind(), e.to_string()))),
            });
        }
        result.is_ok()
    }
}

/// The state of the spool writer thread.
///
/// The invariant that matters: an append is answered `Ok` only after an fsync of the very file
/// its record went to succeeded. Unsynced appends travel with their segment, so a segment left
/// mid-group (rotation, failed write, seal) is synced and answered on the way out, and a
/// failure elsewhere in the group can never let them through unsynced.
struct AppendState {
    shared: Arc<Shared>,
    create: CreateSegment,
    segment_max: u64,
    next_segment: u64,
    open: Option<OpenSegment>,
}

impl AppendState {
    /// Handles one group of commands with (normally) a single fsync at its end.
    fn group(&mut self, batch: Vec<Command>) {
        for command in batch {
            match command {
                Command::Seal { reply } => {
                    self.close();
                    let _ = reply.send(self.next_segment - 1);
                }
                Command::Append { record, reply } => {
                    let len = record.len() as u64;
                    if self.shared.bytes.load(Ordering::Relaxed) + len > self.shared.max_bytes {
                        self.shared.refused_len.store(len, Ordering::Relaxed);
                        let _ = reply.send(Err(SpoolError::Full(self.shared.max_bytes)));
                        continue;
                    }
                    match self.write(&record) {
                        Ok(segment) => {
                            segment.unsynced.push(reply);
                            self.shared.bytes.fetch_add(len, Ordering::Relaxed);
                            self.shared.records.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.shared.failing.store(true, Ordering::Relaxed);
                            let _ = reply.send(Err(SpoolError::Io(e)));
                        }
                    }
                }
            }
        }
        if let Some(segment) = self.open.as_mut()
            && !segment.unsynced.is_empty()
        {
            let synced = segment.sync_and_answer();
            self.shared.failing.store(!synced, Ordering::Relaxed);
            if !synced {
                // After a failed fsync nothing later in this file can be trusted to be
                // durable: later appends go to a new segment.
                self.open = None;
            }
        }
    }

    /// Closes the open segment, syncing it and answering what waits for that sync.
    fn close(&mut self) {
        if let Some(mut segment) = self.open.take() {
            segment.sync_and_answer();
        }
    }

    /// Appends one framed record to the open segment, opening a new one (numbered from the
    /// writer's own counter, never reused) when none is open or the current one is full.
    fn write(&mut self, record: &[u8]) -> std::io::Result<&mut OpenSegment> {
        if self
            .open
            .as_ref()
            .is_some_and(|segment| segment.len >= self.segment_max)
        {
            self.close();
        }
        if self.open.is_none() {
            let seq = self.next_segment;
            self.next_segment += 1;
            let file = (self.create)(&segment_path(&self.shared.dir, seq))?;
            self.open = Some(OpenSegment {
                file,
                len: 0,
                unsynced: Vec::new(),
            });
        }
        let segment = self.open.as_mut().expect("a segment is open");
        if let Err(e) = segment.file.append(record) {
            // Cut the partial record off so that the records before it stay readable, make
            // those durable (and answer them), and start a new segment for what follows.
            let _ = segment.file.truncate(segment.len);
            self.close();
            return Err(e);
        }
        segment.len += record.len() as u64;
        Ok(self.open.as_mut().expect("a segment is open"))
    }
}

/// The spool writer thread: appends, one fsync per group of appends, seals on request.
fn append_loop(mut state: AppendState, mut commands: mpsc::Receiver<Command>) {
    while let Some(command) = commands.blocking_recv() {
        let mut batch = vec![command];
        while let Ok(more) = commands.try_recv() {
            batch.push(more);
        }
        state.group(batch);
    }
    state.close();
}

/// Creates `dir` (and its parents) and makes it 0700, like the key file beside it: what is in
/// it (raw bodies, kept headers) is for this service's user only.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The umask may have narrowed the mode, and an existing folder may be wider.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("segment-{seq:016}.spool"))
}

/// Segment files in `dir`, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(seq) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".spool"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every intact record of a segment, stopping at the first torn or corrupt one.
fn read_segment(path: &Path) -> std::io::Result<Vec<RawDelivery>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut reader, &mut header)? {
            0 => break,
            n if n < HEADER_LEN => {
                tracing::warn!(segment = %path.display(), offset, "torn record header at the end of a spool segment; skipped");
                break;
            }
            _ => {}
        }
        let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if magic != MAGIC {
            tracing::warn!(segment = %path.display(), offset, "corrupt spool record; rest of segment skipped");
            break;
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut reader, &mut payload)? < len || crc32fast::hash(&payload) != crc {
            tracing::warn!(segment = %path.display(), offset, "torn or corrupt record at the end of a spool segment; skipped");
            break;
        }
        match decode(&payload) {
            Some(raw) => out.push(raw),
            None => {
                tracing::warn!(segment = %path.display(), offset, "undecodable spool record skipped")
            }
        }
        offset += (HEADER_LEN + len) as u64;
    }
    Ok(out)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn encode(d: &RawDelivery) -> Vec<u8> {
    let headers = serde_json::to_vec(&d.headers).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(96 + headers.len() + d.body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(d.destination_id.as_bytes());
    match d.bind_plug {
        Some(plug) => {
            out.push(1);
            out.extend_from_slice(plug.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&d.token.0);
    out.extend_from_slice(&d.received_at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&(d.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&d.body);
    out
}

fn decode(mut p: &[u8]) -> Option<RawDelivery> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Some(head)
    }
    if take(&mut p, 1)?[0] != FORMAT_VERSION {
        return None;
    }
    let destination_id = Uuid::from_slice(take(&mut p, 16)?).ok()?;
    let bind_plug = match take(&mut p, 1)?[0] {
        0 => None,
        _ => Some(Uuid::from_slice(take(&mut p, 16)?).ok()?),
    };
    let token = Token(take(&mut p, 32)?.try_into().ok()?);
    let micros = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
    let received_at = DateTime::<Utc>::from_timestamp_micros(micros)?;
    let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
    let headers = serde_json::from_slice(take(&mut p, len)?).ok()?;
    let len = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
    let body = Bytes::copy_from_slice(take(&mut p, len)?);
    Some(RawDelivery {
        destination_id,
        bind_plug,
        token,
        received_at,
        body,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: u8) -> RawDelivery {
        RawDelivery {
            destination_id: Uuid::new_v4(),
            bind_plug: n.is_multiple_of(2).then(Uuid::new_v4),
            token: Token([n; 32]),
            received_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            body: Bytes::from(format!(r#"[{{"n":"x","v":{n}}}]"#)),
            headers: [("device-type".to_owned(), "x".to_owned())].into(),
        }
    }

    fn same(a: &RawDelivery, b: &RawDelivery) -> bool {
        a.destination_id == b.destination_id
            && a.bind_plug == b.bind_plug
            && a.token == b.token
            && a.received_at == b.received_at
            && a.body == b.body
            && a.headers == b.headers
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let records: Vec<RawDelivery> = (0..5).map(raw).collect();
        for r in &records {
            spool.append(r).await.unwrap();
        }
        assert_eq!(spool.depth().0, 5);
        spool.seal().await;

        // A crash mid-append leaves half a record at the end of the segment.
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let torn = frame(&encode(&raw(9)));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let read = read_segment(&path).unwrap();
        assert_eq!(read.len(), 5);
        assert!(read.iter().zip(&records).all(|(a, b)| same(a, b)));

        // A flipped byte inside a record is caught by the checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = frame(&encode(&records[0])).len() + HEADER_LEN + 3;
        bytes[second] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);

        let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.depth().0, 1);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let one = frame(&encode(&raw(1))).len() as u64;
        let spool = Spool::open(dir.path(), one * 2).unwrap();
        spool.append(&raw(1)).await.unwrap();
        spool.append(&raw(3)).await.unwrap();
        assert!(matches!(
            spool.append(&raw(5)).await,
            Err(SpoolError::Full(_))
        ));
        assert_eq!(spool.depth().0, 2);
    }

    /// A file system that remembers what each segment holds and what of it was last synced,
    /// and fails the n-th append or the n-th sync (counted over all files).
    #[derive(Default)]
    struct FaultFs {
        files: Vec<(Vec<u8>, Vec<u8>)>,
        appends: usize,
        syncs: usize,
        fail_append: Option<usize>,
        fail_sync: Option<usize>,
    }

    struct FaultFile {
        fs: Arc<std::sync::Mutex<FaultFs>>,
        index: usize,
    }

    impl SegmentFile for FaultFile {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let mut fs = self.fs.lock().unwrap();
            fs.appends += 1;
            let index = self.index;
            if fs.fail_append == Some(fs.appends) {
                // A short write, as on a full disk.
                fs.files[index]
                    .0
                    .extend_from_slice(&bytes[..bytes.len() / 2]);
                return Err(std::io::Error::other("injected write failure"));
            }
            fs.files[index].0.extend_from_slice(bytes);
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.fs.lock().unwrap().files[self.index]
                .0
                .truncate(len as usize);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            let mut fs = self.fs.lock().unwrap();
            fs.syncs += 1;
            if fs.fail_sync == Some(fs.syncs) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            let index = self.index;
            fs.files[index].1 = fs.files[index].0.clone();
            Ok(())
        }
    }

    fn fault_state(fs: &Arc<std::sync::Mutex<FaultFs>>, segment_max: u64) -> AppendState {
        let shared = Arc::new(Shared {
            dir: PathBuf::from("/nonexistent"),
            max_bytes: u64::MAX,
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            refused_len: AtomicU64::new(0),
        });
        let fs = fs.clone();
        AppendState {
            shared,
            create: Box::new(move |_| {
                let mut state = fs.lock().unwrap();
                state.files.push(Default::default());
                let index = state.files.len() - 1;
                Ok(Box::new(FaultFile {
                    fs: fs.clone(),
                    index,
                }))
            }),
            segment_max,
            next_segment: 1,
            open: None,
        }
    }

    /// Every append answered Ok is, byte for byte, in what an fsync made durable, whatever
    /// write or fsync fails in the group: with rotations inside the group, a seal in its
    /// middle, and failures at every position in turn.
    #[test]
    fn no_append_is_acknowledged_before_its_own_fsync() {
        let records: Vec<Vec<u8>> = (0..7).map(|n| frame(&encode(&raw(n)))).collect();
        // Two records per segment, so the group rotates.
        let segment_max = (records[0].len() * 2) as u64;
        let mut failures_seen = 0;
        for fault in 0..=(2 * 12) {
            let fs = Arc::new(std::sync::Mutex::new(FaultFs::default()));
            {
                let mut fs = fs.lock().unwrap();
                match fault {
                    0 => {}
                    n if n <= 12 => fs.fail_append = Some(n),
                    n => fs.fail_sync = Some(n - 12),
                }
            }
            let mut state = fault_state(&fs, segment_max);
            let mut batch = Vec::new();
            let mut answers = Vec::new();
            for (n, record) in records.iter().enumerate() {
                if n == 3 {
                    let (reply, _answer) = oneshot::channel();
                    batch.push(Command::Seal { reply });
                }
                let (reply, answer) = oneshot::channel();
                batch.push(Command::Append {
                    record: record.clone(),
                    reply,
                });
                answers.push(answer);
            }
            state.group(batch);
            let fs = fs.lock().unwrap();
            let mut acked = 0;
            for (record, mut answer) in records.iter().zip(answers) {
                match answer
                    .try_recv()
                    .expect("every append is answered in its group")
                {
                    Ok(()) => {
                        acked += 1;
                        let durable = fs.files.iter().any(|(_, synced)| {
                            synced.windows(record.len()).any(|w| w == record.as_slice())
                        });
                        assert!(durable, "fault {fault}: a record was acknowledged unsynced");
                    }
                    Err(_) => failures_seen += 1,
                }
            }
            if fault == 0 {
                assert_eq!(
                    acked,
                    records.len(),
                    "without faults everything is acknowledged"
                );
            }
        }
        assert!(failures_seen > 0, "the injected faults were hit");
    }

    #[tokio::test]
    async fn spool_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        // As an earlier version left it: a world-readable folder and segment.
        std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let old = segment_path(&dir, 1);
        std::fs::write(&old, frame(&encode(&raw(1)))).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();

        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(&raw(2)).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let segments = segments(&dir).unwrap();
        assert_eq!(segments.len(), 2);
        for (_, path) in segments {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        let quarantined = quarantine_record(&dir, (1, 0), &frame(&encode(&raw(3)))).unwrap();
        assert_eq!(mode(&quarantined), 0o600);
        assert_eq!(mode(quarantined.parent().unwrap()), 0o700);
        assert_eq!(read_segment(&quarantined).unwrap().len(), 1);
    }
}
