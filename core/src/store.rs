//! Durable storage behind a small synchronous trait: the redb file in production (`cairn-node`),
//! a map in unit tests and the simulator ([`MemoryStore`]).
//!
//! The trait is deliberately narrow (point reads, a snapshot scan, the key-hash index, atomic
//! durable batches, node metadata): all versioning logic stays above it, in the engine, so every store behaves alike.

mod memory;

pub use memory::MemoryStore;

use cairn_antientropy::KeyHash;
use cairn_proto::NodeId;
use cairn_ring::{PartitionId, RingConfig};

/// The node's identity and dot-counter lease, kept with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node this data directory belongs to.
    pub node: NodeId,
    /// The incarnation of this data directory; a fresh directory gets a new random epoch.
    pub epoch: u64,
    /// Dot counters below this value may have been handed out; the next start begins here.
    pub lease_end: u64,
}

/// A promise to hand `key` to the node `target`, which missed a write to it. `seq` changes
/// whenever the hint is renewed, so a delivery of an older state does not delete a newer hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The node that missed the write.
    pub target: NodeId,
    /// The key.
    pub key: Vec<u8>,
    /// Renewal sequence number.
    pub seq: u64,
}

/// One atomic, durable unit of change.
#[derive(Debug, Default)]
pub struct Batch {
    /// Objects to store (key, encoded object), replacing what was there.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys whose object (and key-hash entry) is removed. A key is never in both `puts` and
    /// `removes` of one batch (the writer folds a batch's writes per key first), so the order in
    /// which a store applies the two does not matter.
    pub removes: Vec<Vec<u8>>,
    /// Hints to add or renew.
    pub hints_put: Vec<Hint>,
    /// Hints to delete (by target and key).
    pub hints_remove: Vec<(NodeId, Vec<u8>)>,
    /// New metadata, if it changed.
    pub meta: Option<NodeMeta>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.removes.is_empty()
            && self.hints_put.is_empty()
            && self.hints_remove.is_empty()
            && self.meta.is_none()
    }
}

/// Why the store failed; the operation that hit it is not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// What redb or the OS reported.
        reason: String,
    },
    /// A read or write failed.
    #[error("storage {op} failed: {reason}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// What redb reported.
        reason: String,
    },
    /// Stored metadata is unreadable.
    #[error("node metadata is corrupt: {reason}")]
    CorruptMeta {
        /// What is wrong with it.
        reason: String,
    },
}

/// A node's durable storage.
///
/// Implementations must make `commit` atomic (all of the batch or none of it survives a crash)
/// and durable on return; the engine acknowledges writes only after `commit` returns.
pub trait Store: Send + Sync + 'static {
    /// The stored metadata, or `None` for a fresh store.
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError>;
    /// The encoded object stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The encoded objects stored under `keys`, in order. A store with read transactions
    /// reads them all in one (a batch of peer reads pays for one snapshot, not one per key);
    /// the default reads them one by one.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Applies `batch` atomically and durably.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// The stored key whose `blake3` hash is `key_hash`, if an object is stored under it.
    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError>;
    /// Calls `visit(key, encoded object)` for every stored object whose key is strictly greater
    /// than `after` (every object when `None`), in key order, over one consistent snapshot
    /// (taken when the call starts), until `visit` returns false. Returns how many objects were
    /// visited. The scan starts at `after` rather than skipping up to it, so a caller that reads
    /// the store in pages (the transfer, the cleanup sweep, the reaper) costs one pass over the
    /// store in all, not one per page.
    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError>;
    /// Calls `visit(key, encoded object)` for every stored object of `partition` (under
    /// `config`) that comes after the key `after` (from the partition's first when `None`) in
    /// the store's partition order, over one consistent snapshot, until `visit` returns false.
    /// Returns how many objects were visited. The order is the store's own but fixed, so pages
    /// that each start after the last key of the one before walk the partition once. The
    /// default walks [`Store::scan_objects`] in key order and skips other partitions' keys,
    /// which reads the whole store per partition: fine for a map. The redb store walks its
    /// key-hash index instead (key-hash order, where a partition's keys lie together) and reads
    /// only the partition's own objects.
    fn scan_partition(
        &self,
        config: RingConfig,
        partition: PartitionId,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let mut seen = 0;
        self.scan_objects(after, &mut |key, object| {
            if config.partition_of(key) != partition {
                return true;
            }
            seen += 1;
            visit(key, object)
        })?;
        Ok(seen)
    }
    /// Up to `limit` hints for `target`, in key order.
    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError>;
    /// The hint for (`target`, `key`), if any.
    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError>;
    /// How many hints are held per target.
    fn hint_counts(&self) -> Result<std::collections::BTreeMap<NodeId, u64>, StoreError>;
    /// Brings back a store that refuses commits after a failed one, in place (the redb store
    /// reopens its database and replays its log). `Ok(None)`: it was not refusing commits;
    /// `Ok(Some(keys))`: it recovered, and these keys' stored objects may differ from what the
    /// caller last saw committed (logged batches whose commit reported failure). The default
    /// has nothing to recover.
    fn recover(&self) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        Ok(None)
    }
}
