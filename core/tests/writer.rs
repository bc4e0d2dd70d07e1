//! The writer's batch application over a `MemoryStore` (and one whose commits fail): the dot
//! lease, hint renewals and deletions, the hint maximum, and a failed commit.

use std::collections::BTreeMap;

use cairn_antientropy::KeyHash;
use cairn_core::store::{Batch, Hint, MemoryStore, NodeMeta, Store, StoreError};
use cairn_core::version::{Object, Payload, VClock};
use cairn_core::writer::{Write, WriteError, Writer, WriterConfig};
use cairn_proto::NodeId;

const LEASE_BLOCK: u64 = 4;

fn node(name: &str) -> NodeId {
    NodeId::from_name(name)
}

fn open(store: &dyn Store, hints_max: u64) -> Writer {
    Writer::open(
        store,
        node("me"),
        7,
        WriterConfig::new(LEASE_BLOCK, hints_max),
    )
    .unwrap()
}

fn update(value: &str) -> Write {
    Write::Update {
        ctx: VClock::default(),
        payload: Payload::Value(value.as_bytes().to_vec()),
    }
}

fn apply(
    w: &mut Writer,
    store: &dyn Store,
    writes: Vec<(&str, Write)>,
) -> Vec<Result<Object, WriteError>> {
    let writes: Vec<(Vec<u8>, Write)> = writes
        .into_iter()
        .map(|(k, w)| (k.as_bytes().to_vec(), w))
        .collect();
    w.apply_batch(store, &writes, &mut |b| store.commit(b))
        .results
}

/// The object one write leaves at `key`, which must succeed.
fn applied(w: &mut Writer, store: &dyn Store, key: &str, write: Write) -> Object {
    apply(w, store, vec![(key, write)]).pop().unwrap().unwrap()
}

fn counters(o: &Object) -> Vec<u64> {
    o.siblings().iter().map(|(d, _)| d.counter).collect()
}

#[test]
fn a_reopened_writer_never_mints_a_counter_again() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let first = apply(&mut w, &store, vec![("a", update("1")), ("b", update("2"))]);
    let minted: Vec<u64> = first
        .iter()
        .flat_map(|r| counters(r.as_ref().unwrap()))
        .collect();
    assert_eq!(minted, vec![1, 2]);
    let lease_end = store.meta().unwrap().unwrap().lease_end;
    assert!(
        lease_end > 2,
        "the lease covers what was minted: {lease_end}"
    );
    // A crash: the writer is gone, the store stays.
    drop(w);
    let mut w = open(&store, 10);
    let again = apply(&mut w, &store, vec![("c", update("3"))]);
    assert_eq!(counters(again[0].as_ref().unwrap()), vec![lease_end]);
}

#[test]
fn a_delivered_hint_is_deleted_only_if_not_renewed() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let target = node("other");
    apply(&mut w, &store, vec![("k", Write::AddHint { target })]);
    let seq = store.hint(target, b"k").unwrap().unwrap().seq;
    // Renewed, then the delivery of the old renewal comes back: the hint stays.
    apply(&mut w, &store, vec![("k", Write::AddHint { target })]);
    let renewed = store.hint(target, b"k").unwrap().unwrap().seq;
    assert_ne!(seq, renewed);
    apply(
        &mut w,
        &store,
        vec![("k", Write::HintDelivered { target, seq })],
    );
    assert!(store.hint(target, b"k").unwrap().is_some());
    assert_eq!(w.hint_counts().get(&target), Some(&1));
    // The delivery of the current renewal deletes it, in the same batch as a later renewal of
    // another key.
    apply(
        &mut w,
        &store,
        vec![
            (
                "k",
                Write::HintDelivered {
                    target,
                    seq: renewed,
                },
            ),
            ("j", Write::AddHint { target }),
        ],
    );
    assert!(store.hint(target, b"k").unwrap().is_none());
    assert_eq!(w.hint_counts().get(&target), Some(&1));
}

/// `writes` applied by a fresh writer over a fresh store that keeps at most `max` hints per
/// peer.
fn apply_with_hint_limit(
    max: u64,
    writes: Vec<(&str, Write)>,
) -> (MemoryStore, Vec<Result<Object, WriteError>>) {
    let store = MemoryStore::new();
    let mut w = open(&store, max);
    let results = apply(&mut w, &store, writes);
    (store, results)
}

/// Write `i` of `results` was refused because its peer's hints are at `max`.
fn assert_hints_full(results: &[Result<Object, WriteError>], i: usize, max: u64) {
    assert!(
        matches!(&results[i], Err(WriteError::HintsFull { max: m, .. }) if *m == max),
        "{results:?}"
    );
}

#[test]
fn hints_beyond_the_maximum_are_refused_and_the_merge_with_them() {
    let target = node("other");
    let (store, results) = apply_with_hint_limit(
        2,
        vec![
            ("a", Write::AddHint { target }),
            ("b", Write::AddHint { target }),
            // Renewing a held hint needs no room.
            ("a", Write::AddHint { target }),
            (
                "c",
                Write::Merge {
                    object: Object::new(),
                    hint_for: Some(target),
                },
            ),
        ],
    );
    assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
    assert_hints_full(&results, 3, 2);
    assert_eq!(store.hint_counts().unwrap().get(&target), Some(&2));
}

/// Two full hint queues each waiting to redirect into the other would never drain (simulator,
/// seed 8025 of the crash sweep): a redirected hint is admitted over the limit.
#[test]
fn a_redirected_hint_is_kept_over_the_limit_a_new_one_is_not() {
    let target = node("owner");
    let (store, results) = apply_with_hint_limit(
        1,
        vec![
            ("a", Write::AddHint { target }),
            ("b", Write::AddHint { target }),
            ("b", Write::RedirectHint { target }),
        ],
    );
    assert!(results[0].is_ok(), "{results:?}");
    assert_hints_full(&results, 1, 1);
    assert!(results[2].is_ok(), "{results:?}");
    assert!(store.hint(target, b"b").unwrap().is_some());
    assert_eq!(store.hint_counts().unwrap().get(&target), Some(&2));
}

/// A store whose commits fail after the first `ok` of them.
#[derive(Debug, Default)]
struct Failing {
    inner: MemoryStore,
    ok: std::sync::atomic::AtomicU64,
}

impl Store for Failing {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        self.inner.meta()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .ok
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(StoreError::Io {
                op: "commit",
                reason: "disk full".into(),
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
}

#[test]
fn a_failed_commit_fails_every_write_of_the_batch_and_keeps_nothing() {
    // The fresh store's metadata and the first lease extension succeed; the batch does not.
    let store = Failing {
        ok: 2.into(),
        ..Failing::default()
    };
    let mut w = open(&store, 10);
    let target = node("other");
    let results = apply(
        &mut w,
        &store,
        vec![("a", update("1")), ("b", Write::AddHint { target })],
    );
    assert!(
        results.iter().all(|r| matches!(
            r,
            Err(WriteError::Store(StoreError::Io { op: "commit", .. }))
        )),
        "{results:?}"
    );
    assert_eq!(store.get(b"a").unwrap(), None);
    assert!(w.hint_counts().is_empty(), "counts follow the store");
    // The lease extension failing refuses the batch too.
    let results = apply(
        &mut w,
        &store,
        vec![("a", update("1")); LEASE_BLOCK as usize + 2],
    );
    assert!(results.iter().all(Result::is_err));
}

fn drop_if(expected: &Object) -> Write {
    Write::DropIfUnchanged {
        expected: expected.clone(),
    }
}

fn merge(object: &Object) -> Write {
    Write::Merge {
        object: object.clone(),
        hint_for: None,
    }
}

#[test]
fn drop_if_unchanged_removes_the_object_and_its_key_hash_only_if_it_is_what_was_seen() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let seen = applied(&mut w, &store, "k", update("1"));
    // A newer write arrived after the caller read `seen`: the drop must not remove it.
    let newer = applied(&mut w, &store, "k", update("2"));
    let kept = apply(&mut w, &store, vec![("k", drop_if(&seen))]);
    assert_eq!(kept[0].as_ref().unwrap(), &newer);
    assert!(store.get(b"k").unwrap().is_some());
    // The object the caller saw is the stored one: dropped, hash index included.
    let writes = vec![(b"k".to_vec(), drop_if(&newer))];
    let outcome = w.apply_batch(&store, &writes, &mut |b| store.commit(b));
    assert!(outcome.results[0].as_ref().unwrap().is_empty());
    assert_eq!(outcome.removes, vec![b"k".to_vec()]);
    assert!(outcome.puts.is_empty());
    assert_eq!(store.get(b"k").unwrap(), None);
    assert_eq!(store.key_for_hash(&KeyHash::of_key(b"k")).unwrap(), None);
    let mut left = 0;
    store
        .scan_objects(None, &mut |_, _| {
            left += 1;
            true
        })
        .unwrap();
    assert_eq!(left, 0);
    // Dropping an absent key changes nothing and commits nothing.
    let commits = store.commits();
    let writes = vec![(b"k".to_vec(), drop_if(&newer))];
    let outcome = w.apply_batch(&store, &writes, &mut |b| store.commit(b));
    assert!(!outcome.committed);
    assert_eq!(store.commits(), commits);
}

#[test]
fn a_merge_after_a_drop_in_the_same_batch_is_stored_and_a_merge_before_it_prevents_it() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let seen = applied(&mut w, &store, "k", update("1"));
    let peer = {
        let other = MemoryStore::new();
        let mut w2 =
            Writer::open(&other, node("peer"), 9, WriterConfig::new(LEASE_BLOCK, 10)).unwrap();
        apply(&mut w2, &other, vec![("k", update("peer"))])
            .pop()
            .unwrap()
            .unwrap()
    };
    // Drop, then a peer's merge later in the same group commit: the merge is what is stored.
    let results = apply(
        &mut w,
        &store,
        vec![("k", drop_if(&seen)), ("k", merge(&peer))],
    );
    assert!(results[0].as_ref().unwrap().is_empty());
    let stored = Object::decode(&store.get(b"k").unwrap().unwrap()).unwrap();
    assert_eq!(stored, peer);
    // A merge ahead of the drop in the same batch changes the object: the drop keeps it.
    let results = apply(
        &mut w,
        &store,
        vec![("k", merge(&seen)), ("k", drop_if(&peer))],
    );
    assert!(!results[1].as_ref().unwrap().is_empty());
    // (The stored object also records a fresh actor of this node: `seen` brought back a write
    // of its own that its copy had lost, so that actor is not continued.)
    assert_eq!(
        Object::decode(&store.get(b"k").unwrap().unwrap())
            .unwrap()
            .siblings(),
        peer.sync(&seen).siblings()
    );
}

#[test]
fn a_copy_that_backs_a_hint_is_not_dropped_until_the_hint_is_delivered() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let target = node("primary");
    let seen = apply(
        &mut w,
        &store,
        vec![(
            "k",
            Write::Merge {
                object: Object::new()
                    .update(
                        &VClock::default(),
                        cairn_core::version::Dot::new(
                            cairn_proto::ActorId {
                                node: node("coordinator"),
                                epoch: 1,
                            },
                            1,
                        ),
                        Payload::Value(b"v".to_vec()),
                    )
                    .unwrap(),
                hint_for: Some(target),
            },
        )],
    )
    .pop()
    .unwrap()
    .unwrap();
    let kept = apply(&mut w, &store, vec![("k", drop_if(&seen))]);
    assert_eq!(
        kept[0].as_ref().unwrap(),
        &seen,
        "the hint is delivered from this copy"
    );
    assert!(store.get(b"k").unwrap().is_some());
    let seq = store.hint(target, b"k").unwrap().unwrap().seq;
    // Delivered and dropped in one batch: the delivery comes first, so the drop may go ahead.
    let results = apply(
        &mut w,
        &store,
        vec![
            ("k", Write::HintDelivered { target, seq }),
            ("k", drop_if(&seen)),
        ],
    );
    assert!(results[1].as_ref().unwrap().is_empty());
    assert_eq!(store.get(b"k").unwrap(), None);
    assert_eq!(store.hint(target, b"k").unwrap(), None);
}

#[test]
fn a_merge_that_brings_nothing_new_writes_nothing_but_keeps_its_hint() {
    let store = MemoryStore::new();
    let mut w = open(&store, 10);
    let stored = applied(&mut w, &store, "k", update("1"));
    // The same copy again (a second old replica's push, a repair that already happened): no
    // put, no commit, the answer is the stored object.
    let writes = vec![(b"k".to_vec(), merge(&stored))];
    let outcome = w.apply_batch(&store, &writes, &mut |b| store.commit(b));
    assert_eq!(outcome.results[0].as_ref().unwrap(), &stored);
    assert!(outcome.puts.is_empty(), "{:?}", outcome.puts);
    assert!(!outcome.committed);
    // An older copy is dominated by the stored one: nothing written either.
    let writes = vec![(b"k".to_vec(), merge(&Object::new()))];
    let outcome = w.apply_batch(&store, &writes, &mut |b| store.commit(b));
    assert!(outcome.puts.is_empty() && !outcome.committed);
    // A fallback's merge that brings nothing new still records the hint it stands for.
    let target = node("down");
    let writes = vec![(
        b"k".to_vec(),
        Write::Merge {
            object: stored.clone(),
            hint_for: Some(target),
        },
    )];
    let outcome = w.apply_batch(&store, &writes, &mut |b| store.commit(b));
    assert!(outcome.committed && outcome.puts.is_empty());
    assert_eq!(w.hint_counts().get(&target), Some(&1));
    assert_eq!(
        Object::decode(&store.get(b"k").unwrap().unwrap()).unwrap(),
        stored
    );
    // A write earlier in the same batch is stored even when a later merge adds nothing to it.
    let results = apply(
        &mut w,
        &store,
        vec![
            (
                "k",
                Write::Update {
                    ctx: stored.join(),
                    payload: Payload::Value(b"2".to_vec()),
                },
            ),
            ("k", merge(&stored)),
        ],
    );
    let newer = results[1].as_ref().unwrap();
    assert_eq!(
        &Object::decode(&store.get(b"k").unwrap().unwrap()).unwrap(),
        newer
    );
    assert_eq!(newer.live().len(), 1);
}
