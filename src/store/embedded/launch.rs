//! Starting a postmaster: the binaries, the options it runs with, and waiting until it
//! accepts connections.

use super::*;

/// How to run the embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// false only for tests: fsync=off, synchronous_commit=off, full_page_writes=off for speed.
    pub durable: bool,
}

/// Outcome of one attempt to start a postmaster.
pub(super) enum Launch {
    Started(Postmaster),
    /// The postmaster exited because another server holds the data directory's lock file.
    LockConflict(EmbeddedError),
}

/// Spawns the postmaster and waits until it accepts connections.
pub(super) async fn launch(
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
pub(super) async fn pg_isready(bindir: &Path, dir: &Path) -> Result<bool, EmbeddedError> {
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

/// Finds the directory of `initdb`, `postgres` and `pg_isready`.
///
/// Debian does not put them on PATH (several major versions can be installed side by
/// side), hence `pg_config` and the `/usr/lib/postgresql/<major>/bin` fallback.
pub(super) async fn find_bindir() -> Result<PathBuf, EmbeddedError> {
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
pub(super) fn highest_versioned_bindir(root: &Path) -> Option<PathBuf> {
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

pub(super) fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}
