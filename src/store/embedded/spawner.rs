//! The postmaster child process, and the one long-lived thread that forks every postmaster
//! (its parent-death signal is tied to that thread).

use super::*;

/// A postmaster we spawned. Dropping it without `shutdown` sends SIGINT (fast shutdown) and
/// leaves reaping to a helper thread, so that an abandoned start (error, cancelled future,
/// dropped handle) never leaves a server behind.
#[derive(Debug)]
pub(super) struct Postmaster {
    /// `None` once the process has been reaped: its pid may then belong to someone else.
    child: Option<Child>,
    pid: Pid,
}

impl Postmaster {
    pub(super) fn new(child: Child) -> Self {
        let pid = pid_from_u32(child.id());
        Self {
            child: Some(child),
            pid,
        }
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Reaps the process if it has exited.
    pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    pub(super) fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            // ESRCH cannot happen for an unreaped child; anything else is not actionable.
            let _ = kill(self.pid, signal);
        }
    }

    /// Polls for exit until `timeout`; true if the process exited (and was reaped).
    pub(super) async fn wait_exit(&mut self, timeout: Duration) -> Result<bool, EmbeddedError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.is_none() {
                return Ok(true);
            }
            self.try_wait()
                .map_err(EmbeddedError::io("could not wait for PostgreSQL to exit"))?;
            if self.child.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Fast shutdown, escalating to immediate shutdown and finally SIGKILL.
    pub(super) async fn shutdown(mut self) -> Result<(), EmbeddedError> {
        self.signal(Signal::SIGINT);
        if self.wait_exit(STOP_TIMEOUT).await? {
            return Ok(());
        }
        tracing::warn!(
            pid = self.pid.as_raw(),
            "PostgreSQL did not finish a fast shutdown in time; sending SIGQUIT"
        );
        self.signal(Signal::SIGQUIT);
        if self.wait_exit(QUIT_TIMEOUT).await? {
            return Ok(());
        }
        self.signal(Signal::SIGKILL);
        Err(EmbeddedError::StopTimeout(self.pid.as_raw()))
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(self.pid, Signal::SIGINT);
        // Reap in the background so the process does not linger as a zombie. This thread
        // forks nothing, so its exit does not matter for PDEATHSIG. If it cannot be
        // started, the zombie is reaped when our process exits.
        let _ = std::thread::Builder::new()
            .name("pg-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
    }
}

/// A request to the spawner thread: a fully configured command, and where to send the child.
struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// The channel to the spawner thread, started on first use.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// Spawns `command` on the spawner thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
/// process. Tokio's blocking-pool threads (and the task's own worker thread) may exit
/// at any time, which would shut the server down under us. So every postmaster is
/// forked by one dedicated thread that never exits: its only way to die is with the
/// whole process, which is exactly when the server should go.
pub(super) async fn spawn_on_spawner_thread(command: Command) -> io::Result<Child> {
    let (reply, response) = oneshot::channel();
    {
        let mut guard = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match guard.as_mut() {
            Some(sender) => sender,
            None => {
                let (sender, requests) = mpsc::channel();
                std::thread::Builder::new()
                    .name("pg-spawner".into())
                    .spawn(move || run_spawner(requests))?;
                guard.insert(sender)
            }
        };
        sender
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the PostgreSQL spawner thread has exited"))?;
    }
    response
        .await
        .map_err(|_| io::Error::other("the PostgreSQL spawner thread dropped the request"))?
}

/// The spawner thread's loop. The sender lives in a static and is never dropped, so
/// `recv` never fails and the thread runs until the process exits.
fn run_spawner(requests: mpsc::Receiver<SpawnRequest>) {
    for mut request in requests {
        let result = request.command.spawn();
        if let Err(Ok(child)) = request.reply.send(result) {
            // The caller gave up (its future was dropped): don't leave a server behind.
            drop(Postmaster::new(child));
        }
    }
}

/// Runs in the forked child just before `exec`: ties the child's life to ours.
///
/// std applies `uid`/`gid` (and clears supplementary groups) *before* `pre_exec`
/// closures, which matters because a credential change clears the death signal; set
/// here, it survives. Only async-signal-safe calls are made (no allocation).
pub(super) fn die_with_parent(expected_parent: Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(io::Error::from)?;
    // If the parent died between fork and prctl, the signal will never come: give up now.
    if nix::unistd::getppid() != expected_parent {
        return Err(io::Error::from(Errno::ESRCH));
    }
    Ok(())
}
