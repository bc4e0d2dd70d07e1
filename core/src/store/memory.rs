//! An in-memory store for unit tests and the simulator: everything committed survives a
//! simulated crash, nothing else does (the engine keeps uncommitted state only in memory).

use std::collections::BTreeMap;
use std::sync::Mutex;

use cairn_antientropy::KeyHash;
use cairn_proto::NodeId;

use super::{Batch, Hint, NodeMeta, Store, StoreError};

/// A store held in a map; `commit` is atomic because it holds one lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    meta: Option<NodeMeta>,
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    key_hashes: BTreeMap<KeyHash, Vec<u8>>,
    hints: BTreeMap<(NodeId, Vec<u8>), u64>,
    commits: u64,
}

impl MemoryStore {
    /// An empty store, as a fresh data directory.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many batches have been committed (group-commit tests count these).
    pub fn commits(&self) -> u64 {
        self.inner.lock().expect("store lock").commits
    }
}

impl Store for MemoryStore {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        Ok(self.inner.lock().expect("store lock").meta)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .expect("store lock")
            .objects
            .get(key)
            .cloned())
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("store lock");
        for (k, v) in &batch.puts {
            if inner.objects.insert(k.clone(), v.clone()).is_none() {
                inner.key_hashes.insert(KeyHash::of_key(k), k.clone());
            }
        }
        for k in &batch.removes {
            if inner.objects.remove(k).is_some() {
                inner.key_hashes.remove(&KeyHash::of_key(k));
            }
        }
        for h in &batch.hints_put {
            inner.hints.insert((h.target, h.key.clone()), h.seq);
        }
        for (t, k) in &batch.hints_remove {
            inner.hints.remove(&(*t, k.clone()));
        }
        if let Some(meta) = batch.meta {
            inner.meta = Some(meta);
        }
        inner.commits += 1;
        Ok(())
    }

    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .expect("store lock")
            .key_hashes
            .get(key_hash)
            .cloned())
    }

    fn scan_objects(&self, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<u64, StoreError> {
        // A copy is the snapshot: commits during the scan do not show.
        let objects = self.inner.lock().expect("store lock").objects.clone();
        let mut seen = 0;
        for (k, v) in &objects {
            seen += 1;
            if !visit(k, v) {
                break;
            }
        }
        Ok(seen)
    }

    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        let inner = self.inner.lock().expect("store lock");
        Ok(inner
            .hints
            .range((target, Vec::new())..)
            .take_while(|((t, _), _)| *t == target)
            .take(limit)
            .map(|((t, k), seq)| Hint {
                target: *t,
                key: k.clone(),
                seq: *seq,
            })
            .collect())
    }

    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError> {
        let inner = self.inner.lock().expect("store lock");
        Ok(inner.hints.get(&(target, key.to_vec())).map(|seq| Hint {
            target,
            key: key.to_vec(),
            seq: *seq,
        }))
    }

    fn hint_counts(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        let inner = self.inner.lock().expect("store lock");
        let mut counts = BTreeMap::new();
        for (t, _) in inner.hints.keys() {
            *counts.entry(*t).or_insert(0) += 1;
        }
        Ok(counts)
    }
}
