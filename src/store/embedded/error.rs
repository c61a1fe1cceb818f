//! What can go wrong while starting or stopping the embedded server.

use super::*;

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

    #[error(
        "{0} does not name an absolute directory: write the cluster's path into it, or \
         remove it if the cluster is in DATA_DIR/pg"
    )]
    BadLocation(PathBuf),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl EmbeddedError {
    /// Wraps an I/O error with what we were doing, for `map_err`.
    pub(super) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// Wraps a system call error with what we were doing, for `map_err`.
    pub(super) fn sys(context: impl Into<String>) -> impl FnOnce(Errno) -> Self {
        let context = context.into();
        move |errno| Self::Io {
            context,
            source: io::Error::from(errno),
        }
    }
}
