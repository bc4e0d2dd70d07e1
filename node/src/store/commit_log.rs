//! The commit log: the durable step of a commit is one append and one `fdatasync` of a
//! checksummed record here, so the redb commit that follows need not sync (see `redb_store.rs`).
//!
//! File layout: the 8-byte magic `CAIRNLG2`, then records `[u32 LE payload length][u32 LE
//! CRC-32 of payload][payload]`, the payload a postcard [`Record`]. Replay reads records in
//! order and stops at the first one that is incomplete, over `LOG_RECORD_BYTES_MAX` or fails its
//! checksum: that is a torn tail (a crash during an append that was never acknowledged), and
//! the file is cut there so the next append follows the last good record.
//!
//! A `CAIRNLG1` log (written before records carried `removes`) is replayed with the old record
//! shape, so an upgrade never strands acknowledged commits; it takes no appends until
//! [`CommitLog::truncate`] rewrites it as `CAIRNLG2` (the store does so right after replay).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;

use super::{Batch, StoreError};
use crate::limits::LOG_RECORD_BYTES_MAX;

/// First bytes of every commit log; another file is refused rather than misread.
const MAGIC: &[u8; 8] = b"CAIRNLG2";
/// First bytes of a log whose records have no `removes` ([`RecordV1`]).
const MAGIC_V1: &[u8; 8] = b"CAIRNLG1";
/// Bytes before each payload: length and checksum.
const RECORD_HEADER_BYTES: usize = 8;

/// One logged [`Batch`], borrowing its bytes (nothing is copied to encode or to replay it).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    /// (key, encoded object) pairs.
    #[serde(borrow)]
    pub puts: Vec<(&'a Bytes, &'a Bytes)>,
    /// (target node, key, renewal sequence) of hints added or renewed.
    #[serde(borrow)]
    pub hints_put: Vec<(u64, &'a Bytes, u64)>,
    /// (target node, key) of hints deleted.
    #[serde(borrow)]
    pub hints_remove: Vec<(u64, &'a Bytes)>,
    /// (node, epoch, lease_end), if the metadata changed.
    pub meta: Option<(u64, u64, u64)>,
    /// Keys whose object is removed.
    #[serde(borrow)]
    pub removes: Vec<&'a Bytes>,
}

/// A record of a `CAIRNLG1` log: [`Record`] before `removes` existed (postcard is not
/// self-describing, so the old shape must be decoded as such).
#[derive(Debug, Deserialize)]
struct RecordV1<'a> {
    #[serde(borrow)]
    puts: Vec<(&'a Bytes, &'a Bytes)>,
    #[serde(borrow)]
    hints_put: Vec<(u64, &'a Bytes, u64)>,
    #[serde(borrow)]
    hints_remove: Vec<(u64, &'a Bytes)>,
    meta: Option<(u64, u64, u64)>,
}

impl<'a> From<RecordV1<'a>> for Record<'a> {
    fn from(r: RecordV1<'a>) -> Record<'a> {
        Record {
            puts: r.puts,
            hints_put: r.hints_put,
            hints_remove: r.hints_remove,
            meta: r.meta,
            removes: Vec::new(),
        }
    }
}

impl<'a> Record<'a> {
    /// The record of `batch`.
    pub fn of(batch: &'a Batch) -> Record<'a> {
        Record {
            puts: batch
                .puts
                .iter()
                .map(|(k, v)| (Bytes::new(k), Bytes::new(v)))
                .collect(),
            hints_put: batch
                .hints_put
                .iter()
                .map(|h| (h.target.0, Bytes::new(&h.key), h.seq))
                .collect(),
            hints_remove: batch
                .hints_remove
                .iter()
                .map(|(t, k)| (t.0, Bytes::new(k)))
                .collect(),
            meta: batch.meta.map(|m| (m.node.0, m.epoch, m.lease_end)),
            removes: batch.removes.iter().map(|k| Bytes::new(k)).collect(),
        }
    }

    /// The record as it is appended: header and payload.
    pub fn frame(&self) -> Vec<u8> {
        let mut buf = postcard::to_extend(self, vec![0u8; RECORD_HEADER_BYTES])
            .expect("encoding a record into a Vec cannot fail");
        let len = (buf.len() - RECORD_HEADER_BYTES) as u32;
        let crc = crc32fast::hash(&buf[RECORD_HEADER_BYTES..]);
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf
    }
}

/// What replaying a log found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Whole records applied.
    pub records: u64,
    /// Bytes of a torn or corrupt tail that were cut off (0: the log ended cleanly).
    pub torn_bytes: u64,
}

/// The open log file, positioned at its end.
#[derive(Debug)]
pub struct CommitLog {
    file: File,
    /// Bytes in the file, header included.
    len: u64,
    /// The file is a `CAIRNLG1` log: appends are refused until `truncate` rewrites it.
    legacy: bool,
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

impl CommitLog {
    /// Opens (creating if needed) the log at `path`, calls `apply` for each whole record in
    /// order, and cuts a torn tail off. A record `apply` refuses stops the open with its error.
    pub fn open(
        path: &Path,
        apply: &mut dyn FnMut(Record<'_>) -> Result<(), StoreError>,
    ) -> Result<(CommitLog, Replayed), StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| open_err(e.to_string()))?;
        if !existed {
            // The new file's directory entry must survive a crash like the records in it.
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| open_err(format!("cannot sync its directory: {e}")))?;
            }
        }
        let file_len = file.metadata().map_err(|e| open_err(e.to_string()))?.len();
        let mut replayed = Replayed::default();
        let mut good = MAGIC.len() as u64;
        let mut legacy = false;
        if file_len < good {
            // New, or torn while its header was written: nothing in it was ever acknowledged.
            replayed.torn_bytes = file_len;
            file.set_len(0).map_err(|e| open_err(e.to_string()))?;
            file.write_all(MAGIC).map_err(|e| open_err(e.to_string()))?;
            file.sync_data().map_err(|e| open_err(e.to_string()))?;
        } else {
            let mut reader = BufReader::new(&mut file);
            let mut magic = [0u8; 8];
            reader
                .read_exact(&mut magic)
                .map_err(|e| open_err(e.to_string()))?;
            legacy = &magic == MAGIC_V1;
            if &magic != MAGIC && !legacy {
                return Err(open_err(format!(
                    "not a Cairn commit log (starts with {magic:02x?}, expected {MAGIC:02x?})"
                )));
            }
            let mut payload = Vec::new();
            while let Some(len) = next_record(&mut reader, &mut payload, file_len - good)
                .map_err(|e| open_err(e.to_string()))?
            {
                let decoded = if legacy {
                    postcard::from_bytes::<RecordV1<'_>>(&payload).map(Record::from)
                } else {
                    postcard::from_bytes::<Record<'_>>(&payload)
                };
                let record = decoded.map_err(|e| {
                    open_err(format!(
                        "record at byte {good} passed its checksum but does not decode: {e}"
                    ))
                })?;
                apply(record)?;
                replayed.records += 1;
                good += len;
            }
            replayed.torn_bytes = file_len - good;
            if replayed.torn_bytes > 0 {
                file.set_len(good).map_err(|e| open_err(e.to_string()))?;
                file.sync_data().map_err(|e| open_err(e.to_string()))?;
            }
        }
        file.seek(SeekFrom::Start(good))
            .map_err(|e| open_err(e.to_string()))?;
        Ok((
            CommitLog {
                file,
                len: good,
                legacy,
            },
            replayed,
        ))
    }

    /// Appends one framed record and makes it durable (`fdatasync`) before returning.
    pub fn append(&mut self, frame: &[u8]) -> Result<(), StoreError> {
        if self.legacy {
            // A new record after old-shape ones would be misread by the next replay.
            return Err(StoreError::Io {
                op: "append to log",
                reason: "the log is in the old CAIRNLG1 format; it must be replayed and \
                         truncated first"
                    .into(),
            });
        }
        self.file.write_all(frame).map_err(io("append to log"))?;
        self.file.sync_data().map_err(io("sync log"))?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// Cuts off whatever a failed append left after the last whole record (a torn record, or
    /// a whole one whose sync failed: neither was acknowledged) and positions the next append
    /// there, durably.
    pub fn repair(&mut self) -> Result<(), StoreError> {
        self.file.set_len(self.len).map_err(io("repair log"))?;
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(io("repair log"))?;
        self.file.sync_data().map_err(io("sync log"))
    }

    /// Empties the log (keeping its header), durably. Only after every logged record is
    /// durable elsewhere.
    pub fn truncate(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(MAGIC.len() as u64)
            .map_err(io("truncate log"))?;
        if self.legacy {
            // Rewritten as the current format, so appends may follow.
            self.file
                .seek(SeekFrom::Start(0))
                .and_then(|_| self.file.write_all(MAGIC))
                .map_err(io("truncate log"))?;
        }
        self.file
            .seek(SeekFrom::Start(MAGIC.len() as u64))
            .map_err(io("truncate log"))?;
        self.file.sync_data().map_err(io("sync log"))?;
        self.len = MAGIC.len() as u64;
        self.legacy = false;
        Ok(())
    }

    /// Bytes in the log file, header included.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Reads the next whole, intact record's payload into `payload` and returns the record's size
/// on disk, or `None` at the end of the log or at a torn or corrupt tail. `left` is how many
/// bytes the file holds from here.
fn next_record(
    reader: &mut impl Read,
    payload: &mut Vec<u8>,
    left: u64,
) -> std::io::Result<Option<u64>> {
    if left < RECORD_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut header = [0u8; RECORD_HEADER_BYTES];
    reader.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    // Checked before allocating: a torn length field can say anything.
    if len > LOG_RECORD_BYTES_MAX as u64 || len > left - RECORD_HEADER_BYTES as u64 {
        return Ok(None);
    }
    payload.resize(len as usize, 0);
    reader.read_exact(payload)?;
    if crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    Ok(Some(RECORD_HEADER_BYTES as u64 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Hint, NodeMeta};
    use cairn_proto::NodeId;

    /// Owned copy of a replayed record, for comparing.
    type Owned = (
        Vec<(Vec<u8>, Vec<u8>)>,
        Vec<(u64, Vec<u8>, u64)>,
        Vec<(u64, Vec<u8>)>,
        Option<(u64, u64, u64)>,
        Vec<Vec<u8>>,
    );

    fn own(r: Record<'_>) -> Owned {
        (
            r.puts
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            r.hints_put
                .iter()
                .map(|(t, k, s)| (*t, k.to_vec(), *s))
                .collect(),
            r.hints_remove
                .iter()
                .map(|(t, k)| (*t, k.to_vec()))
                .collect(),
            r.meta,
            r.removes.iter().map(|k| k.to_vec()).collect(),
        )
    }

    fn batch(n: u8) -> Batch {
        Batch {
            puts: vec![(vec![b'k', n], vec![n; 100 + n as usize])],
            hints_put: vec![Hint {
                target: NodeId(2),
                key: vec![b'k', n],
                seq: n as u64,
            }],
            hints_remove: vec![(NodeId(3), vec![n])],
            meta: (n % 2 == 0).then_some(NodeMeta {
                node: NodeId(1),
                epoch: 7,
                lease_end: n as u64 * 1000,
            }),
            removes: vec![vec![b'r', n]],
        }
    }

    fn replay(path: &Path) -> (CommitLog, Replayed, Vec<Owned>) {
        let mut seen = Vec::new();
        let (log, replayed) = CommitLog::open(path, &mut |r| {
            seen.push(own(r));
            Ok(())
        })
        .unwrap();
        (log, replayed, seen)
    }

    fn expected(ns: std::ops::Range<u8>) -> Vec<Owned> {
        ns.map(|n| {
            let b = batch(n);
            own(Record::of(&b))
        })
        .collect()
    }

    #[test]
    fn appended_records_replay_in_order_and_truncate_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, replayed, seen) = replay(&path);
        assert_eq!((replayed, seen.len()), (Replayed::default(), 0));
        for n in 0..5 {
            log.append(&Record::of(&batch(n)).frame()).unwrap();
        }
        drop(log);
        let (mut log, replayed, seen) = replay(&path);
        assert_eq!(replayed.records, 5);
        assert_eq!(replayed.torn_bytes, 0);
        assert_eq!(seen, expected(0..5));
        // Appends after a replay follow the last record.
        log.append(&Record::of(&batch(5)).frame()).unwrap();
        drop(log);
        let (mut log, _, seen) = replay(&path);
        assert_eq!(seen, expected(0..6));
        log.truncate().unwrap();
        log.append(&Record::of(&batch(9)).frame()).unwrap();
        drop(log);
        assert_eq!(replay(&path).2, expected(9..10));
    }

    /// A crash at any byte of an append leaves the records before it, whole, and nothing of it;
    /// the next append after the replay is found too.
    #[test]
    fn a_tail_torn_at_any_byte_is_cut_off_and_the_records_before_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _, _) = replay(&path);
        for n in 0..3 {
            log.append(&Record::of(&batch(n)).frame()).unwrap();
        }
        let whole = log.len();
        drop(log);
        let last = Record::of(&batch(3)).frame();
        let full = std::fs::read(&path).unwrap();
        for cut in 0..last.len() {
            let mut bytes = full.clone();
            bytes.extend_from_slice(&last[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            let (mut log, replayed, seen) = replay(&path);
            assert_eq!(seen, expected(0..3), "cut at {cut}");
            assert_eq!(replayed.torn_bytes, cut as u64, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            log.append(&Record::of(&batch(4)).frame()).unwrap();
            drop(log);
            let mut want = expected(0..3);
            want.extend(expected(4..5));
            assert_eq!(replay(&path).2, want, "cut at {cut}");
            std::fs::write(&path, &full).unwrap();
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _, _) = replay(&path);
        let mut offsets = Vec::new();
        for n in 0..3 {
            offsets.push(log.len());
            log.append(&Record::of(&batch(n)).frame()).unwrap();
        }
        drop(log);
        // A flipped payload byte in the second record: its checksum fails.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] as usize + RECORD_HEADER_BYTES + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, replayed, seen) = replay(&path);
        assert_eq!(seen, expected(0..1));
        assert_eq!(replayed.torn_bytes, bytes.len() as u64 - offsets[1]);
        // A length field beyond the limit is a torn tail too, not an allocation.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, replayed, seen) = replay(&path);
        assert_eq!(seen, expected(0..1));
        assert_eq!(replayed.torn_bytes, 72);
    }

    #[test]
    fn a_file_that_is_not_a_commit_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"something else entirely").unwrap();
        let err = CommitLog::open(&path, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("not a Cairn commit log"), "{err}");
    }

    /// A log the previous binary wrote (magic `CAIRNLG1`, records without `removes`) replays
    /// whole, refuses appends until truncated, and is then a current log.
    #[test]
    fn an_old_format_log_is_replayed_then_rewritten_as_the_current_format() {
        #[derive(Serialize)]
        struct OldRecord<'a> {
            puts: Vec<(&'a Bytes, &'a Bytes)>,
            hints_put: Vec<(u64, &'a Bytes, u64)>,
            hints_remove: Vec<(u64, &'a Bytes)>,
            meta: Option<(u64, u64, u64)>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let old = OldRecord {
            puts: vec![(Bytes::new(b"k"), Bytes::new(b"v"))],
            hints_put: vec![(2, Bytes::new(b"k"), 5)],
            hints_remove: vec![],
            meta: Some((1, 7, 9)),
        };
        let payload = postcard::to_allocvec(&old).unwrap();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, &bytes).unwrap();

        let (mut log, replayed, seen) = replay(&path);
        assert_eq!(replayed.records, 1);
        assert_eq!(
            seen,
            vec![(
                vec![(b"k".to_vec(), b"v".to_vec())],
                vec![(2, b"k".to_vec(), 5)],
                vec![],
                Some((1, 7, 9)),
                vec![],
            )]
        );
        let frame = Record::of(&batch(1)).frame();
        assert!(log.append(&frame).is_err(), "no new record after old ones");
        log.truncate().unwrap();
        log.append(&frame).unwrap();
        drop(log);
        assert_eq!(&std::fs::read(&path).unwrap()[..8], MAGIC);
        assert_eq!(replay(&path).2, expected(1..2));
    }
}
