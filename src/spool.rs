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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, counting what earlier runs left there.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut bytes = 0;
        let mut records = 0;
        let mut next_segment = 1;
        for (seq, path) in segments(dir)? {
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
        });
        if records > 0 {
            tracing::warn!(
                records,
                bytes,
                "spool holds deliveries from an earlier run; replaying them"
            );
        }
        let (tx, rx) = mpsc::channel(4096);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || append_loop(worker, rx, next_segment))?;
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
                if let Err(e) = spool.replay_once(&writer, &shutdown).await {
                    tracing::debug!(error = %e, "spool replay paused");
                }
            }
        });
    }

    /// Replays every closed segment, oldest first, deleting each once all of it is stored.
    async fn replay_once(
        &self,
        writer: &Writer,
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
            for chunk in records.chunks(REPLAY_CHUNK) {
                let submits = chunk.iter().map(|raw| {
                    let decoded = crate::senml::resolve(&raw.body, raw.received_at)
                        .map_err(|e| e.to_string());
                    writer.submit(Delivery {
                        raw: raw.clone(),
                        decoded,
                    })
                });
                for result in futures_util::future::join_all(submits).await {
                    result?;
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

/// The spool writer thread: appends, one fsync per group of appends, seals on request.
fn append_loop(shared: Arc<Shared>, mut commands: mpsc::Receiver<Command>, mut next_segment: u64) {
    let mut open: Option<(u64, File, u64)> = None;
    while let Some(command) = commands.blocking_recv() {
        let mut batch = vec![command];
        while let Ok(more) = commands.try_recv() {
            batch.push(more);
        }
        let mut waiting: Vec<oneshot::Sender<Result<(), SpoolError>>> = Vec::new();
        let mut failed: Option<std::io::Error> = None;
        for command in batch {
            match command {
                Command::Seal { reply } => {
                    if let Some((_, file, _)) = open.take()
                        && let Err(e) = file.sync_all()
                    {
                        failed.get_or_insert(e);
                    }
                    let _ = reply.send(next_segment - 1);
                }
                Command::Append { record, reply } => {
                    let len = record.len() as u64;
                    if shared.bytes.load(Ordering::Relaxed) + len > shared.max_bytes {
                        let _ = reply.send(Err(SpoolError::Full(shared.max_bytes)));
                        continue;
                    }
                    match write_record(&shared.dir, &mut open, &mut next_segment, &record) {
                        Ok(()) => {
                            shared.bytes.fetch_add(len, Ordering::Relaxed);
                            shared.records.fetch_add(1, Ordering::Relaxed);
                            waiting.push(reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(SpoolError::Io(e)));
                        }
                    }
                }
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let synced = match (&open, failed) {
            (_, Some(e)) => Err(e),
            (Some((_, file, _)), None) => file.sync_data(),
            (None, None) => Ok(()),
        };
        if synced.is_err() {
            // After a failed fsync nothing later in this file can be trusted to be durable:
            // later appends go to a new segment.
            open = None;
        }
        for reply in waiting {
            let _ = reply.send(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Io(std::io::Error::new(e.kind(), e.to_string()))),
            });
        }
    }
}

/// Appends one framed record to the open segment, opening a new one (numbered from the
/// writer's own counter, never reused) when none is open or the current one is full.
fn write_record(
    dir: &Path,
    open: &mut Option<(u64, File, u64)>,
    next_segment: &mut u64,
    record: &[u8],
) -> std::io::Result<()> {
    if open.as_ref().is_some_and(|(_, _, len)| *len >= SEGMENT_MAX)
        && let Some((_, file, _)) = open.take()
    {
        file.sync_all()?;
    }
    if open.is_none() {
        let seq = *next_segment;
        *next_segment += 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        // Make the new file's directory entry durable too.
        File::open(dir)?.sync_all()?;
        *open = Some((seq, file, 0));
    }
    let (_, file, len) = open.as_mut().expect("a segment is open");
    if let Err(e) = file.write_all(record) {
        // Cut the partial record off so that acknowledged records after it stay readable,
        // and start a new segment for them anyway.
        let _ = file.set_len(*len);
        *open = None;
        return Err(e);
    }
    *len += record.len() as u64;
    Ok(())
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
}
