//! The group-commit writer: concurrent verified deliveries share transactions.
//!
//! A commit costs an fsync, and on a small machine that fsync, not the inserts, bounds how
//! many deliveries per second we can make durable. So requests hand their delivery to this
//! writer and wait; the writer takes whatever has queued up (at most `max_batch`) and commits it
//! in one transaction with bulk inserts. Under light load a batch is a single delivery and adds
//! no latency; under heavy load batches grow by themselves while the one before commits.
//! Every request is answered only after the transaction holding its delivery has committed.
//! Each transaction slot keeps its database connection between batches, so a batch in the
//! steady state is one round trip.
//!
//! Up to `concurrency` batches (default two) are in flight at once, so that one batch
//! executes while the one before it commits. Batches side by side commit one after the
//! other anyway (a notifying transaction holds PostgreSQL's database-wide notification lock
//! from before its commit record until its flush), so a third in flight would mostly make
//! each batch smaller, paying the statement's fixed cost for fewer deliveries. One at a time
//! leaves PostgreSQL idle while a batch flushes and its requests are answered, and a
//! delivery that arrives meanwhile waits for all of it. Measured in `bench/RESULTS-ingest.md`
//! against the rule this replaced (a batch of destination deliveries alone for its first
//! 50 ms, up to three in flight): over eight alternated pairs at 64 connections, 1.08x the
//! deliveries on the mean, a quarter of a core less idle, and a p99 at half rate of
//! 15-20 ms instead of 12-52 ms, for about a fifth more PostgreSQL CPU per delivery. A batch
//! stuck on a row lock holds up at most one slot: the next batch runs in the other.

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ingest::delivery::{Delivery, Receipt};
use crate::store::deliveries;
use crate::store::known_ids::KnownIds;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most deliveries in one transaction.
    pub max_batch: usize,
    /// Most deliveries waiting for a transaction; beyond it submissions fail at once.
    pub queue: usize,
    /// Most transactions in flight at once.
    pub concurrency: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 512,
            queue: 8192,
            concurrency: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the writer queue is full")]
    Overloaded,
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the writer has stopped")]
    Closed,
}

struct Job {
    delivery: Delivery,
    reply: oneshot::Sender<Result<Receipt, WriteError>>,
}

/// Handle for submitting deliveries; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

/// The running writer, for shutting it down in order.
pub struct WriterTask {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl WriterTask {
    /// Stops taking new deliveries, commits everything already queued, and waits for the
    /// transactions in flight.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Writer {
    pub fn start(pool: PgPool, config: WriterConfig) -> (Writer, WriterTask) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stop = CancellationToken::new();
        let task = tokio::spawn(dispatch(pool, config, rx, stop.clone()));
        (Writer { queue: tx }, WriterTask { task, stop })
    }

    /// Queues `delivery` and waits until its transaction has committed (or failed).
    pub async fn submit(&self, delivery: Delivery) -> Result<Receipt, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { delivery, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
            })?;
        metrics::gauge!("things_writer_queue_depth")
            .set((self.queue.max_capacity() - self.queue.capacity()) as f64);
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

/// A transaction slot: the connection its batches run on, kept from one batch to the next.
///
/// Taking a connection from the pool and giving it back costs a round trip each (the pool
/// tests it both ways), as many as the batch's own statement in the steady state; a slot
/// keeps its connection instead, and drops it when the database becomes unavailable, so that
/// the next batch starts on a fresh one. Slots keep at most half of the pool beyond two, so that
/// the API and the background tasks always find connections: the other slots take one per
/// batch and give it back (all of them do with a pool of two or three).
#[derive(Default)]
struct Slot {
    conn: Option<PoolConnection<Postgres>>,
    keeps: bool,
}

/// Gives a slot back to the free ones when dropped: a batch that panics must not take its
/// slot with it (the writer would stall once all were gone). The connection of a batch that
/// did not finish is not kept.
struct Returned {
    slot: Option<Slot>,
    free: mpsc::Sender<Slot>,
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let Some(mut slot) = self.slot.take() {
            if std::thread::panicking() {
                slot.conn = None;
            }
            // There are never more slots than the channel holds.
            let _ = self.free.try_send(slot);
        }
    }
}

async fn dispatch(
    pool: PgPool,
    config: WriterConfig,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    let concurrency = config.concurrency.max(1);
    let (free, mut slots) = mpsc::channel::<Slot>(concurrency);
    let keeping = (pool.options().get_max_connections() as usize).saturating_sub(2) / 2;
    for n in 0..concurrency {
        let _ = free.try_send(Slot {
            conn: None,
            keeps: n < keeping,
        });
    }
    let known = Arc::new(KnownIds::new());
    let max_batch = config.max_batch.max(1);
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            _ = stop.cancelled(), if !rx.is_closed() => {
                // Refuse new submissions; what is queued is still received and committed.
                rx.close();
                continue;
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        // Wait for a free slot; whatever queues meanwhile joins this batch.
        let Some(slot) = slots.recv().await else {
            break;
        };
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (pool, known, free) = (pool.clone(), known.clone(), free.clone());
        tokio::spawn(async move {
            // Back to the free slots however the batch ends, also if it panics.
            let mut returned = Returned {
                slot: Some(slot),
                free,
            };
            if let Some(slot) = returned.slot.as_mut() {
                commit(&pool, &known, slot, batch).await;
                if !slot.keeps {
                    slot.conn = None;
                }
            }
        });
    }
    // Nothing more will come: wait for the transactions still in flight.
    drop(free);
    for _ in 0..concurrency {
        if slots.recv().await.is_none() {
            break;
        }
    }
}

async fn commit(pool: &PgPool, known: &KnownIds, slot: &mut Slot, jobs: Vec<Job>) {
    let started = Instant::now();
    metrics::histogram!("things_writer_batch_size").record(jobs.len() as f64);
    let (deliveries, replies): (Vec<Delivery>, Vec<_>) =
        jobs.into_iter().map(|j| (j.delivery, j.reply)).unzip();
    let result = store_with_retry(pool, known, slot, &deliveries).await;
    metrics::histogram!("things_writer_commit_seconds").record(started.elapsed().as_secs_f64());
    // Counted for every batch (as 0 or 1), so the series exists from the first commit on:
    // a batch the database refused as data cost one transaction per delivery.
    let degraded = matches!(result, Err(Failure::Data(_)));
    metrics::counter!("things_writer_degraded_batches_total").increment(u64::from(degraded));
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(Failure::Unavailable(e)) => {
            metrics::counter!("things_writer_failed_batches_total").increment(1);
            tracing::warn!(error = %e, deliveries = deliveries.len(), "batch not stored: database unavailable");
            for reply in replies {
                let _ = reply.send(Err(WriteError::Unavailable(clone_error(&e))));
            }
        }
        Err(Failure::Data(e)) => {
            // Something in the batch cannot be stored as it is (it should have been caught
            // earlier). Store the deliveries one by one so the rest are not held hostage, and
            // keep the one that fails as a quarantined raw message.
            tracing::error!(error = %e, deliveries = deliveries.len(), "batch failed; storing deliveries one by one");
            for (delivery, reply) in deliveries.into_iter().zip(replies) {
                let _ = reply.send(store_alone(pool, known, slot, delivery).await);
            }
        }
    }
}

/// Why a batch was not stored.
enum Failure {
    /// The database cannot be reached or cannot write now.
    Unavailable(sqlx::Error),
    /// The database refused the data itself.
    Data(sqlx::Error),
}

/// Deadlocks and serialisation failures are transient: try the batch again a few times. A
/// slot's kept connection may have died while it was idle (the database restarted): a batch
/// that fails on one is tried once more on a fresh connection before it counts as failed.
/// Trying a batch again is safe even when the failed attempt did commit: its deliveries are
/// then found stored, as duplicates, like any retry.
async fn store_with_retry(
    pool: &PgPool,
    known: &KnownIds,
    slot: &mut Slot,
    deliveries: &[Delivery],
) -> Result<Vec<Receipt>, Failure> {
    let mut attempt = 0;
    let mut reconnected = false;
    loop {
        let kept = slot.conn.is_some();
        let conn = match &mut slot.conn {
            Some(conn) => conn,
            // Not getting a connection at all is always an availability problem.
            empty => empty.insert(pool.acquire().await.map_err(Failure::Unavailable)?),
        };
        match deliveries::store_batch(conn, deliveries, known).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) if is_transient(&e) && attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying batch");
            }
            Err(e) if is_unavailable(&e) => {
                slot.conn = None;
                // What comes back may not be the database the ids were learnt from (a
                // restored backup, a failed-over standby): learn them again.
                known.forget();
                if kept && !reconnected {
                    reconnected = true;
                    tracing::debug!(error = %e, "retrying batch on a fresh connection");
                    continue;
                }
                return Err(Failure::Unavailable(e));
            }
            Err(e) => return Err(Failure::Data(e)),
        }
    }
}

async fn store_alone(
    pool: &PgPool,
    known: &KnownIds,
    slot: &mut Slot,
    mut delivery: Delivery,
) -> Result<Receipt, WriteError> {
    match store_with_retry(pool, known, slot, std::slice::from_ref(&delivery)).await {
        Ok(mut outcomes) => return Ok(outcomes.remove(0)),
        Err(Failure::Unavailable(e)) => return Err(WriteError::Unavailable(e)),
        Err(Failure::Data(e)) => {
            tracing::error!(error = %e, "delivery cannot be stored as measurements; quarantining it");
            delivery.decoded = Err(format!("cannot be stored as measurements: {e}"));
            delivery.raw.headers.clear();
        }
    }
    match store_with_retry(pool, known, slot, std::slice::from_ref(&delivery)).await {
        Ok(mut outcomes) => Ok(outcomes.remove(0)),
        Err(Failure::Unavailable(e) | Failure::Data(e)) => Err(WriteError::Unavailable(e)),
    }
}

/// Whether `error` means the database cannot be reached or cannot take writes now (as
/// opposed to something wrong with the data).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection exceptions, insufficient resources, operator intervention
            // (shutdown, cannot connect now), system errors, read-only transactions.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("58")
                || code == "25006"
        }),
        _ => false,
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
}

/// sqlx errors are not `Clone`; every waiting request gets an equivalent one.
fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(error.to_string()))
}
