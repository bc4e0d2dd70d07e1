//! The engine: applies versioned writes to the store through one writer thread that folds
//! concurrent writes into one durable transaction (group commit), and mints dots from a leased,
//! persisted counter so no dot is ever minted twice.
//!
//! Reads go straight to the store: a write is acknowledged only after its batch committed, so a
//! read that starts after an acknowledgement sees it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_proto::{ActorId, Context, LimitError, NodeId};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::limits::{DOT_LEASE_BLOCK, WRITE_BATCH_MAX, WRITE_QUEUE_MAX};
use crate::store::{Batch, NodeMeta, Store, StoreError};
use crate::version::{decode_context, Dot, Object, Payload, VClock, VersionError};

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
    /// An object from another replica, merged with `sync` (no new dot).
    Merge {
        /// The peer's object.
        object: Object,
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
}

/// The node's versioned storage.
pub struct Engine {
    store: Arc<dyn Store>,
    actor: ActorId,
    tx: Option<mpsc::Sender<WriteOp>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<EngineStats>,
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
                    puts: Vec::new(),
                    meta: Some(meta),
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
        let writer = {
            let store = store.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("cairn-writer".into())
                .spawn(move || writer_loop(store, actor, lease, rx, stats))
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

    /// A client write: `payload` supersedes exactly what `context` saw.
    pub async fn update(
        &self,
        key: Vec<u8>,
        context: &Context,
        payload: Payload,
    ) -> Result<Object, EngineError> {
        let ctx = decode_context(context)?;
        self.apply(key, Write::Update { ctx, payload }).await
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

fn writer_loop(
    store: Arc<dyn Store>,
    actor: ActorId,
    mut lease: Lease,
    mut rx: mpsc::Receiver<WriteOp>,
    stats: Arc<EngineStats>,
) {
    let mut ops = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(first) = rx.blocking_recv() {
        ops.push(first);
        // Everything that queued while the previous batch was being made durable shares this
        // commit: that is the group commit.
        while ops.len() < WRITE_BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        run_batch(&*store, actor, &mut lease, &mut ops, &stats);
    }
}

fn run_batch(
    store: &dyn Store,
    actor: ActorId,
    lease: &mut Lease,
    ops: &mut Vec<WriteOp>,
    stats: &EngineStats,
) {
    let needed = ops.len() as u64;
    if lease.next + needed > lease.meta.lease_end {
        // Persist the lease before any dot under it is used: after a crash the node restarts at
        // the lease end and cannot mint a dot it may already have handed out.
        let meta = NodeMeta {
            lease_end: lease.next + needed + DOT_LEASE_BLOCK,
            ..lease.meta
        };
        if let Err(e) = store.commit(&Batch {
            puts: Vec::new(),
            meta: Some(meta),
        }) {
            let reason = e.to_string();
            for op in ops.drain(..) {
                let _ = op.reply.send(Err(EngineError::Store(StoreError::Io {
                    op: "extend dot lease",
                    reason: reason.clone(),
                })));
            }
            return;
        }
        lease.meta = meta;
        stats.lease_extensions.fetch_add(1, Ordering::Relaxed);
    }

    // Later writes in the batch must see earlier ones to the same key.
    let mut overlay: HashMap<Vec<u8>, Object> = HashMap::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops.iter() {
        let current = match overlay.get(&op.key) {
            Some(obj) => Ok(obj.clone()),
            None => read_object(store, &op.key),
        };
        let result = current.and_then(|current| match &op.write {
            Write::Update { ctx, payload } => {
                let dot = Dot::new(actor, lease.next);
                // A dot is spent even if the update is refused: counters only move forward.
                lease.next += 1;
                current
                    .update(ctx, dot, payload.clone())
                    .map_err(EngineError::from)
            }
            Write::Merge { object } => {
                // `sync` never fails, but its result may exceed the limits `decode` enforces;
                // storing it would make the key unreadable, so the merge is refused instead
                // and the sender keeps its copy.
                let merged = current.sync(object);
                merged
                    .check_limits()
                    .map(|()| merged)
                    .map_err(EngineError::from)
            }
        });
        if let Ok(obj) = &result {
            overlay.insert(op.key.clone(), obj.clone());
        }
        results.push(result);
    }

    let batch = Batch {
        puts: overlay
            .iter()
            .map(|(k, obj)| (k.clone(), obj.encode()))
            .collect(),
        meta: None,
    };
    let committed = if batch.is_empty() {
        Ok(())
    } else {
        store.commit(&batch)
    };
    if committed.is_ok() && !batch.is_empty() {
        stats.commits.fetch_add(1, Ordering::Relaxed);
    }
    let failure = committed.err().map(|e| e.to_string());
    for (op, result) in ops.drain(..).zip(results) {
        let result = match (&failure, result) {
            (Some(reason), Ok(_)) => Err(EngineError::Store(StoreError::Io {
                op: "commit",
                reason: reason.clone(),
            })),
            (_, result) => result,
        };
        if result.is_ok() {
            stats.writes.fetch_add(1, Ordering::Relaxed);
        }
        // The requester may have gone away (timeout); the write is durable regardless.
        let _ = op.reply.send(result);
    }
}
