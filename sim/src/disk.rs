//! The simulated disk: the core's `MemoryStore`, whose commits the fault injector can make fail
//! for a while (a full or failing disk), so the node's own error paths run: the writer's results
//! carry the store's error, the coordinator counts the replica as failed, the client is told,
//! and the writer's storage health declares the fault and recovers the store once it works.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_antientropy::KeyHash;
use cairn_core::store::{Batch, Hint, MemoryStore, NodeMeta, Store, StoreError};
use cairn_proto::NodeId;

/// A node's disk: what it holds survives a crash; commits fail while `failing` is set.
#[derive(Debug, Default)]
pub struct SimDisk {
    inner: MemoryStore,
    failing: AtomicBool,
    /// A commit failed since the last recovery: `recover` has something to do.
    refused: AtomicBool,
}

impl SimDisk {
    /// Makes commits fail (`true`) or succeed again.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Whether commits fail now.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

impl Store for SimDisk {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        self.inner.meta()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if self.is_failing() {
            // Nothing of the batch is applied: commits are atomic.
            self.refused.store(true, Ordering::Relaxed);
            return Err(StoreError::Io {
                op: "commit",
                reason: "simulated disk write failure".into(),
            });
        }
        self.inner.commit(batch)
    }

    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_for_hash(key_hash)
    }

    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        self.inner.scan_objects(after, visit)
    }

    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        self.inner.hints(target, limit)
    }

    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError> {
        self.inner.hint(target, key)
    }

    fn hint_counts(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        self.inner.hint_counts()
    }

    /// As the redb store after a refused commit: fails while the disk does, then recovers in
    /// place with nothing replayed (a refused commit applied nothing here).
    fn recover(&self) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        if !self.refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if self.is_failing() {
            return Err(StoreError::Io {
                op: "recover",
                reason: "simulated disk write failure".into(),
            });
        }
        self.refused.store(false, Ordering::Relaxed);
        Ok(Some(Vec::new()))
    }
}
