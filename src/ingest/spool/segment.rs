//! Segment files and the spool's directories: creation (owner only, durably), naming and
//! listing, and the one-record files of the quarantine.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::QUARANTINE_DIR;

/// Writes one framed record, as it was in its segment, to `DIR/quarantine/`, fsynced, owner
/// only. The file is a valid one-record segment, so it can be inspected or moved back.
pub(super) fn quarantine_record(
    dir: &Path,
    (segment, index): (u64, usize),
    record: &[u8],
) -> std::io::Result<PathBuf> {
    let quarantine = dir.join(QUARANTINE_DIR);
    make_private_dir(&quarantine)?;
    let path = quarantine.join(format!("segment-{segment:016}-record-{index:06}.spool"));
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => file,
        // The same record, quarantined before a crash kept its segment from being deleted.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(path),
        Err(e) => return Err(e),
    };
    file.write_all(record)?;
    file.sync_all()?;
    File::open(&quarantine)?.sync_all()?;
    Ok(path)
}

/// One segment file as the writer thread sees it. Real segments are files; the tests use one
/// that fails on demand, to prove that no record is acknowledged before its fsync.
pub(super) trait SegmentFile: Send {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Cuts a partially written record off the end.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> std::io::Result<()>;
}

/// Creates a new, empty segment at the given path, durably (directory entry included).
pub(super) type CreateSegment =
    Box<dyn FnMut(&Path) -> std::io::Result<Box<dyn SegmentFile>> + Send>;

impl SegmentFile for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Segments are readable by their owner only: they hold raw bodies and kept headers.
pub(super) fn create_segment_file(path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // Make the new file's directory entry durable too.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(Box::new(file))
}

/// Creates `dir` (and its parents) and makes it 0700, like the key file beside it: what is in
/// it (raw bodies, kept headers) is for this service's user only.
pub(super) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The umask may have narrowed the mode, and an existing folder may be wider.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("segment-{seq:016}.spool"))
}

/// Segment files in `dir`, oldest first.
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(seq) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".spool"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}
