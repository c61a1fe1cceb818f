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

mod cluster_dir;
mod error;
mod launch;
mod location;
mod pid_file;
mod spawner;
mod supervisor;

pub use error::EmbeddedError;
pub use launch::EmbeddedOptions;
pub use location::{ClusterLocation, LOCATION_FILE, cluster_location};

use cluster_dir::*;
use launch::*;
use pid_file::*;
use spawner::*;
use supervisor::*;

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

/// A PostgreSQL server on a private Unix socket in a cluster directory, either started by
/// this value (`owned()`) or already running there and merely attached to.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    /// `Some` while we own a postmaster that has not been stopped: the thread that holds it.
    supervisor: Option<Supervisor>,
    owned: bool,
}

impl EmbeddedPostgres {
    /// Initialises the cluster in `dir` if it has none (initdb), then starts a server on a
    /// Unix socket inside `dir`, or attaches to a server that is already running there
    /// (another process of ours, e.g. a CLI command while `serve` runs).
    ///
    /// A server started here is supervised for as long as this value lives: if it dies, it
    /// is reaped and started again (see `supervisor`).
    pub async fn start(dir: &Path, options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bindir = find_bindir().await?;
        let user = service_user()?;
        let dir = prepare_dir(dir, user.as_ref())?;
        let cluster = Cluster {
            bindir,
            dir: dir.clone(),
            user,
            options: options.clone(),
        };
        match cluster.start_or_attach().await? {
            Some(postmaster) => {
                tracing::info!(dir = %dir.display(), pid = postmaster.pid().as_raw(),
                    "started PostgreSQL");
                let supervisor = Supervisor::spawn(cluster, postmaster).map_err(
                    EmbeddedError::io("could not start the PostgreSQL supervisor thread"),
                )?;
                Ok(Self {
                    dir,
                    supervisor: Some(supervisor),
                    owned: true,
                })
            }
            None => Ok(Self {
                dir,
                supervisor: None,
                owned: false,
            }),
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
        let Some(supervisor) = self.supervisor.take() else {
            return Ok(());
        };
        if let Some(pid) = supervisor.stop().await? {
            tracing::info!(dir = %self.dir.display(), pid = pid.as_raw(), "stopped PostgreSQL");
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    /// Asks an owned, still running server to shut down without waiting for it: `drop`
    /// cannot be async, and blocking a runtime thread for seconds would stall other tasks.
    /// Prefer `stop()`, which waits and reports errors.
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            tracing::debug!(dir = %self.dir.display(),
                "EmbeddedPostgres dropped without stop(); asking PostgreSQL to shut down");
            drop(supervisor);
        }
    }
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
    async fn a_killed_postmaster_is_reaped_and_started_again() {
        let tmp = scratch();
        let dir = tmp.path().join("pg");
        let pg = EmbeddedPostgres::start(&dir, &FAST).await.expect("start");
        psql(&pg, "create table t (x int); insert into t values (7)").await;
        // The test cluster runs with synchronous_commit=off: make the row crash-safe.
        psql(&pg, "checkpoint").await;
        let killed = postmaster_pid(&dir);
        kill(killed, Signal::SIGKILL).expect("SIGKILL the postmaster");
        let started = Instant::now();
        // Reaped: not even a zombie is left holding the pid.
        assert!(
            eventually(Duration::from_secs(2), || {
                !Path::new(&format!("/proc/{killed}")).exists()
            })
            .await,
            "the dead postmaster {killed} was not reaped within 2 s"
        );
        assert!(
            eventually(Duration::from_secs(60), || {
                dir.join("postmaster.pid").exists() && postmaster_pid(&dir) != killed
            })
            .await,
            "no new postmaster"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(&pg).await {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            sleep(POLL_INTERVAL).await;
        }
        eprintln!("PostgreSQL back after {:?}", started.elapsed());
        assert_eq!(psql(&pg, "select x from t").await, "7");
        let again = postmaster_pid(&dir);
        pg.stop().await.expect("stop");
        assert!(!process_alive(again), "stop() stops the restarted server");
        assert!(!dir.join("postmaster.pid").exists());
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
