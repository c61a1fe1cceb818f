//! Keeping an owned server running: a thread per owned cluster that reaps the postmaster
//! when it dies (OOM killer, crash, `kill -9`) and starts it again with backoff.
//!
//! Without it a dead postmaster stays a zombie of ours: its pid still "exists", so
//! `postmaster.pid` looks in use and even a manual start fails ("lock file already exists"),
//! while the service spools forever. PostgreSQL runs its own crash recovery on the restart;
//! the pool reconnects by itself and the spool replayer replays once the database answers.
//!
//! A thread rather than a task: a cluster may outlive the runtime that started it (the test
//! harness keeps one per test binary across many runtimes), and its restarts must not.

use super::*;

/// How often the postmaster is checked: a death is noticed well within 2 s.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// The first retry after a failed restart; doubled up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything needed to start the cluster again.
#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) bindir: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) user: Option<ServiceUser>,
    pub(super) options: EmbeddedOptions,
}

impl Cluster {
    /// Under the directory lock: creates the cluster if needed, then attaches to a server
    /// that runs there (`None`) or starts one (`Some`), cleaning up a dead one's lock files.
    pub(super) async fn start_or_attach(&self) -> Result<Option<Postmaster>, EmbeddedError> {
        let Cluster {
            bindir,
            dir,
            user,
            options,
        } = self;
        // Held until the server is ready (or we attached), so that a concurrent start in
        // another process waits and then attaches instead of racing us.
        let _lock = lock_dir(dir).await?;
        ensure_cluster(bindir, dir, user.as_ref(), options).await?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            match inspect_pid_file(dir)? {
                Existing::None => {}
                Existing::Running(pid) => match wait_for_foreign(bindir, dir, pid).await? {
                    Foreign::Ready => {
                        tracing::debug!(dir = %dir.display(), pid = pid.as_raw(),
                            "attached to the PostgreSQL server already running there");
                        return Ok(None);
                    }
                    // It shut down while we watched; look again from scratch.
                    Foreign::Gone if attempt < START_ATTEMPTS => continue,
                    Foreign::Gone => {}
                },
                Existing::Stale { pid, reason } => remove_stale_lock_files(dir, pid, reason)?,
            }

            match launch(bindir, dir, user.as_ref(), options).await? {
                Launch::Started(postmaster) => return Ok(Some(postmaster)),
                // Someone outside our lock started a server between our look and our
                // start; PostgreSQL's own lock file turned us away. Go attach to it.
                Launch::LockConflict(_) if attempt < START_ATTEMPTS => {
                    tracing::info!(dir = %dir.display(),
                        "another PostgreSQL server took the data directory first; attaching");
                }
                Launch::LockConflict(error) => return Err(error),
            }
        }
    }
}

/// What the owner asks of the supervisor thread.
enum Order {
    /// Stop supervising and shut the server down; answers with the pid that was stopped.
    Stop(oneshot::Sender<Result<Option<Pid>, EmbeddedError>>),
}

/// The handle of a supervisor thread. Dropping it makes the thread drop its postmaster (fast
/// shutdown without waiting) and exit.
#[derive(Debug)]
pub(super) struct Supervisor {
    orders: mpsc::Sender<Order>,
}

impl Supervisor {
    pub(super) fn spawn(cluster: Cluster, postmaster: Postmaster) -> io::Result<Supervisor> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (orders, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("pg-supervisor".into())
            .spawn(move || watch(cluster, postmaster, inbox, runtime))?;
        Ok(Supervisor { orders })
    }

    /// Shuts the server down in order and ends supervision.
    pub(super) async fn stop(self) -> Result<Option<Pid>, EmbeddedError> {
        let (reply, answer) = oneshot::channel();
        if self.orders.send(Order::Stop(reply)).is_err() {
            return Ok(None);
        }
        answer.await.unwrap_or(Ok(None))
    }
}

/// The supervisor thread's loop.
fn watch(
    cluster: Cluster,
    postmaster: Postmaster,
    inbox: mpsc::Receiver<Order>,
    runtime: tokio::runtime::Runtime,
) {
    let dir = cluster.dir.display().to_string();
    let mut current = Some(postmaster);
    let mut backoff = Duration::ZERO;
    let mut next_try = std::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        match inbox.recv_timeout(WATCH_INTERVAL) {
            Ok(Order::Stop(reply)) => {
                let result = match current.take() {
                    Some(postmaster) => {
                        let pid = postmaster.pid();
                        runtime.block_on(postmaster.shutdown()).map(|()| Some(pid))
                    }
                    None => Ok(None),
                };
                let _ = reply.send(result);
                return;
            }
            // The owner is gone: dropping the postmaster asks it to shut down.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(postmaster) = current.as_mut() {
            // `try_wait` is `waitpid(WNOHANG)`: it reaps, so the pid stops looking alive.
            match postmaster.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    tracing::error!(%dir, pid = postmaster.pid().as_raw(), %status,
                        "PostgreSQL exited unexpectedly; reaped it, restarting it \
                         (deliveries are spooled meanwhile)");
                }
                Err(e) => {
                    tracing::error!(%dir, error = %e, "cannot check on PostgreSQL");
                    continue;
                }
            }
            current = None;
            backoff = Duration::ZERO;
            attempts = 0;
            next_try = std::time::Instant::now();
        }
        if std::time::Instant::now() < next_try {
            continue;
        }
        attempts += 1;
        tracing::info!(%dir, attempt = attempts, "starting PostgreSQL again (crash recovery)");
        match runtime.block_on(cluster.start_or_attach()) {
            Ok(Some(postmaster)) => {
                tracing::info!(%dir, pid = postmaster.pid().as_raw(), attempt = attempts,
                    "PostgreSQL is back and accepts connections");
                current = Some(postmaster);
                continue;
            }
            Ok(None) => {
                // Another process of ours (a CLI command) started it meanwhile and will stop
                // it when done; look again later and take over then.
                tracing::info!(%dir, "another process runs PostgreSQL here for now");
            }
            Err(e) => {
                tracing::warn!(%dir, attempt = attempts, error = %e,
                    "PostgreSQL did not start again; retrying");
            }
        }
        backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        next_try = std::time::Instant::now() + backoff;
    }
}
