//! The cluster directory: the service user, creation, ownership and permissions, reachability,
//! the advisory lock that serialises starts, and initdb.

use super::*;

/// The unprivileged account PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
pub(super) struct ServiceUser {
    pub(super) name: String,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
}

/// `None` when we are not root: then the server simply runs as us.
pub(super) fn service_user() -> Result<Option<ServiceUser>, EmbeddedError> {
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
pub(super) fn prepare_dir(
    dir: &Path,
    user: Option<&ServiceUser>,
) -> Result<PathBuf, EmbeddedError> {
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

pub(super) fn check_socket_path(dir: &Path) -> Result<(), EmbeddedError> {
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
pub(super) fn check_reachable(dir: &Path, user: &ServiceUser) -> Result<(), EmbeddedError> {
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
pub(super) fn traversable(meta: &fs::Metadata, user: &ServiceUser) -> bool {
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
pub(super) async fn lock_dir(dir: &Path) -> Result<Flock<File>, EmbeddedError> {
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
pub(super) async fn ensure_cluster(
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

pub(super) fn empty_dir(dir: &Path) -> io::Result<()> {
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
