//! The spool writer thread: appends grouped under one fsync, segment rotation, seals.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::segment::{CreateSegment, SegmentFile, segment_path};
use super::{Command, Shared, SpoolError};

type Reply = oneshot::Sender<Result<(), SpoolError>>;

/// The segment being appended to, with the appends written to it but not yet fsynced.
pub(super) struct OpenSegment {
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
pub(super) struct AppendState {
    pub(super) shared: Arc<Shared>,
    pub(super) create: CreateSegment,
    pub(super) segment_max: u64,
    pub(super) next_segment: u64,
    pub(super) open: Option<OpenSegment>,
}

impl AppendState {
    /// Handles one group of commands with (normally) a single fsync at its end.
    pub(super) fn group(&mut self, batch: Vec<Command>) {
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
    pub(super) fn close(&mut self) {
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
pub(super) fn append_loop(mut state: AppendState, mut commands: mpsc::Receiver<Command>) {
    while let Some(command) = commands.blocking_recv() {
        let mut batch = vec![command];
        while let Ok(more) = commands.try_recv() {
            batch.push(more);
        }
        state.group(batch);
    }
    state.close();
}
