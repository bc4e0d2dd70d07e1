//! A write coordinated at a node that lost its copy of the key (a fallback that dropped it after
//! handoff, a cleanup after a layout change, a reap) must not discard a sibling it never saw:
//! the lost write the container nemesis found (seed 45, --layout). Real `Writer`s over
//! `MemoryStore`s, so the dots are the ones the node mints.

use std::collections::{BTreeSet, HashSet};

use cairn_core::store::{MemoryStore, Store};
use cairn_core::version::{Dot, Object, Payload, VClock};
use cairn_core::writer::{Write, Writer, WriterConfig};
use cairn_proto::NodeId;
use proptest::prelude::*;

const LEASE_BLOCK: u64 = 4;

struct Node {
    store: MemoryStore,
    writer: Writer,
}

impl Node {
    fn new(name: &str) -> Node {
        let store = MemoryStore::new();
        let writer = Writer::open(
            &store,
            NodeId::from_name(name),
            7,
            WriterConfig::new(LEASE_BLOCK, 16),
        )
        .unwrap();
        Node { store, writer }
    }

    fn apply(&mut self, write: Write) -> Object {
        let writes = vec![(b"k".to_vec(), write)];
        let store = &self.store;
        let mut outcome = self
            .writer
            .apply_batch(store, &writes, &mut |b| store.commit(b));
        outcome.results.remove(0).unwrap()
    }

    fn copy(&self) -> Object {
        cairn_core::writer::read_object(&self.store, b"k").unwrap()
    }

    fn put(&mut self, ctx: VClock, value: &str) -> Object {
        self.apply(Write::Update {
            ctx,
            payload: Payload::Value(value.as_bytes().to_vec()),
        })
    }

    fn merge(&mut self, object: &Object) -> Object {
        self.apply(Write::Merge {
            object: object.clone(),
            hint_for: None,
        })
    }

    /// The fallback's drop once its hint was delivered: compare-and-delete of what it holds.
    fn drop_copy(&mut self) {
        let expected = self.copy();
        let after = self.apply(Write::DropIfUnchanged { expected });
        assert!(after.is_empty(), "the copy was dropped");
    }
}

fn values(o: &Object) -> BTreeSet<String> {
    o.live()
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn set(vs: &[&str]) -> BTreeSet<String> {
    vs.iter().map(|v| v.to_string()).collect()
}

#[test]
fn a_blind_write_after_a_drop_keeps_the_sibling_it_did_not_see() {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let v1 = a.put(VClock::default(), "v1");
    b.merge(&v1);
    a.drop_copy();
    let v2 = a.put(VClock::default(), "v2");
    assert_eq!(values(&v2), set(&["v2"]));
    // Replication of v2 to b, and b's copy back to a (read repair): both keep both.
    assert_eq!(values(&b.merge(&v2)), set(&["v1", "v2"]));
    assert_eq!(values(&a.merge(&b.copy())), set(&["v1", "v2"]));
}

#[test]
fn a_blind_write_after_a_drop_and_a_stale_copy_keeps_the_sibling_it_did_not_see() {
    // c holds an older state of a's history for the key, b the newest: a drops its copy, gets
    // c's stale one back (as a fallback again, or by read repair), then coordinates a blind write.
    let (mut a, mut b, mut c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let v1 = a.put(VClock::default(), "v1");
    c.merge(&v1);
    let v2 = a.put(VClock::default(), "v2");
    b.merge(&v2);
    a.drop_copy();
    a.merge(&c.copy());
    let v3 = a.put(VClock::default(), "v3");
    assert_eq!(values(&b.merge(&v3)), set(&["v1", "v2", "v3"]));
    // A write that saw v3 (and v1, from c) but not v2 keeps v2.
    let v4 = a.put(v3.join(), "v4");
    assert_eq!(values(&b.merge(&v4)), set(&["v2", "v4"]));
}

#[test]
fn a_context_write_after_a_drop_supersedes_only_what_it_saw() {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let v1 = a.put(VClock::default(), "v1");
    b.merge(&v1);
    let v2 = a.put(v1.join(), "v2");
    assert_eq!(values(&v2), set(&["v2"]));
    b.merge(&v2);
    // a's copy is dropped; a client that read only v1 writes through a.
    a.drop_copy();
    let v3 = a.put(v1.join(), "v3");
    assert_eq!(values(&b.merge(&v3)), set(&["v2", "v3"]));
}

#[test]
fn a_blind_write_after_a_drop_and_a_stale_tombstone_keeps_the_sibling_it_did_not_see() {
    // a deletes v1 (c keeps that tombstone), writes v2 over it (b has v2), then drops its copy
    // and gets c's stale tombstone back into an empty slot (handoff, anti-entropy). Continuing
    // the tombstone's actor would give v3 a dot that claims v2: b would then discard v2.
    let (mut a, mut b, mut c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let v1 = a.put(VClock::default(), "v1");
    let tombstone = a.apply(Write::Update {
        ctx: v1.join(),
        payload: Payload::Tombstone,
    });
    c.merge(&tombstone);
    let v2 = a.put(tombstone.join(), "v2");
    b.merge(&v2);
    a.drop_copy();
    a.merge(&c.copy());
    let v3 = a.put(VClock::default(), "v3");
    assert_eq!(values(&b.merge(&v3)), set(&["v2", "v3"]));
}

// ---- Property: random histories of writes, replication, fallback drops ----

const NODES: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// A client write at `node`, blind or with the context of an earlier state of any node.
    Put {
        node: usize,
        ctx: Option<prop::sample::Index>,
    },
    /// `to` merges `from`'s copy (replication, read repair, anti-entropy, handoff).
    Sync { from: usize, to: usize },
    /// `node` hands its copy to `to` and drops its own (a fallback whose hint was delivered).
    HandOffAndDrop { node: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..NODES, prop::option::of(any::<prop::sample::Index>()))
            .prop_map(|(node, ctx)| Step::Put { node, ctx }),
        2 => (0..NODES, 0..NODES).prop_map(|(from, to)| Step::Sync { from, to }),
        1 => (0..NODES, 0..NODES).prop_map(|(node, to)| Step::HandOffAndDrop { node, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every value written survives the final merge of all copies unless some write's context
    /// had it among the siblings it read.
    #[test]
    fn no_sibling_is_discarded_unless_a_write_saw_it(steps in prop::collection::vec(step(), 0..30)) {
        let mut nodes: Vec<Node> = (0..NODES).map(|i| Node::new(&format!("n{i}"))).collect();
        let mut states = vec![Object::new()];
        let mut written: Vec<Dot> = Vec::new();
        let mut seen: HashSet<Dot> = HashSet::new();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Put { node, ctx } => {
                    let ctx = match ctx {
                        None => VClock::default(),
                        Some(ix) => {
                            let read = ix.get(&states);
                            seen.extend(read.siblings().iter().map(|(d, _)| *d));
                            read.join()
                        }
                    };
                    let before: HashSet<Dot> =
                        nodes[*node].copy().siblings().iter().map(|(d, _)| *d).collect();
                    let after = nodes[*node].put(ctx, &format!("w{i}"));
                    let minted: Vec<Dot> = after
                        .siblings()
                        .iter()
                        .map(|(d, _)| *d)
                        .filter(|d| !before.contains(d))
                        .collect();
                    prop_assert_eq!(minted.len(), 1);
                    written.push(minted[0]);
                }
                Step::Sync { from, to } => {
                    let copy = nodes[*from].copy();
                    nodes[*to].merge(&copy);
                }
                Step::HandOffAndDrop { node, to } if node != to => {
                    let copy = nodes[*node].copy();
                    nodes[*to].merge(&copy);
                    nodes[*node].drop_copy();
                }
                Step::HandOffAndDrop { .. } => {}
            }
            states.extend(nodes.iter().map(Node::copy));
        }
        let all = nodes.iter().fold(Object::new(), |acc, n| acc.sync(&n.copy()));
        let kept: HashSet<Dot> = all.siblings().iter().map(|(d, _)| *d).collect();
        for dot in written {
            prop_assert!(
                seen.contains(&dot) || kept.contains(&dot),
                "{:?} was discarded though no write saw it; final {:?}",
                dot,
                all.entries()
            );
        }
    }
}
