//! An in-memory store for unit tests and the simulator: everything committed survives a
//! simulated crash, nothing else does (the engine keeps uncommitted state only in memory).

use std::collections::BTreeMap;
use std::ops::Bound;
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

    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        // A copy of the objects from `after` on is the snapshot: commits during the scan do not
        // show, and `visit` may call the store (the lock is not held while it runs).
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let objects: Vec<(Vec<u8>, Vec<u8>)> = self
            .inner
            .lock()
            .expect("store lock")
            .objects
            .range::<[u8], _>((start, Bound::Unbounded))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_after(store: &MemoryStore, after: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        store
            .scan_objects(after, &mut |k, _| {
                keys.push(k.to_vec());
                true
            })
            .unwrap();
        keys
    }

    #[test]
    fn a_scan_after_a_key_starts_strictly_after_it() {
        let store = MemoryStore::new();
        let puts = [&b"a"[..], b"b", b"ba", b"c"]
            .iter()
            .map(|k| (k.to_vec(), b"v".to_vec()))
            .collect();
        store
            .commit(&Batch {
                puts,
                ..Batch::default()
            })
            .unwrap();
        let all: Vec<Vec<u8>> = [&b"a"[..], b"b", b"ba", b"c"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(keys_after(&store, None), all);
        // A stored key: the scan starts at the next one.
        assert_eq!(keys_after(&store, Some(b"b")), all[2..]);
        // A key between stored ones, and one before every stored key.
        assert_eq!(keys_after(&store, Some(b"bb")), all[3..]);
        assert_eq!(keys_after(&store, Some(b"")), all);
        // The last key, and one past every stored key: nothing is visited.
        assert_eq!(keys_after(&store, Some(b"c")), Vec::<Vec<u8>>::new());
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
}
