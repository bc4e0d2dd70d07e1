//! The tree's features through its public API: digests depend only on the set of entries (empty
//! trees agree, inserts commute, insert-then-remove restores, rebuild equals incremental), node
//! digests are consistent across levels, and a leaf bucket lists exactly its keys.

mod common;

use std::collections::BTreeSet;

use cairn_antientropy::limits::{DEPTH, FANOUT, LEAVES};
use cairn_antientropy::{Digest, KeyHash, MerkleTree, ObjectHash};
use common::{key, key_in_leaf, object};
use proptest::prelude::*;

/// One step applied to a tree.
#[derive(Debug, Clone, Copy)]
enum Op {
    Insert(u64, u64),
    Remove(u64),
}

fn apply(tree: &mut MerkleTree, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Insert(k, v) => {
                tree.insert(key(k), object(v));
            }
            Op::Remove(k) => {
                tree.remove(&key(k));
            }
        }
    }
}

fn built(ops: &[Op]) -> MerkleTree {
    let mut tree = MerkleTree::new();
    apply(&mut tree, ops);
    tree
}

/// Table-driven: two op sequences, and whether the trees they build must have equal roots.
#[track_caller]
fn check(left: &[Op], right: &[Op], equal: bool) {
    let (l, r) = (built(left), built(right));
    assert_eq!(
        l.root() == r.root(),
        equal,
        "{left:?} vs {right:?}: roots {:?} and {:?}",
        l.root(),
        r.root()
    );
}

#[test]
fn roots_depend_only_on_the_entries() {
    use Op::*;
    let cases: &[(&[Op], &[Op], bool)] = &[
        // Empty trees are equal, however they became empty.
        (&[], &[], true),
        (&[], &[Insert(1, 1), Remove(1)], true),
        (
            &[],
            &[Insert(1, 1), Insert(2, 2), Remove(2), Remove(1)],
            true,
        ),
        // Insert then remove restores the root.
        (
            &[Insert(1, 1)],
            &[Insert(1, 1), Insert(2, 2), Remove(2)],
            true,
        ),
        // Order does not matter.
        (
            &[Insert(1, 1), Insert(2, 2)],
            &[Insert(2, 2), Insert(1, 1)],
            true,
        ),
        // An update is the same as inserting the final value.
        (&[Insert(1, 7)], &[Insert(1, 1), Insert(1, 7)], true),
        // Re-inserting the same object changes nothing.
        (&[Insert(1, 1)], &[Insert(1, 1), Insert(1, 1)], true),
        // Removing an absent key changes nothing.
        (&[Insert(1, 1)], &[Insert(1, 1), Remove(9)], true),
        // Differences show.
        (&[], &[Insert(1, 1)], false),
        (&[Insert(1, 1)], &[Insert(1, 2)], false),
        (&[Insert(1, 1)], &[Insert(2, 1)], false),
        // Swapping objects between keys is a difference, not a reordering.
        (
            &[Insert(1, 1), Insert(2, 2)],
            &[Insert(1, 2), Insert(2, 1)],
            false,
        ),
        // A repeated entry does not cancel out (as it would under XOR).
        (&[Insert(1, 1), Insert(2, 1)], &[], false),
    ];
    for (left, right, equal) in cases {
        check(left, right, *equal);
    }
}

#[test]
fn empty_tree_has_the_zero_root() {
    let tree = MerkleTree::new();
    assert_eq!(tree.root(), Digest::ZERO);
    assert!(tree.is_empty());
    assert_eq!(MerkleTree::from_entries([]).root(), Digest::ZERO);
    for level in 0..=DEPTH {
        assert_eq!(tree.digest(level, 0), Digest::ZERO);
    }
}

#[test]
fn insert_and_remove_report_the_previous_object() {
    let mut tree = MerkleTree::new();
    assert_eq!(tree.insert(key(1), object(1)), None);
    assert_eq!(tree.insert(key(1), object(2)), Some(object(1)));
    assert_eq!(tree.get(&key(1)), Some(object(2)));
    assert_eq!(tree.len(), 1);
    assert_eq!(tree.remove(&key(1)), Some(object(2)));
    assert_eq!(tree.remove(&key(1)), None);
    assert_eq!(tree.get(&key(1)), None);
    assert_eq!(tree.root(), Digest::ZERO);
}

#[test]
fn from_entries_equals_inserting_one_by_one_and_last_wins() {
    let entries: Vec<(KeyHash, ObjectHash)> =
        (0..5000).map(|i| (key(i % 4000), object(i))).collect();
    let mut one_by_one = MerkleTree::new();
    for (k, o) in &entries {
        one_by_one.insert(*k, *o);
    }
    let rebuilt = MerkleTree::from_entries(entries);
    assert_eq!(rebuilt.len(), 4000);
    assert_eq!(rebuilt.root(), one_by_one.root());
    // Keys 0..1000 appeared twice; the later object (i + 4000) won.
    assert_eq!(rebuilt.get(&key(7)), Some(object(4007)));
    assert_eq!(
        rebuilt.iter().collect::<Vec<_>>(),
        one_by_one.iter().collect::<Vec<_>>()
    );
}

#[test]
fn a_parent_digest_agrees_with_its_children() {
    let tree = built(&(0..20_000).map(|i| Op::Insert(i, i)).collect::<Vec<_>>());
    // Walk one path to the bottom and a few siblings, comparing each node's digest with the
    // child list of its parent (stored levels against computed ones at the boundary).
    let probe = key(12_345);
    for level in 0..DEPTH {
        let parent = probe.leaf() >> ((DEPTH - level) as u32 * FANOUT.trailing_zeros());
        let children = tree.child_digests(level, parent);
        for (i, d) in children.iter().enumerate() {
            assert_eq!(
                *d,
                tree.digest(level + 1, parent * FANOUT as u32 + i as u32),
                "level {level} parent {parent} child {i}"
            );
        }
        assert!(children.iter().any(|d| *d != Digest::ZERO));
    }
}

#[test]
fn a_leaf_lists_exactly_its_keys() {
    let mut tree = MerkleTree::new();
    let leaf = 0xabcde % LEAVES as u32;
    let mine: BTreeSet<KeyHash> = (0..50).map(|i| key_in_leaf(leaf, i)).collect();
    for k in &mine {
        tree.insert(*k, object(1));
    }
    // Neighbours on both sides and scattered keys must not show up.
    for i in 0..50 {
        tree.insert(key_in_leaf(leaf - 1, 100 + i), object(2));
        tree.insert(key_in_leaf(leaf + 1, 200 + i), object(3));
        tree.insert(key(300 + i), object(4));
    }
    let listed: Vec<(KeyHash, ObjectHash)> = tree.leaf_entries(leaf).collect();
    assert_eq!(
        listed.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>(),
        mine
    );
    assert!(listed.iter().all(|(_, o)| *o == object(1)));
    assert!(listed.iter().all(|(k, _)| k.leaf() == leaf));
    // The first and last buckets are ranges too.
    tree.insert(key_in_leaf(0, 1), object(5));
    tree.insert(key_in_leaf(LEAVES as u32 - 1, 2), object(6));
    assert_eq!(tree.leaf_entries(0).count(), 1);
    assert_eq!(tree.leaf_entries(LEAVES as u32 - 1).count(), 1);
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u64..64, 0u64..4).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => (0u64..64).prop_map(Op::Remove),
        ],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any two op sequences that end with the same entries have the same root, and the same
    /// digest at every node of a key's path; different entries give different roots.
    #[test]
    fn digests_are_a_function_of_the_entries(left in ops(), right in ops()) {
        let (l, r) = (built(&left), built(&right));
        let same = l.iter().eq(r.iter());
        prop_assert_eq!(l.root() == r.root(), same);
        let rebuilt = MerkleTree::from_entries(l.iter());
        prop_assert_eq!(rebuilt.root(), l.root());
        for k in 0..64 {
            let leaf = key(k).leaf();
            for level in 0..=DEPTH {
                let node = leaf >> ((DEPTH - level) as u32 * FANOUT.trailing_zeros());
                prop_assert_eq!(rebuilt.digest(level, node), l.digest(level, node));
            }
        }
    }

    /// Inserts commute: any permutation of the same inserts gives the same root.
    #[test]
    fn inserts_commute(
        entries in prop::collection::btree_map(0u64..1000, 0u64..4, 0..100),
        seed in any::<u64>(),
    ) {
        let inserts: Vec<Op> = entries.iter().map(|(&k, &v)| Op::Insert(k, v)).collect();
        let mut shuffled = inserts.clone();
        // A seeded xorshift Fisher-Yates, so the permutation is part of the case.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(built(&inserts).root(), built(&shuffled).root());
    }
}
