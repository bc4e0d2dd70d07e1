//! The engine: applies versioned writes to the store through one writer thread that folds
//! concurrent writes into one durable transaction (group commit), and mints dots from a leased,
//! persisted counter so no dot is ever minted twice.
//!
//! Reads go straight to the store: a write is acknowledged only after its batch committed, so a
//! read that starts after an acknowledgement sees it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_antientropy::KeyHash;
use cairn_proto::{ActorId, ErrorReply, LimitError, NodeId};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::limits::{DOT_LEASE_BLOCK, HINTS_PER_PEER_MAX, WRITE_BATCH_MAX, WRITE_QUEUE_MAX};
use crate::store::{Batch, Hint, NodeMeta, Store, StoreError};
use crate::trees::Trees;
use crate::version::{Dot, Limits, Object, Payload, VClock, VersionError};

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

/// One change to a key.
#[derive(Debug, Clone)]
pub enum Write {
    /// A client write at this node: supersede what `ctx` saw with `payload`, under a fresh dot.
    Update {
        /// The client's context.
        ctx: VClock,
        /// The value or a tombstone.
        payload: Payload,
    },
    /// An object from another replica, merged with `sync` (no new dot). With `hint_for`, this
    /// node is a fallback for that primary and keeps a hint, in the same transaction.
    Merge {
        /// The peer's object.
        object: Object,
        /// The primary this copy stands in for.
        hint_for: Option<NodeId>,
    },
    /// Remember that `target` missed a write to the key (the object is unchanged).
    AddHint {
        /// The node that missed it.
        target: NodeId,
    },
    /// `target` acknowledged the key as of hint renewal `seq`: delete the hint unless it was
    /// renewed since.
    HintDelivered {
        /// The node.
        target: NodeId,
        /// The renewal the delivery started from.
        seq: u64,
    },
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
    /// by the next one that succeeds (a `RedbStore` refuses every commit after a failure until
    /// the node restarts, so there it stays until then).
    pub degraded: Mutex<Option<StorageFault>>,
}

/// What the disk did to the last commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// The disk is full (the OS said ENOSPC), as opposed to any other I/O error.
    pub disk_full: bool,
    /// What the store reported.
    pub reason: String,
}

impl StorageFault {
    /// Classifies a failed commit. The store's errors carry the OS's words, not its codes, so
    /// this reads them: ENOSPC is "No space left on device (os error 28)" on Linux.
    pub fn of(error: &StoreError) -> StorageFault {
        let reason = error.to_string();
        StorageFault {
            disk_full: reason.contains("os error 28") || reason.contains("No space left"),
            reason,
        }
    }

    /// The error a client gets for a write the fault refused.
    fn client_reason(&self) -> String {
        if self.disk_full {
            format!(
                "the disk of this node is full; nothing was acknowledged (free space and restart \
                 the node): {}",
                self.reason
            )
        } else {
            format!(
                "the disk of this node failed; nothing was acknowledged: {}",
                self.reason
            )
        }
    }
}

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
        let meta = match store.meta()? {
            Some(meta) if meta.node != node => {
                return Err(EngineError::WrongNode {
                    expected: node,
                    found: meta.node,
                })
            }
            Some(meta) => meta,
            None => {
                let meta = NodeMeta {
                    node,
                    // Zero is avoided only so a fresh epoch is never mistaken for a default.
                    epoch: rng.next_u64().max(1),
                    lease_end: 1,
                };
                store.commit(&Batch {
                    meta: Some(meta),
                    ..Batch::default()
                })?;
                meta
            }
        };
        let actor = ActorId {
            node,
            epoch: meta.epoch,
        };
        // Every counter below the persisted lease end may have been used before a crash: start
        // there, and extend the lease (durably) before minting the first dot.
        let lease = Lease {
            meta,
            next: meta.lease_end,
        };
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        let stats = Arc::new(EngineStats::default());
        let hint_counts = Arc::new(Mutex::new(store.hint_counts()?));
        let writer = {
            let store = store.clone();
            let stats = stats.clone();
            let hint_counts = hint_counts.clone();
            std::thread::Builder::new()
                .name("cairn-writer".into())
                .spawn(move || {
                    let mut w = Writer {
                        store,
                        actor,
                        lease,
                        stats,
                        hint_counts,
                        trees,
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
        let tx = self.tx.as_ref().ok_or(EngineError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.try_send(WriteOp { key, write, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Overloaded {
                    max: WRITE_QUEUE_MAX,
                },
                mpsc::error::TrySendError::Closed(_) => EngineError::Closed,
            })?;
        rx.await.map_err(|_| EngineError::Closed)?
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

    /// The stored object for `key`, read off the async runtime (redb reads may block).
    pub async fn read(self: &Arc<Self>, key: Vec<u8>) -> Result<Object, EngineError> {
        self.off_runtime("read task", move |engine| engine.get(&key))
            .await
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
    match store.get(key)? {
        None => Ok(Object::new()),
        Some(bytes) => Object::decode(&bytes).map_err(|e| EngineError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The dot counter: `next` is the next counter to mint; counters up to `meta.lease_end` are
/// covered by a durable lease.
struct Lease {
    meta: NodeMeta,
    next: u64,
}

struct Writer {
    store: Arc<dyn Store>,
    actor: ActorId,
    lease: Lease,
    stats: Arc<EngineStats>,
    hint_counts: Arc<Mutex<BTreeMap<NodeId, u64>>>,
    trees: Option<Arc<Trees>>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut ops = Vec::with_capacity(WRITE_BATCH_MAX);
        while let Some(first) = rx.blocking_recv() {
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

    /// Mints the next counter (dots and hint renewals share the leased sequence).
    fn mint(&mut self) -> u64 {
        let c = self.lease.next;
        self.lease.next += 1;
        c
    }

    fn extend_lease(&mut self, needed: u64) -> Result<(), StoreError> {
        if self.lease.next + needed <= self.lease.meta.lease_end {
            return Ok(());
        }
        // Persist the lease before any counter under it is used: after a crash the node
        // restarts at the lease end and cannot mint a dot it may already have handed out.
        let meta = NodeMeta {
            lease_end: self.lease.next + needed + DOT_LEASE_BLOCK,
            ..self.lease.meta
        };
        self.store.commit(&Batch {
            meta: Some(meta),
            ..Batch::default()
        })?;
        self.lease.meta = meta;
        self.stats.lease_extensions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn run_batch(&mut self, ops: &mut Vec<WriteOp>) {
        if let Err(e) = self.extend_lease(ops.len() as u64) {
            let reason = e.to_string();
            for op in ops.drain(..) {
                let _ = op.reply.send(Err(EngineError::Store(StoreError::Io {
                    op: "extend dot lease",
                    reason: reason.clone(),
                })));
            }
            return;
        }

        // Later writes in the batch must see earlier ones to the same key (and hint).
        let mut objects: HashMap<Vec<u8>, Object> = HashMap::new();
        let mut hints: HashMap<(NodeId, Vec<u8>), Option<u64>> = HashMap::new();
        let mut counts = self.hint_counts.lock().expect("hint counts lock").clone();
        let mut dirty = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let result = self.apply(op, &mut objects, &mut hints, &mut counts);
            if result.is_ok() && matches!(op.write, Write::Update { .. } | Write::Merge { .. }) {
                dirty.push(op.key.clone());
            }
            results.push(result);
        }

        let mut batch = Batch::default();
        dirty.sort();
        dirty.dedup();
        for key in dirty {
            batch.puts.push((key.clone(), objects[&key].encode()));
        }
        for ((target, key), seq) in hints {
            match seq {
                Some(seq) => batch.hints_put.push(Hint { target, key, seq }),
                None => batch.hints_remove.push((target, key)),
            }
        }
        let committed = if batch.is_empty() {
            Ok(())
        } else {
            crate::metrics::timed_commit(ops.len(), || self.store.commit(&batch))
        };
        if committed.is_ok() {
            if !batch.is_empty() {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            // After the commit, before the acknowledgements: a tree never shows an object that
            // is not durable, and a replica that acknowledged a write already shows it. Hashing
            // costs microseconds per object against the commit's fsync.
            if let Some(trees) = &self.trees {
                trees.record(batch.puts.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            }
            counts.retain(|_, c| *c > 0);
            *self.hint_counts.lock().expect("hint counts lock") = counts;
        }
        let failure = committed.err().map(|e| {
            let fault = StorageFault::of(&e);
            tracing::error!(
                disk_full = fault.disk_full,
                "commit failed, node degraded: {e}"
            );
            fault
        });
        *self.stats.degraded.lock().expect("degraded lock") = failure.clone();
        for (op, result) in ops.drain(..).zip(results) {
            let result = match (&failure, result) {
                (Some(fault), Ok(_)) => Err(EngineError::Store(StoreError::Io {
                    op: "commit",
                    reason: fault.client_reason(),
                })),
                (_, result) => result,
            };
            if result.is_ok() {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            // The requester may have gone away (timeout); the write is durable regardless.
            let _ = op.reply.send(result);
        }
    }

    fn current_hint(
        &self,
        hints: &HashMap<(NodeId, Vec<u8>), Option<u64>>,
        target: NodeId,
        key: &[u8],
    ) -> Result<Option<u64>, EngineError> {
        match hints.get(&(target, key.to_vec())) {
            Some(seq) => Ok(*seq),
            None => Ok(self.store.hint(target, key)?.map(|h| h.seq)),
        }
    }

    fn add_hint(
        &mut self,
        hints: &mut HashMap<(NodeId, Vec<u8>), Option<u64>>,
        counts: &mut BTreeMap<NodeId, u64>,
        target: NodeId,
        key: &[u8],
    ) -> Result<(), EngineError> {
        let exists = self.current_hint(hints, target, key)?.is_some();
        let count = counts.entry(target).or_insert(0);
        if !exists {
            if *count >= HINTS_PER_PEER_MAX {
                return Err(EngineError::HintsFull {
                    target,
                    max: HINTS_PER_PEER_MAX,
                });
            }
            *count += 1;
        }
        let seq = self.mint();
        hints.insert((target, key.to_vec()), Some(seq));
        Ok(())
    }

    fn apply(
        &mut self,
        op: &WriteOp,
        objects: &mut HashMap<Vec<u8>, Object>,
        hints: &mut HashMap<(NodeId, Vec<u8>), Option<u64>>,
        counts: &mut BTreeMap<NodeId, u64>,
    ) -> Result<Object, EngineError> {
        let current = match objects.get(&op.key) {
            Some(obj) => obj.clone(),
            None => read_object(&*self.store, &op.key)?,
        };
        let next = match &op.write {
            Write::Update { ctx, payload } => {
                // A dot is spent even if the update is refused: counters only move forward.
                let dot = Dot::new(self.actor, self.mint());
                current.update(ctx, dot, payload.clone())?
            }
            Write::Merge { object, hint_for } => {
                // Merges are held to the hard limits, not the client ones: replicas that each
                // took writes up to the client limits must still converge. Past a hard limit
                // (which `decode` enforces) the merge is refused and the sender keeps its copy.
                // Either way the key is reported: client writes to it are refused until its
                // siblings are resolved.
                let merged = current.sync(object);
                if let Err(e) = merged.check_limits(Limits::Merge) {
                    tracing::warn!(key = %String::from_utf8_lossy(&op.key), "merge from a peer refused: {e}");
                    crate::metrics::record_merge_over_client_limits(false);
                    return Err(e.into());
                }
                if merged.over_client_limits() && !current.over_client_limits() {
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&op.key),
                        siblings = merged.sibling_count(),
                        "a merge from a peer left the key over a client limit; client writes \
                         to it are refused until a write with its context resolves its siblings"
                    );
                    crate::metrics::record_merge_over_client_limits(true);
                }
                if let Some(target) = hint_for {
                    self.add_hint(hints, counts, *target, &op.key)?;
                }
                merged
            }
            Write::AddHint { target } => {
                self.add_hint(hints, counts, *target, &op.key)?;
                return Ok(current);
            }
            Write::HintDelivered { target, seq } => {
                if self.current_hint(hints, *target, &op.key)? == Some(*seq) {
                    hints.insert((*target, op.key.clone()), None);
                    if let Some(c) = counts.get_mut(target) {
                        *c = c.saturating_sub(1);
                    }
                }
                return Ok(current);
            }
        };
        objects.insert(op.key.clone(), next.clone());
        Ok(next)
    }
}
