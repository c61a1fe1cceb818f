//! Where a data directory's cluster lives.
//!
//! Normally in `DATA_DIR/pg`. But as root the server runs as `postgres`, which cannot enter a
//! data directory below a private home (`/root` and Debian homes are 0700): the README's
//! quick start, a clone in `~` and `cargo run -- serve`, would fail. Rather than loosen the
//! permissions of the user's own directories, such a cluster lives under
//! `/var/lib/things-receiver/<hash of the data directory>/pg`, and `DATA_DIR/pg.location`
//! records where, so the CLI and later runs find the same cluster whatever changes later.

use sha2::{Digest, Sha256};

use super::*;

/// The file in the data directory naming a cluster that lives elsewhere.
pub const LOCATION_FILE: &str = "pg.location";
/// Where relocated clusters go: a system directory the service user can reach.
const RELOCATED_ROOT: &str = "/var/lib/things-receiver";

/// The cluster directory of a data directory, and whether it lives elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLocation {
    pub dir: PathBuf,
    /// True when the cluster is not `DATA_DIR/pg` (recorded in `DATA_DIR/pg.location`).
    pub relocated: bool,
}

/// Finds (and, the first time, decides) where the cluster of `data_dir` (absolute) lives.
///
/// In order: the place `pg.location` names; `DATA_DIR/pg` when it already holds a cluster
/// or the service user can reach it (or we are not root); else a new place under
/// `/var/lib/things-receiver`, recorded in `pg.location` before anything is created there.
pub fn cluster_location(data_dir: &Path) -> Result<ClusterLocation, EmbeddedError> {
    let marker = data_dir.join(LOCATION_FILE);
    match fs::read_to_string(&marker) {
        Ok(text) => {
            let dir = PathBuf::from(text.trim());
            if !dir.is_absolute() {
                return Err(EmbeddedError::BadLocation(marker));
            }
            return Ok(ClusterLocation {
                dir,
                relocated: true,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(EmbeddedError::io(format!(
                "could not read {}",
                marker.display()
            ))(e));
        }
    }
    let local = data_dir.join("pg");
    let Some(user) = service_user()? else {
        return Ok(ClusterLocation {
            dir: local,
            relocated: false,
        });
    };
    if local.join("PG_VERSION").exists() || reachable_as_is(&local, &user) {
        return Ok(ClusterLocation {
            dir: local,
            relocated: false,
        });
    }

    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let home = Path::new(RELOCATED_ROOT).join(&hex::encode(digest)[..16]);
    let dir = home.join("pg");
    make_relocated_home(&home, &user)?;
    write_durably(&marker, format!("{}\n", dir.display()).as_bytes()).map_err(
        EmbeddedError::io(format!("could not write {}", marker.display())),
    )?;
    tracing::info!(data_dir = %data_dir.display(), cluster = %dir.display(), user = %user.name,
        "the data directory is not reachable by the PostgreSQL user; the cluster lives \
         elsewhere, recorded in {LOCATION_FILE}");
    Ok(ClusterLocation {
        dir,
        relocated: true,
    })
}

/// Whether `dir` (not yet created, maybe) would be reachable by `user` without changing any
/// permission but the one `check_reachable` changes itself (o+x on a root-owned parent).
fn reachable_as_is(dir: &Path, user: &ServiceUser) -> bool {
    for (depth, ancestor) in dir.ancestors().skip(1).enumerate() {
        let Ok(meta) = fs::metadata(ancestor) else {
            // Not there yet: we create it, reachable.
            continue;
        };
        if !(traversable(&meta, user) || depth == 0 && meta.uid() == 0) {
            return false;
        }
    }
    true
}

/// `/var/lib/things-receiver` (0755, root) and `<hash>` in it (0700, the service user's).
fn make_relocated_home(home: &Path, user: &ServiceUser) -> Result<(), EmbeddedError> {
    let root = Path::new(RELOCATED_ROOT);
    fs::create_dir_all(root).map_err(EmbeddedError::io(format!(
        "could not create {}",
        root.display()
    )))?;
    match fs::DirBuilder::new().mode(0o700).create(home) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(EmbeddedError::io(format!(
                "could not create {}",
                home.display()
            ))(e));
        }
    }
    fs::set_permissions(home, fs::Permissions::from_mode(0o700)).map_err(EmbeddedError::io(
        format!("could not chmod 0700 {}", home.display()),
    ))?;
    nix::unistd::chown(home, Some(user.uid), Some(user.gid)).map_err(EmbeddedError::sys(format!(
        "could not give {} to the {} user",
        home.display(),
        user.name
    )))
}

/// Writes `path` through a temporary file, fsynced, renamed, directory fsynced: a crash
/// leaves the old contents or the new, never a torn location.
fn write_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("location.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
