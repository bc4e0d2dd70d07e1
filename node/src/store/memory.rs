//! An in-memory store for unit tests and the simulator: everything committed survives a
//! simulated crash, nothing else does (the engine keeps uncommitted state only in memory).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, NodeMeta, Store, StoreError};

/// A store held in a map; `commit` is atomic because it holds one lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    meta: Option<NodeMeta>,
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
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
            inner.objects.insert(k.clone(), v.clone());
        }
        if let Some(meta) = batch.meta {
            inner.meta = Some(meta);
        }
        inner.commits += 1;
        Ok(())
    }
}
