//! What `postmaster.pid` says: nothing runs, a server runs (ours or another process's), or
//! the remains of one that is gone.

use super::*;

/// What `postmaster.pid` says about the cluster directory.
pub(super) enum Existing {
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

pub(super) fn inspect_pid_file(dir: &Path) -> Result<Existing, EmbeddedError> {
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
pub(super) fn process_alive(pid: Pid) -> bool {
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
pub(super) fn is_postgres_serving(pid: Pid, dir: &Path) -> bool {
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
pub(super) enum Foreign {
    Ready,
    Gone,
}

/// Waits until the server `pid` (started by another process, maybe still starting up)
/// accepts connections, or goes away.
pub(super) async fn wait_for_foreign(
    bindir: &Path,
    dir: &Path,
    pid: Pid,
) -> Result<Foreign, EmbeddedError> {
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
pub(super) fn remove_stale_lock_files(
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
