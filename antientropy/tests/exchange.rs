//! The exchange session's features, driven through the real encoding: the keys found equal the
//! naive set difference on both sides (table and proptest oracle), identical trees cost one round
//! trip, big differences are split under the message budget, writes during an exchange do no
//! harm, and garbage or out-of-protocol messages are refused without a panic.

mod common;

use std::collections::BTreeSet;

use cairn_antientropy::limits::{
    DEPTH, FANOUT, KEYS_PER_LEAF_CHUNK_MAX, LEAVES, MESSAGE_BYTES_MAX,
};
use cairn_antientropy::{
    Action, AntiEntropyError, Digest, KeyHash, LeafChunk, MerkleTree, Message, NodeChildren, Role,
    Session,
};
use common::{
    exchange, exchange_scheduled, exchange_with, key, key_in_leaf, naive, object, tree_of,
    Contents, Found,
};
use proptest::prelude::*;

/// A replica's entries as (key number, object version) pairs.
type Entries<'a> = &'a [(u64, u64)];

fn contents(entries: &[(u64, u64)]) -> Contents {
    entries.iter().map(|&(k, v)| (key(k), object(v))).collect()
}

/// Runs an exchange between `a` and `b` and checks both sides found exactly the naive
/// difference, within `DEPTH + 3` one-way trips.
#[track_caller]
fn check_contents(a: &Contents, b: &Contents) -> common::Outcome {
    let out = exchange(&tree_of(a), &tree_of(b));
    assert_eq!(out.a, naive(a, b), "initiator's view");
    assert_eq!(out.b, naive(b, a), "responder's view");
    assert!(
        out.flights <= DEPTH + 3,
        "{} one-way trips, more than DEPTH + 3",
        out.flights
    );
    assert!(out.largest <= MESSAGE_BYTES_MAX);
    out
}

#[track_caller]
fn check(a: &[(u64, u64)], b: &[(u64, u64)]) -> common::Outcome {
    check_contents(&contents(a), &contents(b))
}

#[test]
fn finds_exactly_the_differences() {
    let many: Vec<(u64, u64)> = (0..300).map(|i| (i, 0)).collect();
    let many_changed: Vec<(u64, u64)> = (0..300).map(|i| (i, u64::from(i % 7 == 0))).collect();
    let evens: Vec<(u64, u64)> = (0..300).step_by(2).map(|i| (i, 0)).collect();
    let odds: Vec<(u64, u64)> = (1..300).step_by(2).map(|i| (i, 0)).collect();
    let cases: &[(Entries, Entries)] = &[
        (&[], &[]),
        (&[(1, 1)], &[]),
        (&[], &[(1, 1)]),
        (&[(1, 1)], &[(1, 1)]),
        (&[(1, 1)], &[(1, 2)]),
        (&[(1, 1)], &[(2, 1)]),
        (&[(1, 1), (2, 2), (3, 3)], &[(2, 2), (3, 4), (5, 5)]),
        (&many, &[]),
        (&[], &many),
        (&many, &many),
        (&many, &many_changed),
        (&evens, &odds),
        (&many, &evens),
    ];
    for (a, b) in cases {
        check(a, b);
    }
}

#[test]
fn identical_trees_exchange_only_the_roots() {
    for entries in [vec![], (0..1000).map(|i| (i, i)).collect::<Vec<_>>()] {
        let out = check(&entries, &entries);
        // The root (tag, fan-out, depth, 32-byte digest) and an empty level-1 step in reply
        // (tag, level, no nodes, last): one round trip.
        assert_eq!(out.messages, 2, "{out:?}");
        assert_eq!(out.bytes, 35 + 4, "{out:?}");
        assert_eq!(out.flights, 2);
        assert_eq!(out.round_trips(), 1);
    }
}

#[test]
fn one_side_empty_finds_everything_under_the_budget() {
    // 20,000 keys against nothing: every level differs, so steps span many messages and the
    // differences come in many batches.
    let full: Contents = (0..20_000).map(|i| (key(i), object(i))).collect();
    let out = check_contents(&full, &Contents::new());
    assert_eq!(out.a.missing_there.len(), 20_000);
    assert_eq!(out.b.missing_here.len(), 20_000);
    assert!(out.messages > DEPTH + 3, "steps were split: {out:?}");
    let out = check_contents(&Contents::new(), &full);
    assert_eq!(out.a.missing_here.len(), 20_000);
}

#[test]
fn the_verdict_may_overtake_the_last_entries() {
    // Entries span several messages, so under a pacing schedule verdicts come back while the
    // entries are still going out; the session takes them, and the result is exact.
    let mut a: Contents = (0..12_000).map(|i| (key(i), object(i))).collect();
    a.extend((0..3000).map(|i| (key_in_leaf(42, i), object(0))));
    let b: Contents = a
        .iter()
        .filter(|(k, _)| k.0[0] % 4 == 0)
        .map(|(k, o)| (*k, *o))
        .collect();
    let (ta, tb) = (tree_of(&a), tree_of(&b));
    let mut early = 0;
    for seed in 0..4 {
        let out = exchange_scheduled(&ta, &tb, seed);
        assert_eq!(out.a, naive(&a, &b), "seed {seed}");
        assert_eq!(out.b, naive(&b, &a), "seed {seed}");
        early += out.early_verdicts;
    }
    assert!(early > 0, "no schedule let a verdict overtake the entries");
}

#[test]
fn a_crowded_leaf_is_sent_in_chunks() {
    // Crafted keys sharing one bucket, more than one chunk holds, next to ordinary keys.
    let leaf = 777;
    let crowd = 2 * KEYS_PER_LEAF_CHUNK_MAX as u64 + 100;
    let mut a: Contents = (0..crowd)
        .map(|i| (key_in_leaf(leaf, i), object(0)))
        .collect();
    a.extend((0..500).map(|i| (key(1_000_000 + i), object(0))));
    let mut b = a.clone();
    // Differences at the start, in the middle, at chunk boundaries and at the end of the crowd.
    let crowd_keys: Vec<KeyHash> = a.keys().filter(|k| k.leaf() == leaf).copied().collect();
    for (n, i) in [
        0,
        1,
        2047,
        2048,
        2049,
        3000,
        4095,
        4096,
        4097,
        crowd as usize - 1,
    ]
    .into_iter()
    .enumerate()
    {
        match n % 3 {
            0 => {
                b.remove(&crowd_keys[i]);
            }
            1 => {
                b.insert(crowd_keys[i], object(9));
            }
            _ => {
                a.remove(&crowd_keys[i]);
            }
        }
    }
    b.insert(key_in_leaf(leaf, 99_999), object(1));
    let out = check_contents(&a, &b);
    assert_eq!(out.a.len(), 11);
    // Both directions, so the chunk boundaries differ on each side.
    check_contents(&b, &a);
}

#[test]
fn differences_cost_what_they_touch_not_the_tree() {
    // One difference in 50,000 keys: one node per level, one small leaf, one key in the verdict.
    let mut a: Contents = (0..50_000).map(|i| (key(i), object(i))).collect();
    let b = a.clone();
    a.insert(key(7), object(8));
    let out = check_contents(&a, &b);
    assert_eq!(out.a.differing, BTreeSet::from([key(7)]));
    assert_eq!(out.flights, DEPTH + 3);
    // 35 + DEPTH × (16 digests + framing) + a leaf of ~1 entry + one verdict key.
    assert!(
        out.bytes < 35 + DEPTH * (FANOUT * 32 + 16) + 4 * 64 + 64,
        "{} bytes",
        out.bytes
    );
}

/// Pairs of replicas' contents, from the shapes that matter: independent, identical, differing
/// only in objects, disjoint, one or both sides empty, mostly shared with a few edits, and keys
/// crowded into a few leaves.
fn contents_pair() -> impl Strategy<Value = (Contents, Contents)> {
    let map = |keys: u64, n: usize| prop::collection::btree_map(0..keys, 0u64..3, 0..n);
    let crowded = prop::collection::btree_map(
        (
            prop::sample::select(vec![0u32, 1, 4095, 4096, LEAVES as u32 - 1]),
            0u64..400,
        ),
        0u64..3,
        0..200,
    )
    .prop_map(|m| -> Contents {
        m.into_iter()
            .map(|((leaf, i), v)| (key_in_leaf(leaf, i), object(v)))
            .collect()
    });
    let to = |m: std::collections::BTreeMap<u64, u64>| -> Contents {
        m.into_iter().map(|(k, v)| (key(k), object(v))).collect()
    };
    prop_oneof![
        (map(300, 200), map(300, 200)).prop_map(move |(a, b)| (to(a), to(b))),
        map(2000, 300).prop_map(move |a| (to(a.clone()), to(a))),
        (map(2000, 300), any::<u64>()).prop_map(move |(a, mask)| {
            let b = a
                .iter()
                .map(|(&k, &v)| {
                    (
                        k,
                        if (mask >> (k % 64)) & 1 == 1 {
                            v + 1
                        } else {
                            v
                        },
                    )
                })
                .collect();
            (to(a), to(b))
        }),
        map(2000, 300).prop_map(move |m| {
            let (even, odd): (Vec<_>, Vec<_>) = m.into_iter().partition(|(k, _)| k % 2 == 0);
            (
                to(even.into_iter().collect()),
                to(odd.into_iter().collect()),
            )
        }),
        map(2000, 300).prop_map(move |a| (to(a), Contents::new())),
        map(2000, 300).prop_map(move |b| (Contents::new(), to(b))),
        Just((Contents::new(), Contents::new())),
        (
            map(5000, 400),
            prop::collection::vec((0u64..5000, 0u64..4), 0..12)
        )
            .prop_map(move |(a, edits)| {
                let a = to(a);
                let mut b = a.clone();
                for (k, v) in edits {
                    if v == 3 {
                        b.remove(&key(k));
                    } else {
                        b.insert(key(k), object(v));
                    }
                }
                (a, b)
            }),
        (crowded.clone(), crowded),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The oracle: what both sides find equals the naive set difference, exactly.
    #[test]
    fn the_exchange_equals_the_naive_difference((a, b) in contents_pair()) {
        let out = exchange(&tree_of(&a), &tree_of(&b));
        prop_assert_eq!(&out.a, &naive(&a, &b));
        prop_assert_eq!(&out.b, &naive(&b, &a));
        prop_assert!(out.flights <= DEPTH + 3);
    }

    /// Any interleaving of the two directions (a paced driver, a network that reorders between
    /// streams' directions) finds the same differences.
    #[test]
    fn any_schedule_finds_the_same_differences((a, b) in contents_pair(), seed in any::<u64>()) {
        let out = exchange_scheduled(&tree_of(&a), &tree_of(&b), seed);
        prop_assert_eq!(&out.a, &naive(&a, &b));
        prop_assert_eq!(&out.b, &naive(&b, &a));
    }

    /// Writes landing on either replica during an exchange: it still ends without an error
    /// within `DEPTH + 3` trips, it reports only keys that differed at some point, and a second
    /// exchange after the writes finds exactly what differs then.
    #[test]
    fn writes_during_an_exchange_do_no_harm(
        (a, b) in contents_pair(),
        writes in prop::collection::vec((0usize..8, any::<bool>(), 0u64..2000, 0u64..4), 0..24),
    ) {
        let (mut ta, mut tb) = (tree_of(&a), tree_of(&b));
        let mut touched = BTreeSet::new();
        let out = exchange_with(&mut ta, &mut tb, |flight, ta, tb| {
            for &(at, side, k, v) in &writes {
                if at != flight {
                    continue;
                }
                touched.insert(key(k));
                let tree = if side { &mut *ta } else { &mut *tb };
                if v == 3 {
                    tree.remove(&key(k));
                } else {
                    tree.insert(key(k), object(v));
                }
            }
        });
        prop_assert!(out.flights <= DEPTH + 3);
        let before = naive(&a, &b);
        let possible: BTreeSet<KeyHash> = before
            .missing_here
            .iter()
            .chain(&before.missing_there)
            .chain(&before.differing)
            .chain(&touched)
            .copied()
            .collect();
        for k in out.a.missing_here.iter().chain(&out.a.missing_there).chain(&out.a.differing) {
            prop_assert!(possible.contains(k), "{} never differed", k);
        }
        let (a2, b2): (Contents, Contents) = (ta.iter().collect(), tb.iter().collect());
        let again = exchange(&ta, &tb);
        prop_assert_eq!(&again.a, &naive(&a2, &b2));
    }

    /// Whatever the bytes, decoding returns (never panics), and a decoded message handed to a
    /// session in any state returns too.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(message) = Message::decode(&bytes) {
            let tree = tree_of(&contents(&[(1, 1), (2, 2)]));
            for role in [Role::Initiator, Role::Responder] {
                let mut s = Session::new(role);
                let _ = s.handle_message(&tree, message.clone());
                while let Some(action) = s.poll_action(&tree) {
                    if action == Action::Done {
                        break;
                    }
                }
            }
        }
    }

    /// Flipping bytes of real messages: decoding and handling still never panic.
    #[test]
    fn corrupted_messages_never_panic(
        (a, b) in contents_pair(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (ta, tb) = (tree_of(&a), tree_of(&b));
        let mut sessions = [Session::new(Role::Initiator), Session::new(Role::Responder)];
        let trees = [&ta, &tb];
        let mut corrupted = false;
        for _ in 0..2 * (DEPTH + 3) {
            for from in [0, 1] {
                while let Some(action) = sessions[from].poll_action(trees[from]) {
                    let Action::Send(message) = action else {
                        if action == Action::Done { break } else { continue }
                    };
                    let mut bytes = message.encode().unwrap();
                    if !corrupted && !bytes.is_empty() {
                        corrupted = true;
                        for (i, x) in &flips {
                            let i = i.index(bytes.len());
                            bytes[i] ^= x | 1;
                        }
                    }
                    if let Ok(m) = Message::decode(&bytes) {
                        let _ = sessions[1 - from].handle_message(trees[1 - from], m);
                    }
                }
            }
        }
    }
}

#[test]
fn decode_refuses_oversized_truncated_and_trailing_input() {
    let too_big = vec![0u8; MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        Message::decode(&too_big),
        Err(AntiEntropyError::MessageTooLarge {
            len: MESSAGE_BYTES_MAX + 1,
            max: MESSAGE_BYTES_MAX
        })
    );
    let root = Message::Root {
        fanout: FANOUT as u8,
        depth: DEPTH as u8,
        digest: Digest([7; 32]),
    };
    let bytes = root.encode().unwrap();
    assert_eq!(bytes.len(), 35);
    assert_eq!(Message::decode(&bytes), Ok(root));
    assert!(matches!(
        Message::decode(&bytes[..20]),
        Err(AntiEntropyError::Undecodable { len: 20, .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        Message::decode(&longer),
        Err(AntiEntropyError::TrailingBytes {
            len: 36,
            trailing: 1
        })
    );
    assert!(matches!(
        Message::decode(&[]),
        Err(AntiEntropyError::Undecodable { len: 0, .. })
    ));
    // A sequence length claiming far more items than the bytes hold is refused, not allocated.
    let mut lying = vec![1u8, 1]; // Nodes, level 1
    lying.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX nodes
    assert!(Message::decode(&lying).is_err());
}

#[test]
fn decode_refuses_what_the_budget_and_shape_forbid() {
    let wrong_shape = Message::Root {
        fanout: 4,
        depth: 9,
        digest: Digest::ZERO,
    };
    assert_eq!(
        Message::decode(&wrong_shape.encode().unwrap()),
        Err(AntiEntropyError::GeometryMismatch {
            fanout: 4,
            depth: 9,
            local_fanout: FANOUT as u8,
            local_depth: DEPTH as u8
        })
    );
    let bad_level = Message::Nodes {
        level: DEPTH as u8 + 1,
        nodes: vec![],
        last: true,
    };
    assert!(matches!(
        Message::decode(&bad_level.encode().unwrap()),
        Err(AntiEntropyError::LevelOutOfRange { .. })
    ));
    let bad_parent = Message::Nodes {
        level: 2,
        nodes: vec![NodeChildren {
            parent: FANOUT as u32,
            digests: [Digest::ZERO; FANOUT],
        }],
        last: true,
    };
    assert!(matches!(
        Message::decode(&bad_parent.encode().unwrap()),
        Err(AntiEntropyError::IndexOutOfRange { level: 1, .. })
    ));
    let stray = Message::Entries {
        chunks: vec![LeafChunk {
            bucket: 5,
            after: None,
            through: None,
            entries: vec![(key_in_leaf(6, 1), object(1))],
        }],
        last: true,
    };
    assert!(matches!(
        Message::decode(&stray.encode().unwrap()),
        Err(AntiEntropyError::KeyOutsideBucket { bucket: 5, .. })
    ));
    let (k1, k2) = (key_in_leaf(5, 1), key_in_leaf(5, 2));
    let (lo, hi) = if k1.0[8..] < k2.0[8..] {
        (k1, k2)
    } else {
        (k2, k1)
    };
    let unsorted = Message::Entries {
        chunks: vec![LeafChunk {
            bucket: 5,
            after: None,
            through: None,
            entries: vec![(hi, object(1)), (lo, object(1))],
        }],
        last: true,
    };
    assert!(matches!(
        Message::decode(&unsorted.encode().unwrap()),
        Err(AntiEntropyError::EntriesOutOfOrder { bucket: 5, .. })
    ));
    let backwards = Message::Entries {
        chunks: vec![LeafChunk {
            bucket: 5,
            after: Some(hi),
            through: Some(lo),
            entries: vec![],
        }],
        last: true,
    };
    assert!(matches!(
        Message::decode(&backwards.encode().unwrap()),
        Err(AntiEntropyError::EntriesOutOfOrder { bucket: 5, .. })
    ));
    let huge_verdict = Message::Verdict {
        only_sender: vec![key(1); 5000],
        only_receiver: vec![],
        differing: vec![],
        last: true,
    };
    assert!(matches!(
        Message::decode(&huge_verdict.encode().unwrap()),
        Err(AntiEntropyError::TooManyItems {
            limit: "KEYS_PER_DIFF_BATCH_MAX",
            ..
        })
    ));
    let too_big = Message::Verdict {
        only_sender: vec![key(1); MESSAGE_BYTES_MAX / 32 + 1],
        only_receiver: vec![],
        differing: vec![],
        last: true,
    };
    assert!(matches!(
        too_big.encode(),
        Err(AntiEntropyError::MessageTooLarge { .. })
    ));
}

/// Two sessions and their trees, advanced message by message so a test can forge what one side
/// receives at a chosen step.
struct Pair {
    trees: [MerkleTree; 2],
    sessions: [Session; 2],
}

impl Pair {
    fn new(a: &Contents, b: &Contents) -> Pair {
        Pair {
            trees: [tree_of(a), tree_of(b)],
            sessions: [Session::new(Role::Initiator), Session::new(Role::Responder)],
        }
    }

    /// Delivers messages until `side` is about to receive a message of `step`; returns that
    /// message, undelivered.
    fn until(&mut self, side: usize, step: u8) -> Message {
        for _ in 0..4 * (DEPTH + 3) {
            for from in [0, 1] {
                while let Some(Action::Send(m)) = self.sessions[from].poll_action(&self.trees[from])
                {
                    if 1 - from == side && m.step() == step {
                        return m;
                    }
                    self.sessions[1 - from]
                        .handle_message(&self.trees[1 - from], m)
                        .unwrap();
                }
            }
        }
        panic!("side {side} never got to step {step}");
    }

    fn deliver(&mut self, side: usize, m: Message) -> Result<(), AntiEntropyError> {
        self.sessions[side].handle_message(&self.trees[side], m)
    }
}

fn one_difference() -> (Contents, Contents) {
    let a: Contents = (0..2000).map(|i| (key(i), object(i))).collect();
    let mut b = a.clone();
    b.insert(key(5), object(1));
    (a, b)
}

#[test]
fn out_of_protocol_messages_are_refused_and_end_the_session() {
    let (a, b) = one_difference();

    // A responder must start with the root.
    let mut p = Pair::new(&a, &b);
    let forged = Message::Nodes {
        level: 1,
        nodes: vec![],
        last: true,
    };
    assert_eq!(
        p.deliver(1, forged.clone()),
        Err(AntiEntropyError::UnexpectedMessage {
            got: 1,
            expected: Some(0)
        })
    );
    // A failed session reports nothing more and takes nothing more.
    assert_eq!(p.sessions[1].poll_action(&p.trees[1]), None);
    assert_eq!(
        p.deliver(1, forged),
        Err(AntiEntropyError::UnexpectedMessage {
            got: 1,
            expected: None
        })
    );

    // Parents repeated or going backwards.
    let mut p = Pair::new(&a, &b);
    let Message::Nodes { mut nodes, .. } = p.until(1, 2) else {
        unreachable!()
    };
    nodes.push(nodes[0].clone());
    let parent = nodes[0].parent;
    assert_eq!(
        p.deliver(
            1,
            Message::Nodes {
                level: 2,
                nodes,
                last: true
            }
        ),
        Err(AntiEntropyError::OutOfOrder {
            level: 1,
            index: parent,
            previous: parent
        })
    );

    // A parent whose digest this side never sent: level 3 from a level-1 subtree other than the
    // one that differs.
    let mut p = Pair::new(&a, &b);
    let offered = key(5).leaf() >> ((DEPTH - 1) as u32 * FANOUT.trailing_zeros());
    let elsewhere = ((offered + 1) % FANOUT as u32) * FANOUT as u32;
    let Message::Nodes { .. } = p.until(0, 3) else {
        unreachable!()
    };
    assert_eq!(
        p.deliver(
            0,
            Message::Nodes {
                level: 3,
                nodes: vec![NodeChildren {
                    parent: elsewhere,
                    digests: [Digest::ZERO; FANOUT]
                }],
                last: true
            }
        ),
        Err(AntiEntropyError::NotOffered {
            level: 2,
            index: elsewhere
        })
    );

    // Entries of a bucket whose digest was never sent, and a bucket left unfinished.
    let mut p = Pair::new(&a, &b);
    let Message::Entries { .. } = p.until(1, cairn_antientropy::STEP_ENTRIES) else {
        unreachable!()
    };
    let other = (key(5).leaf() + FANOUT as u32) % LEAVES as u32;
    let chunk = |bucket, through| LeafChunk {
        bucket,
        after: None,
        through,
        entries: vec![],
    };
    let mut q = Pair::new(&a, &b);
    q.until(1, cairn_antientropy::STEP_ENTRIES);
    assert_eq!(
        p.deliver(
            1,
            Message::Entries {
                chunks: vec![chunk(other, None)],
                last: true
            }
        ),
        Err(AntiEntropyError::NotOffered {
            level: DEPTH as u8,
            index: other
        })
    );
    let leaf = key(5).leaf();
    assert_eq!(
        q.deliver(
            1,
            Message::Entries {
                chunks: vec![chunk(leaf, Some(key_in_leaf(leaf, 3)))],
                last: true
            }
        ),
        Err(AntiEntropyError::ChunkGap { bucket: leaf })
    );

    // A verdict naming a key in a bucket this side never sent.
    let mut p = Pair::new(&a, &b);
    p.until(0, cairn_antientropy::STEP_VERDICT);
    let stray = key(6);
    assert_eq!(
        p.deliver(
            0,
            Message::Verdict {
                only_sender: vec![stray],
                only_receiver: vec![],
                differing: vec![],
                last: true
            }
        ),
        Err(AntiEntropyError::NotOffered {
            level: DEPTH as u8,
            index: stray.leaf()
        })
    );

    // Anything after the end.
    let mut p = Pair::new(&a, &a);
    let mut initiator = Session::new(Role::Initiator);
    let root = match initiator.poll_action(&p.trees[0]) {
        Some(Action::Send(m)) => m,
        other => panic!("{other:?}"),
    };
    p.deliver(1, root.clone()).unwrap();
    assert!(matches!(
        p.sessions[1].poll_action(&p.trees[1]),
        Some(Action::Send(_))
    ));
    assert!(p.sessions[1].is_done());
    assert_eq!(
        p.deliver(1, root),
        Err(AntiEntropyError::UnexpectedMessage {
            got: 0,
            expected: None
        })
    );
}

#[test]
fn the_diff_reaches_the_driver_in_bounded_batches() {
    let a: Contents = (0..5000).map(|i| (key(i), object(i))).collect();
    let (ta, tb) = (tree_of(&a), MerkleTree::new());
    let mut sessions = [Session::new(Role::Initiator), Session::new(Role::Responder)];
    let trees = [&ta, &tb];
    let mut batches = [0usize; 2];
    let mut found = [Found::default(), Found::default()];
    let mut done = [false; 2];
    while !(done[0] && done[1]) {
        for from in [0, 1] {
            while let Some(action) = sessions[from].poll_action(trees[from]) {
                match action {
                    Action::Send(m) => sessions[1 - from]
                        .handle_message(trees[1 - from], m)
                        .unwrap(),
                    Action::Diff {
                        keys_missing_here,
                        keys_missing_there,
                        keys_differing,
                    } => {
                        batches[from] += 1;
                        found[from].missing_here.extend(keys_missing_here);
                        found[from].missing_there.extend(keys_missing_there);
                        found[from].differing.extend(keys_differing);
                    }
                    Action::Done => {
                        done[from] = true;
                        break;
                    }
                }
            }
        }
    }
    assert_eq!(found[0], naive(&a, &Contents::new()));
    assert_eq!(found[1], naive(&Contents::new(), &a));
    assert!(
        batches[0] >= 5,
        "5000 keys in batches of at most 1024: {batches:?}"
    );
    // Done repeats.
    assert_eq!(sessions[0].poll_action(&ta), Some(Action::Done));
}
