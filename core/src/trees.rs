//! A partition's Merkle tree over (key hash → object hash) of every stored object, and the
//! bytes it holds, kept current by the writer's commits: what anti-entropy compares and what a
//! layout change's plan weighs. The node keeps one per partition behind a lock each
//! (`node/src/trees.rs`, rebuilt in the background at start); the simulator keeps them too, from
//! the same commits, so a commit whose change a tree misses shows as replicas that never
//! converge.

use std::collections::HashMap;

use cairn_antientropy::{KeyHash, MerkleTree, ObjectHash};
use cairn_ring::RingConfig;

use crate::store::{Store, StoreError};

/// A committed change to one key: its object's new hash and the key's new size (key and encoded
/// object, in bytes), or `None` when the key was removed.
pub type TreeChange = (KeyHash, Option<(ObjectHash, u32)>);

/// The change a commit of `object` (encoded) under `key` makes.
pub fn put_change(key: &[u8], object: &[u8]) -> TreeChange {
    (
        KeyHash::of_key(key),
        Some((ObjectHash::of_encoded(object), size_of(key, object))),
    )
}

/// The change removing `key` makes. The tree is left exactly as if it had never held it (its
/// sums are additive), so it agrees with a replica that never stored it.
pub fn remove_change(key: &[u8]) -> TreeChange {
    (KeyHash::of_key(key), None)
}

/// A key's size as counted: key and encoded object (below 4 GiB: both are bounded far lower).
fn size_of(key: &[u8], object: &[u8]) -> u32 {
    u32::try_from(key.len() + object.len()).unwrap_or(u32::MAX)
}

/// One partition's tree and its bytes. Per key the bytes cost 12 bytes of map entry (the key
/// hash's first 8 bytes → size) besides the tree's own; two keys of one partition sharing those
/// 8 bytes (about 1 in 10^7 at a million keys per partition) only skew the count.
#[derive(Debug, Default, Clone)]
pub struct PartitionTree {
    tree: MerkleTree,
    by_key: HashMap<u64, u32>,
    bytes: u64,
}

impl PartitionTree {
    /// The tree.
    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// Keys it holds.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.tree.len() == 0
    }

    /// Bytes (keys and encoded objects) it holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Applies one committed change.
    pub fn apply(&mut self, (key, object): TreeChange) {
        match object {
            Some((object, size)) => {
                self.tree.insert(key, object);
                self.set_size(&key, Some(size));
            }
            None => {
                if self.tree.remove(&key).is_some() {
                    self.set_size(&key, None);
                }
            }
        }
    }

    fn set_size(&mut self, key: &KeyHash, size: Option<u32>) {
        let short = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"));
        let old = match size {
            Some(size) => self.by_key.insert(short, size),
            None => self.by_key.remove(&short),
        };
        self.bytes = self.bytes - u64::from(old.unwrap_or(0)) + u64::from(size.unwrap_or(0));
    }
}

/// What a build from the store found.
#[derive(Debug)]
pub struct Built {
    /// One tree per partition, in partition order.
    pub trees: Vec<PartitionTree>,
    /// Objects scanned.
    pub objects: u64,
    /// `keep_going` said stop before the end (the trees are then incomplete).
    pub cancelled: bool,
}

/// Builds every partition's tree from the objects in `store` (one scan; each tree built whole
/// by `MerkleTree::from_entries`), asking `keep_going` after each object.
pub fn build(
    store: &dyn Store,
    config: RingConfig,
    keep_going: &dyn Fn() -> bool,
) -> Result<Built, StoreError> {
    let partitions = config.partitions as usize;
    let mut entries: Vec<Vec<(KeyHash, ObjectHash)>> = vec![Vec::new(); partitions];
    let mut trees: Vec<PartitionTree> = vec![PartitionTree::default(); partitions];
    let mut cancelled = false;
    let objects = store.scan_objects(None, &mut |key, object| {
        let (key_hash, entry) = put_change(key, object);
        let (object_hash, size) = entry.expect("a put has an object");
        let p = config.partition_of_hash(&key_hash.0) as usize;
        entries[p].push((key_hash, object_hash));
        trees[p].set_size(&key_hash, Some(size));
        cancelled = !keep_going();
        !cancelled
    })?;
    for (t, e) in trees.iter_mut().zip(entries) {
        t.tree = MerkleTree::from_entries(e);
    }
    Ok(Built {
        trees,
        objects,
        cancelled,
    })
}
