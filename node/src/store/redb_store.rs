//! The redb-backed store: one database file per node with `objects`, `key_hashes`, `hints` and
//! `meta` tables, behind a commit log that makes each commit durable with one append and one
//! `fdatasync`.
//!
//! A commit appends the batch to the log (`commit_log.rs`) and syncs it — from then on it is
//! durable and may be acknowledged. Its objects then wait in memory (`Pending`), where readers
//! see them at once, and reach redb together with later batches' in one transaction: every
//! `PENDING_BYTES_MAX` bytes with `Durability::None`, which writes redb's pages but does not
//! sync them (redb's documented pattern for many cheap commits), and at every checkpoint. One
//! redb transaction per group commit cost more CPU than anything else on the write path (its
//! copy-on-write B-tree rewrites, checksums and page allocation); a key written again before the
//! flush is written to redb once. A batch that changes hints or metadata goes to redb at once
//! (after what is pending), so those tables are always read from redb.
//!
//! Every `LOG_COMMITS_MAX` commits or `LOG_BYTES_MAX` log bytes the store checkpoints: one
//! `Durability::Immediate` commit makes every earlier commit (and what is pending) durable in
//! redb, then the log is emptied. After a crash redb opens at its last durable commit and `open`
//! replays the log over it (every record holds whole objects and hint states, so replaying one
//! redb already has changes nothing), ignoring a torn tail. A scan or a key-hash lookup first
//! flushes what is pending, so they read redb alone.
//!
//! Flushes and checkpoints run inline, on the committing thread: redb admits one write
//! transaction at a time, so one on another thread would hold up the next commit for as long.
//!
//! After a failed log or redb write the store refuses every commit (the log and redb may
//! disagree) until [`Store::recover`] succeeds: it closes redb, opens it again and replays the
//! log over it exactly as `open` does, in place, without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use cairn_antientropy::KeyHash;
use cairn_proto::NodeId;
use cairn_ring::{PartitionId, RingConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_bytes::Bytes;

use super::commit_log::{CommitLog, Record, Replayed};
use super::{Batch, Hint, NodeMeta, Store, StoreError};
use crate::limits::{
    LOG_BYTES_MAX, LOG_COMMITS_MAX, LOG_RECORD_BYTES_MAX, PENDING_BYTES_MAX,
    RECOVERY_FREE_LOG_FACTOR, RECOVERY_FREE_MARGIN_BYTES, STORE_CACHE_BYTES,
};

/// Bytes the filesystem holding `dir` has free for this process.
fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| StoreError::Io {
        op: "statvfs",
        reason: e.to_string(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn hint_key(target: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&target.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_hint_key(raw: &[u8]) -> Result<(NodeId, Vec<u8>), StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Io {
            op: "read hint",
            reason: format!("hint key of {} bytes is shorter than a node id", raw.len()),
        });
    }
    let (id, key) = raw.split_at(8);
    Ok((
        NodeId(u64::from_be_bytes(id.try_into().expect("8 bytes"))),
        key.to_vec(),
    ))
}

/// Key → encoded versioned object.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// `blake3(key)` → key, for every key in `objects`: anti-entropy names differing keys by their
/// hash, and this turns them back into keys. Written in the transaction that first stores the key
/// and removed in the one that removes it, so after any crash it lists exactly the stored keys. On disk
/// rather than in memory: at a million keys an in-memory map would cost about 100 MB on top of
/// the Merkle trees' 66–100 MB, while this costs a B-tree insert per new key and one point read
/// per differing key, which anti-entropy reads anyway.
const KEY_HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key_hashes");
/// Hints: (target node id, big-endian) ++ key → renewal sequence number.
const HINTS: TableDefinition<&[u8], u64> = TableDefinition::new("hints");
/// Node metadata: `node`, `epoch`, `lease_end`, `format`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of the on-disk layout; a file written by another layout is refused, not misread.
/// 2 added `key_hashes`; a version-1 file is upgraded in place when it is opened.
const FORMAT_VERSION: u64 = 2;
/// The layout before `key_hashes` existed.
const FORMAT_VERSION_WITHOUT_KEY_HASHES: u64 = 1;
/// The database file's name inside the node's data directory.
pub const DB_FILE: &str = "cairn.redb";
/// The commit log's name inside the node's data directory.
pub const LOG_FILE: &str = "cairn.log";

fn io<E: Into<redb::Error>>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io {
        op,
        reason: e.into().to_string(),
    }
}

/// A node's redb database and its commit log.
pub struct RedbStore {
    /// `None` only while a recovery has closed it and could not open it again (reads fail
    /// then, naming the recovery).
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    path: PathBuf,
    /// Held for the whole of a commit: log append, redb apply and checkpoint happen in order.
    log: Mutex<LogState>,
    /// Logged objects not yet in redb. Written only with `log` held; readers take it briefly.
    pending: RwLock<Pending>,
    /// Pending bytes that make a commit write them to redb (`PENDING_BYTES_MAX`).
    pending_bytes_max: usize,
    /// What the last `open` replayed.
    replayed: Replayed,
    /// Dropped with the store, which its receivers hear of ([`RedbStore::closed`]). Declared
    /// last because fields drop in declaration order: by then the database and the log are
    /// closed.
    closed: tokio::sync::watch::Sender<()>,
}

struct LogState {
    log: CommitLog,
    /// Commits applied to redb without a sync since the last checkpoint.
    unsynced_commits: u64,
    /// Set when the log and redb may disagree (a log or redb write failed after the log was
    /// touched): every later commit is refused, so nothing is acknowledged on top of a state
    /// the log does not describe. A recovery (or a restart) replays the log and clears it.
    failed: Option<String>,
    /// Whether the failure touched redb (its write or checkpoint), so it must be reopened; a
    /// failed log append alone leaves redb as it was.
    redb_failed: bool,
}

/// Newest state per key of objects not yet in redb: `Some(object)` stored, `None` removed.
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Objects that are durable in the commit log but not yet written to redb.
#[derive(Default)]
struct Pending {
    /// Changes of commits since the last flush.
    active: Changes,
    /// Bytes of keys and objects in `active`.
    active_bytes: usize,
    /// The changes a flush is writing to redb. They stay readable here until that transaction
    /// has committed, so a reader that misses here and then opens a redb snapshot sees them
    /// there. After a failed flush they stay until a recovery replays the log.
    flushing: Option<Arc<Changes>>,
}

impl Pending {
    /// What is pending for `key`: `Some(Some(object))`, `Some(None)` (removed), or `None` (redb
    /// has the answer).
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.active
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(key)))
            .cloned()
    }

    fn is_empty(&self) -> bool {
        self.active.is_empty() && self.flushing.is_none()
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let (db, log, replayed) = open_and_replay(data_dir, &mut |_| {})?;
        Ok(RedbStore {
            db: RwLock::new(Some(db)),
            dir: data_dir.to_owned(),
            path: data_dir.join(DB_FILE),
            log: Mutex::new(LogState {
                log,
                unsynced_commits: 0,
                failed: None,
                redb_failed: false,
            }),
            pending: RwLock::new(Pending::default()),
            pending_bytes_max: PENDING_BYTES_MAX,
            replayed,
            closed: tokio::sync::watch::Sender::new(()),
        })
    }

    /// The store with `bytes` in place of `PENDING_BYTES_MAX`; 0 writes every commit to redb
    /// at once (how the store worked before it kept objects pending), for benchmarks.
    pub fn with_pending_bytes_max(mut self, bytes: usize) -> RedbStore {
        self.pending_bytes_max = bytes;
        self
    }

    /// Tells when this store is dropped and its files are closed, so a node's shutdown can
    /// wait for its last handle (a read on a blocking thread may still hold one) without
    /// polling, and the data directory can be opened again as soon as shutdown returns.
    pub fn closed(&self) -> StoreClosed {
        StoreClosed(self.closed.subscribe())
    }
}

/// Resolves once a [`RedbStore`] is dropped ([`StoreClosed::wait`]).
#[derive(Debug)]
pub struct StoreClosed(tokio::sync::watch::Receiver<()>);

impl StoreClosed {
    /// Waits until the store is dropped and its database file closed.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `changed` fails only once the store's sender is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

/// Opens (creating if needed) the database in `data_dir`, replays the commit log over it and
/// checkpoints, so the log starts empty; `touched` sees every key the replay wrote or removed.
fn open_and_replay(
    data_dir: &Path,
    touched: &mut dyn FnMut(&[u8]),
) -> Result<(Database, CommitLog, Replayed), StoreError> {
    {
        let path = data_dir.join(DB_FILE);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(e.to_string()))?;
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        // Create every table up front so readers never meet a missing table.
        let txn = db.begin_write().map_err(io("begin"))?;
        {
            let objects = txn.open_table(OBJECTS).map_err(io("open table"))?;
            let mut key_hashes = txn.open_table(KEY_HASHES).map_err(io("open table"))?;
            txn.open_table(HINTS).map_err(io("open table"))?;
            let mut meta = txn.open_table(META).map_err(io("open table"))?;
            let format = meta
                .get("format")
                .map_err(io("read meta"))?
                .map(|g| g.value());
            match format {
                None => {}
                Some(FORMAT_VERSION) => {}
                Some(FORMAT_VERSION_WITHOUT_KEY_HASHES) => {
                    // Same transaction as the version bump: a crash leaves version 1, whole.
                    for entry in objects.iter().map_err(io("read objects"))? {
                        let (key, _) = entry.map_err(io("read objects"))?;
                        let key = key.value();
                        key_hashes
                            .insert(KeyHash::of_key(key).0.as_slice(), key)
                            .map_err(io("write key hash"))?;
                    }
                }
                Some(other) => {
                    return Err(open_err(format!(
                        "on-disk format {other} is not the supported format {FORMAT_VERSION}"
                    )))
                }
            }
            if format != Some(FORMAT_VERSION) {
                meta.insert("format", FORMAT_VERSION)
                    .map_err(io("write meta"))?;
            }
        }
        txn.commit().map_err(io("commit"))?;

        // Replay what the log holds over redb's last durable commit, then checkpoint so the log
        // starts empty.
        let replay = db.begin_write().map_err(io("begin"))?;
        let (mut log, replayed) = CommitLog::open(&data_dir.join(LOG_FILE), &mut |record| {
            for (k, _) in &record.puts {
                touched(k);
            }
            for k in &record.removes {
                touched(k);
            }
            write_record(&replay, &record)
        })?;
        replay.commit().map_err(io("commit replayed log"))?;
        log.truncate()?;
        Ok((db, log, replayed))
    }
}

impl RedbStore {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening replayed from the commit log.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    /// Bytes in the commit log now (its header included).
    pub fn log_bytes(&self) -> u64 {
        self.log.lock().expect("commit log lock").log.len()
    }

    /// Whether a failed write stopped the store (commits refused until [`Store::recover`]).
    pub fn is_failed(&self) -> bool {
        self.log.lock().expect("commit log lock").failed.is_some()
    }

    /// Runs `f` on the open database; fails while a recovery could not open it again.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.db.read().expect("db lock").as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Io {
                op: "open database",
                reason: format!(
                    "{} is closed: recovering from a failed write did not open it again yet",
                    self.path.display()
                ),
            }),
        }
    }

    /// Writes what is pending, then `record`, to redb in one transaction of the given
    /// durability. What is pending stays readable in memory until the transaction committed.
    fn flush(&self, record: &Record<'_>, durability: Durability) -> Result<(), StoreError> {
        let changes = {
            let mut pending = self.pending.write().expect("pending lock");
            if pending.is_empty() {
                None
            } else {
                let mut changes = std::mem::take(&mut pending.active);
                pending.active_bytes = 0;
                // Left by a failed flush (a recovery would have cleared it): older, so what
                // came since wins.
                if let Some(older) = pending.flushing.take() {
                    for (k, v) in older.iter() {
                        changes.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                let changes = Arc::new(changes);
                pending.flushing = Some(changes.clone());
                Some(changes)
            }
        };
        let mut txn = self.with_db(|db| db.begin_write().map_err(io("begin")))?;
        txn.set_durability(durability)
            .map_err(io("set durability"))?;
        if let Some(changes) = &changes {
            let mut flushed = Record::default();
            for (k, v) in changes.iter() {
                match v {
                    Some(object) => flushed.puts.push((Bytes::new(k), Bytes::new(object))),
                    None => flushed.removes.push(Bytes::new(k)),
                }
            }
            write_record(&txn, &flushed)?;
        }
        write_record(&txn, record)?;
        txn.commit().map_err(io("commit"))?;
        if changes.is_some() {
            self.pending.write().expect("pending lock").flushing = None;
        }
        Ok(())
    }

    /// Writes what is pending to redb (not durably: the log holds it), so a read of redb alone
    /// sees every commit. Refused while the store is stopped by a failure.
    fn flush_for_read(&self) -> Result<(), StoreError> {
        if self.pending.read().expect("pending lock").is_empty() {
            return Ok(());
        }
        let mut state = self.log.lock().expect("commit log lock");
        if let Some(reason) = &state.failed {
            return Err(StoreError::Io {
                op: "flush pending objects",
                reason: format!("the store stopped after an earlier failure: {reason}"),
            });
        }
        if let Err(e) = self.flush(&Record::default(), Durability::None) {
            state.failed = Some(e.to_string());
            state.redb_failed = true;
            return Err(e);
        }
        Ok(())
    }

    /// Empties the log after a durable redb commit covered everything in it.
    fn emptied_log(&self, state: &mut LogState) -> Result<(), StoreError> {
        state.log.truncate()?;
        state.unsynced_commits = 0;
        Ok(())
    }
}

/// Writes `record` into `txn`'s tables.
fn write_record(txn: &redb::WriteTransaction, record: &Record<'_>) -> Result<(), StoreError> {
    let mut objects = txn.open_table(OBJECTS).map_err(io("open table"))?;
    let mut key_hashes = txn.open_table(KEY_HASHES).map_err(io("open table"))?;
    for (k, v) in &record.puts {
        let existed = objects
            .insert(&k[..], &v[..])
            .map_err(io("write"))?
            .is_some();
        // Only a new key needs its hash (a removed key lost its hash with its object).
        if !existed {
            key_hashes
                .insert(KeyHash::of_key(k).0.as_slice(), &k[..])
                .map_err(io("write key hash"))?;
        }
    }
    for k in &record.removes {
        // Absent already when a replay repeats a removal redb has: nothing to do then.
        if objects.remove(&k[..]).map_err(io("remove"))?.is_some() {
            key_hashes
                .remove(KeyHash::of_key(k).0.as_slice())
                .map_err(io("remove key hash"))?;
        }
    }
    if !record.hints_put.is_empty() || !record.hints_remove.is_empty() {
        let mut hints = txn.open_table(HINTS).map_err(io("open table"))?;
        for (target, key, seq) in &record.hints_put {
            hints
                .insert(hint_key(NodeId(*target), key).as_slice(), *seq)
                .map_err(io("write hint"))?;
        }
        for (target, key) in &record.hints_remove {
            hints
                .remove(hint_key(NodeId(*target), key).as_slice())
                .map_err(io("remove hint"))?;
        }
    }
    if let Some((node, epoch, lease_end)) = record.meta {
        let mut meta = txn.open_table(META).map_err(io("open table"))?;
        for (k, v) in [("node", node), ("epoch", epoch), ("lease_end", lease_end)] {
            meta.insert(k, v).map_err(io("write meta"))?;
        }
    }
    Ok(())
}

impl RedbStore {
    /// Opens `def` in a fresh read transaction (a snapshot of the last commit).
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
        let txn = self.with_db(|db| db.begin_read().map_err(io("begin read")))?;
        txn.open_table(def).map_err(io("open table"))
    }
}

impl Store for RedbStore {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        let table = self.read_table(META)?;
        let get = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(table.get(k).map_err(io("read meta"))?.map(|g| g.value()))
        };
        match (get("node")?, get("epoch")?, get("lease_end")?) {
            (None, None, None) => Ok(None),
            (Some(node), Some(epoch), Some(lease_end)) => Ok(Some(NodeMeta {
                node: NodeId(node),
                epoch,
                lease_end,
            })),
            partial => Err(StoreError::CorruptMeta {
                reason: format!("incomplete (node, epoch, lease_end) = {partial:?}"),
            }),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Pending first, then a redb snapshot opened after it (see `Pending::flushing`).
        if let Some(found) = self.pending.read().expect("pending lock").lookup(key) {
            return Ok(found);
        }
        let table = self.read_table(OBJECTS)?;
        Ok(table
            .get(key)
            .map_err(io("read"))?
            .map(|g| g.value().to_vec()))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let found: Vec<Option<Option<Vec<u8>>>> = {
            let pending = self.pending.read().expect("pending lock");
            keys.iter().map(|key| pending.lookup(key)).collect()
        };
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        let table = self.read_table(OBJECTS)?;
        keys.iter()
            .zip(found)
            .map(|(key, found)| match found {
                Some(found) => Ok(found),
                None => Ok(table
                    .get(key.as_slice())
                    .map_err(io("read"))?
                    .map(|g| g.value().to_vec())),
            })
            .collect()
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut state = self.log.lock().expect("commit log lock");
        if let Some(reason) = &state.failed {
            return Err(StoreError::Io {
                op: "commit",
                reason: format!("the store stopped after an earlier failure: {reason}"),
            });
        }
        let record = Record::of(batch);
        let frame = record.frame();
        if frame.len() > LOG_RECORD_BYTES_MAX {
            // Too big for one log record: a durable redb commit (with what is pending), which
            // makes every commit before it durable as well, so it is a checkpoint.
            self.flush(&record, Durability::Immediate)?;
            return self.emptied_log(&mut state);
        }
        // The durable step: from here the batch survives a crash.
        if let Err(e) = state.log.append(&frame) {
            state.failed = Some(e.to_string());
            return Err(e);
        }
        let applied = if record.hints_put.is_empty()
            && record.hints_remove.is_empty()
            && record.meta.is_none()
        {
            let full = {
                let mut pending = self.pending.write().expect("pending lock");
                for (k, v) in &batch.puts {
                    pending.active_bytes += k.len() + v.len();
                    pending.active.insert(k.clone(), Some(v.clone()));
                }
                for k in &batch.removes {
                    pending.active_bytes += k.len();
                    pending.active.insert(k.clone(), None);
                }
                pending.active_bytes >= self.pending_bytes_max
            };
            if full {
                self.flush(&Record::default(), Durability::None)
            } else {
                Ok(())
            }
        } else {
            // Hints and metadata are read from redb alone.
            self.flush(&record, Durability::None)
        };
        if let Err(e) = applied {
            state.failed = Some(e.to_string());
            state.redb_failed = true;
            return Err(e);
        }
        state.unsynced_commits += 1;
        if state.unsynced_commits >= LOG_COMMITS_MAX || state.log.len() >= LOG_BYTES_MAX {
            // The batch is durable (logged) whatever happens now; a failed checkpoint stops
            // later commits instead.
            if let Err(e) = self
                .flush(&Record::default(), Durability::Immediate)
                .and_then(|()| self.emptied_log(&mut state))
            {
                state.failed = Some(e.to_string());
                state.redb_failed = true;
            }
        }
        Ok(())
    }

    /// After a failed log append alone: cuts what it left off the log and checkpoints; redb,
    /// untouched, stays open. After a failed redb write or checkpoint: closes redb, opens it again at its last
    /// durable commit and replays the log over it, as `open` does after a crash, then empties
    /// the log with a durable redb commit. Either is tried only once the disk has
    /// `RECOVERY_FREE_LOG_FACTOR` times the log's bytes free (plus
    /// `RECOVERY_FREE_MARGIN_BYTES`): closing redb stops reads until it is open again, and a
    /// replay that fails leaves it closed (what it opened would miss the logged commits).
    fn recover(&self) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let mut state = self.log.lock().expect("commit log lock");
        let Some(reason) = state.failed.clone() else {
            return Ok(None);
        };
        // Both ways need the room a replay (or the next checkpoint) takes; before that the store
        // stays as it is, and reads go on.
        let needed = state.log.len() * RECOVERY_FREE_LOG_FACTOR + RECOVERY_FREE_MARGIN_BYTES;
        let free = free_bytes(&self.dir)?;
        if free < needed {
            return Err(StoreError::Io {
                op: "recover",
                reason: format!(
                    "No space left on device for the recovery: {free} bytes free, the \
                     {}-byte commit log needs {needed} (RECOVERY_FREE_LOG_FACTOR = \
                     {RECOVERY_FREE_LOG_FACTOR}, RECOVERY_FREE_MARGIN_BYTES = \
                     {RECOVERY_FREE_MARGIN_BYTES}); earlier failure: {reason}",
                    state.log.len()
                ),
            });
        }
        if !state.redb_failed {
            state.log.repair()?;
            // A checkpoint now, while there is room: it empties the log, so the next restart
            // (or recovery) has nothing to replay.
            if let Err(e) = self
                .flush(&Record::default(), Durability::Immediate)
                .and_then(|()| self.emptied_log(&mut state))
            {
                state.redb_failed = true;
                return Err(e);
            }
            state.failed = None;
            tracing::info!("commit log repaired in place after: {reason}");
            return Ok(Some(Vec::new()));
        }
        let mut db = self.db.write().expect("db lock");
        // redb holds the file exclusively: the old handle must be gone before it is opened again.
        db.take();
        let mut touched = BTreeSet::new();
        match open_and_replay(&self.dir, &mut |k| {
            touched.insert(k.to_vec());
        }) {
            Ok((opened, log, replayed)) => {
                *db = Some(opened);
                // The replay wrote everything the log holds, which is all that was pending.
                *self.pending.write().expect("pending lock") = Pending::default();
                state.log = log;
                state.unsynced_commits = 0;
                state.failed = None;
                state.redb_failed = false;
                tracing::info!(
                    records = replayed.records,
                    torn_bytes = replayed.torn_bytes,
                    "storage recovered in place after: {reason}"
                );
                Ok(Some(touched.into_iter().collect()))
            }
            Err(e) => {
                // Still failed; if redb opened but the replay failed, it is closed again here
                // and the next attempt starts over (nothing of the replay was durable).
                Err(e)
            }
        }
    }

    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.flush_for_read()?;
        let table = self.read_table(KEY_HASHES)?;
        Ok(table
            .get(key_hash.0.as_slice())
            .map_err(io("read key hash"))?
            .map(|g| g.value().to_vec()))
    }

    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        self.flush_for_read()?;
        let table = self.read_table(OBJECTS)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut seen = 0;
        // A range seeks to the start key (one B-tree descent) instead of walking from the first.
        let range = table
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(io("scan objects"))?;
        for entry in range {
            let (key, object) = entry.map_err(io("scan objects"))?;
            seen += 1;
            if !visit(key.value(), object.value()) {
                break;
            }
        }
        Ok(seen)
    }

    /// In key-hash order: the `key_hashes` table is ordered by hash and a partition is a hash's
    /// top bits, so the partition's entries lie together and a page reads only its own objects
    /// (a scan of `objects` in key order would read every other partition's objects to skip
    /// them, once per moving partition).
    fn scan_partition(
        &self,
        config: RingConfig,
        partition: PartitionId,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        self.flush_for_read()?;
        let txn = self.with_db(|db| db.begin_read().map_err(io("begin read")))?;
        let hashes = txn.open_table(KEY_HASHES).map_err(io("open table"))?;
        let objects = txn.open_table(OBJECTS).map_err(io("open table"))?;
        let (first, end) = config.hash_prefix_range(partition);
        let after_hash = after.map(|k| KeyHash::of_key(k).0);
        let start = match &after_hash {
            // A cursor from another partition would start the range outside this one.
            Some(h) if config.partition_of_hash(h) == partition => Bound::Excluded(&h[..]),
            Some(h) if h[..8] >= first[..] => return Ok(0),
            _ => Bound::Included(&first[..]),
        };
        let end = end
            .as_ref()
            .map_or(Bound::Unbounded, |e| Bound::Excluded(&e[..]));
        let range = hashes
            .range::<&[u8]>((start, end))
            .map_err(io("scan key hashes"))?;
        let mut seen = 0;
        for entry in range {
            let (_, key) = entry.map_err(io("scan key hashes"))?;
            let key = key.value();
            // Written and removed in the same transactions as the objects they name.
            let object = objects
                .get(key)
                .map_err(io("read"))?
                .ok_or_else(|| StoreError::Io {
                    op: "scan partition",
                    reason: format!(
                        "the key-hash index names key {:?} of partition {partition}, which has \
                         no object",
                        String::from_utf8_lossy(key)
                    ),
                })?;
            seen += 1;
            if !visit(key, object.value()) {
                break;
            }
        }
        Ok(seen)
    }

    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        let table = self.read_table(HINTS)?;
        let start = hint_key(target, &[]);
        let end = hint_key(NodeId(target.0.wrapping_add(1)), &[]);
        let range = if target.0 == u64::MAX {
            table.range(start.as_slice()..)
        } else {
            table.range(start.as_slice()..end.as_slice())
        }
        .map_err(io("read hints"))?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, seq) = entry.map_err(io("read hints"))?;
            let (t, key) = split_hint_key(k.value())?;
            out.push(Hint {
                target: t,
                key,
                seq: seq.value(),
            });
        }
        Ok(out)
    }

    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError> {
        let table = self.read_table(HINTS)?;
        Ok(table
            .get(hint_key(target, key).as_slice())
            .map_err(io("read hint"))?
            .map(|seq| Hint {
                target,
                key: key.to_vec(),
                seq: seq.value(),
            }))
    }

    fn hint_counts(&self) -> Result<std::collections::BTreeMap<NodeId, u64>, StoreError> {
        let table = self.read_table(HINTS)?;
        let mut counts = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(io("read hints"))? {
            let (k, _) = entry.map_err(io("read hints"))?;
            let (t, _) = split_hint_key(k.value())?;
            *counts.entry(t).or_insert(0u64) += 1;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &RedbStore, key: &[u8], object: &[u8]) {
        store
            .commit(&Batch {
                puts: vec![(key.to_vec(), object.to_vec())],
                ..Batch::default()
            })
            .unwrap();
    }

    #[test]
    fn every_stored_key_is_found_by_its_hash_and_scanned_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        put(&store, b"a", b"1");
        put(&store, b"b", b"1");
        put(&store, b"a", b"2");
        for key in [&b"a"[..], b"b"] {
            assert_eq!(
                store
                    .key_for_hash(&KeyHash::of_key(key))
                    .unwrap()
                    .as_deref(),
                Some(key)
            );
        }
        assert_eq!(store.key_for_hash(&KeyHash::of_key(b"c")).unwrap(), None);
        let mut seen = Vec::new();
        let n = store
            .scan_objects(None, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), b"2".to_vec()),
                (b"b".to_vec(), b"1".to_vec())
            ]
        );
        // A visitor can stop the scan.
        assert_eq!(store.scan_objects(None, &mut |_, _| false).unwrap(), 1);
    }

    #[test]
    fn a_scan_after_a_key_starts_strictly_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        for key in [&b"a"[..], b"b", b"ba", b"c"] {
            put(&store, key, b"v");
        }
        let keys_after = |after: Option<&[u8]>| {
            let mut keys = Vec::new();
            store
                .scan_objects(after, &mut |k, _| {
                    keys.push(k.to_vec());
                    true
                })
                .unwrap();
            keys
        };
        let all: Vec<Vec<u8>> = [&b"a"[..], b"b", b"ba", b"c"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(keys_after(None), all);
        // A stored key: the scan starts at the next one.
        assert_eq!(keys_after(Some(b"b")), all[2..]);
        // A key between stored ones, and one before every stored key.
        assert_eq!(keys_after(Some(b"bb")), all[3..]);
        assert_eq!(keys_after(Some(b"")), all);
        // The last key, and one past every stored key: nothing is visited.
        assert_eq!(keys_after(Some(b"c")), Vec::<Vec<u8>>::new());
        assert_eq!(
            store
                .scan_objects(Some(b"z"), &mut |_, _| panic!("visited"))
                .unwrap(),
            0
        );
        // The count is of the objects visited, the one that stopped the scan included.
        assert_eq!(
            store.scan_objects(Some(b"a"), &mut |_, _| false).unwrap(),
            1
        );
    }

    /// Issue 12: after a failed redb write the store refuses commits; `recover` reopens redb in
    /// place and replays the log over it, losing nothing committed before, and commits go on.
    #[test]
    fn a_store_stopped_by_a_failed_redb_write_recovers_in_place_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap(), None, "nothing to recover");
        put(&store, b"a", b"1");
        put(&store, b"b", b"1");
        // What a failed redb write leaves (a real one needs a failing disk: tests/tests/disk_full.rs).
        {
            let mut state = store.log.lock().unwrap();
            state.failed = Some("injected".into());
            state.redb_failed = true;
        }
        let refused = store.commit(&Batch {
            puts: vec![(b"c".to_vec(), b"1".to_vec())],
            ..Batch::default()
        });
        assert!(refused.is_err());
        // A reader holding a table of the old database does not stop the reopen; what it reads
        // afterwards is an answer or an error, never a crash.
        let held = store.read_table(OBJECTS).unwrap();
        let touched = store.recover().unwrap().expect("recovered");
        assert_eq!(touched, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(!store.is_failed());
        assert_eq!(store.log_bytes(), 8, "the recovery checkpointed");
        let _ = held.get(&b"a"[..]);
        drop(held);
        put(&store, b"c", b"1");
        for k in [&b"a"[..], b"b", b"c"] {
            assert_eq!(get(&store, k).as_deref(), Some(&b"1"[..]));
        }
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        for k in [&b"a"[..], b"b", b"c"] {
            assert_eq!(get(&store, k).as_deref(), Some(&b"1"[..]));
        }
    }

    #[test]
    fn a_version_1_file_gets_its_key_hashes_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A file as the previous layout wrote it: objects and meta, no key_hashes.
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut objects = txn.open_table(OBJECTS).unwrap();
                objects.insert(&b"old"[..], &b"o"[..]).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("format", FORMAT_VERSION_WITHOUT_KEY_HASHES)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .key_for_hash(&KeyHash::of_key(b"old"))
                .unwrap()
                .as_deref(),
            Some(&b"old"[..])
        );
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        let format = store
            .read_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .map(|g| g.value());
        assert_eq!(format, Some(FORMAT_VERSION));
    }

    fn get(store: &RedbStore, key: &[u8]) -> Option<Vec<u8>> {
        store.get(key).unwrap()
    }

    /// Issue 11: a partition's pages visit exactly its keys, each once, and nothing of any other
    /// partition, including keys removed, written since the last durable commit (still in the
    /// log only) and a cursor from another partition.
    #[test]
    fn a_partition_scan_visits_exactly_its_keys_in_pages() {
        let config = cairn_ring::RingConfig {
            partitions: 8,
            replicas: 3,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let keys: Vec<Vec<u8>> = (0..400).map(|i| format!("k{i}").into_bytes()).collect();
        store
            .commit(&Batch {
                puts: keys.iter().map(|k| (k.clone(), k.repeat(2))).collect(),
                ..Batch::default()
            })
            .unwrap();
        store
            .commit(&Batch {
                removes: keys[..50].to_vec(),
                ..Batch::default()
            })
            .unwrap();
        for partition in 0..8 {
            let mut want: Vec<&Vec<u8>> = keys[50..]
                .iter()
                .filter(|k| config.partition_of(k) == partition)
                .collect();
            want.sort();
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let mut page = Vec::new();
                store
                    .scan_partition(config, partition, after.as_deref(), &mut |k, o| {
                        assert_eq!(o, k.repeat(2), "the object stored under {k:?}");
                        page.push(k.to_vec());
                        page.len() < 7
                    })
                    .unwrap();
                let Some(last) = page.last().cloned() else {
                    break;
                };
                after = Some(last);
                got.extend(page);
            }
            got.sort();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "partition {partition}"
            );
            let elsewhere = keys[50..]
                .iter()
                .find(|k| config.partition_of(k) != partition)
                .unwrap();
            let mut from_elsewhere = Vec::new();
            store
                .scan_partition(config, partition, Some(elsewhere), &mut |k, _| {
                    from_elsewhere.push(k.to_vec());
                    true
                })
                .unwrap();
            assert!(
                from_elsewhere
                    .iter()
                    .all(|k| config.partition_of(k) == partition),
                "a cursor of partition {} led partition {partition}'s scan astray",
                config.partition_of(elsewhere)
            );
        }
    }

    #[test]
    fn get_many_reads_what_get_reads_in_order_absent_keys_included() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        store
            .commit(&Batch {
                puts: vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"c".to_vec(), b"3".to_vec()),
                ],
                ..Batch::default()
            })
            .unwrap();
        store
            .commit(&Batch {
                puts: vec![(b"c".to_vec(), b"3'".to_vec())],
                removes: vec![b"a".to_vec()],
                ..Batch::default()
            })
            .unwrap();
        let keys: Vec<Vec<u8>> = [&b"c"[..], b"a", b"b", b"c"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        let many = store.get_many(&keys).unwrap();
        let one: Vec<_> = keys.iter().map(|k| get(&store, k)).collect();
        assert_eq!(many, one);
        assert_eq!(
            many,
            vec![Some(b"3'".to_vec()), None, None, Some(b"3'".to_vec())]
        );
        assert_eq!(store.get_many(&[]).unwrap(), Vec::<Option<Vec<u8>>>::new());
    }

    /// Appends `batch` to the log in `dir` as a commit would, without applying it to redb: the
    /// state a crash leaves between the log's sync and redb's (unsynced) apply, or after redb's
    /// unsynced commits were lost with the page cache.
    fn log_only(dir: &Path, batch: &Batch, torn_tail: usize) {
        let (mut log, _) = CommitLog::open(&dir.join(LOG_FILE), &mut |_| Ok(())).unwrap();
        let frame = Record::of(batch).frame();
        log.append(&frame).unwrap();
        if torn_tail > 0 {
            // A later append the crash cut short: never acknowledged, so it must not appear.
            let torn = Record::of(&Batch {
                puts: vec![(b"torn".to_vec(), b"never acknowledged".to_vec())],
                ..Batch::default()
            })
            .frame();
            log.append(&torn[..torn_tail.min(torn.len() - 1)]).unwrap();
        }
    }

    #[test]
    fn logged_commits_that_redb_lost_are_replayed_on_open_and_a_torn_tail_is_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            put(&store, b"a", b"1");
            store
                .commit(&Batch {
                    hints_put: vec![Hint {
                        target: NodeId(4),
                        key: b"a".to_vec(),
                        seq: 1,
                    }],
                    ..Batch::default()
                })
                .unwrap();
        }
        log_only(
            dir.path(),
            &Batch {
                puts: vec![
                    (b"a".to_vec(), b"2".to_vec()),
                    (b"b".to_vec(), b"1".to_vec()),
                ],
                hints_remove: vec![(NodeId(4), b"a".to_vec())],
                meta: Some(NodeMeta {
                    node: NodeId(9),
                    epoch: 5,
                    lease_end: 20_000,
                }),
                ..Batch::default()
            },
            11,
        );
        let store = RedbStore::open(dir.path()).unwrap();
        // The store's own two commits (logged, not yet checkpointed) and the one redb never saw.
        assert_eq!(
            store.replayed(),
            Replayed {
                records: 3,
                torn_bytes: 11
            }
        );
        assert_eq!(get(&store, b"a").as_deref(), Some(&b"2"[..]));
        assert_eq!(get(&store, b"b").as_deref(), Some(&b"1"[..]));
        assert_eq!(get(&store, b"torn"), None);
        assert_eq!(store.hint(NodeId(4), b"a").unwrap(), None);
        assert_eq!(store.meta().unwrap().map(|m| m.lease_end), Some(20_000));
        assert_eq!(
            store
                .key_for_hash(&KeyHash::of_key(b"b"))
                .unwrap()
                .as_deref(),
            Some(&b"b"[..])
        );
        // The replay was checkpointed: the log is empty and a second open replays nothing.
        assert_eq!(store.log_bytes(), 8);
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed(), Replayed::default());
        assert_eq!(get(&store, b"a").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn replaying_records_redb_already_has_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let first = Batch {
            puts: vec![(b"k".to_vec(), b"old".to_vec())],
            ..Batch::default()
        };
        let second = Batch {
            puts: vec![(b"k".to_vec(), b"new".to_vec())],
            ..Batch::default()
        };
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store.commit(&first).unwrap();
            store.commit(&second).unwrap();
            // A crash after a checkpoint's redb sync but before the log was emptied: redb
            // has both commits durably and the log still holds them.
            store
                .flush(&Record::default(), Durability::Immediate)
                .unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed().records, 2);
        assert_eq!(get(&store, b"k").as_deref(), Some(&b"new"[..]));
        let mut keys = 0;
        store
            .scan_objects(None, &mut |_, _| {
                keys += 1;
                true
            })
            .unwrap();
        assert_eq!(keys, 1);
    }

    #[test]
    fn the_log_is_emptied_every_log_commits_max_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        for i in 0..LOG_COMMITS_MAX - 1 {
            put(&store, format!("k{i}").as_bytes(), b"v");
        }
        assert!(store.log_bytes() > 8 + LOG_COMMITS_MAX - 1);
        put(&store, b"last", b"v");
        assert_eq!(store.log_bytes(), 8, "the checkpoint emptied the log");
        put(&store, b"after", b"v");
        assert!(store.log_bytes() > 8);
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed().records, 1);
        for key in [&b"k0"[..], b"last", b"after"] {
            assert_eq!(get(&store, key).as_deref(), Some(&b"v"[..]));
        }
    }

    #[test]
    fn a_batch_too_big_for_one_log_record_is_committed_to_redb_directly() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        put(&store, b"small", b"v");
        let big = vec![7u8; LOG_RECORD_BYTES_MAX];
        put(&store, b"big", &big);
        assert_eq!(
            store.log_bytes(),
            8,
            "a durable redb commit is a checkpoint"
        );
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed(), Replayed::default());
        assert_eq!(
            get(&store, b"big").map(|v| v.len()),
            Some(LOG_RECORD_BYTES_MAX)
        );
        assert_eq!(get(&store, b"small").as_deref(), Some(&b"v"[..]));
    }

    fn remove(store: &RedbStore, key: &[u8]) {
        store
            .commit(&Batch {
                removes: vec![key.to_vec()],
                ..Batch::default()
            })
            .unwrap();
    }

    fn stored_keys(store: &RedbStore) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        store
            .scan_objects(None, &mut |k, _| {
                keys.push(k.to_vec());
                true
            })
            .unwrap();
        keys
    }

    /// What redb alone holds for `key`, pending objects aside.
    fn in_redb(store: &RedbStore, key: &[u8]) -> Option<Vec<u8>> {
        let table = store.read_table(OBJECTS).unwrap();
        table.get(key).unwrap().map(|g| g.value().to_vec())
    }

    fn pending_keys(store: &RedbStore) -> usize {
        store.pending.read().unwrap().active.len()
    }

    #[test]
    fn pending_objects_are_read_before_they_reach_redb_and_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            put(&store, b"a", b"1");
            store
                .flush(&Record::default(), Durability::Immediate)
                .unwrap();
            assert_eq!(in_redb(&store, b"a").as_deref(), Some(&b"1"[..]));
            put(&store, b"a", b"2");
            put(&store, b"b", b"1");
            assert_eq!(pending_keys(&store), 2, "one entry per key");
            assert_eq!(in_redb(&store, b"a").as_deref(), Some(&b"1"[..]));
            assert_eq!(in_redb(&store, b"b"), None);
            assert_eq!(get(&store, b"a").as_deref(), Some(&b"2"[..]));
            let many = store
                .get_many(&[b"b".to_vec(), b"x".to_vec(), b"a".to_vec()])
                .unwrap();
            assert_eq!(many, [Some(b"1".to_vec()), None, Some(b"2".to_vec())]);
            // A pending removal hides redb's copy.
            remove(&store, b"a");
            assert_eq!(in_redb(&store, b"a").as_deref(), Some(&b"1"[..]));
            assert_eq!(get(&store, b"a"), None);
            assert_eq!(store.get_many(&[b"a".to_vec()]).unwrap(), [None]);
            // A scan and a key-hash lookup read redb after writing what is pending to it.
            assert_eq!(stored_keys(&store), [b"b".to_vec()]);
            assert_eq!(pending_keys(&store), 0);
            assert_eq!(in_redb(&store, b"a"), None);
            put(&store, b"c", b"1");
            assert_eq!(
                store
                    .key_for_hash(&KeyHash::of_key(b"c"))
                    .unwrap()
                    .as_deref(),
                Some(&b"c"[..])
            );
            assert_eq!(store.key_for_hash(&KeyHash::of_key(b"a")).unwrap(), None);
            // Pending only, never flushed: the crash below loses it from memory, not the log.
            put(&store, b"d", b"1");
            remove(&store, b"b");
            assert_eq!(pending_keys(&store), 2);
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(stored_keys(&store), [b"c".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn pending_objects_reach_redb_once_they_hold_pending_bytes_max() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let object = vec![7u8; 1 << 20];
        let mut flushed_at = None;
        for i in 0..=(PENDING_BYTES_MAX >> 20) {
            put(&store, format!("k{i:02}").as_bytes(), &object);
            if pending_keys(&store) == 0 {
                flushed_at = Some(i);
                break;
            }
        }
        // Keys of 3 bytes push the eighth 1 MiB object over 8 MiB.
        assert_eq!(flushed_at, Some((PENDING_BYTES_MAX >> 20) - 1));
        assert_eq!(in_redb(&store, b"k00").as_deref(), Some(&object[..]));
    }

    #[test]
    fn a_batch_that_changes_hints_writes_what_is_pending_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        put(&store, b"a", b"1");
        assert_eq!(pending_keys(&store), 1);
        store
            .commit(&Batch {
                puts: vec![(b"b".to_vec(), b"1".to_vec())],
                hints_put: vec![Hint {
                    target: NodeId(9),
                    key: b"b".to_vec(),
                    seq: 1,
                }],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(pending_keys(&store), 0);
        assert_eq!(in_redb(&store, b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(in_redb(&store, b"b").as_deref(), Some(&b"1"[..]));
        assert!(store.hint(NodeId(9), b"b").unwrap().is_some());
    }

    #[test]
    fn a_removed_key_leaves_objects_and_key_hashes_and_may_be_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        put(&store, b"a", b"1");
        put(&store, b"b", b"1");
        remove(&store, b"a");
        // Removing an absent key is no error (a replay repeats removals).
        remove(&store, b"never");
        assert_eq!(get(&store, b"a"), None);
        assert_eq!(store.key_for_hash(&KeyHash::of_key(b"a")).unwrap(), None);
        assert_eq!(stored_keys(&store), vec![b"b".to_vec()]);
        put(&store, b"a", b"2");
        assert_eq!(
            store
                .key_for_hash(&KeyHash::of_key(b"a"))
                .unwrap()
                .as_deref(),
            Some(&b"a"[..])
        );
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(get(&store, b"a").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_logged_removal_redb_lost_is_replayed_and_a_repeated_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            put(&store, b"a", b"1");
            put(&store, b"b", b"1");
            // Durable in redb (a checkpoint's sync), then crash before the log was emptied:
            // the replay repeats these commits over a redb that has them.
            store
                .flush(&Record::default(), Durability::Immediate)
                .unwrap();
            remove(&store, b"b");
            store
                .flush(&Record::default(), Durability::Immediate)
                .unwrap();
        }
        // A removal that reached only the log (the crash lost redb's unsynced apply).
        log_only(
            dir.path(),
            &Batch {
                removes: vec![b"a".to_vec()],
                ..Batch::default()
            },
            0,
        );
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed().records, 4);
        assert_eq!(stored_keys(&store), Vec::<Vec<u8>>::new());
        for key in [&b"a"[..], b"b"] {
            assert_eq!(store.key_for_hash(&KeyHash::of_key(key)).unwrap(), None);
        }
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.replayed(), Replayed::default());
        assert_eq!(stored_keys(&store), Vec::<Vec<u8>>::new());
    }
}
