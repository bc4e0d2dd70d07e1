//! The node's Merkle trees: one per partition over (key hash → object hash) of every stored
//! object, kept current by the engine's writer after each commit and rebuilt from the store when
//! the node starts.
//!
//! *Rebuilt, not loaded.* A restart scans the `objects` table once and builds every tree with
//! `MerkleTree::from_entries` (the `rebuild_trees` example measures it: about 1.2 s per
//! million keys on the 2-core development machine, see ARCHITECTURE.md). Persisting the trees would put
//! a second write on every commit's path and a second copy of the truth on disk that a crash could
//! leave behind the objects; the scan needs neither and cannot disagree with the store.
//!
//! The rebuild runs in the background while the node already serves: writes committed meanwhile
//! are logged and applied over the rebuilt trees when it finishes, and until then anti-entropy
//! leaves the trees alone ([`Trees::is_ready`]).
//!
//! *Sizes.* Next to each tree a partition keeps the bytes (key plus encoded object) of every
//! key it holds (the core's `PartitionTree`), so a layout change's plan can say what each
//! moving partition weighs ([`Trees::size`]) without a scan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cairn_antientropy::{KeyHash, MerkleTree};
use cairn_core::trees::{put_change, remove_change, PartitionTree, TreeChange};
use cairn_ring::{PartitionId, RingConfig};
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// One partition's tree (the core's `PartitionTree`, with its bytes), and what it is for:
/// callers lock one partition at a time.
pub struct Trees {
    ring: RingConfig,
    trees: Vec<Mutex<PartitionTree>>,
    /// While the start-up rebuild runs: the entries committed since it began, in commit order
    /// (`None` for a removed key). `None` once the rebuilt trees are in place.
    log: Mutex<Option<Vec<TreeChange>>>,
    /// Set to true, under `log`'s lock, when the rebuilt trees are in place.
    ready: watch::Sender<bool>,
    /// Asks a running rebuild to stop (shutdown).
    cancel: AtomicBool,
}

impl std::fmt::Debug for Trees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trees")
            .field("partitions", &self.trees.len())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// What a rebuild found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Objects scanned.
    pub objects: u64,
    /// Writes committed during the scan, applied afterwards.
    pub logged: u64,
    /// Whether shutdown stopped it before the end (the trees are then not ready).
    pub cancelled: bool,
}

impl Trees {
    /// Empty trees for Q = `partitions` partitions, waiting for [`Trees::rebuild`]; commits from
    /// now on are logged for it.
    pub fn new(partitions: u32) -> Trees {
        // Only Q decides a key's partition; N is irrelevant here.
        let ring = RingConfig {
            partitions,
            replicas: 1,
        };
        Trees {
            ring,
            trees: (0..partitions).map(|_| Mutex::default()).collect(),
            log: Mutex::new(Some(Vec::new())),
            ready: watch::Sender::new(false),
            cancel: AtomicBool::new(false),
        }
    }

    /// The partition of a key hash (the ring's rule, from the hash the tree already has).
    pub fn partition_of(&self, key: &KeyHash) -> PartitionId {
        self.ring.partition_of_hash(&key.0)
    }

    /// Q.
    pub fn partitions(&self) -> u32 {
        self.ring.partitions
    }

    /// Whether the rebuilt trees are in place (anti-entropy waits for it).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves when the trees are ready; never if a rebuild was cancelled.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`, so the wait cannot fail while we are borrowed.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Runs `f` on partition `p`'s tree, holding its lock only for the call.
    ///
    /// # Panics
    /// If `p` is not below Q (callers check partitions from peers first).
    pub fn with_tree<R>(&self, p: PartitionId, f: impl FnOnce(&MerkleTree) -> R) -> R {
        f(self.trees[p as usize].lock().expect("tree lock").tree())
    }

    /// Keys in all trees (every stored object once the trees are ready).
    pub fn keys(&self) -> u64 {
        self.trees
            .iter()
            .map(|t| t.lock().expect("tree lock").len() as u64)
            .sum()
    }

    /// Keys and bytes (keys and encoded objects) partition `p` holds, once the trees are ready.
    pub fn size(&self, p: PartitionId) -> Option<(u64, u64)> {
        if !self.is_ready() || p >= self.ring.partitions {
            return None;
        }
        let tree = self.trees[p as usize].lock().expect("tree lock");
        Some((tree.len() as u64, tree.bytes()))
    }

    /// Records durably committed objects `(key, encoded object)`. Called by the writer after each
    /// commit, in commit order: two blake3 calls and an O(depth) tree update per object.
    pub fn record<'a>(&self, committed: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        self.apply(
            committed
                .into_iter()
                .map(|(key, object)| put_change(key, object)),
        );
    }

    /// Records keys a commit removed from the store (`remove_change`).
    pub fn record_removed<'a>(&self, removed: impl IntoIterator<Item = &'a [u8]>) {
        self.apply(removed.into_iter().map(remove_change));
    }

    fn apply(&self, entries: impl Iterator<Item = TreeChange>) {
        if !self.is_ready() {
            let mut log = self.log.lock().expect("tree log lock");
            if let Some(log) = log.as_mut() {
                log.extend(entries);
                return;
            }
            // The rebuild finished between the check and the lock: apply directly.
        }
        for change in entries {
            self.set(change);
        }
    }

    fn set(&self, change: TreeChange) {
        let p = self.partition_of(&change.0) as usize;
        self.trees[p].lock().expect("tree lock").apply(change);
    }

    /// Builds every tree from the objects in `store` (`cairn_core::trees::build`) and puts them
    /// in place, then applies the writes logged meanwhile. Blocking: run it on a blocking thread.
    ///
    /// Correct while writes go on: logging started before the scan's snapshot was taken, so
    /// every commit is in the snapshot, in the log, or in both (then the log, being later, wins).
    pub fn rebuild(&self, store: &dyn Store) -> Result<RebuildReport, StoreError> {
        let keep_going = || !self.cancel.load(Ordering::Relaxed);
        let built = match cairn_core::trees::build(store, self.ring, &keep_going) {
            Ok(built) => built,
            Err(e) => {
                // The trees stay not ready (anti-entropy stays off on this node); stop logging
                // so the log does not grow for a rebuild that will not come.
                self.log.lock().expect("tree log lock").take();
                return Err(e);
            }
        };
        if built.cancelled || self.cancel.load(Ordering::Relaxed) {
            return Ok(RebuildReport {
                objects: built.objects,
                logged: 0,
                cancelled: true,
            });
        }
        // Holding the log's lock: the writer waits here for the swap, so no commit is applied to
        // a tree that is about to be replaced or logged after the log was drained.
        let mut log = self.log.lock().expect("tree log lock");
        for (slot, tree) in self.trees.iter().zip(built.trees) {
            *slot.lock().expect("tree lock") = tree;
        }
        let logged = log.take().unwrap_or_default();
        for change in &logged {
            self.set(*change);
        }
        self.ready.send_replace(true);
        drop(log);
        Ok(RebuildReport {
            objects: built.objects,
            logged: logged.len() as u64,
            cancelled: false,
        })
    }

    /// Asks a running rebuild to stop at its next object (shutdown must not wait for a long scan).
    pub fn cancel_rebuild(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, MemoryStore};
    use cairn_antientropy::ObjectHash;

    fn ring() -> RingConfig {
        RingConfig {
            partitions: 8,
            replicas: 3,
        }
    }

    fn put(store: &MemoryStore, key: &[u8], object: &[u8]) {
        store
            .commit(&Batch {
                puts: vec![(key.to_vec(), object.to_vec())],
                ..Batch::default()
            })
            .unwrap();
    }

    /// The tree a replica holding exactly `objects` must have, built the slow way.
    fn expected(objects: &[(&[u8], &[u8])], p: PartitionId) -> MerkleTree {
        let trees = Trees::new(ring().partitions);
        MerkleTree::from_entries(
            objects
                .iter()
                .map(|(k, o)| (KeyHash::of_key(k), ObjectHash::of_encoded(o)))
                .filter(|(k, _)| trees.partition_of(k) == p),
        )
    }

    /// Every partition's size is what `objects` weigh in it.
    fn assert_sizes(trees: &Trees, objects: &[(&[u8], &[u8])]) {
        for p in 0..ring().partitions {
            let mine: Vec<_> = objects
                .iter()
                .filter(|(k, _)| trees.partition_of(&KeyHash::of_key(k)) == p)
                .collect();
            let bytes = mine.iter().map(|(k, o)| (k.len() + o.len()) as u64).sum();
            assert_eq!(
                trees.size(p),
                Some((mine.len() as u64, bytes)),
                "partition {p}"
            );
        }
    }

    #[test]
    fn partitions_follow_the_ring() {
        let trees = Trees::new(ring().partitions);
        let ring =
            cairn_ring::Ring::new(ring(), &[cairn_ring::Member::new(cairn_proto::NodeId(1))])
                .unwrap();
        for i in 0..200u32 {
            let key = format!("k{i}");
            assert_eq!(
                trees.partition_of(&KeyHash::of_key(key.as_bytes())),
                ring.partition_of(key.as_bytes())
            );
        }
    }

    #[test]
    fn rebuild_sees_the_store_and_the_writes_logged_meanwhile() {
        let store = MemoryStore::new();
        put(&store, b"a", b"a1");
        put(&store, b"b", b"b1");
        let trees = Trees::new(ring().partitions);
        // Committed while the rebuild is pending: logged, then laid over the scan.
        put(&store, b"b", b"b2");
        trees.record([(&b"b"[..], &b"b2"[..])]);
        trees.record([(&b"c"[..], &b"c1"[..])]);
        assert!(!trees.is_ready());
        assert_eq!(trees.keys(), 0, "nothing is applied before the rebuild");
        let report = trees.rebuild(&store).unwrap();
        assert_eq!(
            report,
            RebuildReport {
                objects: 2,
                logged: 2,
                cancelled: false
            }
        );
        assert!(trees.is_ready());
        // After the rebuild, commits go straight to the trees.
        trees.record([(&b"d"[..], &b"d1"[..])]);
        let all: [(&[u8], &[u8]); 4] = [(b"a", b"a1"), (b"b", b"b2"), (b"c", b"c1"), (b"d", b"d1")];
        assert_eq!(trees.keys(), 4);
        assert_sizes(&trees, &all);
        for p in 0..ring().partitions {
            assert_eq!(
                trees.with_tree(p, |t| t.root()),
                expected(&all, p).root(),
                "partition {p}"
            );
        }
        // An overwrite replaces the key's size; a removal takes it away.
        trees.record([(&b"d"[..], &b"d-longer"[..])]);
        trees.record_removed([&b"a"[..]]);
        let now: [(&[u8], &[u8]); 3] = [(b"b", b"b2"), (b"c", b"c1"), (b"d", b"d-longer")];
        assert_sizes(&trees, &now);
    }

    #[test]
    fn a_cancelled_rebuild_leaves_the_trees_not_ready() {
        let store = MemoryStore::new();
        put(&store, b"a", b"a1");
        let trees = Trees::new(ring().partitions);
        trees.cancel_rebuild();
        assert!(trees.rebuild(&store).unwrap().cancelled);
        assert!(!trees.is_ready());
    }

    #[test]
    fn a_removed_key_leaves_the_tree_as_if_it_was_never_stored_also_during_a_rebuild() {
        let store = MemoryStore::new();
        put(&store, b"a", b"a1");
        put(&store, b"gone", b"g1");
        let trees = Trees::new(ring().partitions);
        // Removed while the rebuild is pending (the scan may or may not have seen it): the log
        // removes it after the scan.
        store
            .commit(&Batch {
                removes: vec![b"gone".to_vec()],
                ..Batch::default()
            })
            .unwrap();
        trees.record_removed([&b"gone"[..]]);
        trees.record([(&b"b"[..], &b"b1"[..])]);
        trees.rebuild(&store).unwrap();
        // And after the rebuild, directly.
        trees.record([(&b"c"[..], &b"c1"[..])]);
        trees.record_removed([&b"c"[..], &b"never stored"[..]]);
        let all: [(&[u8], &[u8]); 2] = [(b"a", b"a1"), (b"b", b"b1")];
        assert_eq!(trees.keys(), 2);
        assert_sizes(&trees, &all);
        for p in 0..ring().partitions {
            assert_eq!(
                trees.with_tree(p, |t| t.root()),
                expected(&all, p).root(),
                "partition {p}"
            );
        }
    }
}
