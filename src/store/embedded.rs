//! A private PostgreSQL cluster run from the system's PostgreSQL server binaries.
//!
//! `things-receiver` keeps its data in PostgreSQL. Asking every user to install,
//! configure and secure a PostgreSQL service is a lot of friction for a small
//! service, so unless the user points us at a server of their own (`DATABASE_URL`)
//! we run one ourselves: a cluster in a directory of our data dir, created with
//! `initdb` on first use and started as a child process.
//!
//! The design choices, and why:
//!
//! * **No TCP, private socket.** The server listens only on a Unix socket inside the
//!   cluster directory, which is mode 0700 and the socket itself 0700. That is what
//!   makes `trust` authentication safe: only our own user (and root) can reach it.
//! * **Never as root.** PostgreSQL refuses to run as root, so when we are root the
//!   server and `initdb` run as the `postgres` system user (or `nobody`).
//! * **Dies with us.** The postmaster gets `PR_SET_PDEATHSIG`, so a crash or a
//!   `SIGKILL` of our process shuts it down instead of leaving an orphan holding the
//!   data directory. Because that signal is tied to the *thread* that forked the child,
//!   all servers are forked from one dedicated thread that lives as long as the process.
//! * **Shareable.** A second process of ours (a CLI command while `serve` runs) attaches
//!   to the running server instead of failing, and concurrent starts are serialised by
//!   an advisory lock on the cluster directory so they cannot start two postmasters on
//!   one data directory.
//! * **Self-healing.** A `postmaster.pid` left behind by a crash is detected (dead pid,
//!   or a pid now used by an unrelated process) and removed; PostgreSQL then performs
//!   its own crash recovery.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

/// The port only names the socket file (`.s.PGSQL.5432`); there is no TCP listener.
const PORT: u16 = 5432;
/// The database superuser created by `initdb`.
const SUPERUSER: &str = "postgres";
/// `sun_path` is 108 bytes on Linux including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Server output goes here, inside the cluster directory, so it travels with the data.
const LOG_FILE: &str = "postgres.log";
/// How many log lines an error message quotes.
const LOG_TAIL_LINES: usize = 20;
/// How often readiness and exit conditions are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a server may take to accept connections (crash recovery can be slow).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before we escalate to an immediate one.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an immediate shutdown (SIGQUIT) may take before we give up.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for another process of ours that is initialising or starting the
/// same cluster (initdb plus startup).
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// Rounds of "attach, else clean up, else start": one normal round plus retries for
/// losing a start race against a process that does not take our lock (e.g. `pg_ctl`).
const START_ATTEMPTS: usize = 3;

/// Everything that can go wrong while starting or stopping the embedded server.
///
/// Each message says what to do about it, because these errors reach the user of the
/// command line directly.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries not found: install the PostgreSQL server package \
         (Debian: apt-get install postgresql) or set DATABASE_URL / PG_BINDIR"
    )]
    BinariesNotFound,

    #[error(
        "PG_BINDIR={0} has no `initdb`: set PG_BINDIR to the directory printed by \
         `pg_config --bindir`, or unset it to search the usual places"
    )]
    BadBinDir(PathBuf),

    #[error(
        "PostgreSQL refuses to run as root and there is neither a `postgres` nor a `nobody` \
         user to run it as: create one (Debian: apt-get install postgresql creates `postgres`) \
         or run as an unprivileged user"
    )]
    NoServiceUser,

    #[error(
        "the PostgreSQL socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte \
         limit of Unix socket paths: choose a shorter --data-dir"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },

    #[error(
        "PostgreSQL runs as user {user} and cannot reach {dir}: {blocker} (owner uid {owner}, \
         mode {mode:04o}) is not traversable by {user}; choose a --data-dir under a \
         world-traversable path or chmod o+x {blocker}"
    )]
    NotTraversable {
        user: String,
        dir: PathBuf,
        blocker: PathBuf,
        owner: u32,
        mode: u32,
    },

    #[error(
        "{0} is not empty but holds no PostgreSQL cluster (no PG_VERSION): refusing to \
         overwrite it; choose an empty or new --data-dir, or move its contents away"
    )]
    NotACluster(PathBuf),

    #[error(
        "initdb failed to create a cluster in {dir} ({status}); the directory was emptied \
         so the next start retries:\n{stderr}"
    )]
    InitdbFailed {
        dir: PathBuf,
        status: ExitStatus,
        stderr: String,
    },

    #[error(
        "PostgreSQL exited during startup ({status}); fix the cause shown in the last lines \
         of {log}:\n{tail}"
    )]
    ServerExited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "PostgreSQL did not accept connections within {} s; it was asked to shut down. \
         Last lines of {log}:\n{tail}",
        READY_TIMEOUT.as_secs()
    )]
    StartTimeout { log: PathBuf, tail: String },

    #[error(
        "a PostgreSQL server (pid {pid}) is running on {dir} but did not accept connections \
         within {} s; check {dir}/postgres.log, or stop that server",
        READY_TIMEOUT.as_secs()
    )]
    AttachTimeout { pid: i32, dir: PathBuf },

    #[error(
        "another process kept {dir} locked for over {} s while initialising or starting \
         PostgreSQL; if it is stuck, stop it and try again",
        LOCK_TIMEOUT.as_secs()
    )]
    LockTimeout { dir: PathBuf },

    #[error(
        "PostgreSQL (pid {0}) did not shut down even after SIGQUIT; it was sent SIGKILL, \
         so the next start will run crash recovery"
    )]
    StopTimeout(i32),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl EmbeddedError {
    /// Wraps an I/O error with what we were doing, for `map_err`.
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// Wraps a system call error with what we were doing, for `map_err`.
    fn sys(context: impl Into<String>) -> impl FnOnce(Errno) -> Self {
        let context = context.into();
        move |errno| Self::Io {
            context,
            source: io::Error::from(errno),
        }
    }
}

/// How to run the embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// false only for tests: fsync=off, synchronous_commit=off, full_page_writes=off for speed.
    pub durable: bool,
}

/// A PostgreSQL server on a private Unix socket in a cluster directory, either started by
/// this value (`owned()`) or already running there and merely attached to.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    /// `Some` while we own a postmaster that has not been stopped.
    postmaster: Option<Postmaster>,
    owned: bool,
}

impl EmbeddedPostgres {
    /// Initialises the cluster in `dir` if it has none (initdb), then starts a server on a
    /// Unix socket inside `dir`, or attaches to a server that is already running there
    /// (another process of ours, e.g. a CLI command while `serve` runs).
    pub async fn start(dir: &Path, options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bindir = find_bindir().await?;
        let user = service_user()?;
        let dir = prepare_dir(dir, user.as_ref())?;

        // Held until the server is ready (or we attached), so that a concurrent start in
        // another process waits and then attaches instead of racing us.
        let _lock = lock_dir(&dir).await?;
        ensure_cluster(&bindir, &dir, user.as_ref(), options).await?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            match inspect_pid_file(&dir)? {
                Existing::None => {}
                Existing::Running(pid) => match wait_for_foreign(&bindir, &dir, pid).await? {
                    Foreign::Ready => {
                        tracing::debug!(dir = %dir.display(), pid = pid.as_raw(),
                            "attached to the PostgreSQL server already running there");
                        return Ok(Self {
                            dir,
                            postmaster: None,
                            owned: false,
                        });
                    }
                    // It shut down while we watched; look again from scratch.
                    Foreign::Gone if attempt < START_ATTEMPTS => continue,
                    Foreign::Gone => {}
                },
                Existing::Stale { pid, reason } => remove_stale_lock_files(&dir, pid, reason)?,
            }

            match launch(&bindir, &dir, user.as_ref(), options).await? {
                Launch::Started(postmaster) => {
                    tracing::info!(dir = %dir.display(), pid = postmaster.pid().as_raw(),
                        "started PostgreSQL");
                    return Ok(Self {
                        dir,
                        postmaster: Some(postmaster),
                        owned: true,
                    });
                }
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

    /// The directory holding the socket `.s.PGSQL.<port>` (the cluster directory).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// 5432: it only names the socket file; there is no TCP listener.
    pub fn port(&self) -> u16 {
        PORT
    }

    /// The database superuser name, `postgres` (authentication is `trust`).
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// True if this value started the server (and `stop` will stop it).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Stops the server cleanly (fast shutdown: SIGINT to the postmaster, wait for exit) if we
    /// started it; a no-op when attached.
    ///
    /// Waits up to 60 s for the fast shutdown, then escalates to SIGQUIT (immediate shutdown,
    /// which makes the next start run crash recovery) rather than hang forever.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        let Some(postmaster) = self.postmaster.take() else {
            return Ok(());
        };
        let pid = postmaster.pid();
        postmaster.shutdown().await?;
        tracing::info!(dir = %self.dir.display(), pid = pid.as_raw(), "stopped PostgreSQL");
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    /// Asks an owned, still running server to shut down without waiting for it: `drop`
    /// cannot be async, and blocking a runtime thread for seconds would stall other tasks.
    /// Prefer `stop()`, which waits and reports errors.
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster.take() {
            tracing::debug!(dir = %self.dir.display(),
                "EmbeddedPostgres dropped without stop(); asking PostgreSQL to shut down");
            drop(postmaster);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The postmaster child process
// ---------------------------------------------------------------------------------------

/// A postmaster we spawned. Dropping it without `shutdown` sends SIGINT (fast shutdown) and
/// leaves reaping to a helper thread, so that an abandoned start (error, cancelled future,
/// dropped handle) never leaves a server behind.
#[derive(Debug)]
struct Postmaster {
    /// `None` once the process has been reaped: its pid may then belong to someone else.
    child: Option<Child>,
    pid: Pid,
}

impl Postmaster {
    fn new(child: Child) -> Self {
        let pid = pid_from_u32(child.id());
        Self {
            child: Some(child),
            pid,
        }
    }

    fn pid(&self) -> Pid {
        self.pid
    }

    /// Reaps the process if it has exited.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            // ESRCH cannot happen for an unreaped child; anything else is not actionable.
            let _ = kill(self.pid, signal);
        }
    }

    /// Polls for exit until `timeout`; true if the process exited (and was reaped).
    async fn wait_exit(&mut self, timeout: Duration) -> Result<bool, EmbeddedError> {
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
    async fn shutdown(mut self) -> Result<(), EmbeddedError> {
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
async fn spawn_on_spawner_thread(command: Command) -> io::Result<Child> {
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
fn die_with_parent(expected_parent: Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(io::Error::from)?;
    // If the parent died between fork and prctl, the signal will never come: give up now.
    if nix::unistd::getppid() != expected_parent {
        return Err(io::Error::from(Errno::ESRCH));
    }
    Ok(())
}

/// Outcome of one attempt to start a postmaster.
enum Launch {
    Started(Postmaster),
    /// The postmaster exited because another server holds the data directory's lock file.
    LockConflict(EmbeddedError),
}

/// Spawns the postmaster and waits until it accepts connections.
async fn launch(
    bindir: &Path,
    dir: &Path,
    user: Option<&ServiceUser>,
    options: &EmbeddedOptions,
) -> Result<Launch, EmbeddedError> {
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(EmbeddedError::io(format!(
            "could not open the PostgreSQL log {}",
            log_path.display()
        )))?;
    // Only this run's output is inspected for the cause of a failure.
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log.try_clone().map_err(EmbeddedError::io(format!(
        "could not open the PostgreSQL log {}",
        log_path.display()
    )))?;

    let mut command = Command::new(bindir.join("postgres"));
    command
        .arg("-D")
        .arg(dir)
        .arg("-k")
        .arg(dir)
        .arg("-p")
        .arg(PORT.to_string())
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
        ]);
    if !options.durable {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // A service user may not be able to enter our working directory.
        .current_dir("/")
        // Its own process group: Ctrl-C on the terminal reaches only us, and we then
        // shut the database down in order.
        .process_group(0);
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid)
    // and does not allocate, as required between fork and exec.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }

    let child = spawn_on_spawner_thread(command)
        .await
        .map_err(EmbeddedError::io(format!(
            "could not run {}",
            bindir.join("postgres").display()
        )))?;
    let mut postmaster = Postmaster::new(child);

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let exited = postmaster.try_wait().map_err(EmbeddedError::io(
            "could not check on the PostgreSQL process",
        ))?;
        if let Some(status) = exited {
            let output = read_log_since(&log_path, log_start);
            let error = EmbeddedError::ServerExited {
                status,
                log: log_path,
                tail: tail_lines(&output, LOG_TAIL_LINES),
            };
            // PostgreSQL's FATAL for both postmaster.pid and the socket lock file.
            let lock_conflict = output
                .lines()
                .any(|line| line.contains("lock file") && line.contains("already exists"));
            if lock_conflict {
                return Ok(Launch::LockConflict(error));
            }
            return Err(error);
        }
        if pg_isready(bindir, dir).await? {
            return Ok(Launch::Started(postmaster));
        }
        if Instant::now() >= deadline {
            // Dropping `postmaster` asks it to shut down.
            let output = read_log_since(&log_path, log_start);
            return Err(EmbeddedError::StartTimeout {
                log: log_path,
                tail: tail_lines(&output, LOG_TAIL_LINES),
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Whether the server on `dir`'s socket accepts connections.
async fn pg_isready(bindir: &Path, dir: &Path) -> Result<bool, EmbeddedError> {
    let program = bindir.join("pg_isready");
    let status = tokio::process::Command::new(&program)
        .arg("-h")
        .arg(dir)
        .arg("-p")
        .arg(PORT.to_string())
        .args(["-U", SUPERUSER, "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(EmbeddedError::io(format!(
            "could not run {}",
            program.display()
        )))?;
    Ok(status.success())
}

// ---------------------------------------------------------------------------------------
// An existing server, or the remains of one
// ---------------------------------------------------------------------------------------

/// What `postmaster.pid` says about the cluster directory.
enum Existing {
    /// No lock file: nothing runs here.
    None,
    /// A live postgres process that serves this directory.
    Running(Pid),
    /// A lock file left behind by a server that is gone.
    Stale {
        pid: Option<i32>,
        reason: &'static str,
    },
}

fn inspect_pid_file(dir: &Path) -> Result<Existing, EmbeddedError> {
    let path = dir.join("postmaster.pid");
    let contents = match fs::read_to_string(&path) {
        Ok(contents) => contents,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::None),
        Err(e) => {
            return Err(EmbeddedError::io(format!(
                "could not read {}",
                path.display()
            ))(e));
        }
    };
    let Some(pid) = contents
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return Ok(Existing::Stale {
            pid: None,
            reason: "its first line is not a process id",
        });
    };
    let pid = Pid::from_raw(pid);
    if !process_alive(pid) {
        return Ok(Existing::Stale {
            pid: Some(pid.as_raw()),
            reason: "that process no longer exists",
        });
    }
    if !is_postgres_serving(pid, dir) {
        return Ok(Existing::Stale {
            pid: Some(pid.as_raw()),
            reason: "that process id now belongs to an unrelated process",
        });
    }
    Ok(Existing::Running(pid))
}

/// True if `pid` exists and is not a zombie (a zombie no longer holds anything; in a
/// container whose init does not reap, dead servers can linger as zombies).
fn process_alive(pid: Pid) -> bool {
    match kill(pid, None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// True if `pid` is a postgres process whose working directory is `dir` (a postmaster
/// `chdir`s into its data directory, which tells ours apart from another cluster's).
fn is_postgres_serving(pid: Pid, dir: &Path) -> bool {
    let is_postgres = fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "postgres");
    if !is_postgres {
        return false;
    }
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd == dir,
        // Not allowed to look (another user's process, and we are not root): trust the name.
        Err(_) => true,
    }
}

/// Outcome of watching a server started by someone else.
enum Foreign {
    Ready,
    Gone,
}

/// Waits until the server `pid` (started by another process, maybe still starting up)
/// accepts connections, or goes away.
async fn wait_for_foreign(bindir: &Path, dir: &Path, pid: Pid) -> Result<Foreign, EmbeddedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !process_alive(pid) || !is_postgres_serving(pid, dir) {
            return Ok(Foreign::Gone);
        }
        if pg_isready(bindir, dir).await? {
            return Ok(Foreign::Ready);
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::AttachTimeout {
                pid: pid.as_raw(),
                dir: dir.to_path_buf(),
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Removes the lock files of a server that is gone, which PostgreSQL would otherwise
/// refuse to start over when their pid is alive (pid reuse after a crash). The data
/// itself is left alone: PostgreSQL runs crash recovery on start.
fn remove_stale_lock_files(
    dir: &Path,
    pid: Option<i32>,
    reason: &'static str,
) -> Result<(), EmbeddedError> {
    tracing::warn!(dir = %dir.display(), stale_pid = ?pid, reason,
        "PostgreSQL did not shut down cleanly last time; removing its stale lock files, \
         crash recovery will run on start");
    for name in ["postmaster.pid", ".s.PGSQL.5432.lock"] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EmbeddedError::io(format!(
                    "could not remove the stale lock file {}",
                    path.display()
                ))(e));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Binaries, users, directories, initdb
// ---------------------------------------------------------------------------------------

/// Finds the directory of `initdb`, `postgres` and `pg_isready`.
///
/// Debian does not put them on PATH (several major versions can be installed side by
/// side), hence `pg_config` and the `/usr/lib/postgresql/<major>/bin` fallback.
async fn find_bindir() -> Result<PathBuf, EmbeddedError> {
    if let Some(bindir) = std::env::var_os("PG_BINDIR").filter(|v| !v.is_empty()) {
        let bindir = PathBuf::from(bindir);
        if bindir.join("initdb").is_file() {
            return Ok(bindir);
        }
        return Err(EmbeddedError::BadBinDir(bindir));
    }

    let pg_config = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    if let Ok(output) = pg_config
        && output.status.success()
    {
        let bindir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if bindir.join("initdb").is_file() {
            return Ok(bindir);
        }
    }

    highest_versioned_bindir(Path::new("/usr/lib/postgresql"))
        .ok_or(EmbeddedError::BinariesNotFound)
}

/// The `<root>/<version>/bin` with `initdb` and the highest version (numeric order, so
/// 15 beats 9.6).
fn highest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(&entry.file_name())?;
            let bindir = entry.path().join("bin");
            bindir.join("initdb").is_file().then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bindir)| bindir)
}

fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

/// The unprivileged account PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
struct ServiceUser {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// `None` when we are not root: then the server simply runs as us.
fn service_user() -> Result<Option<ServiceUser>, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        let user = User::from_name(name).map_err(EmbeddedError::sys(format!(
            "could not look up the user {name}"
        )))?;
        if let Some(user) = user {
            return Ok(Some(ServiceUser {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            }));
        }
    }
    Err(EmbeddedError::NoServiceUser)
}

/// Creates the cluster directory (mode 0700, owned by the service user) and returns its
/// canonical path, after checking that the socket path fits and that the service user
/// can reach it.
fn prepare_dir(dir: &Path, user: Option<&ServiceUser>) -> Result<PathBuf, EmbeddedError> {
    // Check before creating anything, then again on the canonical path actually used.
    let absolute = std::path::absolute(dir).map_err(EmbeddedError::io(format!(
        "could not resolve the data directory {}",
        dir.display()
    )))?;
    check_socket_path(&absolute)?;

    if let Some(parent) = absolute.parent() {
        fs::create_dir_all(parent).map_err(EmbeddedError::io(format!(
            "could not create {}",
            parent.display()
        )))?;
    }
    let created = match fs::DirBuilder::new().mode(0o700).create(&absolute) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(EmbeddedError::io(format!(
                "could not create the PostgreSQL data directory {}",
                absolute.display()
            ))(e));
        }
    };
    let dir = fs::canonicalize(&absolute).map_err(EmbeddedError::io(format!(
        "could not resolve the data directory {}",
        absolute.display()
    )))?;
    check_socket_path(&dir)?;

    let is_empty = created
        || fs::read_dir(&dir)
            .map_err(EmbeddedError::io(format!(
                "could not list {}",
                dir.display()
            )))?
            .next()
            .is_none();
    if is_empty {
        // PostgreSQL insists on 0700 (or 0750) and on owning the directory. Anything
        // non-empty is left as it is: an existing cluster (PostgreSQL reports any problem
        // with it clearly), or a foreign directory that `ensure_cluster` refuses.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(EmbeddedError::io(
            format!("could not chmod 0700 {}", dir.display()),
        ))?;
        if let Some(user) = user {
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).map_err(
                EmbeddedError::sys(format!(
                    "could not give {} to the {} user",
                    dir.display(),
                    user.name
                )),
            )?;
        }
    }
    if let Some(user) = user {
        check_reachable(&dir, user)?;
    }
    Ok(dir)
}

fn check_socket_path(dir: &Path) -> Result<(), EmbeddedError> {
    let path = dir.join(format!(".s.PGSQL.{PORT}"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(EmbeddedError::SocketPathTooLong { path, len });
    }
    Ok(())
}

/// Checks that every ancestor of `dir` lets the service user through.
///
/// The caller typically creates its data directory (our parent) 0700 as root, which
/// would lock the service user out. Only in that case, the immediate parent owned by
/// root while we are root, do we add o+x: that grants traversal only (no listing, no
/// reading), and the cluster directory itself stays 0700. Anything further up belongs
/// to the administrator, so we explain instead of changing it.
fn check_reachable(dir: &Path, user: &ServiceUser) -> Result<(), EmbeddedError> {
    for (depth, ancestor) in dir.ancestors().skip(1).enumerate() {
        let meta = fs::metadata(ancestor).map_err(EmbeddedError::io(format!(
            "could not inspect {}",
            ancestor.display()
        )))?;
        if traversable(&meta, user) {
            continue;
        }
        if depth == 0 && meta.uid() == 0 {
            let mode = meta.mode() | 0o001;
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode & 0o7777)).map_err(
                EmbeddedError::io(format!("could not chmod o+x {}", ancestor.display())),
            )?;
            tracing::info!(dir = %ancestor.display(),
                "added o+x so that PostgreSQL (user {}) can reach its data directory", user.name);
            continue;
        }
        return Err(EmbeddedError::NotTraversable {
            user: user.name.clone(),
            dir: dir.to_path_buf(),
            blocker: ancestor.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Whether `user` (with only its primary group: supplementary groups are dropped when we
/// switch to it) may search the directory, following the POSIX owner/group/other order.
fn traversable(meta: &fs::Metadata, user: &ServiceUser) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid.as_raw() {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid.as_raw() {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Takes an exclusive advisory lock on the cluster directory, polling until `LOCK_TIMEOUT`.
///
/// This serialises initdb, stale-lock cleanup and startup between processes of ours: a
/// loser waits and then finds a running server to attach to, and can never mistake a
/// just-written `postmaster.pid` for a stale one.
async fn lock_dir(dir: &Path) -> Result<Flock<File>, EmbeddedError> {
    let mut file = File::open(dir).map_err(EmbeddedError::io(format!(
        "could not open {} to lock it",
        dir.display()
    )))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut logged = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((unlocked, Errno::EWOULDBLOCK)) => file = unlocked,
            Err((_, errno)) => {
                return Err(EmbeddedError::sys(format!(
                    "could not lock {}",
                    dir.display()
                ))(errno));
            }
        }
        if !logged {
            tracing::info!(dir = %dir.display(),
                "another process is starting PostgreSQL here; waiting for it");
            logged = true;
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::LockTimeout {
                dir: dir.to_path_buf(),
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Runs initdb unless `dir` already holds a cluster. Never touches a non-empty directory
/// that is not a cluster.
async fn ensure_cluster(
    bindir: &Path,
    dir: &Path,
    user: Option<&ServiceUser>,
    options: &EmbeddedOptions,
) -> Result<(), EmbeddedError> {
    if dir.join("PG_VERSION").exists() {
        return Ok(());
    }
    let mut entries = fs::read_dir(dir).map_err(EmbeddedError::io(format!(
        "could not list {}",
        dir.display()
    )))?;
    if entries.next().is_some() {
        return Err(EmbeddedError::NotACluster(dir.to_path_buf()));
    }

    tracing::info!(dir = %dir.display(), "creating a new PostgreSQL cluster");
    let program = bindir.join("initdb");
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("-D")
        .arg(dir)
        // trust is safe: no TCP listener, and the socket lives in a 0700 directory.
        .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
        .stdin(Stdio::null())
        .current_dir("/")
        .kill_on_drop(true);
    if !options.durable {
        // Skip the final fsync of the new cluster; consistent with fsync=off.
        command.arg("--no-sync");
    }
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let output = command.output().await.map_err(EmbeddedError::io(format!(
        "could not run {}",
        program.display()
    )))?;
    if output.status.success() {
        return Ok(());
    }

    // Leave an empty directory, not a half-made cluster, so the next start retries.
    // Safe under our directory lock, and the directory was empty before initdb.
    if let Err(e) = empty_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e,
            "could not clean up after the failed initdb; empty the directory by hand");
    }
    Err(EmbeddedError::InitdbFailed {
        dir: dir.to_path_buf(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn pid_from_u32(pid: u32) -> Pid {
    // Linux pids fit in i32 (pid_max is at most 2^22).
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// The log written since byte `start` (lossy: the log is for humans).
fn read_log_since(path: &Path, start: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(start).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// Set (to a cluster directory) in a child copy of this test binary; see
    /// `sigkill_child_entry`.
    const CHILD_ENV: &str = "EMBEDDED_PG_TEST_CHILD_DIR";
    const READY_MARKER: &str = "EMBEDDED_PG_CHILD_READY";
    const FAST: EmbeddedOptions = EmbeddedOptions { durable: false };

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("epg")
            .tempdir_in("/tmp")
            .expect("create a temporary directory under /tmp")
    }

    async fn ready(pg: &EmbeddedPostgres) -> bool {
        let bindir = find_bindir().await.expect("PostgreSQL binaries");
        pg_isready(&bindir, pg.socket_dir())
            .await
            .expect("run pg_isready")
    }

    /// Runs one statement with psql and returns its unaligned, tuples-only output.
    async fn psql(pg: &EmbeddedPostgres, sql: &str) -> String {
        let output = tokio::process::Command::new("psql")
            .arg("-h")
            .arg(pg.socket_dir())
            .arg("-p")
            .arg(pg.port().to_string())
            .args([
                "-U",
                pg.user(),
                "-d",
                "postgres",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn postmaster_pid(dir: &Path) -> Pid {
        let contents = fs::read_to_string(dir.join("postmaster.pid")).expect("read postmaster.pid");
        let pid = contents.lines().next().expect("pid line").trim();
        Pid::from_raw(pid.parse().expect("numeric pid"))
    }

    /// Polls `condition` every `POLL_INTERVAL` until it holds or `timeout` passes.
    async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL_INTERVAL).await;
        }
        true
    }

    #[tokio::test]
    async fn start_initialises_an_empty_dir_and_stop_ends_the_server() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        let pg = EmbeddedPostgres::start(&dir, &FAST).await.expect("start");
        assert!(pg.owned());
        assert_eq!(pg.port(), 5432);
        assert_eq!(pg.user(), "postgres");
        assert_eq!(pg.socket_dir(), fs::canonicalize(&dir).unwrap());
        assert!(dir.join("PG_VERSION").is_file());
        assert!(dir.join(".s.PGSQL.5432").exists());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert!(ready(&pg).await);

        let pid = postmaster_pid(&dir);
        pg.stop().await.expect("stop");
        assert!(!process_alive(pid), "the postmaster is gone after stop()");
        assert!(!dir.join("postmaster.pid").exists());
    }

    #[tokio::test]
    async fn restart_reuses_the_cluster() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        let pg = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect("first start");
        psql(&pg, "create table t (x int); insert into t values (42)").await;
        pg.stop().await.expect("stop");

        let pg = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect("second start");
        assert!(pg.owned());
        assert_eq!(psql(&pg, "select x from t").await, "42");
        assert!(psql(&pg, "\\dt").await.contains("|t|table|"));
        pg.stop().await.expect("stop again");
    }

    #[tokio::test]
    async fn a_second_start_attaches_and_its_stop_leaves_the_server_running() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        let first = EmbeddedPostgres::start(&dir, &FAST).await.expect("start");
        let second = EmbeddedPostgres::start(&dir, &FAST).await.expect("attach");
        assert!(first.owned());
        assert!(!second.owned());
        assert_eq!(second.socket_dir(), first.socket_dir());
        second.stop().await.expect("stop the attached handle");
        assert!(ready(&first).await, "the server still runs");
        first.stop().await.expect("stop the owner");
    }

    #[tokio::test]
    async fn concurrent_starts_on_a_fresh_dir_yield_one_server() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        let (a, b) = tokio::join!(
            EmbeddedPostgres::start(&dir, &FAST),
            EmbeddedPostgres::start(&dir, &FAST)
        );
        let (a, b) = (a.expect("start a"), b.expect("start b"));
        assert!(
            a.owned() != b.owned(),
            "exactly one of them started the server"
        );
        assert!(ready(&a).await);
        let (owner, attached) = if a.owned() { (a, b) } else { (b, a) };
        attached.stop().await.expect("stop attached");
        owner.stop().await.expect("stop owner");
    }

    #[tokio::test]
    async fn stale_pid_files_are_recovered() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect("create")
            .stop()
            .await
            .expect("stop");

        // A live but unrelated process (this test) as after a crash and pid reuse, with a
        // stale socket lock too: PostgreSQL itself would refuse to start over these.
        let own = std::process::id();
        let canonical = fs::canonicalize(&dir).unwrap();
        let fake = format!(
            "{own}\n{}\n1700000000\n5432\n{}\n\n0 0\nready   \n",
            canonical.display(),
            canonical.display()
        );
        fs::write(dir.join("postmaster.pid"), &fake).unwrap();
        fs::write(dir.join(".s.PGSQL.5432.lock"), format!("{own}\n")).unwrap();
        let pg = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect("start over a live unrelated pid");
        assert!(pg.owned());
        assert!(ready(&pg).await);
        assert_ne!(postmaster_pid(&dir).as_raw(), own as i32);
        pg.stop().await.expect("stop");

        // A pid that no longer exists.
        let mut exited = Command::new("true").spawn().expect("run true");
        let dead = exited.id();
        exited.wait().unwrap();
        fs::write(dir.join("postmaster.pid"), format!("{dead}\n")).unwrap();
        let pg = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect("start over a dead pid");
        assert!(pg.owned());
        pg.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn a_non_empty_dir_without_a_cluster_is_refused() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("precious.txt"), "keep me").unwrap();
        let error = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect_err("must refuse");
        assert!(matches!(error, EmbeddedError::NotACluster(_)), "{error}");
        assert!(error.to_string().contains("refusing to overwrite"));
        assert_eq!(
            fs::read_to_string(dir.join("precious.txt")).unwrap(),
            "keep me"
        );
        assert!(!dir.join("PG_VERSION").exists());
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o755, "permissions left alone");
        assert_eq!(
            meta.uid(),
            nix::unistd::geteuid().as_raw(),
            "owner left alone"
        );
    }

    #[tokio::test]
    async fn an_unreachable_ancestor_is_named_when_root() {
        let Some(user) = service_user().unwrap() else {
            return; // Only root switches users; otherwise the server runs as us.
        };
        let tmp = scratch();
        let locked = tmp.path().join("locked");
        fs::DirBuilder::new().mode(0o700).create(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
        let dir = locked.join("data").join("pg");
        let error = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect_err("must refuse");
        assert!(
            matches!(error, EmbeddedError::NotTraversable { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("PostgreSQL runs as user {}", user.name)));
        assert!(
            message.contains(&format!("chmod o+x {}", locked.display())),
            "{message}"
        );
        // The grandparent belongs to the administrator: reported, not changed.
        assert_eq!(fs::metadata(&locked).unwrap().mode() & 0o777, 0o700);
    }

    #[tokio::test]
    async fn an_overlong_socket_path_is_refused_before_touching_anything() {
        let tmp = scratch();
        let dir = tmp.path().join("x".repeat(100));
        let error = EmbeddedPostgres::start(&dir, &FAST)
            .await
            .expect_err("must refuse");
        assert!(
            matches!(error, EmbeddedError::SocketPathTooLong { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("shorter --data-dir"));
        assert!(!dir.exists());
    }

    #[test]
    fn versions_sort_numerically() {
        let root = scratch();
        for version in ["9.6", "15", "12"] {
            let bin = root.path().join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("initdb"), "").unwrap();
        }
        fs::create_dir_all(root.path().join("16/bin")).unwrap(); // no initdb: skipped
        assert_eq!(
            highest_versioned_bindir(root.path()),
            Some(root.path().join("15/bin"))
        );
    }

    /// Not a test by itself: when `CHILD_ENV` is set, this is the body of the child
    /// process in `postgres_dies_with_a_sigkilled_parent`. It starts a cluster, reports,
    /// and then waits to be killed.
    #[tokio::test]
    async fn sigkill_child_entry() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let pg = EmbeddedPostgres::start(Path::new(&dir), &FAST)
            .await
            .expect("child start");
        assert!(pg.owned());
        println!("{READY_MARKER}");
        std::future::pending::<()>().await;
    }

    #[tokio::test]
    async fn postgres_dies_with_a_sigkilled_parent() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        // Test names are module paths without the crate name; derived rather than
        // spelled out so that the test survives moving this module.
        let (_crate, module) = module_path!().split_once("::").unwrap();
        let child_test_name = format!("{module}::sigkill_child_entry");
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([child_test_name.as_str(), "--exact", "--nocapture"])
            .env(CHILD_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the test binary as a child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let saw_ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.expect("read child output") {
                if line.contains(READY_MARKER) {
                    return true;
                }
            }
            false
        })
        .await
        .expect("the child reports readiness in time");
        assert!(saw_ready, "the child exited without starting PostgreSQL");

        let pid = postmaster_pid(&dir);
        assert!(process_alive(pid));
        if let Some(user) = service_user().unwrap() {
            // As root: the server runs as the service user with no supplementary groups,
            // so a surviving death signal proves it was set after the uid change.
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert_eq!(
                uid_line.split_whitespace().nth(2),
                Some(user.uid.to_string().as_str()),
                "{uid_line}"
            );
            let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
            assert_eq!(groups.trim(), "Groups:", "supplementary groups are dropped");
        }

        child.start_kill().expect("SIGKILL the child");
        child.wait().await.expect("reap the child");
        assert!(
            eventually(Duration::from_secs(30), || !process_alive(pid)).await,
            "the postmaster {pid} outlived its SIGKILLed parent"
        );
    }
}
