use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::Bytes;
use chrono::DateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::append::AppendState;
use super::record::{HEADER_LEN, encode, frame, read_segment};
use super::segment::{SegmentFile, quarantine_record, segment_path, segments};
use super::{Command, Shared, Spool, SpoolError};
use crate::ingest::delivery::{DeviceDoor, RawDelivery, Sender};
use crate::token::Token;

fn raw(n: u8) -> RawDelivery {
    let sender = match n % 4 {
        0 | 1 => Sender::Destination {
            id: Uuid::new_v4(),
            bind_plug: n.is_multiple_of(2).then(Uuid::new_v4),
        },
        k => Sender::Device {
            key_id: Uuid::new_v4(),
            urn_key: format!("urn:dev:imei:35{n:013}:"),
            door: if k == 2 {
                DeviceDoor::M2m
            } else {
                DeviceDoor::Ip
            },
        },
    };
    RawDelivery {
        sender,
        token: Token([n; 32]),
        received_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
        body: Bytes::from(format!(r#"[{{"n":"x","v":{n}}}]"#)),
        headers: [("device-type".to_owned(), "x".to_owned())].into(),
    }
}

fn same(a: &RawDelivery, b: &RawDelivery) -> bool {
    a.sender == b.sender
        && a.token == b.token
        && a.received_at == b.received_at
        && a.body == b.body
        && a.headers == b.headers
}

#[tokio::test]
async fn appends_survive_reopen_and_a_torn_tail_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let records: Vec<RawDelivery> = (0..5).map(raw).collect();
    for r in &records {
        spool.append(r).await.unwrap();
    }
    assert_eq!(spool.depth().0, 5);
    spool.seal().await;

    // A crash mid-append leaves half a record at the end of the segment.
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    let torn = frame(&encode(&raw(9)));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(file);

    let read = read_segment(&path).unwrap();
    assert_eq!(read.len(), 5);
    assert!(read.iter().zip(&records).all(|(a, b)| same(a, b)));

    // A flipped byte inside a record is caught by the checksum.
    let mut bytes = std::fs::read(&path).unwrap();
    let second = frame(&encode(&records[0])).len() + HEADER_LEN + 3;
    bytes[second] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(read_segment(&path).unwrap().len(), 1);

    let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(reopened.depth().0, 1);
}

#[tokio::test]
async fn a_full_spool_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let one = frame(&encode(&raw(1))).len() as u64;
    let spool = Spool::open(dir.path(), one * 2).unwrap();
    // Records of one size (raw(n) for n % 4 == 1 is a destination delivery without a plug).
    spool.append(&raw(1)).await.unwrap();
    spool.append(&raw(5)).await.unwrap();
    assert!(matches!(
        spool.append(&raw(9)).await,
        Err(SpoolError::Full(_))
    ));
    assert_eq!(spool.depth().0, 2);
}

/// A file system that remembers what each segment holds and what of it was last synced,
/// and fails the n-th append or the n-th sync (counted over all files).
#[derive(Default)]
struct FaultFs {
    files: Vec<(Vec<u8>, Vec<u8>)>,
    appends: usize,
    syncs: usize,
    fail_append: Option<usize>,
    fail_sync: Option<usize>,
}

struct FaultFile {
    fs: Arc<std::sync::Mutex<FaultFs>>,
    index: usize,
}

impl SegmentFile for FaultFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut fs = self.fs.lock().unwrap();
        fs.appends += 1;
        let index = self.index;
        if fs.fail_append == Some(fs.appends) {
            // A short write, as on a full disk.
            fs.files[index]
                .0
                .extend_from_slice(&bytes[..bytes.len() / 2]);
            return Err(std::io::Error::other("injected write failure"));
        }
        fs.files[index].0.extend_from_slice(bytes);
        Ok(())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.fs.lock().unwrap().files[self.index]
            .0
            .truncate(len as usize);
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        let mut fs = self.fs.lock().unwrap();
        fs.syncs += 1;
        if fs.fail_sync == Some(fs.syncs) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        let index = self.index;
        fs.files[index].1 = fs.files[index].0.clone();
        Ok(())
    }
}

fn fault_state(fs: &Arc<std::sync::Mutex<FaultFs>>, segment_max: u64) -> AppendState {
    let shared = Arc::new(Shared {
        dir: PathBuf::from("/nonexistent"),
        max_bytes: u64::MAX,
        bytes: AtomicU64::new(0),
        records: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        refused_len: AtomicU64::new(0),
    });
    let fs = fs.clone();
    AppendState {
        shared,
        create: Box::new(move |_| {
            let mut state = fs.lock().unwrap();
            state.files.push(Default::default());
            let index = state.files.len() - 1;
            Ok(Box::new(FaultFile {
                fs: fs.clone(),
                index,
            }))
        }),
        segment_max,
        next_segment: 1,
        open: None,
    }
}

/// Every append answered Ok is, byte for byte, in what an fsync made durable, whatever
/// write or fsync fails in the group: with rotations inside the group, a seal in its
/// middle, and failures at every position in turn.
#[test]
fn no_append_is_acknowledged_before_its_own_fsync() {
    let records: Vec<Vec<u8>> = (0..7).map(|n| frame(&encode(&raw(n)))).collect();
    // Two records per segment, so the group rotates.
    let segment_max = (records[0].len() * 2) as u64;
    let mut failures_seen = 0;
    for fault in 0..=(2 * 12) {
        let fs = Arc::new(std::sync::Mutex::new(FaultFs::default()));
        {
            let mut fs = fs.lock().unwrap();
            match fault {
                0 => {}
                n if n <= 12 => fs.fail_append = Some(n),
                n => fs.fail_sync = Some(n - 12),
            }
        }
        let mut state = fault_state(&fs, segment_max);
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for (n, record) in records.iter().enumerate() {
            if n == 3 {
                let (reply, _answer) = oneshot::channel();
                batch.push(Command::Seal { reply });
            }
            let (reply, answer) = oneshot::channel();
            batch.push(Command::Append {
                record: record.clone(),
                reply,
            });
            answers.push(answer);
        }
        state.group(batch);
        let fs = fs.lock().unwrap();
        let mut acked = 0;
        for (record, mut answer) in records.iter().zip(answers) {
            match answer
                .try_recv()
                .expect("every append is answered in its group")
            {
                Ok(()) => {
                    acked += 1;
                    let durable = fs.files.iter().any(|(_, synced)| {
                        synced.windows(record.len()).any(|w| w == record.as_slice())
                    });
                    assert!(durable, "fault {fault}: a record was acknowledged unsynced");
                }
                Err(_) => failures_seen += 1,
            }
        }
        if fault == 0 {
            assert_eq!(
                acked,
                records.len(),
                "without faults everything is acknowledged"
            );
        }
    }
    assert!(failures_seen > 0, "the injected faults were hit");
}

#[tokio::test]
async fn spool_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("spool");
    // As an earlier version left it: a world-readable folder and segment.
    std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = segment_path(&dir, 1);
    std::fs::write(&old, frame(&encode(&raw(1)))).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();

    let spool = Spool::open(&dir, 1 << 20).unwrap();
    spool.append(&raw(2)).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let segments = segments(&dir).unwrap();
    assert_eq!(segments.len(), 2);
    for (_, path) in segments {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let quarantined = quarantine_record(&dir, (1, 0), &frame(&encode(&raw(3)))).unwrap();
    assert_eq!(mode(&quarantined), 0o600);
    assert_eq!(mode(quarantined.parent().unwrap()), 0o700);
    assert_eq!(read_segment(&quarantined).unwrap().len(), 1);
}

/// A spool written by a version that knew only destination deliveries (format 1) still
/// replays after an upgrade, and destination deliveries are still written in it, so that
/// a spool replays after a rollback too.
#[test]
fn a_record_of_the_first_format_still_reads_and_is_still_written() {
    let id = Uuid::new_v4();
    let plug = Uuid::new_v4();
    let headers = br#"{"a":"b"}"#;
    let body = br#"[{"bn":"urn:dev:IMEI:1:","n":"t","v":1}]"#;
    let mut payload = vec![1u8];
    payload.extend_from_slice(id.as_bytes());
    payload.push(1);
    payload.extend_from_slice(plug.as_bytes());
    payload.extend_from_slice(&[5; 32]);
    payload.extend_from_slice(&1_700_000_000_000_000i64.to_le_bytes());
    payload.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    payload.extend_from_slice(headers);
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.extend_from_slice(body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.seg");
    std::fs::write(&path, frame(&payload)).unwrap();

    let read = read_segment(&path).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0].sender,
        Sender::Destination {
            id,
            bind_plug: Some(plug)
        }
    );
    assert_eq!(read[0].token, Token([5; 32]));
    assert_eq!(&read[0].body[..], &body[..]);
    assert_eq!(read[0].headers.get("a").map(String::as_str), Some("b"));
    assert_eq!(
        encode(&read[0]),
        payload,
        "written byte for byte as format 1"
    );
}
