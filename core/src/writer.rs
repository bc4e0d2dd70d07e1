//! The writer's batch application, sans I/O: given a batch of writes (client updates under fresh
//! dots, merges of peers' objects with `sync`, hint additions and deletions), it reads what it
//! needs from a synchronous [`Store`], computes every result, and commits the batch as one
//! durable transaction. Dots and hint renewals come from one counter covered by a persisted lease.
//!
//! The node's writer thread (`node/src/engine.rs`) calls it over redb with batches folded by
//! group commit; the simulator calls it over a [`MemoryStore`](crate::store::MemoryStore). Both
//! run this code: neither holds its own copy of what a write does.
//!
//! Lease rule: the lease end is made durable (its own commit) before any counter under it is
//! used, and [`Writer::open`] resumes at the persisted lease end, so a crash can skip counters
//! but never mint one twice.
//!
//! Per-key actors (Riak's per-key actor epochs, the fix of KV679's data-loss cases). A dot
//! `Y:c` in an object whose entry for `Y` has counter `n >= c` claims that every event of `Y`
//! for this key up to `n` is in the object or superseded. That holds only if the node minting
//! under `Y` holds `Y`'s latest event for the key. A node loses events of its own when its copy
//! goes (a fallback's drop after its hint is delivered, a cleanup after a layout change, a reap)
//! while other replicas keep them; were it to mint under the same actor again, the new dot would
//! claim those events and the next `sync` would discard them: a lost write (the container
//! nemesis, seed 45 with layout changes). So:
//! - the actors of this data directory are its base actor `(node, epoch)` and the per-key actors
//!   `(node, epoch + c)`, `c` a counter minted to create it (so below the writer's next counter;
//!   the same node's actors of another data directory match only by a `next / 2^64` chance);
//! - a client update continues this node's newest actor (largest `c`) in the key's local copy,
//!   if the copy has one and the context knows no more of its events than the copy; otherwise it
//!   mints a fresh per-key actor, whose first dot is the counter that named it. A new actor
//!   claims nothing about any other actor's events, so it supersedes only what the context saw;
//! - a merge that brings events of this node's actors that its copy lacks (the copy was lost,
//!   or came back staler than another replica's) records a fresh per-key actor in the merged
//!   object, as a history-only entry ([`Object::witness`]), so the next update here continues
//!   that one and not an actor whose later events it may have lost. A tombstone handed back
//!   after this node reaped it is no exception: the reaper compares tombstones without their
//!   history-only entries ([`crate::reaper::tombstone_hash`]), so it still knows it.
//!
//! Dots stay unique: every dot and every per-key actor takes a counter of the node-wide
//! sequence. A key's version vector grows by one actor per (node, key) the first time the node
//! coordinates a write of it, and again after each loss of its copy that the node then writes
//! through or learns of by a merge; `VV_ENTRIES_MAX` bounds it as before.

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_proto::{ActorId, ErrorReply, LimitError, NodeId};

use crate::store::{Batch, Hint, NodeMeta, Store, StoreError};
use crate::version::{Dot, Limits, Object, Payload, VClock, VersionError};

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
    /// A hint moved here from a node that no longer owns the key ([`crate::handoff`]'s
    /// redirect): as `AddHint`, but kept even when `target`'s hints are at their limit. The
    /// limit bounds what new writes add; a redirect carries a hint already admitted, and
    /// refusing it can deadlock: two full hint queues, each waiting to redirect into the other,
    /// never drain (simulator, seed 8025 of the crash sweep).
    RedirectHint {
        /// The key's owner that takes the hint over.
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
    /// Compare-and-delete of this node's copy, for a node that no longer needs it (it replicates
    /// the key in no live layout version, or it was a fallback whose hint was delivered). This
    /// is not a client delete: no tombstone is written, the key's object and its key-hash entry
    /// leave the store.
    ///
    /// Applied only if the stored object equals `expected`, what the caller read and knows the
    /// owners hold, so a write or merge that arrived since is never removed; and only if this
    /// node holds no hint for the key, since a hint is delivered from this copy. Otherwise the
    /// write does nothing. Its result is the key's object afterwards: empty if it was dropped
    /// (or absent), the stored object if it was kept.
    DropIfUnchanged {
        /// The object the caller saw.
        expected: Object,
    },
}

/// Why one write of a batch was not applied (nothing of it is durable).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// A limit was exceeded.
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
    /// This node already holds its maximum of hints for `target`.
    #[error("hint store for node {target} is full (HINTS_PER_PEER_MAX = {max}); the write is refused here")]
    HintsFull {
        /// The unreachable node.
        target: NodeId,
        /// The configured maximum (`HINTS_PER_PEER_MAX` in the node).
        max: u64,
    },
    /// The store failed (a read, the lease extension or the batch's commit).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<VersionError> for WriteError {
    fn from(e: VersionError) -> WriteError {
        match e {
            VersionError::Limit(l) => WriteError::Limit(l),
            other => WriteError::BadContext {
                reason: other.to_string(),
            },
        }
    }
}

/// What a client or peer is told when a write fails (the node's engine errors that come from the
/// writer answer the same).
impl From<WriteError> for ErrorReply {
    fn from(e: WriteError) -> ErrorReply {
        match e {
            WriteError::Limit(l) => ErrorReply::Limit(l),
            WriteError::BadContext { reason } => ErrorReply::BadContext { reason },
            WriteError::HintsFull { .. } => ErrorReply::Overloaded {
                reason: e.to_string(),
            },
            WriteError::Corrupt { .. } | WriteError::Store(_) => ErrorReply::Storage {
                reason: e.to_string(),
            },
        }
    }
}

/// Why the writer could not start over a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data belongs to another node.
    #[error("data directory belongs to node {found}, not to this node ({expected}); point data_dir at this node's own directory")]
    WrongNode {
        /// This node.
        expected: NodeId,
        /// The owner recorded in the data.
        found: NodeId,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A deliberate bug in the writer, compiled only with the `sabotage` feature (the simulator's
/// checker tests turn it on to show that each rule catches its bug).
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    /// None: the writer behaves as in production.
    #[default]
    None,
    /// A merge stores the incoming object instead of merging it (`sync`) with the stored one.
    OverwriteOnMerge,
    /// Hints are never stored (the write still succeeds).
    ForgetHints,
    /// The dot counter restarts at 1 on open instead of at the persisted lease end.
    ReuseDots,
    /// A client update is applied twice, under two dots (as a forward retried after a lost
    /// reply would, had the first attempt applied it).
    ApplyTwice,
    /// A key whose stored copy is only tombstones takes an incoming copy as it is instead of
    /// merging: a stale replica's value comes back after a delete.
    ForgetTombstones,
    /// A client update ignores its context: what the client saw stays as a sibling of what it
    /// wrote over it.
    IgnoreContext,
    /// A merge is acknowledged but not stored.
    AckWithoutStoring,
    /// A client update stores a value nobody wrote.
    CorruptValue,
    /// The keys a commit removed are not reported (`BatchOutcome::removes` stays empty), so
    /// the Merkle trees kept from commits still hold them.
    UnreportedRemoves,
}

/// How a writer is set up.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Counters leased per lease extension (`DOT_LEASE_BLOCK` in the node).
    pub lease_block: u64,
    /// Hints kept per unreachable target; beyond it, writes that would add one are refused.
    pub hints_per_peer_max: u64,
    /// A deliberate bug (test builds only).
    #[cfg(feature = "sabotage")]
    sabotage: Sabotage,
}

impl WriterConfig {
    /// A production writer's setup. (A constructor rather than a literal, so that the
    /// `sabotage` feature, which Cargo may unify into a build of the node, changes no caller.)
    pub fn new(lease_block: u64, hints_per_peer_max: u64) -> WriterConfig {
        WriterConfig {
            lease_block,
            hints_per_peer_max,
            #[cfg(feature = "sabotage")]
            sabotage: Sabotage::None,
        }
    }

    /// The same setup with `sabotage` put into the writer.
    #[cfg(feature = "sabotage")]
    pub fn with_sabotage(self, sabotage: Sabotage) -> WriterConfig {
        WriterConfig { sabotage, ..self }
    }
}

/// What one batch did.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One result per write, in order: the key's object after the write (unchanged for hint
    /// writes), or why the write was not applied. A failed commit fails every write.
    pub results: Vec<Result<Object, WriteError>>,
    /// The objects the commit made durable (key, encoded object), for the Merkle trees.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// The keys the commit removed (by [`Write::DropIfUnchanged`]), for the Merkle trees.
    pub removes: Vec<Vec<u8>>,
    /// Whether a batch transaction was committed (false when the batch changed nothing or failed).
    pub committed: bool,
    /// Whether the lease was extended (one extra durable commit) before the batch.
    pub lease_extended: bool,
    /// Merges from peers that met a limit, for the node to log and count.
    pub merge_reports: Vec<MergeReport>,
}

/// A merge from a peer that met a limit. Merges are held to the hard limits, not the client
/// ones: replicas that each took writes up to the client limits must still converge. Past a hard
/// limit the merge is refused (`refused`) and the sender keeps its copy; short of it the key is
/// stored over a client limit, and client writes to it are refused until its siblings are
/// resolved. Either way the key is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// The key.
    pub key: Vec<u8>,
    /// The merge was refused (over a hard limit) rather than stored over a client limit.
    pub refused: bool,
    /// Which limit, in words.
    pub reason: String,
}

/// The writer: the node's actor, its dot lease, and the hint counts per target.
#[derive(Debug)]
pub struct Writer {
    config: WriterConfig,
    actor: ActorId,
    meta: NodeMeta,
    /// The next counter to mint; counters below `meta.lease_end` are covered by the lease.
    next: u64,
    hint_counts: BTreeMap<NodeId, u64>,
}

/// The stored object for `key`, decoded (empty if none).
pub fn read_object(store: &dyn Store, key: &[u8]) -> Result<Object, WriteError> {
    match store.get(key)? {
        None => Ok(Object::new()),
        Some(bytes) => Object::decode(&bytes).map_err(|e| WriteError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

impl Writer {
    /// Opens the writer over `store` for node `node`. A fresh store gets `fresh_epoch` (the
    /// caller draws it at random, nonzero), so a node that lost its data never mints a dot it
    /// minted before; a store of another node is refused.
    pub fn open(
        store: &dyn Store,
        node: NodeId,
        fresh_epoch: u64,
        config: WriterConfig,
    ) -> Result<Writer, OpenError> {
        let meta = match store.meta()? {
            Some(meta) if meta.node != node => {
                return Err(OpenError::WrongNode {
                    expected: node,
                    found: meta.node,
                })
            }
            Some(meta) => meta,
            None => {
                let meta = NodeMeta {
                    node,
                    // Zero is avoided only so a fresh epoch is never mistaken for a default.
                    epoch: fresh_epoch.max(1),
                    lease_end: 1,
                };
                store.commit(&Batch {
                    meta: Some(meta),
                    ..Batch::default()
                })?;
                meta
            }
        };
        // Every counter below the persisted lease end may have been used before a crash: start
        // there, and extend the lease (durably) before minting the first one.
        #[allow(unused_mut)]
        let mut next = meta.lease_end;
        #[cfg(feature = "sabotage")]
        if config.sabotage == Sabotage::ReuseDots {
            next = 1;
        }
        Ok(Writer {
            actor: ActorId {
                node,
                epoch: meta.epoch,
            },
            hint_counts: store.hint_counts()?,
            config,
            meta,
            next,
        })
    }

    /// This node's base actor: its node id and data-directory epoch. Dots are minted under
    /// per-key actors derived from it (same node id, see "Per-key actors" in the module doc).
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// Hints held per target, as of the last committed batch (targets with none are absent).
    pub fn hint_counts(&self) -> &BTreeMap<NodeId, u64> {
        &self.hint_counts
    }

    #[cfg(feature = "sabotage")]
    fn sabotage(&self) -> Sabotage {
        self.config.sabotage
    }

    /// Counters one write may mint: an update one dot (two under `Sabotage::ApplyTwice`), a
    /// merge a fresh-actor marker and a hint renewal.
    fn mints_per_write(&self) -> u64 {
        2
    }

    fn mint(&mut self) -> u64 {
        debug_assert!(
            self.next < self.meta.lease_end,
            "counter minted outside the lease"
        );
        let c = self.next;
        self.next += 1;
        c
    }

    fn extend_lease(&mut self, store: &dyn Store, needed: u64) -> Result<bool, StoreError> {
        if self.next + needed <= self.meta.lease_end {
            return Ok(false);
        }
        // Persist the lease before any counter under it is used: after a crash the node
        // restarts at the lease end and cannot mint a dot it may already have handed out.
        let meta = NodeMeta {
            lease_end: self.next + needed + self.config.lease_block,
            ..self.meta
        };
        store.commit(&Batch {
            meta: Some(meta),
            ..Batch::default()
        })?;
        self.meta = meta;
        Ok(true)
    }

    /// Applies `writes` in order (later writes see earlier ones to the same key and hint) and
    /// commits what they changed as one transaction through `commit` (the caller's way to call
    /// `store.commit`, e.g. timed for metrics).
    pub fn apply_batch(
        &mut self,
        store: &dyn Store,
        writes: &[(Vec<u8>, Write)],
        commit: &mut dyn FnMut(&Batch) -> Result<(), StoreError>,
    ) -> BatchOutcome {
        let needed = writes.len() as u64 * self.mints_per_write();
        let lease_extended = match self.extend_lease(store, needed) {
            Ok(extended) => extended,
            Err(e) => {
                let reason = e.to_string();
                let fail = || {
                    Err(WriteError::Store(StoreError::Io {
                        op: "extend dot lease",
                        reason: reason.clone(),
                    }))
                };
                return BatchOutcome {
                    results: writes.iter().map(|_| fail()).collect(),
                    puts: Vec::new(),
                    removes: Vec::new(),
                    committed: false,
                    lease_extended: false,
                    merge_reports: Vec::new(),
                };
            }
        };

        let mut pending = Pending {
            objects: HashMap::new(),
            hints: HashMap::new(),
            dropped: HashSet::new(),
            counts: self.hint_counts.clone(),
            merge_reports: Vec::new(),
        };
        let mut dirty = Vec::new();
        let mut results = Vec::with_capacity(writes.len());
        for (key, write) in writes {
            let result = self.apply(store, key, write, &mut pending);
            if result.is_ok()
                && matches!(
                    write,
                    Write::Update { .. } | Write::Merge { .. } | Write::DropIfUnchanged { .. }
                )
            {
                dirty.push(key.clone());
            }
            results.push(result);
        }

        let mut batch = Batch::default();
        dirty.sort();
        dirty.dedup();
        for key in dirty {
            if let Some(object) = pending.objects.get(&key) {
                // A key dropped and not written again later in the batch leaves the store; one
                // written after its drop is stored as written.
                if object.is_empty() && pending.dropped.contains(&key) {
                    batch.removes.push(key);
                } else {
                    batch.puts.push((key, object.encode()));
                }
            }
        }
        let mut hints: Vec<_> = pending.hints.into_iter().collect();
        // A deterministic order (the simulator replays bit for bit).
        hints.sort();
        for ((target, key), seq) in hints {
            match seq {
                Some(seq) => batch.hints_put.push(Hint { target, key, seq }),
                None => batch.hints_remove.push((target, key)),
            }
        }
        let committed = if batch.is_empty() {
            Ok(false)
        } else {
            commit(&batch).map(|()| true)
        };
        match committed {
            Ok(committed) => {
                let mut counts = pending.counts;
                counts.retain(|_, c| *c > 0);
                self.hint_counts = counts;
                #[cfg(feature = "sabotage")]
                if self.sabotage() == Sabotage::UnreportedRemoves {
                    batch.removes.clear();
                }
                BatchOutcome {
                    results,
                    puts: batch.puts,
                    removes: batch.removes,
                    committed,
                    lease_extended,
                    merge_reports: pending.merge_reports,
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let results = results
                    .into_iter()
                    .map(|r| {
                        r.and_then(|_| {
                            Err(WriteError::Store(StoreError::Io {
                                op: "commit",
                                reason: reason.clone(),
                            }))
                        })
                    })
                    .collect();
                BatchOutcome {
                    results,
                    puts: Vec::new(),
                    removes: Vec::new(),
                    committed: false,
                    lease_extended,
                    merge_reports: pending.merge_reports,
                }
            }
        }
    }

    fn apply(
        &mut self,
        store: &dyn Store,
        key: &[u8],
        write: &Write,
        pending: &mut Pending,
    ) -> Result<Object, WriteError> {
        let current = match pending.objects.get(key) {
            Some(obj) => obj.clone(),
            None => read_object(store, key)?,
        };
        let next = match write {
            Write::Update { ctx, payload } => {
                // A dot is spent even if the update is refused: counters only move forward.
                let dot = match self.key_actor(&current, ctx) {
                    Some(actor) => Dot::new(actor, self.mint()),
                    None => self.fresh_actor_dot(),
                };
                #[cfg(feature = "sabotage")]
                let (ctx, payload) = match self.sabotage() {
                    Sabotage::IgnoreContext => (&VClock::default(), payload),
                    Sabotage::CorruptValue => (ctx, &Payload::Value(b"corrupt".to_vec())),
                    _ => (ctx, payload),
                };
                let next = current.update(ctx, dot, payload.clone())?;
                #[cfg(feature = "sabotage")]
                let next = if self.sabotage() == Sabotage::ApplyTwice {
                    let again = Dot::new(dot.actor, self.mint());
                    next.update(ctx, again, payload.clone())?
                } else {
                    next
                };
                next
            }
            Write::Merge { object, hint_for } => {
                let mut merged = self.merge(&current, object);
                if self.forgot_own_history(&current, object) {
                    // The copy carries events of this node's actors that this node's copy no
                    // longer holds (it was dropped or reaped, then came back staler than the
                    // copies elsewhere): none of those actors may be continued for this key, so
                    // the next write here mints under the fresh actor recorded now. A tombstone
                    // handed back after a reap gets the entry too; the reaper identifies
                    // tombstones without such entries (`reaper::tombstone_hash`).
                    let marker = self.fresh_actor_dot();
                    merged = merged.witness(marker);
                }
                // `sync` never fails, but its result may exceed the hard limits `decode`
                // enforces; storing it would make the key unreadable, so the merge is refused
                // instead and the sender keeps its copy (see `MergeReport`).
                if let Err(e) = merged.check_limits(Limits::Merge) {
                    pending.merge_reports.push(MergeReport {
                        key: key.to_vec(),
                        refused: true,
                        reason: e.to_string(),
                    });
                    return Err(e.into());
                }
                if merged.over_client_limits() && !current.over_client_limits() {
                    pending.merge_reports.push(MergeReport {
                        key: key.to_vec(),
                        refused: false,
                        reason: format!("{} siblings", merged.sibling_count()),
                    });
                }
                if let Some(target) = hint_for {
                    self.add_hint(store, pending, *target, key, false)?;
                }
                #[cfg(feature = "sabotage")]
                if self.sabotage() == Sabotage::AckWithoutStoring {
                    return Ok(merged);
                }
                if merged == current {
                    // The copy held nothing new (a second source's push of a moved partition,
                    // a repair of a replica that already caught up): the stored object stays,
                    // durable as it is, and the batch writes nothing for the key. An earlier
                    // write of this batch to the key is still in `pending` and is stored.
                    return Ok(current);
                }
                merged
            }
            Write::AddHint { target } => {
                self.add_hint(store, pending, *target, key, false)?;
                return Ok(current);
            }
            Write::RedirectHint { target } => {
                self.add_hint(store, pending, *target, key, true)?;
                return Ok(current);
            }
            Write::HintDelivered { target, seq } => {
                if pending.hint(store, *target, key)? == Some(*seq) {
                    pending.hints.insert((*target, key.to_vec()), None);
                    if let Some(c) = pending.counts.get_mut(target) {
                        *c = c.saturating_sub(1);
                    }
                }
                return Ok(current);
            }
            Write::DropIfUnchanged { expected } => {
                if current.is_empty() || current != *expected {
                    return Ok(current);
                }
                if self.holds_hint(store, pending, key)? {
                    return Ok(current);
                }
                pending.dropped.insert(key.to_vec());
                Object::new()
            }
        };
        pending.objects.insert(key.to_vec(), next.clone());
        Ok(next)
    }

    /// Whether `actor` is one of this data directory's actors: its base actor or a per-key
    /// actor it derived (epoch = base epoch + the counter minted to create it, so below `next`).
    /// An actor of another incarnation of this node passes only if its epoch happens to fall in
    /// the `next` values above this one's, a chance of `next / 2^64`.
    fn own(&self, actor: ActorId) -> Option<u64> {
        let created = actor.epoch.wrapping_sub(self.actor.epoch);
        (actor.node == self.actor.node && created < self.next).then_some(created)
    }

    /// The actor a client update of a key whose copy here is `current` continues: this node's
    /// newest actor in `current`, unless the context knows more of that actor's events for the
    /// key than `current` does (this node lost them). `None`: a fresh actor is needed.
    fn key_actor(&self, current: &Object, ctx: &VClock) -> Option<ActorId> {
        let (_, actor, counter) = current
            .entries()
            .into_iter()
            .filter_map(|(actor, counter, _)| Some((self.own(actor)?, actor, counter)))
            .max_by_key(|(created, _, _)| *created)?;
        (ctx.get(&actor) <= counter).then_some(actor)
    }

    /// A dot of a new per-key actor: the counter minted names both the actor (base epoch plus
    /// it) and its first event.
    fn fresh_actor_dot(&mut self) -> Dot {
        let created = self.mint();
        let actor = ActorId {
            node: self.actor.node,
            epoch: self.actor.epoch.wrapping_add(created),
        };
        Dot::new(actor, created)
    }

    /// Whether `incoming` holds events of this node's actors that `current` does not: this node
    /// lost part of its history of the key.
    fn forgot_own_history(&self, current: &Object, incoming: &Object) -> bool {
        incoming.entries().into_iter().any(|(actor, counter, _)| {
            self.own(actor).is_some() && counter > current.max_counter(actor)
        })
    }

    fn merge(&self, current: &Object, incoming: &Object) -> Object {
        #[cfg(feature = "sabotage")]
        match self.sabotage() {
            Sabotage::OverwriteOnMerge => return incoming.clone(),
            Sabotage::ForgetTombstones if !current.is_empty() && current.live().is_empty() => {
                return incoming.clone()
            }
            _ => {}
        }
        current.sync(incoming)
    }

    /// Whether this node holds a hint for `key` to any target, counting this batch's changes.
    /// One point read per target with hints (a handful: the nodes that were unreachable).
    fn holds_hint(
        &self,
        store: &dyn Store,
        pending: &Pending,
        key: &[u8],
    ) -> Result<bool, StoreError> {
        for target in pending.counts.keys().chain(
            pending
                .hints
                .keys()
                .filter(|(_, k)| k == key)
                .map(|(t, _)| t),
        ) {
            if pending.hint(store, *target, key)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn add_hint(
        &mut self,
        store: &dyn Store,
        pending: &mut Pending,
        target: NodeId,
        key: &[u8],
        over_limit: bool,
    ) -> Result<(), WriteError> {
        #[cfg(feature = "sabotage")]
        if self.sabotage() == Sabotage::ForgetHints {
            return Ok(());
        }
        let exists = pending.hint(store, target, key)?.is_some();
        let count = pending.counts.entry(target).or_insert(0);
        if !exists {
            if *count >= self.config.hints_per_peer_max && !over_limit {
                return Err(WriteError::HintsFull {
                    target,
                    max: self.config.hints_per_peer_max,
                });
            }
            *count += 1;
        }
        let seq = self.mint();
        pending.hints.insert((target, key.to_vec()), Some(seq));
        Ok(())
    }
}

/// What a batch has changed so far, not yet committed.
struct Pending {
    objects: HashMap<Vec<u8>, Object>,
    /// (target, key) → the hint's renewal, `None` once deleted.
    hints: HashMap<(NodeId, Vec<u8>), Option<u64>>,
    /// Keys a [`Write::DropIfUnchanged`] removed in this batch.
    dropped: HashSet<Vec<u8>>,
    counts: BTreeMap<NodeId, u64>,
    merge_reports: Vec<MergeReport>,
}

impl Pending {
    /// The hint's current renewal: this batch's change, else the store's.
    fn hint(
        &self,
        store: &dyn Store,
        target: NodeId,
        key: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        match self.hints.get(&(target, key.to_vec())) {
            Some(seq) => Ok(*seq),
            None => Ok(store.hint(target, key)?.map(|h| h.seq)),
        }
    }
}
