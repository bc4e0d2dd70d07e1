//! The Merkle tree of one partition replica: every (key hash → object hash) entry, the digests of
//! the top levels kept up to date on every write, and the deeper digests computed on demand.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::hash::{Digest, KeyHash, ObjectHash, Sum};
use crate::limits::{DEPTH, FANOUT, FANOUT_BITS, HASH_BYTES, LEAVES, STORED_LEVELS, STORED_NODES};

/// A fixed-shape Merkle tree over one partition replica's (key hash → object hash) entries.
///
/// Shape: `FANOUT` children per node, leaves at level `DEPTH`; a key's leaf is picked by
/// `PATH_BITS` bits of its hash (see [`KeyHash::leaf`]). A node's digest is the wrapping 256-bit
/// sum of `blake3(key_hash ‖ object_hash)` over the entries below it, so it depends only on the
/// set of entries, never on the order they arrived in, and an empty tree's root is
/// [`Digest::ZERO`].
///
/// Cost of a write: one or two blake3 calls on 64 bytes, `STORED_LEVELS` 256-bit additions and
/// one B-tree insert. Nothing is rehashed and no exchange ever rebuilds the tree.
///
/// Memory: the entries live in one ordered map keyed by the key hash in tree order, so a leaf (or
/// any subtree) is a contiguous range and "which keys live in this bucket" is a range scan. That
/// is 64 bytes of hashes per key plus B-tree slack: measured at 66 bytes per key after
/// [`MerkleTree::from_entries`] (full nodes) and 100 after one-by-one inserts in random order
/// (nodes half to fully filled), so about 66–100 MB for a million-key partition. On top, a non-empty tree keeps `STORED_NODES` digests (8.7 KiB); an empty tree
/// allocates nothing. Storing the entries here rather than asking the node's store keeps the
/// crate pure and an exchange free of disk reads; the price is this memory.
#[derive(Clone, Default)]
pub struct MerkleTree {
    /// Every entry, keyed by the key hash in tree order (path bits first).
    entries: BTreeMap<[u8; HASH_BYTES], ObjectHash>,
    /// Sums of the nodes of levels `0..STORED_LEVELS`, level after level; empty exactly when the
    /// tree is empty.
    stored: Vec<Sum>,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("len", &self.len())
            .field("root", &self.root())
            .finish()
    }
}

/// Nodes at `level`.
pub(crate) fn nodes_at(level: usize) -> u64 {
    (FANOUT as u64).pow(level as u32)
}

/// Position of node `index` of `level` in `stored`.
fn stored_slot(level: usize, index: u32) -> usize {
    debug_assert!(level < STORED_LEVELS);
    (FANOUT.pow(level as u32) - 1) / (FANOUT - 1) + index as usize
}

/// The first tree-order key of the node whose 32-bit prefix starts at `prefix`.
fn prefix_key(prefix: u32) -> [u8; HASH_BYTES] {
    let mut k = [0u8; HASH_BYTES];
    k[..4].copy_from_slice(&prefix.to_be_bytes());
    k
}

/// The tree-order range of node `index` at `level`: the keys whose first `level × FANOUT_BITS`
/// path bits spell `index`.
fn node_range(level: usize, index: u32) -> (Bound<[u8; HASH_BYTES]>, Bound<[u8; HASH_BYTES]>) {
    let shift = 32 - level as u32 * FANOUT_BITS;
    let start = u64::from(index) << shift;
    let end = (u64::from(index) + 1) << shift;
    let upper = if end > u64::from(u32::MAX) {
        Bound::Unbounded
    } else {
        Bound::Excluded(prefix_key(end as u32))
    };
    (Bound::Included(prefix_key(start as u32)), upper)
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// A tree holding `entries`, for rebuilding after a restart from the node's store. If a key
    /// appears more than once, its last entry wins, as a sequence of inserts would.
    ///
    /// Sorts once and builds the map in bulk, which is more than twice as fast as inserting one
    /// by one and packs the B-tree's nodes full (the smallest memory this tree can have).
    pub fn from_entries<I>(entries: I) -> MerkleTree
    where
        I: IntoIterator<Item = (KeyHash, ObjectHash)>,
    {
        let mut sorted: Vec<([u8; HASH_BYTES], ObjectHash)> = entries
            .into_iter()
            .map(|(k, o)| (k.tree_order(), o))
            .collect();
        // Stable, so equal keys keep their input order and the last one can win below.
        sorted.sort_by_key(|e| e.0);
        let mut unique: Vec<([u8; HASH_BYTES], ObjectHash)> = Vec::with_capacity(sorted.len());
        for (k, o) in sorted {
            match unique.last_mut() {
                Some(last) if last.0 == k => last.1 = o,
                _ => unique.push((k, o)),
            }
        }
        let mut tree = MerkleTree {
            entries: unique.into_iter().collect(),
            stored: Vec::new(),
        };
        if !tree.entries.is_empty() {
            let mut stored = vec![Sum::ZERO; STORED_NODES];
            for (k, o) in &tree.entries {
                let key = KeyHash::from_tree_order(*k);
                let s = Sum::of_entry(&key, o);
                for (level, slot) in path_slots(&key) {
                    debug_assert!(level < STORED_LEVELS);
                    stored[slot] = stored[slot] + s;
                }
            }
            tree.stored = stored;
        }
        tree
    }

    /// Sets `key`'s object hash, returning the previous one. O(`STORED_LEVELS`) additions.
    pub fn insert(&mut self, key: KeyHash, object: ObjectHash) -> Option<ObjectHash> {
        let old = self.entries.insert(key.tree_order(), object);
        let delta = match old {
            Some(o) if o == object => return old,
            Some(o) => Sum::of_entry(&key, &object) - Sum::of_entry(&key, &o),
            None => Sum::of_entry(&key, &object),
        };
        self.add_along(&key, delta);
        old
    }

    /// Removes `key`, returning its object hash if it was present.
    pub fn remove(&mut self, key: &KeyHash) -> Option<ObjectHash> {
        let old = self.entries.remove(&key.tree_order())?;
        self.add_along(key, Sum::ZERO - Sum::of_entry(key, &old));
        if self.entries.is_empty() {
            // Every sum is back to zero; drop them so an emptied partition costs nothing.
            debug_assert!(
                self.stored.iter().all(|s| *s == Sum::ZERO),
                "an empty tree sums to zero"
            );
            self.stored = Vec::new();
        }
        Some(old)
    }

    /// `key`'s object hash, if the tree holds it.
    pub fn get(&self, key: &KeyHash) -> Option<ObjectHash> {
        self.entries.get(&key.tree_order()).copied()
    }

    /// How many keys the tree holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The root digest: equal on two replicas exactly when they hold the same entries (up to a
    /// 2^-256 chance).
    pub fn root(&self) -> Digest {
        self.digest(0, 0)
    }

    /// The digest of node `index` at `level` (`0..=DEPTH`; level `DEPTH` are the leaf buckets).
    ///
    /// Levels below `STORED_LEVELS` are read; deeper ones are summed from their entries, which
    /// costs one blake3 call per entry below the node.
    ///
    /// # Panics
    /// If `level > DEPTH` or `index` is not a node of `level`: callers pass validated indices.
    pub fn digest(&self, level: usize, index: u32) -> Digest {
        assert!(level <= DEPTH, "level {level} beyond DEPTH {DEPTH}");
        assert!(
            u64::from(index) < nodes_at(level),
            "node {index} beyond level {level}"
        );
        if level < STORED_LEVELS {
            return self.stored_sum(level, index).digest();
        }
        self.range_sum(node_range(level, index)).digest()
    }

    /// The digests of the `FANOUT` children of node `index` at `level` (`0..DEPTH`), in order.
    /// Below the stored levels this is one pass over the node's entries.
    ///
    /// # Panics
    /// If `level >= DEPTH` or `index` is not a node of `level`.
    pub fn child_digests(&self, level: usize, index: u32) -> [Digest; FANOUT] {
        assert!(level < DEPTH, "leaves (level {DEPTH}) have no children");
        assert!(
            u64::from(index) < nodes_at(level),
            "node {index} beyond level {level}"
        );
        let first_child = index * FANOUT as u32;
        let mut sums = [Sum::ZERO; FANOUT];
        if level + 1 < STORED_LEVELS {
            for (i, s) in sums.iter_mut().enumerate() {
                *s = self.stored_sum(level + 1, first_child + i as u32);
            }
        } else {
            for (k, o) in self.entries.range(node_range(level, index)) {
                let key = KeyHash::from_tree_order(*k);
                let child = (key.node_at(level + 1) - first_child) as usize;
                sums[child] = sums[child] + Sum::of_entry(&key, o);
            }
        }
        sums.map(|s| s.digest())
    }

    /// The entries of leaf bucket `leaf` (`0..LEAVES`), in tree order: which keys live there.
    ///
    /// # Panics
    /// If `leaf >= LEAVES`.
    pub fn leaf_entries(&self, leaf: u32) -> impl Iterator<Item = (KeyHash, ObjectHash)> + '_ {
        assert!(
            (leaf as usize) < LEAVES,
            "leaf {leaf} beyond LEAVES {LEAVES}"
        );
        self.entries
            .range(node_range(DEPTH, leaf))
            .map(|(k, o)| (KeyHash::from_tree_order(*k), *o))
    }

    /// Every entry, in tree order.
    pub fn iter(&self) -> impl Iterator<Item = (KeyHash, ObjectHash)> + '_ {
        self.entries
            .iter()
            .map(|(k, o)| (KeyHash::from_tree_order(*k), *o))
    }

    /// The entries of leaf `leaf` after `after` (exclusive) up to `through` (inclusive), in tree
    /// order. The caller has checked that both keys lie in the leaf and `after < through`.
    pub(crate) fn leaf_range(
        &self,
        leaf: u32,
        after: Option<&KeyHash>,
        through: Option<&KeyHash>,
    ) -> impl Iterator<Item = (KeyHash, ObjectHash)> + '_ {
        let (lower, upper) = node_range(DEPTH, leaf);
        let lower = after.map_or(lower, |k| Bound::Excluded(k.tree_order()));
        let upper = through.map_or(upper, |k| Bound::Included(k.tree_order()));
        self.entries
            .range((lower, upper))
            .map(|(k, o)| (KeyHash::from_tree_order(*k), *o))
    }

    fn stored_sum(&self, level: usize, index: u32) -> Sum {
        self.stored
            .get(stored_slot(level, index))
            .copied()
            .unwrap_or(Sum::ZERO)
    }

    fn range_sum(&self, range: (Bound<[u8; HASH_BYTES]>, Bound<[u8; HASH_BYTES]>)) -> Sum {
        self.entries.range(range).fold(Sum::ZERO, |acc, (k, o)| {
            acc + Sum::of_entry(&KeyHash::from_tree_order(*k), o)
        })
    }

    /// Adds `delta` to every stored node on `key`'s path.
    fn add_along(&mut self, key: &KeyHash, delta: Sum) {
        if self.stored.is_empty() {
            self.stored = vec![Sum::ZERO; STORED_NODES];
        }
        for (_, slot) in path_slots(key) {
            self.stored[slot] = self.stored[slot] + delta;
        }
    }
}

/// The stored nodes on `key`'s path: (level, slot in `stored`).
fn path_slots(key: &KeyHash) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..STORED_LEVELS).map(move |level| (level, stored_slot(level, key.node_at(level))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> KeyHash {
        KeyHash::of_key(&i.to_le_bytes())
    }

    fn object(i: u32) -> ObjectHash {
        ObjectHash::of_encoded(&i.to_be_bytes())
    }

    /// The stored levels hold exactly what summing the entries gives, through inserts, updates
    /// and removes.
    #[test]
    fn stored_digests_equal_computed_ones() {
        let mut tree = MerkleTree::new();
        for i in 0..3000 {
            tree.insert(key(i), object(i));
        }
        for i in (0..3000).step_by(3) {
            tree.insert(key(i), object(i + 1));
        }
        for i in (0..3000).step_by(7) {
            tree.remove(&key(i));
        }
        for level in 0..STORED_LEVELS {
            for index in 0..nodes_at(level) as u32 {
                assert_eq!(
                    tree.stored_sum(level, index),
                    tree.range_sum(node_range(level, index)),
                    "level {level} node {index}"
                );
            }
        }
        let rebuilt = MerkleTree::from_entries(tree.iter());
        assert_eq!(rebuilt.stored, tree.stored);
    }

    #[test]
    fn node_ranges_tile_the_key_space() {
        assert_eq!(
            node_range(0, 0),
            (Bound::Included([0; 32]), Bound::Unbounded)
        );
        let last = (LEAVES - 1) as u32;
        assert_eq!(node_range(DEPTH, last).1, Bound::Unbounded);
        assert_eq!(
            node_range(1, 0).1,
            Bound::Excluded(prefix_key(1 << (32 - FANOUT_BITS)))
        );
        assert_eq!(
            node_range(1, 1).0,
            Bound::Included(prefix_key(1 << (32 - FANOUT_BITS)))
        );
    }
}
