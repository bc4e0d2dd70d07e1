//! The engine over real and in-memory stores: group commit, durable acknowledgements, and dots
//! that are never minted twice across restarts, crashes and lost data directories.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_node::engine::{Engine, EngineError, Write};
use cairn_node::store::{Batch, Hint, MemoryStore, NodeMeta, RedbStore, Store, StoreError};
use cairn_node::version::{Object, Payload, VClock};
use cairn_proto::{ErrorReply, NodeId};
use rand::{rngs::StdRng, SeedableRng};

fn node() -> NodeId {
    NodeId::from_name("node1")
}

fn put(v: &str) -> Write {
    Write::Update {
        ctx: VClock::new(),
        payload: Payload::Value(v.as_bytes().to_vec()),
    }
}

/// Waits for `cond` with a deadline instead of sleeping a fixed time.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A memory store whose commits can be held at a gate, and can be told to fail object writes.
#[derive(Default)]
struct TestStore {
    inner: MemoryStore,
    held: Mutex<bool>,
    released: Condvar,
    /// Writes in the batch currently stuck at the gate.
    blocked_writes: AtomicUsize,
    fail_objects: AtomicBool,
    /// Object writes fail as a full disk does.
    disk_full: AtomicBool,
}

impl TestStore {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }
    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }
}

impl Store for TestStore {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        self.inner.meta()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        self.inner.hints(target, limit)
    }
    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError> {
        self.inner.hint(target, key)
    }
    fn hint_counts(&self) -> Result<std::collections::BTreeMap<NodeId, u64>, StoreError> {
        self.inner.hint_counts()
    }
    fn key_for_hash(
        &self,
        key_hash: &cairn_antientropy::KeyHash,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_for_hash(key_hash)
    }
    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        self.inner.scan_objects(after, visit)
    }
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut held = self.held.lock().unwrap();
        if *held {
            self.blocked_writes
                .store(batch.puts.len(), Ordering::SeqCst);
        }
        while *held {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        if !batch.puts.is_empty() && self.disk_full.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "commit log append",
                reason: "No space left on device (os error 28)".into(),
            });
        }
        if !batch.puts.is_empty() && self.fail_objects.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                op: "commit",
                reason: "injected failure (crash before the write became durable)".into(),
            });
        }
        self.inner.commit(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let store = Arc::new(TestStore::default());
    let engine =
        Arc::new(Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap());
    // Warm up so the lease is extended and the writer is idle.
    engine.apply(b"warm".to_vec(), put("w")).await.unwrap();
    let commits_before = engine.stats().commits.load(Ordering::SeqCst);

    // Hold the disk while 64 writers queue up, as if a slow fsync were in progress.
    store.hold();
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.apply(format!("k{i}").into_bytes(), put("v")).await })
        })
        .collect();
    // The writer thread took a first batch and is stuck at the gate; the rest wait in the queue.
    wait_for("all 64 writes submitted", || {
        store.blocked_writes.load(Ordering::SeqCst) + engine.queue_len() == 64
    })
    .await;
    store.release();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let commits = engine.stats().commits.load(Ordering::SeqCst) - commits_before;
    assert!(commits <= 2, "64 concurrent writes took {commits} commits");
    assert_eq!(
        store.inner.commits() as usize,
        1 /* meta */ + 1 /* lease */ + 1 /* warm */ + commits as usize
    );
}

#[tokio::test]
async fn restart_resumes_after_the_lease_and_keeps_the_epoch() {
    let store = Arc::new(MemoryStore::new());
    let e1 = Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap();
    let first = e1.apply(b"k".to_vec(), put("a")).await.unwrap();
    let actor = e1.actor();
    drop(e1);

    let e2 = Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(99)).unwrap();
    assert_eq!(e2.actor(), actor, "a clean restart keeps the epoch");
    let second = e2.apply(b"k".to_vec(), put("b")).await.unwrap();
    // The second write did not see the first: both survive, with distinct dots.
    let dots: Vec<_> = second.live().into_iter().map(|(d, _)| d).collect();
    assert_eq!(dots.len(), 2, "{second:?}");
    assert_ne!(dots[0], dots[1]);
    assert!(first.live().iter().all(|(d, _)| dots.contains(d)));
}

#[tokio::test]
async fn a_crash_between_minting_and_persisting_never_reuses_a_dot() {
    let store = Arc::new(TestStore::default());
    let e1 = Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap();
    e1.apply(b"k".to_vec(), put("a")).await.unwrap();
    let lease_before = store.meta().unwrap().unwrap().lease_end;
    // The next write mints a dot, then "crashes" before its object is durable.
    store.fail_objects.store(true, Ordering::SeqCst);
    let lost = e1.apply(b"k".to_vec(), put("lost")).await;
    assert!(matches!(lost, Err(EngineError::Store(_))), "{lost:?}");
    drop(e1);
    store.fail_objects.store(false, Ordering::SeqCst);

    let e2 = Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap();
    let obj = e2.apply(b"k".to_vec(), put("b")).await.unwrap();
    let newest = obj
        .live()
        .into_iter()
        .map(|(d, _)| d.counter)
        .max()
        .unwrap();
    assert!(
        newest >= lease_before,
        "dot {newest} minted after restart is below the persisted lease end {lease_before}: it may repeat the lost write's dot"
    );
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_and_marks_the_engine_degraded_until_a_commit_succeeds() {
    let store = Arc::new(TestStore::default());
    let engine = Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap();
    engine.apply(b"k".to_vec(), put("a")).await.unwrap();
    assert_eq!(engine.stats().degraded(), None);

    store.disk_full.store(true, Ordering::SeqCst);
    let refused = engine.apply(b"k".to_vec(), put("b")).await;
    let reason = match refused {
        Err(e @ EngineError::Store(_)) => ErrorReply::from(e).to_string(),
        other => panic!("a write to a full disk answered {other:?}"),
    };
    assert!(
        reason.contains("disk of this node is full") && reason.contains("nothing was acknowledged"),
        "{reason}"
    );
    let fault = engine
        .stats()
        .degraded()
        .expect("degraded after a failed commit");
    assert!(fault.disk_full, "{fault:?}");
    // Another I/O error is not called a full disk.
    store.disk_full.store(false, Ordering::SeqCst);
    store.fail_objects.store(true, Ordering::SeqCst);
    assert!(engine.apply(b"k".to_vec(), put("c")).await.is_err());
    assert!(!engine.stats().degraded().unwrap().disk_full);

    // Space again: the next commit succeeds and clears the flag; what was acknowledged stays.
    store.fail_objects.store(false, Ordering::SeqCst);
    engine.apply(b"k".to_vec(), put("d")).await.unwrap();
    assert_eq!(engine.stats().degraded(), None);
    let mut values: Vec<_> = engine
        .get(b"k")
        .unwrap()
        .live()
        .into_iter()
        .map(|(_, v)| v.to_vec())
        .collect();
    values.sort();
    assert_eq!(values, vec![b"a".to_vec(), b"d".to_vec()]);
}

#[tokio::test]
async fn a_lost_data_directory_gets_a_new_epoch() {
    let e1 = Engine::open(
        Arc::new(MemoryStore::new()),
        node(),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let e2 = Engine::open(
        Arc::new(MemoryStore::new()),
        node(),
        &mut StdRng::seed_from_u64(2),
    )
    .unwrap();
    assert_eq!(e1.actor().node, e2.actor().node);
    assert_ne!(
        e1.actor(),
        e2.actor(),
        "a fresh data directory must be a new actor"
    );
}

#[tokio::test]
async fn another_nodes_data_directory_is_refused() {
    let store = Arc::new(MemoryStore::new());
    drop(Engine::open(store.clone(), node(), &mut StdRng::seed_from_u64(1)).unwrap());
    let err = Engine::open(
        store,
        NodeId::from_name("node2"),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::WrongNode { .. }), "{err}");
}

#[tokio::test]
async fn redb_keeps_acknowledged_writes_and_the_epoch_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, written) = {
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let engine = Engine::open(store, node(), &mut rand::rngs::OsRng).unwrap();
        let obj = engine.apply(b"k".to_vec(), put("durable")).await.unwrap();
        (engine.actor(), obj)
    };
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let engine = Engine::open(store, node(), &mut rand::rngs::OsRng).unwrap();
    assert_eq!(engine.actor(), actor);
    let read = tokio::task::spawn_blocking(move || engine.get(b"k"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, written);
    assert_eq!(read.live()[0].1, b"durable");
}

#[tokio::test]
async fn a_corrupt_stored_object_is_an_error_not_a_panic() {
    let store = Arc::new(MemoryStore::new());
    store
        .commit(&Batch {
            puts: vec![(b"k".to_vec(), vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff])],
            ..Batch::default()
        })
        .unwrap();
    let engine = Engine::open(store, node(), &mut StdRng::seed_from_u64(1)).unwrap();
    assert!(matches!(engine.get(b"k"), Err(EngineError::Corrupt { .. })));
    // A write to the corrupt key fails cleanly too; other keys are unaffected.
    assert!(engine.apply(b"k".to_vec(), put("x")).await.is_err());
    engine.apply(b"other".to_vec(), put("x")).await.unwrap();
    let _ = Object::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_one_peer_are_bounded() {
    use cairn_node::limits::HINTS_PER_PEER_MAX;
    let engine = Arc::new(
        Engine::open(
            Arc::new(MemoryStore::new()),
            node(),
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap(),
    );
    let target = NodeId::from_name("node3");
    let mut added = 0u64;
    // Submitted in waves that fit the write queue, so every wave shares a few commits.
    while added < HINTS_PER_PEER_MAX {
        let wave = (HINTS_PER_PEER_MAX - added).min(2048);
        let tasks: Vec<_> = (added..added + wave)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    engine
                        .apply(format!("k{i}").into_bytes(), Write::AddHint { target })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        added += wave;
    }
    assert_eq!(engine.hint_counts()[&target], HINTS_PER_PEER_MAX);
    // Renewing an existing hint is fine; a new one is refused with the limit named.
    engine
        .apply(b"k0".to_vec(), Write::AddHint { target })
        .await
        .unwrap();
    let err = engine
        .apply(b"one-more".to_vec(), Write::AddHint { target })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::HintsFull { .. }), "{err}");
    assert!(err.to_string().contains("HINTS_PER_PEER_MAX"), "{err}");
    // Other peers are unaffected.
    engine
        .apply(
            b"k".to_vec(),
            Write::AddHint {
                target: NodeId::from_name("node2"),
            },
        )
        .await
        .unwrap();
}
