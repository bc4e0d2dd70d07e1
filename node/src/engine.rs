//! The engine: applies versioned writes to the store through one writer thread that folds
//! concurrent writes into one durable transaction (group commit). What a batch does (fresh
//! dots from the leased counter, merges, hint changes) is the pure `cairn_core::writer`, which
//! the simulator runs too; this module owns the thread, the queue and the metrics.
//!
//! Reads go straight to the store: a write is acknowledged only after its batch committed, so a
//! read that starts after an acknowledgement sees it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_antientropy::KeyHash;
use cairn_core::health::{with_fault_reason, StorageHealth};
use cairn_core::writer::{OpenError, WriteError, Writer, WriterConfig};
use cairn_proto::{ActorId, ErrorReply, LimitError, NodeId};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::limits::{
    DOT_LEASE_BLOCK, HINTS_PER_PEER_MAX, STORAGE_PROBE_POLL, WRITE_BATCH_MAX, WRITE_QUEUE_MAX,
};
use crate::store::{Hint, Store, StoreError};
use crate::trees::Trees;
use crate::version::{Object, VersionError};

/// One change to a key: defined by the pure writer, which applies it.
pub use cairn_core::writer::Write;

/// Why the engine could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A limit was exceeded; nothing was stored.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The client's context cannot be used.
    #[error("context is not valid: {reason}")]
    BadContext {
        /// Why.
        reason: String,
    },
    /// A stored object could not be decoded: the disk holds something this node did not write.
    #[error("stored object for key {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key, lossily as text.
        key: String,
        /// What the decoder reported.
        reason: String,
    },
    /// The store failed; the write is not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write queue is full.
    #[error("write queue is full ({max} writes waiting)")]
    Overloaded {
        /// `WRITE_QUEUE_MAX`.
        max: usize,
    },
    /// The engine is shutting down.
    #[error("engine is shutting down")]
    Closed,
    /// This node already holds `HINTS_PER_PEER_MAX` hints for `target`.
    #[error("hint store for node {target} is full (HINTS_PER_PEER_MAX = {max}); the write is refused here")]
    HintsFull {
        /// The unreachable node.
        target: NodeId,
        /// `HINTS_PER_PEER_MAX`.
        max: u64,
    },
    /// The data directory belongs to another node.
    #[error("data directory belongs to node {found}, not to this node ({expected}); point data_dir at this node's own directory")]
    WrongNode {
        /// This node.
        expected: NodeId,
        /// The owner recorded in the data.
        found: NodeId,
    },
}

impl From<WriteError> for EngineError {
    fn from(e: WriteError) -> EngineError {
        match e {
            WriteError::Limit(l) => EngineError::Limit(l),
            WriteError::BadContext { reason } => EngineError::BadContext { reason },
            WriteError::Corrupt { key, reason } => EngineError::Corrupt { key, reason },
            WriteError::HintsFull { target, max } => EngineError::HintsFull { target, max },
            WriteError::Store(e) => EngineError::Store(e),
        }
    }
}

impl From<OpenError> for EngineError {
    fn from(e: OpenError) -> EngineError {
        match e {
            OpenError::WrongNode { expected, found } => EngineError::WrongNode { expected, found },
            OpenError::Store(e) => EngineError::Store(e),
        }
    }
}

impl From<VersionError> for EngineError {
    fn from(e: VersionError) -> EngineError {
        match e {
            VersionError::Limit(l) => EngineError::Limit(l),
            other => EngineError::BadContext {
                reason: other.to_string(),
            },
        }
    }
}

struct WriteOp {
    key: Vec<u8>,
    write: Write,
    reply: oneshot::Sender<Result<Object, EngineError>>,
}

/// Counters of the engine's work, for tests, `status` and benchmarks.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Transactions committed for writes (group commits).
    pub commits: AtomicU64,
    /// Writes acknowledged.
    pub writes: AtomicU64,
    /// Lease extensions persisted.
    pub lease_extensions: AtomicU64,
    /// Why the last commit failed, while the store is failing: set by a failed commit, cleared
    /// by the next one that succeeds, or by a recovery in place (a `RedbStore` refuses every
    /// commit after a failure until the writer's probe recovers it, see [`Store::recover`]).
    pub degraded: Mutex<Option<StorageFault>>,
    /// Recoveries in place that brought the store back after a failure.
    pub recoveries: AtomicU64,
}

pub use cairn_core::health::StorageFault;

impl EngineStats {
    /// The storage fault of the last commit, if it failed.
    pub fn degraded(&self) -> Option<StorageFault> {
        self.degraded.lock().expect("degraded lock").clone()
    }
}

/// The node's versioned storage.
pub struct Engine {
    store: Arc<dyn Store>,
    actor: ActorId,
    tx: Option<mpsc::Sender<WriteOp>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<EngineStats>,
    hint_counts: Arc<Mutex<BTreeMap<NodeId, u64>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the engine over `store` for node `node`. A fresh store gets a new epoch drawn from
    /// `rng`, so a node that lost its data can never mint a dot it minted before.
    pub fn open(
        store: Arc<dyn Store>,
        node: NodeId,
        rng: &mut dyn RngCore,
    ) -> Result<Engine, EngineError> {
        Engine::open_with_trees(store, node, rng, None)
    }

    /// [`Engine::open`], and every committed object is also recorded in `trees` by the writer,
    /// right after its commit and in commit order (anti-entropy's Merkle trees).
    pub fn open_with_trees(
        store: Arc<dyn Store>,
        node: NodeId,
        rng: &mut dyn RngCore,
        trees: Option<Arc<Trees>>,
    ) -> Result<Engine, EngineError> {
        let writer = Writer::open(
            &*store,
            node,
            rng.next_u64(),
            WriterConfig::new(DOT_LEASE_BLOCK, HINTS_PER_PEER_MAX),
        )?;
        let actor = writer.actor();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        let stats = Arc::new(EngineStats::default());
        let hint_counts = Arc::new(Mutex::new(writer.hint_counts().clone()));
        let writer = {
            let core = writer;
            let store = store.clone();
            let stats = stats.clone();
            let hint_counts = hint_counts.clone();
            std::thread::Builder::new()
                .name("cairn-writer".into())
                .spawn(move || {
                    let mut w = WriterThread {
                        core,
                        store,
                        stats,
                        hint_counts,
                        trees,
                        node,
                        health: StorageHealth::default(),
                    };
                    w.run(rx)
                })
                .map_err(|e| StoreError::Io {
                    op: "start writer thread",
                    reason: e.to_string(),
                })?
        };
        Ok(Engine {
            store,
            actor,
            tx: Some(tx),
            writer: Some(writer),
            stats,
            hint_counts,
        })
    }

    /// The actor this node mints dots as.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// Work counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Writes waiting for the writer thread (not counting the batch being committed).
    pub fn queue_len(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Hints held, per target node.
    pub fn hint_counts(&self) -> BTreeMap<NodeId, u64> {
        self.hint_counts.lock().expect("hint counts lock").clone()
    }

    /// Up to `limit` hints for `target`. Blocking.
    pub fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, EngineError> {
        Ok(self.store.hints(target, limit)?)
    }

    /// The stored object for `key` (empty if none). Blocking: call from a blocking context.
    pub fn get(&self, key: &[u8]) -> Result<Object, EngineError> {
        read_object(&*self.store, key)
    }

    /// Applies `write` to `key`; resolves once it is durable.
    pub async fn apply(&self, key: Vec<u8>, write: Write) -> Result<Object, EngineError> {
        let rx = self.enqueue(key, write)?;
        rx.await.map_err(|_| EngineError::Closed)?
    }

    /// Applies several writes, each as [`Engine::apply`] does: all are queued before any is
    /// awaited, so they share the writer's next group commit. The results are in order.
    pub async fn apply_all(
        &self,
        writes: Vec<(Vec<u8>, Write)>,
    ) -> Vec<Result<Object, EngineError>> {
        let queued: Vec<_> = writes
            .into_iter()
            .map(|(key, write)| self.enqueue(key, write))
            .collect();
        let mut results = Vec::with_capacity(queued.len());
        for q in queued {
            results.push(match q {
                Ok(rx) => rx.await.unwrap_or(Err(EngineError::Closed)),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Queues one write for the writer thread; a full queue is `Overloaded`.
    fn enqueue(
        &self,
        key: Vec<u8>,
        write: Write,
    ) -> Result<oneshot::Receiver<Result<Object, EngineError>>, EngineError> {
        let tx = self.tx.as_ref().ok_or(EngineError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.try_send(WriteOp { key, write, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Overloaded {
                    max: WRITE_QUEUE_MAX,
                },
                mpsc::error::TrySendError::Closed(_) => EngineError::Closed,
            })?;
        Ok(rx)
    }

    /// The stored key behind each key hash (`None` where none is stored), read off the async
    /// runtime in one go.
    pub async fn keys_for_hashes(
        self: &Arc<Self>,
        key_hashes: Vec<KeyHash>,
    ) -> Result<Vec<Option<Vec<u8>>>, EngineError> {
        self.off_runtime("key lookup task", move |engine| {
            key_hashes
                .iter()
                .map(|k| engine.store.key_for_hash(k))
                .collect::<Result<Vec<_>, StoreError>>()
                .map_err(EngineError::from)
        })
        .await
    }

    /// The store, for the start-up rebuild of the Merkle trees (a blocking scan).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The stored object for `key`, read on the calling task.
    ///
    /// A point read is not handed to the blocking pool: it is one redb read transaction and a
    /// B-tree descent, microseconds while the pages are in redb's cache, and the hand-off cost
    /// more than the read (two thread wake-ups and context switches per read, the largest item
    /// in a profile of R=2 gets). A read whose pages are not cached blocks this runtime worker
    /// for the page reads (a few `pread`s), as a cache miss would block any reader.
    pub async fn read(self: &Arc<Self>, key: Vec<u8>) -> Result<Object, EngineError> {
        self.get(&key)
    }

    /// The stored objects for `keys`, in order, read on the calling task as [`Engine::read`]
    /// does, in one read transaction (a batch of peer reads holds at most
    /// `PEER_BATCH_ITEMS_MAX` keys); a failed transaction fails every read.
    pub async fn read_many(
        self: &Arc<Self>,
        keys: Vec<Vec<u8>>,
    ) -> Vec<Result<Object, EngineError>> {
        match self.store.get_many(&keys) {
            Ok(found) => keys
                .iter()
                .zip(found)
                .map(|(key, bytes)| decode_object(key, bytes))
                .collect(),
            Err(e) => keys.iter().map(|_| Err(e.clone().into())).collect(),
        }
    }

    /// Runs a blocking read of the store on a blocking thread (redb reads may block); a task
    /// that could not run (shutdown) is a storage error named `op`.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        read: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || read(&engine))
            .await
            .map_err(|e| StoreError::Io {
                op,
                reason: e.to_string(),
            })?
    }
}

/// What a client or peer is told when the engine fails.
impl From<EngineError> for ErrorReply {
    fn from(e: EngineError) -> ErrorReply {
        match e {
            EngineError::Limit(l) => ErrorReply::Limit(l),
            EngineError::BadContext { reason } => ErrorReply::BadContext { reason },
            EngineError::Overloaded { .. } | EngineError::HintsFull { .. } => {
                ErrorReply::Overloaded {
                    reason: e.to_string(),
                }
            }
            EngineError::Closed => ErrorReply::ShuttingDown,
            other => {
                tracing::warn!("request failed: {other}");
                ErrorReply::Storage {
                    reason: other.to_string(),
                }
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued, then exit.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn read_object(store: &dyn Store, key: &[u8]) -> Result<Object, EngineError> {
    Ok(cairn_core::writer::read_object(store, key)?)
}

/// A stored object's bytes decoded as `read_object` decodes them (empty if none).
fn decode_object(key: &[u8], bytes: Option<Vec<u8>>) -> Result<Object, EngineError> {
    match bytes {
        None => Ok(Object::new()),
        Some(bytes) => Object::decode(&bytes).map_err(|e| EngineError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The writer thread: takes queued writes in batches and has the core writer apply them.
struct WriterThread {
    core: Writer,
    store: Arc<dyn Store>,
    stats: Arc<EngineStats>,
    hint_counts: Arc<Mutex<BTreeMap<NodeId, u64>>>,
    trees: Option<Arc<Trees>>,
    node: NodeId,
    /// The last commit's fault and the recovery attempts' backoff (the core's).
    health: StorageHealth,
}

impl WriterThread {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut ops = Vec::with_capacity(WRITE_BATCH_MAX);
        loop {
            let first = if self.health.fault().is_some() {
                // Degraded: probe the store on its backoff between writes, which meanwhile
                // fail at once with the fault (they still come through, so a client hears it).
                self.probe_store();
                match rx.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(STORAGE_PROBE_POLL);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.blocking_recv() {
                    Some(op) => op,
                    None => return,
                }
            };
            ops.push(first);
            // Everything that queued while the previous batch was being made durable shares
            // this commit: that is the group commit.
            while ops.len() < WRITE_BATCH_MAX {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut ops);
        }
    }

    /// While degraded: when the backoff allows (`StorageHealth::poll_probe`), tries to bring
    /// the store back in place (`cairn_core::health::recover`: the store recovers, a probe
    /// commit succeeds, the core writer is opened again); then the replayed keys are laid over
    /// the trees and the fault is cleared. Attempts back off from `STORAGE_PROBE_RETRY_BASE`,
    /// doubling up to `STORAGE_PROBE_RETRY_MAX`, and go on for as long as the fault lasts.
    fn probe_store(&mut self) {
        let now = std::time::Instant::now();
        if !self.health.poll_probe(now) {
            return;
        }
        let outcome = self.recover();
        self.health.handle_probe(now, &outcome);
        match &outcome {
            // Nothing to recover in place: the next commit that succeeds clears the fault.
            Ok(false) => {}
            Ok(true) => {
                self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!("storage recovered without a restart: the node writes again");
            }
            Err(e) => tracing::debug!("storage still failing: {e}"),
        }
        *self.stats.degraded.lock().expect("degraded lock") = self.health.fault().cloned();
    }

    /// One recovery attempt; `Ok(false)` when the store has nothing to recover in place.
    fn recover(&mut self) -> Result<bool, StoreError> {
        let config = WriterConfig::new(DOT_LEASE_BLOCK, HINTS_PER_PEER_MAX);
        let Some(touched) =
            cairn_core::health::recover(&*self.store, &mut self.core, self.node, config)?
        else {
            return Ok(false);
        };
        *self.hint_counts.lock().expect("hint counts lock") = self.core.hint_counts().clone();
        // The replay may have applied batches whose commit reported failure (logged, then redb
        // failed): the trees must show what the store now holds.
        if let Some(trees) = &self.trees {
            for key in &touched {
                match self.store.get(key)? {
                    Some(object) => trees.record([(key.as_slice(), object.as_slice())]),
                    None => trees.record_removed([key.as_slice()]),
                }
            }
        }
        Ok(true)
    }

    fn run_batch(&mut self, ops: &mut Vec<WriteOp>) {
        let (writes, replies): (Vec<_>, Vec<_>) = ops
            .drain(..)
            .map(|op| ((op.key, op.write), op.reply))
            .unzip();
        let store = &*self.store;
        let n = writes.len();
        let mut commit_fault = None;
        let outcome = self.core.apply_batch(store, &writes, &mut |batch| {
            let committed = crate::metrics::timed_commit(n, || store.commit(batch));
            if let Err(e) = &committed {
                commit_fault = Some(StorageFault::of(e));
            }
            committed
        });
        if outcome.lease_extended {
            self.stats.lease_extensions.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.committed {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            // After the commit, before the acknowledgements: a tree never shows an object that
            // is not durable, and a replica that acknowledged a write already shows it. Hashing
            // costs microseconds per object against the commit's fsync.
            if let Some(trees) = &self.trees {
                trees.record(
                    outcome
                        .puts
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.as_slice())),
                );
                trees.record_removed(outcome.removes.iter().map(Vec::as_slice));
            }
        }
        for report in &outcome.merge_reports {
            let key = String::from_utf8_lossy(&report.key);
            if report.refused {
                tracing::warn!(%key, "merge from a peer refused: {}", report.reason);
            } else {
                tracing::warn!(
                    %key,
                    "a merge from a peer left the key over a client limit ({}); client writes \
                     to it are refused until a write with its context resolves its siblings",
                    report.reason
                );
            }
            crate::metrics::record_merge_over_client_limits(!report.refused);
        }
        if let Some(fault) = &commit_fault {
            tracing::error!(
                disk_full = fault.disk_full,
                "commit failed, node degraded: {}",
                fault.reason
            );
        }
        if outcome.committed || commit_fault.is_some() {
            self.health.handle_commit(commit_fault.clone());
            *self.stats.degraded.lock().expect("degraded lock") = commit_fault.clone();
        }
        *self.hint_counts.lock().expect("hint counts lock") = self.core.hint_counts().clone();
        for (reply, result) in replies.into_iter().zip(outcome.results) {
            let result =
                with_fault_reason(commit_fault.as_ref(), result).map_err(EngineError::from);
            if result.is_ok() {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            // The requester may have gone away (timeout); the write is durable regardless.
            let _ = reply.send(result);
        }
    }
}
