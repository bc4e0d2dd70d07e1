//! The redb-backed store: one database file per node with `objects`, `key_hashes`, `hints` and
//! `meta` tables.

use std::path::{Path, PathBuf};

use cairn_antientropy::KeyHash;
use cairn_proto::NodeId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Hint, NodeMeta, Store, StoreError};

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
/// (objects are never deleted), so after any crash it lists exactly the stored keys. On disk
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

fn io<E: Into<redb::Error>>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io {
        op,
        reason: e.into().to_string(),
    }
}

/// A node's redb database.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
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
        let path = data_dir.join(DB_FILE);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        let store = RedbStore {
            db,
            path: path.clone(),
        };
        // Create every table up front so readers never meet a missing table.
        let txn = store.db.begin_write().map_err(io("begin"))?;
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
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RedbStore {
    /// Opens `def` in a fresh read transaction (a snapshot of the last commit).
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
        let txn = self.db.begin_read().map_err(io("begin read"))?;
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
        let table = self.read_table(OBJECTS)?;
        Ok(table
            .get(key)
            .map_err(io("read"))?
            .map(|g| g.value().to_vec()))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(io("begin"))?;
        // The default already, stated because acknowledgements depend on it: commit returns only
        // after the data is on stable storage.
        txn.set_durability(Durability::Immediate)
            .map_err(io("set durability"))?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(io("open table"))?;
            let mut key_hashes = txn.open_table(KEY_HASHES).map_err(io("open table"))?;
            for (k, v) in &batch.puts {
                let existed = objects
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(io("write"))?
                    .is_some();
                // Only a new key needs its hash: objects are never deleted.
                if !existed {
                    key_hashes
                        .insert(KeyHash::of_key(k).0.as_slice(), k.as_slice())
                        .map_err(io("write key hash"))?;
                }
            }
            if !batch.hints_put.is_empty() || !batch.hints_remove.is_empty() {
                let mut hints = txn.open_table(HINTS).map_err(io("open table"))?;
                for h in &batch.hints_put {
                    hints
                        .insert(hint_key(h.target, &h.key).as_slice(), h.seq)
                        .map_err(io("write hint"))?;
                }
                for (t, k) in &batch.hints_remove {
                    hints
                        .remove(hint_key(*t, k).as_slice())
                        .map_err(io("remove hint"))?;
                }
            }
            if let Some(m) = batch.meta {
                let mut meta = txn.open_table(META).map_err(io("open table"))?;
                for (k, v) in [
                    ("node", m.node.0),
                    ("epoch", m.epoch),
                    ("lease_end", m.lease_end),
                ] {
                    meta.insert(k, v).map_err(io("write meta"))?;
                }
            }
        }
        txn.commit().map_err(io("commit"))
    }

    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.read_table(KEY_HASHES)?;
        Ok(table
            .get(key_hash.0.as_slice())
            .map_err(io("read key hash"))?
            .map(|g| g.value().to_vec()))
    }

    fn scan_objects(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64, StoreError> {
        let table = self.read_table(OBJECTS)?;
        let mut seen = 0;
        for entry in table.iter().map_err(io("scan objects"))? {
            let (key, object) = entry.map_err(io("scan objects"))?;
            seen += 1;
            if !visit(key.value(), object.value()) {
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
            .scan_objects(&mut |k, v| {
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
        assert_eq!(store.scan_objects(&mut |_, _| false).unwrap(), 1);
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
}
