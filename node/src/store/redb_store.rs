//! The redb-backed store: one database file per node, an `objects` table and a `meta` table.

use std::path::{Path, PathBuf};

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
/// Hints: (target node id, big-endian) ++ key → renewal sequence number.
const HINTS: TableDefinition<&[u8], u64> = TableDefinition::new("hints");
/// Node metadata: `node`, `epoch`, `lease_end`, `format`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of the on-disk layout; a file written by another layout is refused, not misread.
const FORMAT_VERSION: u64 = 1;
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
        // Create both tables up front so readers never meet a missing table.
        let txn = store.db.begin_write().map_err(io("begin"))?;
        {
            txn.open_table(OBJECTS).map_err(io("open table"))?;
            txn.open_table(HINTS).map_err(io("open table"))?;
            let mut meta = txn.open_table(META).map_err(io("open table"))?;
            let format = meta
                .get("format")
                .map_err(io("read meta"))?
                .map(|g| g.value());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(io("write meta"))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(open_err(format!(
                        "on-disk format {other} is not the supported format {FORMAT_VERSION}"
                    )))
                }
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
            for (k, v) in &batch.puts {
                objects
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(io("write"))?;
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
