//! One simulated node: the core's request driver, route, forwarder and forward table, writer,
//! liveness and handoff policies (anti-entropy in `ae`, gossip membership in `gossip`), carried
//! out over the simulated world as `node/src/driver.rs`, `server/dispatch.rs`, `engine.rs`,
//! `peers.rs` and `handoff.rs` carry them out. This file's own: the match that hands each of the
//! node's peer requests (`cairn_proto::PeerRequest`, decoded as the node decodes it) to the
//! writer, the store, the layout or a core machine (as `handle_peer` does), and
//! `strict_routing`, a stricter policy than the node's (a write off its chosen replicas refused)
//! that only the simulator's sweeps try.
//!
//! Durability: the node's writer (`cairn_core::writer`, the engine's own batch application)
//! over a `SimDisk` that survives a crash (unless the data directory is lost). A write queued for
//! the disk is applied and becomes durable in the group commit of the next `Disk` event (one
//! FIFO queue per node, up to `SIM_GROUP_COMMIT_MAX` jobs per commit, like the engine's single
//! writer thread); its acknowledgement is sent only then, and a crash before it loses the write.
//! Everything else (the coordinator, the liveness view, requests in flight, the handoff loop,
//! the writer with its next dot counter) is lost on a crash; a restart reopens the writer, which
//! resumes dots at the persisted lease end, so no dot is minted twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use cairn_core::cleanup::{Action as CleanupAction, Cleanup, CleanupConfig};
use cairn_core::coordinator::{route, OpId, ReplicaResult, RequestId, Route};
use cairn_core::driver::{forward_timeout, DriverSabotage, LocalOp, Output, RequestDriver};
use cairn_core::forward::{
    unrecorded_retry, Admit, ForwardKey, ForwardSabotage, ForwardTable, Forwarder, Step,
    FORWARD_RETRY_WINDOW,
};
use cairn_core::handoff::{redirect_writes, Action, Answer, Handoff, HintRef};
use cairn_core::handoff::{HANDOFF_INTERVAL, HANDOFF_REQUEST_TIMEOUT};
use cairn_core::health::{with_fault_reason, StorageFault, StorageHealth, STORAGE_CHECK_INTERVAL};
use cairn_core::limits::{FORWARD_RETRY_POLL, FORWARD_RETRY_WAIT_MAX};
use cairn_core::limits::{TOMBSTONE_REQUEST_TIMEOUT, TRANSFER_REQUEST_TIMEOUT};
use cairn_core::liveness::{Liveness, Transition, PEER_CONNECT_TIMEOUT};
use cairn_core::liveness::{PING_TIMEOUT, PROBE_INTERVAL};
use cairn_core::peer::{ack, batch_answers, forwarded, pong, typed_answer, PeerError};
use cairn_core::reaper::{self, Action as ReaperAction, Reaper, ReaperConfig};
use cairn_core::reply::reply;
use cairn_core::serve::BatchPlan;
use cairn_core::store::Store;
use cairn_core::transfer::{
    batch_answered, batch_request, batches, read_page, unreplicated_page, Action as TransferAction,
    SendId, TransferConfig, TransferEntry, TransferMachine, TransferSabotage,
};
use cairn_core::trees::{put_change, remove_change, PartitionTree};
use cairn_core::version::{Dot, Object, Payload, VClock};
use cairn_core::writer::{read_object, Write, WriteError, Writer, WriterConfig};
use cairn_gossip::Storage;
use cairn_layout::{Layout, MergeOutcome};
use cairn_proto::{
    check_peer_request, BatchItem, ErrorReply, KeyOpReply, NodeId, PeerRequest, PeerResponse,
    TombstoneHolding,
};
use cairn_ring::{Member, Ring, RingConfig};
use rand::Rng;

mod ae;
mod gossip;

use super::disk::SimDisk;
use super::fmt::{dot, node, obj};
use super::history::{History, Holding, WriteId};
use super::msg::{describe_layout, key_str, Addr, Body, ClientRequest, ClientResponse, Envelope};
use super::world::{ClientIx, Event, NodeIx, TransportFailure, World};
use super::Sabotage;

/// Dots leased per lease extension. Much smaller than the node's `DOT_LEASE_BLOCK` so that
/// runs cross many lease boundaries; the rule (persist the lease end before using a counter
/// under it, restart at the lease end) is the writer's own.
pub const SIM_LEASE_BLOCK: u64 = 5;
/// Jobs one group commit of a simulated writer takes at most (the engine's batches are larger;
/// small here so batches of one, a few and a full one all occur).
pub const SIM_GROUP_COMMIT_MAX: usize = 8;
/// Hints a simulated node keeps per target unless the seed draws a small store (the node's
/// `HINTS_PER_PEER_MAX` is 100,000, which no run reaches).
pub const SIM_HINTS_PER_PEER_MAX: u64 = 100_000;

/// Keys per cleanup page (the node's `CLEANUP_PAGE_MAX` is 256; small here so sweeps cross
/// pages).
pub const SIM_CLEANUP_PAGE_MAX: usize = 2;
/// When a sweep that had to keep a key it does not replicate runs again (the node's
/// `CLEANUP_RETRY_INTERVAL` is 30 s; shorter here so runs settle).
pub const SIM_CLEANUP_RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// Rounds of acknowledging, recording and retiring one layout change may take in one go (each
/// round changes the layout or stops).
const PUMP_ROUNDS_MAX: usize = 8;

/// What a source held of the partitions it pushes when its transfer started: each key, its
/// object then, and the replicas it had to reach.
pub type Snapshot = Vec<(Vec<u8>, Object, Vec<NodeId>)>;

/// What a node tells the simulation (for the checker) as it goes.
#[derive(Debug)]
pub enum Notice {
    /// `source` recorded in its layout that it pushed every partition of `version`'s transfer;
    /// `snapshot` is what it held of those partitions when the transfer started (`started`),
    /// with the replicas each key had to reach.
    Pushed {
        /// The source.
        source: NodeIx,
        /// The layout version.
        version: u64,
        /// When its transfer started.
        started: Duration,
        /// Key, the source's object then, the gaining replicas.
        snapshot: Snapshot,
    },
}

/// What every node handler needs besides the node itself.
pub struct Ctx<'a> {
    /// Time, events, randomness, network.
    pub w: &'a mut World,
    /// Q and N of every layout.
    pub config: RingConfig,
    /// The cluster's id (the digest of layout version 1), sent with every layout.
    pub cluster: cairn_layout::Digest,
    /// Node id of each node index (spares included).
    pub ids: &'a [NodeId],
    /// The history being recorded.
    pub history: &'a mut History,
    /// Probability of crashing a coordinator right after it acknowledged a write (0 when faults
    /// are off).
    pub crash_after_ack: f64,
    /// Hints each node keeps per target (drawn per seed; the writer refuses more).
    pub hints_per_peer_max: u64,
    /// A deliberate bug in the simulated replica, to show the checker catches it.
    pub sabotage: Sabotage,
    /// The driver's bug of seed 106 put back (see `Options`).
    pub ack_despite_failed_hint: bool,
    /// A deliberate bug in every forwarder (see `Options`).
    pub forward_sabotage: ForwardSabotage,
    /// Writes are coordinated only at a chosen replica (see `Options`).
    pub strict_routing: bool,
    /// How fast and wide transfers go (drawn per seed).
    pub transfer: TransferConfig,
    /// A deliberate bug in the transfer machine.
    pub transfer_sabotage: TransferSabotage,
    /// The cleanup drops copies (see `Options::drop_copies`).
    pub drop_copies: bool,
    /// Every node reaps tombstones (see `Options::reap`).
    pub reap: bool,
    /// A deliberate bug in the reaper.
    pub reaper_sabotage: cairn_core::reaper::ReaperSabotage,
    /// The layout changes in this run (else nodes skip the layout exchange, whose timing would
    /// move the runs of the seeds found before it).
    pub layout_changes: bool,
    /// Nodes run anti-entropy (`ae`).
    pub anti_entropy: bool,
    /// Nodes run gossip membership (`gossip`).
    pub gossip: bool,
    /// A deliberate bug in every anti-entropy exchange.
    pub exchange_sabotage: cairn_core::antientropy::ExchangeSabotage,
    /// What nodes report for the checker.
    pub notices: &'a mut Vec<Notice>,
}

impl Ctx<'_> {
    fn ix(&self, id: NodeId) -> NodeIx {
        self.ids
            .iter()
            .position(|&i| i == id)
            .expect("every node id the ring names is a simulated node")
    }
}

/// A write waiting in the node's queue for the disk.
#[derive(Debug)]
pub enum DiskJob {
    /// The coordinator's local update: mint a dot, update, store, answer `op`.
    Update {
        /// The key.
        key: Vec<u8>,
        /// The client's context.
        ctx: VClock,
        /// Value or tombstone.
        payload: Payload,
        /// The coordinator's op.
        op: OpId,
        /// The request and the history's write this update belongs to.
        tag: Option<(RequestId, WriteId)>,
    },
    /// Merge an object (`sync`), keeping a hint for `hint_for` in the same transaction.
    Merge {
        /// The key.
        key: Vec<u8>,
        /// The incoming object.
        object: Object,
        /// The primary this copy stands in for.
        hint_for: Option<NodeId>,
        /// Who gets the acknowledgement.
        done: MergeDone,
    },
    /// Keep a hint for `target` (the coordinator's `HintNeeded`).
    AddHint {
        /// The driver's number for the hint.
        seq: u64,
        /// The key.
        key: Vec<u8>,
        /// The replica that missed it.
        target: NodeId,
    },
    /// A handed-off key was acknowledged: delete the hint unless it was renewed since.
    HintDelivered {
        /// The key.
        key: Vec<u8>,
        /// The node it was handed to.
        target: NodeId,
        /// The renewal the delivery started from.
        seq: u64,
    },
    /// The handoff policy redirects a hint whose target no longer replicates the key
    /// (`Action::Redirect`): the core's `redirect_writes`, applied in order, stopping at the
    /// first that fails, as `node/src/handoff.rs` applies them.
    Redirect {
        /// The key.
        key: Vec<u8>,
        /// The node the hint was for.
        target: NodeId,
        /// The writes, in order.
        writes: Vec<Write>,
    },
    /// The reaper removes a tombstone every member confirmed, if it is still what its scan
    /// read (`Write::DropIfUnchanged`, as `node/src/reaper.rs` applies it).
    Reap {
        /// The key.
        key: Vec<u8>,
        /// The tombstone the scan read.
        expected: Object,
    },
    /// The cleanup sweep drops a copy this node replicates in no live layout version, if it is
    /// still what the sweep read (`Write::DropIfUnchanged`).
    Drop {
        /// The key.
        key: Vec<u8>,
        /// The object the sweep read.
        expected: Object,
    },
}

impl DiskJob {
    /// A merge of `object` into `key`'s copy, keeping a hint for `hint_for`; `done` gets the
    /// answer.
    fn merge(key: Vec<u8>, object: Object, hint_for: Option<NodeId>, done: MergeDone) -> DiskJob {
        DiskJob::Merge {
            key,
            object,
            hint_for,
            done,
        }
    }

    /// The key it writes.
    fn key(&self) -> &[u8] {
        match self {
            DiskJob::Update { key, .. }
            | DiskJob::Merge { key, .. }
            | DiskJob::AddHint { key, .. }
            | DiskJob::HintDelivered { key, .. }
            | DiskJob::Redirect { key, .. }
            | DiskJob::Reap { key, .. }
            | DiskJob::Drop { key, .. } => key,
        }
    }

    /// The write it asks of the writer's batch (`None` for a redirect, applied write by write).
    fn write(&self) -> Option<(Vec<u8>, Write)> {
        let write = match self {
            DiskJob::Update { ctx, payload, .. } => Write::Update {
                ctx: ctx.clone(),
                payload: payload.clone(),
            },
            DiskJob::Merge {
                object, hint_for, ..
            } => Write::Merge {
                object: object.clone(),
                hint_for: *hint_for,
            },
            DiskJob::AddHint { target, .. } => Write::AddHint { target: *target },
            DiskJob::HintDelivered { target, seq, .. } => Write::HintDelivered {
                target: *target,
                seq: *seq,
            },
            DiskJob::Reap { expected, .. } | DiskJob::Drop { expected, .. } => {
                Write::DropIfUnchanged {
                    expected: expected.clone(),
                }
            }
            DiskJob::Redirect { .. } => return None,
        };
        Some((self.key().to_vec(), write))
    }

    /// Whether its write's result is the key's new copy (not a hint change).
    fn changes_object(&self) -> bool {
        matches!(
            self,
            DiskJob::Update { .. }
                | DiskJob::Merge { .. }
                | DiskJob::Reap { .. }
                | DiskJob::Drop { .. }
        )
    }
}

/// Where a merge's acknowledgement goes.
#[derive(Debug)]
pub enum MergeDone {
    /// This node's coordinator (`None`: read repair, nobody waits).
    Local(Option<OpId>),
    /// A peer's request.
    Peer {
        /// The requester.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Its request id.
        rid: u64,
    },
    /// Item `index` of a peer batch this node serves (`Running::serving`).
    Batch {
        /// The served batch.
        id: u64,
        /// The write's place among the batch plan's writes.
        index: usize,
    },
    /// A key repair of anti-entropy exchange `exchange`.
    AntiEntropy {
        /// The exchange.
        exchange: u64,
        /// The key's repair.
        repair: cairn_core::antientropy::KeyRepair,
    },
}

/// Who gets the answer to a request coordinated here.
#[derive(Debug, Clone, Copy)]
pub enum ReplyTo {
    /// A client's operation.
    Client {
        /// The client.
        client: ClientIx,
        /// Its operation.
        seq: u64,
    },
    /// A peer that forwarded a write: its answer goes to every attempt of that forward
    /// waiting in the node's forward table.
    Forward {
        /// (the sender, the forward's id).
        key: ForwardKey,
    },
    /// A peer that forwarded a read.
    Peer {
        /// The peer.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Its request id.
        rid: u64,
    },
}

/// A peer request waiting for its answer.
#[derive(Debug)]
enum Outgoing {
    Coord {
        op: OpId,
    },
    Repair,
    Ping,
    Forward(Forwarding),
    Handoff,
    /// One peer batch of a transfer send, with the entries it carries.
    Transfer {
        send: SendId,
        batch: Vec<TransferEntry>,
    },
    Layout,
    Reaper,
    AntiEntropy {
        exchange: u64,
        wait: ae::Wait,
    },
    Gossip,
}

/// A client request this node forwards: the core's forwarder for it and what it needs to
/// answer the client or coordinate the request here.
#[derive(Debug)]
struct Forwarding {
    client: ClientIx,
    seq: u64,
    req: ClientRequest,
    to: NodeIx,
    forwarder: Forwarder,
    /// How long each attempt waits for its answer (`cairn_core::driver::forward_timeout`, as
    /// `server/dispatch.rs` computes it).
    timeout: Duration,
}

/// Who waits for a forwarded write's first attempt: (peer, its incarnation, its request id).
type ForwardWaiters = Vec<(NodeIx, u64, u64)>;

/// The state a crash loses.
pub struct Running {
    /// The node's own request driver (`cairn_core::driver`, holding the coordinator).
    driver: RequestDriver<ReplyTo>,
    /// The engine's writer over this node's store: it mints dots and hint renewals.
    writer: Writer,
    /// The node's own liveness policy (`cairn_core::liveness`), fed as `peers.rs` feeds it.
    liveness: Liveness,
    /// The other nodes.
    peer_ids: Vec<NodeId>,
    /// Peers with a ping in flight (the node's probe loop waits for its pings).
    pinging: BTreeSet<NodeId>,
    /// Peer requests awaiting an answer: (peer, when it started, what it was for).
    outgoing: BTreeMap<u64, (NodeId, Duration, Outgoing)>,
    next_rid: u64,
    minted: BTreeMap<RequestId, Dot>,
    put_tag: Option<(RequestId, WriteId)>,
    coord_timer: Option<Duration>,
    /// Jobs queued for the disk, in order; a flush is scheduled while any wait.
    disk_queue: VecDeque<DiskJob>,
    /// A flush is scheduled.
    disk_busy: bool,
    disk_pending: usize,
    /// Hints the disk finished (kept or failed), in issue order, for the driver.
    hints_done: u64,
    /// The node's own hint delivery policy (`cairn_core::handoff`), carried out as
    /// `node/src/handoff.rs` does.
    handoff: Handoff,
    /// The `layout_seq` the handoff policy last got its layout at.
    handoff_seq: u64,
    /// The node's own tombstone reaper (`cairn_core::reaper`), carried out as
    /// `node/src/reaper.rs` does; `None` when the run does not reap.
    reaper: Option<Reaper>,
    /// The `layout_seq` the reaper last got its layout at.
    reaper_seq: u64,
    /// Arming of the reaper's timer; older arms are stale.
    reaper_arm: u64,
    /// Arming of the handoff interval timer; older arms are stale.
    handoff_arm: u64,
    /// The node's own transfer machine (`cairn_core::transfer`), run as `node/src/transfer.rs`
    /// runs it.
    transfer: TransferMachine,
    /// Per batch sent: keys whose acknowledgement is still due.
    sends: BTreeMap<SendId, usize>,
    /// When the transfer machine's timer is armed for.
    transfer_timer: Option<Duration>,
    /// What this node held of the partitions it pushes, when its transfer started.
    snapshot: Option<(u64, Duration, Snapshot)>,
    /// The write fence (`node/src/driver.rs`): the newest layout version the coordinator routes
    /// by with no unanswered write routed under an older one.
    fence: u64,
    /// The node's cleanup (`cairn_core::cleanup`, driven as `node/src/cleanup.rs` does);
    /// `None` when the run does not drop copies (`Options::drop_copies`).
    cleanup: Option<Cleanup>,
    /// The `layout_seq` the cleanup last got its layout at.
    cleanup_seq: u64,
    /// Arming of the cleanup's timer; older arms are stale.
    cleanup_arm: u64,
    /// The `layout_seq` the coordinator routes by.
    routed_seq: u64,
    /// The forwarded writes this node coordinated, by (sender, id), as
    /// `node/src/forwards.rs` keeps them: a retry gets the first outcome.
    forwards: ForwardTable<ClientResponse, ForwardWaiters>,
    /// Forwards waiting for their replica to be judged up again, with the wait's deadline.
    forward_waits: BTreeMap<u64, (Duration, Forwarding)>,
    /// Forwards sent by this incarnation (the low half of their ids; the high half is `gen`).
    forwards_sent: u64,
    /// Anti-entropy (`ae`), when the run has it.
    ae: Option<ae::AntiEntropy>,
    /// Gossip membership (`gossip`), when the run has it.
    gossip: Option<gossip::SimGossip>,
    /// The writer's storage health (`cairn_core::health`), as the engine's writer thread runs
    /// it.
    health: StorageHealth,
    /// The storage state last declared (in gossip, and to this node's own liveness view).
    declared: Storage,
    /// A storage check is scheduled.
    storage_check: bool,
    /// The Merkle trees (`cairn_core::trees`) with anti-entropy: built from the store at
    /// start, then kept by every commit as the engine's writer keeps the node's.
    trees: Option<Vec<PartitionTree>>,
    /// Peer batches being served, by a local id: their writes still on the disk queue.
    serving: BTreeMap<u64, Serving>,
}

/// A peer batch this node serves (`PeerRequest::Batch`).
#[derive(Debug)]
struct Serving {
    /// Who asked: (peer, its incarnation, its request id).
    from: (NodeIx, u64, u64),
    plan: BatchPlan,
    /// Each write's result, as the disk finishes it.
    written: Vec<Option<Result<(), ErrorReply>>>,
    /// The copies read.
    read: Vec<Result<Object, ErrorReply>>,
}

/// A simulated node.
pub struct SimNode {
    /// Its index.
    pub ix: NodeIx,
    /// Its id.
    pub id: NodeId,
    /// The epoch its store gets when fresh (a new one after its data directory is lost).
    pub epoch: u64,
    /// What survives a crash: objects, hints and the node's metadata (epoch, dot lease end).
    pub store: SimDisk,
    /// Incarnation: bumped by every crash, so events of an earlier life are ignored.
    pub gen: u64,
    /// The layout it holds (`data/layout.bin`: survives a crash, lost with the data directory).
    pub layout: Option<Layout>,
    /// No live layout version has it any more (it was a member).
    pub left: bool,
    /// It was a member of a layout it held (so losing its membership means it left).
    pub was_member: bool,
    /// Bumped on every change of `layout`, so the coordinator is handed only new ones.
    layout_seq: u64,
    /// The running process, `None` while crashed.
    pub run: Option<Running>,
}

impl SimNode {
    /// A node that has never run.
    pub fn new(ix: NodeIx, id: NodeId, epoch: u64) -> SimNode {
        SimNode {
            ix,
            id,
            epoch,
            store: SimDisk::default(),
            gen: 0,
            layout: None,
            left: false,
            was_member: false,
            layout_seq: 0,
            run: None,
        }
    }

    /// Whether this node replicates `key` in a live version of its layout (for the checker's
    /// bookkeeping).
    fn is_primary(&self, cx: &Ctx, key: &[u8]) -> bool {
        self.layout
            .as_ref()
            .is_some_and(|l| l.replicates(self.id, cx.config.partition_of(key)))
    }

    /// How this node holds the copy of `key` it stores (for the checker): as a replica, as a
    /// fallback whose copy has a hint (`hinted`), or as a stray copy.
    fn holding(&self, cx: &Ctx, key: &[u8], hinted: bool) -> Holding {
        match (self.is_primary(cx, key), hinted) {
            (true, _) => Holding::Primary,
            (false, true) => Holding::Fallback,
            (false, false) => Holding::Stray,
        }
    }

    /// The stored copy of `key` (empty if none).
    pub fn object(&self, key: &[u8]) -> Object {
        read_object(&self.store, key).expect("the simulated store holds only objects it encoded")
    }

    /// Hints held per target.
    pub fn hint_counts(&self) -> BTreeMap<NodeId, u64> {
        self.store
            .hint_counts()
            .expect("the simulated store does not fail")
    }

    fn me(&self) -> Addr {
        Addr::Node(self.ix)
    }

    fn run(&mut self) -> &mut Running {
        self.run
            .as_mut()
            .expect("handlers run only on a running node")
    }

    /// Whether the node is running.
    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// Starts the process (first start or restart after a crash); false if it could not start
    /// (a fresh store whose disk fails cannot record its metadata).
    pub fn start(&mut self, cx: &mut Ctx) -> bool {
        assert!(self.run.is_none(), "node started twice");
        let instant = cx.w.instant();
        let peer_ids: Vec<NodeId> = cx.ids.iter().copied().filter(|&id| id != self.id).collect();
        let mut liveness = Liveness::new(self.id);
        for &id in peer_ids.iter().filter(|_| !cx.gossip) {
            // No gossip: every peer counts as alive to gossip and as a suspect, so the probes
            // find a dead one, as a suspect's pings do in the node.
            liveness.handle_gossip(instant, id, true, true);
        }
        while liveness.poll_transition().is_some() {}
        let writer = match Writer::open(
            &self.store,
            self.id,
            self.epoch,
            WriterConfig::new(SIM_LEASE_BLOCK, cx.hints_per_peer_max).with_sabotage(cx.sabotage),
        ) {
            Ok(writer) => writer,
            Err(e) => {
                // As `Node::start` failing on its engine: the process exits; try again later.
                cx.w.logf(self.me(), || format!("START failed: {e}"));
                return false;
            }
        };
        let ring = match &self.layout {
            Some(l) => l.current().ring().clone(),
            // A driver needs a ring; client requests are refused while there is no layout.
            None => Ring::new(cx.config, &[Member::new(self.id)]).expect("a ring of one"),
        };
        let mut transfer = TransferMachine::new(instant, cx.transfer);
        transfer.set_sabotage(cx.transfer_sabotage);
        let meta = self.store.meta().ok().flatten();
        let objects = self.store.scan_objects(None, &mut |_, _| true).unwrap_or(0);
        let hints: u64 = self.hint_counts().values().sum();
        self.run = Some(Running {
            driver: {
                let mut driver = RequestDriver::new(self.id, ring, true);
                if let Some(layout) = &self.layout {
                    driver.set_layout(layout);
                }
                if cx.ack_despite_failed_hint {
                    driver.set_sabotage(DriverSabotage::AckDespiteFailedHint);
                }
                driver
            },
            writer,
            liveness,
            peer_ids,
            pinging: BTreeSet::new(),
            outgoing: BTreeMap::new(),
            next_rid: 0,
            minted: BTreeMap::new(),
            put_tag: None,
            coord_timer: None,
            disk_queue: VecDeque::new(),
            disk_busy: false,
            disk_pending: 0,
            hints_done: 0,
            handoff: Handoff::new(),
            // Not yet handed the layout: the first round does.
            handoff_seq: u64::MAX,
            handoff_arm: 0,
            reaper: cx.reap.then(|| {
                let config = ReaperConfig {
                    grace: crate::SIM_TOMBSTONE_GRACE,
                    interval: crate::SIM_TOMBSTONE_ROUND_INTERVAL,
                    ..ReaperConfig::default()
                };
                let mut reaper = Reaper::new(instant, self.id, config);
                reaper.set_sabotage(cx.reaper_sabotage);
                reaper
            }),
            reaper_seq: u64::MAX,
            reaper_arm: 0,
            transfer,
            sends: BTreeMap::new(),
            transfer_timer: None,
            snapshot: None,
            fence: 0,
            cleanup: cx.drop_copies.then(|| {
                Cleanup::new(CleanupConfig {
                    page_max: SIM_CLEANUP_PAGE_MAX,
                    retry_interval: SIM_CLEANUP_RETRY_INTERVAL,
                })
            }),
            cleanup_seq: u64::MAX,
            cleanup_arm: 0,
            routed_seq: self.layout_seq,
            forwards: ForwardTable::new(instant, usize::MAX),
            forward_waits: BTreeMap::new(),
            forwards_sent: 0,
            ae: cx.anti_entropy.then(ae::AntiEntropy::new),
            health: StorageHealth::default(),
            declared: Storage::Ok,
            storage_check: false,
            serving: BTreeMap::new(),
            trees: cx.anti_entropy.then(|| {
                cairn_core::trees::build(&self.store, cx.config, &|| true)
                    .expect("the simulated store scans")
                    .trees
            }),
            gossip: cx
                .gossip
                .then(|| gossip::SimGossip::new(self.ix, cx.ids, self.gen + 1, instant)),
        });
        cx.w.logf(self.me(), || {
            format!(
                "START gen={} dots resume at {} (lease end), {objects} objects, {hints} hints",
                self.gen,
                meta.map_or(1, |m| m.lease_end),
            )
        });
        let gen = self.gen;
        cx.w.after(Duration::ZERO, Event::ProbeTick { node: self.ix, gen });
        self.arm_handoff(cx, HANDOFF_INTERVAL);
        self.reaper_pump(cx);
        if cx.layout_changes {
            let delay = cx.w.micros(0, 500_000);
            cx.w.after(delay, Event::LayoutTick { node: self.ix, gen });
        }
        if cx.anti_entropy {
            self.arm_anti_entropy(cx);
        }
        if cx.gossip {
            self.arm_gossip(cx);
        }
        // As the node's cleanup task: one sweep at start.
        self.cleanup_pump(cx);
        self.pump(cx);
        true
    }

    /// The data directory is gone (the process is down): the node restarts with an empty
    /// store and mints dots under `epoch`.
    pub fn lose_data(&mut self, epoch: u64) {
        assert!(
            self.run.is_none(),
            "data is lost only while the node is down"
        );
        self.store = SimDisk::default();
        self.epoch = epoch;
        // `layout.bin` and the membership file are in the data directory: the node waits for
        // a layout from its peers.
        self.layout = None;
        self.left = false;
        self.was_member = false;
    }

    /// Crashes the process: everything not durable is gone.
    pub fn crash(&mut self, cx: &mut Ctx) {
        let Some(run) = self.run.take() else { return };
        self.gen += 1;
        cx.w.logf(self.me(), || {
            format!(
                "CRASH: lost {} queued disk writes, {} peer requests in flight, {} coordinated requests",
                run.disk_pending,
                run.outgoing.len(),
                run.driver.coordinator().in_flight()
            )
        });
    }

    /// Whether nothing is in progress here (besides pings).
    pub fn idle(&self) -> bool {
        self.run.as_ref().is_some_and(|r| {
            r.driver.is_idle()
                && r.disk_pending == 0
                && r.handoff.is_idle()
                && r.sends.is_empty()
                // Pings, layout exchanges and the reaper's checks never end: background.
                && r.outgoing
                    .values()
                    .all(|(_, _, o)| matches!(
                        o,
                        Outgoing::Ping
                            | Outgoing::Layout
                            | Outgoing::Reaper
                            | Outgoing::AntiEntropy { .. }
                            | Outgoing::Gossip
                    ))
        })
    }

    /// Peers this node believes down.
    pub fn peers_down(&self) -> Vec<NodeId> {
        self.run.as_ref().map_or_else(Vec::new, |r| {
            r.peer_ids
                .iter()
                .copied()
                .filter(|id| !r.liveness.is_up(*id))
                .collect()
        })
    }

    // ---- messages ----

    /// A message arrived (the node is running and the partition let it through).
    pub fn on_deliver(&mut self, cx: &mut Ctx, env: Envelope) {
        let from = env.from;
        match env.body {
            Body::ClientReq { seq, req } => {
                let Addr::Client(client) = from else {
                    unreachable!("client requests come from clients")
                };
                cx.w.logf(self.me(), || {
                    format!("recv {from} op#{seq} {}", super::msg::describe_req(&req))
                });
                self.on_client_request(cx, client, seq, req);
            }
            Body::PeerReq {
                gen,
                rid,
                req,
                write,
            } => {
                let Addr::Node(peer) = from else {
                    unreachable!("peer requests come from nodes")
                };
                self.on_peer_request(cx, (peer, gen, rid), req, write);
            }
            Body::PeerResp {
                gen,
                rid,
                resp,
                minted,
            } => {
                if gen != self.gen {
                    return;
                }
                self.on_peer_response(cx, rid, resp, minted);
            }
            Body::ClientResp { .. } => unreachable!("nodes get no client responses"),
        }
    }

    /// `server/dispatch.rs::handle`: forward to a chosen replica, or coordinate here.
    fn on_client_request(&mut self, cx: &mut Ctx, client: ClientIx, seq: u64, req: ClientRequest) {
        let Some(routed) = self.route(req.key()) else {
            self.no_layout(cx, ReplyTo::Client { client, seq });
            return;
        };
        match routed {
            Route::Forward(to) => {
                cx.w.logf(self.me(), || {
                    format!("route {}: forward to {}", key_str(req.key()), node(to))
                });
                // As `server/dispatch.rs`: an id of this incarnation's own, the core's
                // forwarder deciding what follows each attempt.
                let gen = self.gen;
                let run = self.run();
                run.forwards_sent += 1;
                let id = (gen << 32) | run.forwards_sent;
                let mut forwarder = Forwarder::new(id, req.is_write(), node(to));
                forwarder.set_sabotage(cx.forward_sabotage);
                let step = forwarder.start();
                let timeout = forward_timeout(req.timeout_ms());
                let f = Forwarding {
                    client,
                    seq,
                    req,
                    to: cx.ix(to),
                    forwarder,
                    timeout,
                };
                self.forward_step(cx, f, step);
            }
            Route::Local => {
                cx.w.logf(self.me(), || {
                    format!("route {}: Local, coordinating here", key_str(req.key()))
                });
                self.coordinate(cx, req, ReplyTo::Client { client, seq });
            }
            Route::Unavailable => {
                cx.w.logf(self.me(), || {
                    format!("route {}: Unavailable", key_str(req.key()))
                });
                self.coordinate_if_chosen(cx, req, ReplyTo::Client { client, seq });
            }
        }
    }

    /// `route` over this node's routing ring (`Layout::routing_ring`) and liveness view; `None`
    /// while it holds no layout.
    fn route(&self, key: &[u8]) -> Option<Route> {
        let me = self.id;
        let layout = self.layout.as_ref()?;
        let liveness = &self.run.as_ref().expect("running").liveness;
        let is_up = |id: NodeId| liveness.is_up(id);
        Some(route(layout.routing_ring(), me, key, &is_up))
    }

    /// A node without a layout answers `NoRing`, as `server/dispatch.rs` does.
    fn no_layout(&mut self, cx: &mut Ctx, reply: ReplyTo) {
        cx.w.log(self.me(), "no layout yet: request refused");
        let resp = ClientResponse::error(ErrorReply::NoRing {
            node: super::fmt::node(self.id),
            reason: "it holds no layout yet".into(),
        });
        self.answer(cx, reply, resp);
    }

    /// What `server/dispatch.rs` does when it cannot hand a request to a chosen replica (its forward
    /// failed, or it was forwarded here): coordinate here regardless. With `strict_routing`,
    /// a write is coordinated only where `route` says `Local`, else refused.
    fn coordinate_if_chosen(&mut self, cx: &mut Ctx, req: ClientRequest, reply: ReplyTo) {
        if cx.strict_routing && req.is_write() {
            let route = self.route(req.key()).unwrap_or(Route::Unavailable);
            if route != Route::Local {
                cx.w.logf(self.me(), || {
                    format!("strict routing: not a chosen replica ({route:?}), write refused")
                });
                let resp = ClientResponse::error(ErrorReply::Refused {
                    reason: format!("strict routing: no chosen replica reachable ({route:?})"),
                });
                self.answer(cx, reply, resp);
                return;
            }
        }
        self.coordinate(cx, req, reply);
    }

    /// `server/dispatch.rs::handle_peer`: the node's peer request, decoded as the node decodes
    /// it, handed to the writer, the store, the layout or a core machine.
    fn on_peer_request(
        &mut self,
        cx: &mut Ctx,
        from: (NodeIx, u64, u64),
        req: PeerRequest,
        write: Option<WriteId>,
    ) {
        let (peer, gen, rid) = from;
        let reply = |cx: &mut Ctx, me: Addr, resp: Result<PeerResponse, ErrorReply>| {
            let body = Body::PeerResp {
                gen,
                rid,
                resp,
                minted: None,
            };
            cx.w.send(me, Addr::Node(peer), body);
        };
        let malformed = |what: &str, e: &dyn std::fmt::Display| ErrorReply::Malformed {
            reason: format!("{what}: {e}"),
        };
        // The limits the node's dispatch checks before it reads a peer request.
        if let Err(e) = check_peer_request(&req) {
            return reply(cx, self.me(), Err(e.into()));
        }
        match req {
            PeerRequest::Ping { .. } => {
                let pong = PeerResponse::Pong {
                    node: super::fmt::node_name(self.ix),
                };
                reply(cx, self.me(), Ok(pong));
            }
            PeerRequest::Forward { id, retry, op } => {
                let req = ClientRequest { op, write };
                self.on_forward(cx, from, id, retry, req);
            }
            PeerRequest::Replicate {
                key,
                object,
                hint_for,
            } => match Object::decode(&object) {
                Ok(object) => {
                    let done = MergeDone::Peer {
                        node: peer,
                        gen,
                        rid,
                    };
                    self.queue_disk(cx, DiskJob::merge(key, object, hint_for, done));
                }
                Err(e) => reply(cx, self.me(), Err(malformed("bad object", &e))),
            },
            PeerRequest::Read { key } => {
                // As the node's wire carries a copy (`Object::encode_copy`): a copy without
                // siblings arrives as an absent key, its history not sent.
                let obj = self.read_local(&key);
                reply(cx, self.me(), Ok(PeerResponse::Object(obj.encode_copy())));
            }
            PeerRequest::Layout(theirs) => {
                // As `Membership::receive_layout`: merge, answer with the merged layout.
                if !theirs.is_empty() {
                    match cairn_layout::held::decode(&theirs) {
                        Ok(held) => self.take_layout(cx, &held.layout, peer),
                        Err(e) => return reply(cx, self.me(), Err(malformed("layout", &e))),
                    }
                }
                let mine = self.encoded_layout(cx);
                reply(cx, self.me(), Ok(PeerResponse::Layout(mine)));
            }
            PeerRequest::AntiEntropy {
                from,
                partition,
                session,
                message,
            } => {
                let answer = self.ae_respond(cx, from, partition, session, message);
                reply(cx, self.me(), answer);
            }
            PeerRequest::Keys {
                partition,
                key_hashes,
            } => {
                let answer = self.ae_keys(cx, partition, key_hashes);
                reply(cx, self.me(), answer);
            }
            PeerRequest::Gossip(message) => {
                let answer = match self.run().gossip {
                    Some(_) => self.gossip_receive(cx, peer, &message),
                    None => Err(ErrorReply::Refused {
                        reason: "no gossip in this run".into(),
                    }),
                };
                reply(cx, self.me(), answer);
            }
            PeerRequest::Tombstones { probes } => {
                // As `node/src/reaper.rs::answer`: point reads of the store.
                let held = reaper::holdings(&self.store, &probes)
                    .map(PeerResponse::Tombstones)
                    .map_err(|e| ErrorReply::Storage {
                        reason: e.to_string(),
                    });
                reply(cx, self.me(), held);
            }
            PeerRequest::Batch(items) => self.serve_batch(cx, from, items),
            other @ PeerRequest::PartitionSizes { .. } => {
                // No simulated node asks for a plan's counts; answered as a node of another
                // protocol would be.
                let refused = ErrorReply::Refused {
                    reason: format!("not simulated: {other:?}"),
                };
                reply(cx, self.me(), Err(refused));
            }
        }
    }

    /// Serves a peer batch as `server/dispatch.rs::serve_batch` does (`BatchPlan`): its writes
    /// queued for the disk one after the other (so they share group commits), its reads read at
    /// once, the answer sent when the last write is done.
    fn serve_batch(&mut self, cx: &mut Ctx, from: (NodeIx, u64, u64), items: Vec<BatchItem>) {
        let mut plan = BatchPlan::new(items);
        let writes = std::mem::take(&mut plan.writes);
        let read: Vec<Result<Object, ErrorReply>> = std::mem::take(&mut plan.reads)
            .iter()
            .map(|k| Ok(self.read_local(k)))
            .collect();
        let run = self.run();
        let id = run.next_rid;
        run.next_rid += 1;
        let serving = Serving {
            from,
            written: vec![None; writes.len()],
            read,
            plan,
        };
        run.serving.insert(id, serving);
        if writes.is_empty() {
            return self.batch_write_done(cx, id, None);
        }
        for (index, (key, write)) in writes.into_iter().enumerate() {
            let Write::Merge { object, hint_for } = write else {
                unreachable!("a batch plan's writes are merges")
            };
            let done = MergeDone::Batch { id, index };
            self.queue_disk(cx, DiskJob::merge(key, object, hint_for, done));
        }
    }

    /// Write `index` of served batch `id` is done (`None`: the batch had no writes); once all
    /// are, the batch is answered.
    fn batch_write_done(
        &mut self,
        cx: &mut Ctx,
        id: u64,
        done: Option<(usize, Result<(), ErrorReply>)>,
    ) {
        let run = self.run();
        let Some(s) = run.serving.get_mut(&id) else {
            return;
        };
        if let Some((index, result)) = done {
            s.written[index] = Some(result);
        }
        if s.written.iter().any(Option::is_none) {
            return;
        }
        let s = run.serving.remove(&id).expect("found above");
        let written = s.written.into_iter().map(|w| w.expect("all done"));
        let answers = s.plan.answers(written, s.read);
        let (peer, gen, rid) = s.from;
        let body = Body::PeerResp {
            gen,
            rid,
            resp: Ok(PeerResponse::Batch(answers)),
            minted: None,
        };
        cx.w.send(self.me(), Addr::Node(peer), body);
    }

    /// This node's layout as the node sends it (`cairn_layout::held`), empty while it holds
    /// none.
    fn encoded_layout(&self, cx: &Ctx) -> Vec<u8> {
        self.layout.as_ref().map_or_else(Vec::new, |layout| {
            cairn_layout::held::encode(&cairn_layout::held::Held {
                cluster: cx.cluster,
                layout: layout.clone(),
            })
        })
    }

    fn read_local(&self, key: &[u8]) -> Object {
        self.object(key)
    }

    fn on_peer_response(
        &mut self,
        cx: &mut Ctx,
        rid: u64,
        resp: Result<PeerResponse, ErrorReply>,
        minted: Option<Dot>,
    ) {
        let Some((peer, started, out)) = self.run().outgoing.remove(&rid) else {
            // A duplicate, or the answer after the transport gave up.
            return;
        };
        // `Peers::request`: any answer is a successful exchange.
        self.mark(cx, peer, true, started, "");
        let name = node(peer);
        match out {
            Outgoing::Coord { op } => {
                self.run().driver.handle_peer_reply(op, resp);
                self.drain(cx);
            }
            Outgoing::Repair => {}
            Outgoing::Ping => match typed_answer(&name, "ping", Ok(resp), pong) {
                Ok(_) => {
                    let now = cx.w.instant();
                    let run = self.run();
                    run.pinging.remove(&peer);
                    run.liveness.handle_probe(now, peer, true);
                }
                Err(e) => {
                    self.mark(cx, peer, false, started, &e.to_string());
                    self.ping_failed(cx, peer);
                }
            },
            Outgoing::Forward(mut f) => match typed_answer(&name, "forward", Ok(resp), forwarded) {
                Ok(reply) => {
                    let resp = ClientResponse { reply, minted };
                    let body = Body::ClientResp { seq: f.seq, resp };
                    cx.w.send(self.me(), Addr::Client(f.client), body);
                }
                Err(e) => {
                    let step = f.forwarder.handle_failure(&e);
                    cx.w.logf(self.me(), || format!("forward failed ({e}): {step:?}"));
                    self.forward_step(cx, f, step);
                }
            },
            Outgoing::Handoff => {
                // As `node/src/handoff.rs::send` reads the answer.
                let answer = match typed_answer(&name, "hint delivery", Ok(resp), ack) {
                    Ok(()) => Answer::Acked,
                    Err(PeerError::Refused { reply, .. }) => Answer::from_error(&reply),
                    Err(e) => Answer::Refused(e.to_string()),
                };
                self.handoff_answer(cx, peer, answer);
            }
            Outgoing::Transfer { send, batch } => {
                // As `node/src/transfer.rs::send` reads a batch's answers.
                let result = typed_answer(&name, "transfer", Ok(resp), batch_answers)
                    .map_err(|e| e.to_string())
                    .and_then(|answers| batch_answered(&batch, answers));
                self.transfer_sent(cx, send, result);
            }
            Outgoing::Layout => {
                self.layout_exchange_done(peer);
                if let Ok(PeerResponse::Layout(theirs)) = resp {
                    if !theirs.is_empty() {
                        match cairn_layout::held::decode(&theirs) {
                            Ok(held) => {
                                let from = cx.ix(peer);
                                self.take_layout(cx, &held.layout, from);
                            }
                            Err(e) => {
                                cx.w.logf(self.me(), || format!("layout from {name}: {e}"));
                            }
                        }
                    }
                }
            }
            Outgoing::Reaper => {
                let answer = match resp {
                    Ok(PeerResponse::Tombstones(holdings)) => Ok(holdings),
                    Ok(other) => Err(format!("answered tombstones with {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                self.reaper_checked(cx, peer, answer);
            }
            Outgoing::AntiEntropy { exchange, wait } => {
                let gone = |e: &ErrorReply| {
                    matches!(e, ErrorReply::Unreachable { .. } | ErrorReply::ShuttingDown)
                };
                let answer = resp.map_err(|e| (e.to_string(), gone(&e)));
                self.ae_answer(cx, exchange, wait, answer);
            }
            Outgoing::Gossip => {
                if let Ok(answer) = resp {
                    self.gossip_answer(cx, peer, answer);
                }
            }
        }
    }

    /// The transport gave up on request `rid` (`Peers::request`: marks the peer down).
    pub fn on_request_failed(&mut self, cx: &mut Ctx, rid: u64, failure: TransportFailure) {
        let Some((peer, started, out)) = self.run().outgoing.remove(&rid) else {
            return;
        };
        // What `Peers::call` reports for it.
        let error = match failure {
            TransportFailure::NoConnection => PeerError::Connect {
                node: node(peer),
                reason: format!("no connection within {PEER_CONNECT_TIMEOUT:?}"),
            },
            TransportFailure::NoAnswer => PeerError::Timeout {
                node: node(peer),
                after: cx.w.now.saturating_sub(started),
            },
        };
        let reason = error.to_string();
        self.mark(cx, peer, false, started, &reason);
        match out {
            Outgoing::Coord { op } => {
                self.run().driver.handle_peer_failure(op, error);
                self.drain(cx);
            }
            Outgoing::Repair => {}
            Outgoing::Ping => self.ping_failed(cx, peer),
            Outgoing::Forward(mut f) => {
                // A write whose forward went out unanswered may have been applied there;
                // applying it here too would make two siblings of one write (rule 5).
                let step = f.forwarder.handle_failure(&error);
                cx.w.logf(self.me(), || format!("forward failed ({reason}): {step:?}"));
                self.forward_step(cx, f, step);
            }
            Outgoing::Handoff => {
                self.handoff_answer(cx, peer, Answer::from_error(&ErrorReply::from(error)))
            }
            Outgoing::Transfer { send, .. } => self.transfer_sent(cx, send, Err(reason)),
            Outgoing::Layout => self.layout_exchange_done(peer),
            Outgoing::Reaper => self.reaper_checked(cx, peer, Err(reason)),
            // As `node/src/antientropy.rs`: a transport failure is an unreachable peer.
            Outgoing::AntiEntropy { exchange, wait } => {
                self.ae_answer(cx, exchange, wait, Err((reason, true)))
            }
            // Gossip tolerates loss.
            Outgoing::Gossip => {}
        }
    }

    /// Sends a peer request with a transport timeout.
    fn request(
        &mut self,
        cx: &mut Ctx,
        to: NodeIx,
        req: PeerRequest,
        out: Outgoing,
        timeout: Duration,
    ) {
        let peer = cx.ids[to];
        let gen = self.gen;
        let now = cx.w.now;
        // A forwarded write carries the history's name for it beside the request.
        let write = match &out {
            Outgoing::Forward(f) => f.req.write,
            _ => None,
        };
        let run = self.run();
        let rid = run.next_rid;
        run.next_rid += 1;
        run.outgoing.insert(rid, (peer, now, out));
        let body = Body::PeerReq {
            gen,
            rid,
            req,
            write,
        };
        cx.w.send(Addr::Node(self.ix), Addr::Node(to), body);
        cx.w.after(
            timeout,
            Event::RequestFailed {
                node: self.ix,
                gen,
                rid,
                failure: TransportFailure::NoAnswer,
            },
        );
    }

    // ---- coordination (the core's request driver, run as node/src/driver.rs runs it) ----

    fn coordinate(&mut self, cx: &mut Ctx, req: ClientRequest, reply: ReplyTo) {
        let Some(routed) = self.route(req.key()) else {
            // As the node's driver without a ring: `NoRing`.
            self.no_layout(cx, reply);
            return;
        };
        let here = self.me();
        let now = cx.w.instant();
        let run = self.run();
        let liveness = &run.liveness;
        let is_up = |id: NodeId| liveness.is_up(id);
        if cx.w.tracing() && req.is_write() && routed != Route::Local {
            cx.w.log(
                here,
                "coordinating a write OFF its chosen replicas".to_owned(),
            );
        }
        let (job, write) = req.into_job();
        let rid = run.driver.handle_client(now, job, reply, &is_up);
        run.put_tag = write.map(|w| (rid, w));
        self.drain(cx);
    }

    /// Carries out everything the driver asked for, as `node/src/driver.rs` does after each
    /// input; then re-arms its timer.
    fn drain(&mut self, cx: &mut Ctx) {
        let gen = self.gen;
        while let Some(output) = self.run().driver.poll_output() {
            match output {
                Output::Local {
                    op,
                    key,
                    work: LocalOp::Write(Write::Update { ctx, payload }),
                } => {
                    let op = op.expect("an update is always answered");
                    let tag = self.run().put_tag.take();
                    assert!(
                        tag.is_some(),
                        "an Update that no handle_client just asked for"
                    );
                    cx.w.logf(self.me(), || {
                        format!(
                            "local update {} queued for disk (op {})",
                            key_str(&key),
                            op.0
                        )
                    });
                    self.queue_disk(
                        cx,
                        DiskJob::Update {
                            key,
                            ctx,
                            payload,
                            op,
                            tag,
                        },
                    );
                }
                Output::Local {
                    op,
                    key,
                    work: LocalOp::Write(Write::Merge { object, hint_for }),
                } => self.queue_disk(
                    cx,
                    DiskJob::Merge {
                        key,
                        object,
                        hint_for,
                        done: MergeDone::Local(op),
                    },
                ),
                Output::Local {
                    work: LocalOp::Write(other),
                    ..
                } => unreachable!("the driver asks only for updates and merges: {other:?}"),
                Output::Local {
                    op,
                    key,
                    work: LocalOp::Read,
                } => {
                    let Some(op) = op else { continue };
                    let delay = cx.w.micros(5, 300);
                    cx.w.after(
                        delay,
                        Event::LocalRead {
                            node: self.ix,
                            gen,
                            op,
                            key,
                        },
                    );
                }
                Output::SendPeer {
                    op,
                    to,
                    request,
                    timeout,
                } => {
                    let req = request;
                    let out = match op {
                        Some(op) => Outgoing::Coord { op },
                        None => Outgoing::Repair,
                    };
                    let to = cx.ix(to);
                    self.request(cx, to, req, out, timeout);
                }
                Output::Hint { seq, key, target } => {
                    cx.w.logf(self.me(), || {
                        format!(
                            "coordinator: hint needed for {} {}",
                            node(target),
                            key_str(&key)
                        )
                    });
                    self.queue_disk(cx, DiskJob::AddHint { seq, key, target });
                }
                Output::Reply { req, to, result } => {
                    let minted = self.run().minted.remove(&req);
                    let resp = ClientResponse {
                        reply: reply(result, node),
                        minted,
                    };
                    cx.w.logf(self.me(), || {
                        format!(
                            "outcome req {}: {}",
                            req.0,
                            super::msg::describe_resp(&resp)
                        )
                    });
                    self.answer(cx, to, resp);
                }
            }
        }
        self.run().put_tag = None;
        if self.advance_fence() {
            self.pump(cx);
        }
        if let Some(deadline) = self.run().driver.poll_timeout() {
            let at = cx.w.virtual_of(deadline);
            let run = self.run();
            if run.coord_timer.is_none_or(|t| at < t) {
                run.coord_timer = Some(at);
                cx.w.at(at, Event::CoordTimer { node: self.ix, gen });
            }
        }
    }

    fn answer(&mut self, cx: &mut Ctx, reply: ReplyTo, resp: ClientResponse) {
        if matches!(resp.reply, KeyOpReply::Written(_)) && cx.w.chance(cx.crash_after_ack) {
            // Adversarial timing: crash right after acknowledging a write, while whatever the
            // coordinator still has to make durable (hints) sits in the queue.
            // Mostly at once; sometimes later, while the request still waits for replicas.
            let delay = if cx.w.chance(0.7) {
                cx.w.micros(0, 3000)
            } else {
                cx.w.micros(3000, 5_000_000)
            };
            cx.w.after(delay, Event::Crash(self.ix));
        }
        match reply {
            ReplyTo::Client { client, seq } => {
                cx.w.send(
                    self.me(),
                    Addr::Client(client),
                    Body::ClientResp { seq, resp },
                );
            }
            ReplyTo::Peer { node, gen, rid } => self.send_forwarded(cx, (node, gen, rid), resp),
            ReplyTo::Forward { key } => {
                // Remembered for a retry, and sent to every attempt waiting for it.
                let waiting = self.run().forwards.complete(key, resp.clone(), 1);
                for to in waiting.into_iter().flatten() {
                    self.send_forwarded(cx, to, resp.clone());
                }
            }
        }
    }

    /// Answers a forward: to the attempt `(peer, its incarnation, its request id)`.
    fn send_forwarded(
        &self,
        cx: &mut Ctx,
        (peer, gen, rid): (NodeIx, u64, u64),
        resp: ClientResponse,
    ) {
        let body = Body::PeerResp {
            gen,
            rid,
            resp: Ok(PeerResponse::Forwarded(resp.reply)),
            minted: resp.minted,
        };
        cx.w.send(self.me(), Addr::Node(peer), body);
    }

    /// A forward arrived (`server/dispatch.rs::forwarded`): a read is coordinated (it is safe
    /// to carry out twice); a write at most once per (sender, id), a retry answered with the
    /// first attempt's outcome.
    fn on_forward(
        &mut self,
        cx: &mut Ctx,
        (peer, gen, rid): (NodeIx, u64, u64),
        id: u64,
        retry: bool,
        req: ClientRequest,
    ) {
        // Never forwarded again.
        if !req.is_write() {
            let reply = ReplyTo::Peer {
                node: peer,
                gen,
                rid,
            };
            self.coordinate_if_chosen(cx, req, reply);
            return;
        }
        let key = (cx.ids[peer], id);
        let now = cx.w.instant();
        let me = self.me();
        let name = node(self.id);
        let run = self.run();
        let waiter = || vec![(peer, gen, rid)];
        let answer = match run
            .forwards
            .admit(key, retry, FORWARD_RETRY_WINDOW, now, waiter)
        {
            Admit::First => {
                cx.w.logf(me, || {
                    format!(
                        "recv forward f{id:x} from n{} r{rid}: coordinating",
                        peer + 1
                    )
                });
                self.coordinate_if_chosen(cx, req, ReplyTo::Forward { key });
                return;
            }
            Admit::Wait(waiting) => {
                waiting.push((peer, gen, rid));
                cx.w.logf(me, || {
                    format!("recv forward f{id:x} again: waits for the first")
                });
                return;
            }
            Admit::Done(resp) => resp,
            Admit::Unknown => ClientResponse::error(unrecorded_retry(&name, id)),
        };
        cx.w.logf(me, || {
            format!("recv forward f{id:x} again: answered as before")
        });
        self.send_forwarded(cx, (peer, gen, rid), answer);
    }

    /// Carries out the forwarder's next step (as `server/dispatch.rs`'s forward loop does).
    fn forward_step(&mut self, cx: &mut Ctx, f: Forwarding, step: Step) {
        match step {
            Step::Send { id, retry } => {
                let (to, op, timeout) = (f.to, f.req.op.clone(), f.timeout);
                let req = PeerRequest::Forward { id, retry, op };
                self.request(cx, to, req, Outgoing::Forward(f), timeout);
            }
            Step::CoordinateHere => {
                let reply = ReplyTo::Client {
                    client: f.client,
                    seq: f.seq,
                };
                self.coordinate_if_chosen(cx, f.req, reply);
            }
            Step::Fail(e) => {
                let resp = ClientResponse::error(e);
                let reply = ReplyTo::Client {
                    client: f.client,
                    seq: f.seq,
                };
                self.answer(cx, reply, resp);
            }
            Step::WaitForUp => {
                let deadline = cx.w.now + FORWARD_RETRY_WAIT_MAX;
                self.forward_wait(cx, f, deadline);
            }
        }
    }

    /// `server/dispatch.rs::up_again`: looks whether the replica is up again, every
    /// `FORWARD_RETRY_POLL` until `deadline`.
    fn forward_wait(&mut self, cx: &mut Ctx, mut f: Forwarding, deadline: Duration) {
        let peer = cx.ids[f.to];
        let up = self.run().liveness.is_up(peer);
        if up || cx.w.now >= deadline {
            let step = f.forwarder.handle_wait(up);
            self.forward_step(cx, f, step);
            return;
        }
        let gen = self.gen;
        let run = self.run();
        let wait = run.next_rid;
        run.next_rid += 1;
        run.forward_waits.insert(wait, (deadline, f));
        cx.w.after(
            FORWARD_RETRY_POLL,
            Event::ForwardWait {
                node: self.ix,
                gen,
                wait,
            },
        );
    }

    /// A forward's wait looks again.
    pub fn on_forward_wait(&mut self, cx: &mut Ctx, wait: u64) {
        if let Some((deadline, f)) = self.run().forward_waits.remove(&wait) {
            self.forward_wait(cx, f, deadline);
        }
    }

    /// The coordinator's timer fired.
    pub fn on_coord_timer(&mut self, cx: &mut Ctx) {
        let now = cx.w.now;
        let instant = cx.w.instant();
        let run = self.run();
        if run.coord_timer.is_some_and(|t| t <= now) {
            run.coord_timer = None;
        }
        let pending = run.driver.coordinator().in_flight();
        run.driver.handle_tick(instant);
        cx.w.logf(self.me(), || {
            format!("coordinator timer ({pending} requests in flight)")
        });
        self.drain(cx);
    }

    /// A local read finished.
    pub fn on_local_read(&mut self, cx: &mut Ctx, op: OpId, key: Vec<u8>) {
        let copy = self.read_local(&key);
        cx.w.logf(self.me(), || {
            format!("local read {} -> {}", key_str(&key), obj(&copy))
        });
        self.run()
            .driver
            .handle_local(op, Ok(ReplicaResult::Object(copy)));
        self.drain(cx);
    }

    // ---- the disk (engine.rs) ----

    fn queue_disk(&mut self, cx: &mut Ctx, job: DiskJob) {
        let run = self.run();
        run.disk_queue.push_back(job);
        run.disk_pending += 1;
        if !run.disk_busy {
            run.disk_busy = true;
            self.arm_disk(cx);
        }
    }

    /// Schedules the writer's next group commit (one writer: jobs become durable in the order
    /// they were queued).
    fn arm_disk(&mut self, cx: &mut Ctx) {
        let latency = cx.w.micros(50, 2000);
        let gen = self.gen;
        cx.w.after(latency, Event::Disk { node: self.ix, gen });
    }

    /// The writer's group commit, as the engine's writer thread makes it: whatever queued
    /// since the last one, up to `SIM_GROUP_COMMIT_MAX` jobs, applied in order by one
    /// `apply_batch` and committed as one transaction (all durable or none), then each job
    /// answered in order. A redirect, applied write by write until one fails, goes alone.
    pub fn on_disk(&mut self, cx: &mut Ctx) {
        let run = self.run();
        let mut jobs = Vec::new();
        while jobs.len() < SIM_GROUP_COMMIT_MAX {
            let Some(next) = run.disk_queue.front() else {
                break;
            };
            let alone = matches!(next, DiskJob::Redirect { .. });
            if alone && !jobs.is_empty() {
                break;
            }
            jobs.push(run.disk_queue.pop_front().expect("looked at"));
            if alone {
                break;
            }
        }
        run.disk_pending -= jobs.len();
        let writes: Vec<(Vec<u8>, Write)> = jobs.iter().filter_map(DiskJob::write).collect();
        // The copies (and for a delivery, the hint) the batch finds in the store; each write
        // then finds what the batch's earlier writes left.
        let mut copies: BTreeMap<Vec<u8>, Object> = BTreeMap::new();
        let mut hints = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let key = job.key();
            if !copies.contains_key(key) {
                copies.insert(key.to_vec(), self.object(key));
            }
            hints.push(match job {
                DiskJob::HintDelivered { key, target, .. } => {
                    self.store.hint(*target, key).ok().flatten()
                }
                _ => None,
            });
        }
        let mut results = if writes.is_empty() {
            Vec::new()
        } else {
            self.apply_batch(cx, &writes)
        }
        .into_iter();
        for (job, hint) in jobs.into_iter().zip(hints) {
            let before = copies[job.key()].clone();
            // A redirect's writes are its own (`disk_done` applies them); every other job had
            // one write in the batch.
            let result = if matches!(job, DiskJob::Redirect { .. }) {
                Ok(Object::new())
            } else {
                results
                    .next()
                    .expect("one result per write")
                    .map_err(ErrorReply::from)
            };
            if let (Ok(after), true) = (&result, job.changes_object()) {
                copies.insert(job.key().to_vec(), after.clone());
            }
            self.disk_done(cx, job, before, result, hint);
        }
        let run = self.run();
        if run.disk_queue.is_empty() {
            run.disk_busy = false;
        } else {
            self.arm_disk(cx);
        }
    }

    /// Applies one write through the node's writer (`cairn_core::writer`) over this node's
    /// store in a batch of its own; returns the copy before and the writer's result.
    fn write(
        &mut self,
        cx: &mut Ctx,
        key: &[u8],
        write: Write,
    ) -> (Object, Result<Object, ErrorReply>) {
        let before = self.object(key);
        let mut results = self.apply_batch(cx, &[(key.to_vec(), write)]);
        let result = results.pop().expect("one result per write");
        (before, result.map_err(ErrorReply::from))
    }

    /// The writer's batch over this node's store, its commit's fault handed to the storage
    /// health as the engine's `run_batch` hands it (a commit that failed refuses the batch's
    /// writes with the fault's client reason).
    fn apply_batch(
        &mut self,
        cx: &mut Ctx,
        writes: &[(Vec<u8>, Write)],
    ) -> Vec<Result<Object, WriteError>> {
        let store = &self.store;
        let run = self.run.as_mut().expect("running");
        let mut fault = None;
        let outcome = run.writer.apply_batch(store, writes, &mut |b| {
            let committed = store.commit(b);
            if let Err(e) = &committed {
                fault = Some(StorageFault::of(e));
            }
            committed
        });
        if outcome.committed || fault.is_some() {
            run.health.handle_commit(fault.clone());
        }
        if let (true, Some(trees)) = (outcome.committed, run.trees.as_mut()) {
            // After the commit, as the engine's `run_batch` records it.
            let changes = outcome
                .puts
                .iter()
                .map(|(k, v)| put_change(k, v))
                .chain(outcome.removes.iter().map(|k| remove_change(k)));
            for change in changes {
                let p = cx.config.partition_of_hash(&change.0 .0) as usize;
                trees[p].apply(change);
            }
        }
        if run.health.fault().is_some() || run.declared != run.health.storage() {
            self.arm_storage_check(cx);
        }
        outcome
            .results
            .into_iter()
            .map(|r| with_fault_reason(fault.as_ref(), r))
            .collect()
    }

    fn arm_storage_check(&mut self, cx: &mut Ctx) {
        let (ix, gen) = (self.ix, self.gen);
        let run = self.run();
        if run.storage_check {
            return;
        }
        run.storage_check = true;
        cx.w.after(
            STORAGE_CHECK_INTERVAL,
            Event::StorageCheck { node: ix, gen },
        );
    }

    /// The storage check (`storage_watch`, every `STORAGE_CHECK_INTERVAL` while a fault is
    /// not yet cleared and declared): a recovery attempt when the health's backoff allows one
    /// (`cairn_core::health::recover`), then the state declared in gossip
    /// (`Membership::set_storage`) and to this node's liveness view (`Peers::set_own_storage`:
    /// a degraded node routes no request to itself).
    pub fn on_storage_check(&mut self, cx: &mut Ctx) {
        let now = cx.w.instant();
        let config =
            WriterConfig::new(SIM_LEASE_BLOCK, cx.hints_per_peer_max).with_sabotage(cx.sabotage);
        let (me, here) = (self.id, self.me());
        let store = &self.store;
        let run = self.run.as_mut().expect("running");
        run.storage_check = false;
        if run.health.poll_probe(now) {
            // A simulated store replays nothing (`SimDisk::recover`): the trees stay as kept.
            let outcome = cairn_core::health::recover(store, &mut run.writer, me, config)
                .map(|touched| touched.is_some());
            run.health.handle_probe(now, &outcome);
            cx.w.logf(here, || match &outcome {
                Ok(true) => "storage recovered in place: writes again".to_owned(),
                Ok(false) => "storage: nothing to recover in place".to_owned(),
                Err(e) => format!("storage still failing: {e}"),
            });
        }
        let storage = run.health.storage();
        if storage != run.declared {
            run.declared = storage;
            run.liveness.handle_storage(now, me, storage.is_degraded());
            if let Some(g) = run.gossip.as_mut() {
                g.declare_storage(storage);
            }
            cx.w.logf(here, || format!("storage declared {storage:?}"));
        }
        if run.health.fault().is_some() {
            self.arm_storage_check(cx);
        }
    }

    /// A queued job's write is durable (or failed): answer it. `before` is the copy its write
    /// found, `hint` (for a delivery) the hint it found.
    fn disk_done(
        &mut self,
        cx: &mut Ctx,
        job: DiskJob,
        before: Object,
        result: Result<Object, ErrorReply>,
        hint: Option<cairn_core::store::Hint>,
    ) {
        match job {
            DiskJob::Update { key, op, tag, .. } => {
                let current = before;
                let result = match result {
                    Ok(next) => {
                        // The dots this update minted: its new siblings (more than one only
                        // under `Sabotage::ApplyTwice`).
                        let old: Vec<Dot> = current.siblings().iter().map(|(d, _)| *d).collect();
                        let actor = self.run().writer.actor();
                        let minted: Vec<Dot> = next
                            .siblings()
                            .iter()
                            .map(|(d, _)| *d)
                            .filter(|d| d.actor.node == actor.node && !old.contains(d))
                            .collect();
                        cx.w.logf(self.me(), || {
                            let dots: Vec<String> = minted.iter().map(|d| dot(*d)).collect();
                            format!(
                                "disk: update {} dot {} -> {}",
                                key_str(&key),
                                dots.join(","),
                                obj(&next)
                            )
                        });
                        // An update off the key's replicas issues hints for them.
                        let holding = self.holding(cx, &key, true);
                        cx.history.stored(self.ix, holding, &key, &current, &next);
                        if let Some((req, write)) = tag {
                            if let Some(&first) = minted.first() {
                                self.run().minted.insert(req, first);
                            }
                            for d in &minted {
                                cx.history.minted(write, self.ix, *d);
                            }
                        }
                        Ok(ReplicaResult::Object(next))
                    }
                    Err(e) => {
                        cx.w.logf(self.me(), || {
                            format!("disk: update {} refused: {e}", key_str(&key))
                        });
                        Err(e)
                    }
                };
                self.run().driver.handle_local(op, result);
                self.drain(cx);
            }
            DiskJob::Merge {
                key,
                hint_for,
                done,
                ..
            } => {
                let current = before;
                let result = match result {
                    Ok(merged) => {
                        cx.w.logf(self.me(), || {
                            format!(
                                "disk: merge {}{} -> {}",
                                key_str(&key),
                                hint_for
                                    .map_or(String::new(), |h| format!(" + hint for {}", node(h))),
                                obj(&merged)
                            )
                        });
                        let holding = self.holding(cx, &key, hint_for.is_some());
                        cx.history.stored(self.ix, holding, &key, &current, &merged);
                        Ok(merged)
                    }
                    Err(e) => {
                        cx.w.logf(self.me(), || {
                            format!("disk: merge {} refused: {e}", key_str(&key))
                        });
                        Err(e)
                    }
                };
                match done {
                    MergeDone::Local(Some(op)) => {
                        let result = result.map(|_| ReplicaResult::Ack);
                        self.run().driver.handle_local(op, result);
                        self.drain(cx);
                    }
                    MergeDone::Local(None) => {}
                    MergeDone::Batch { id, index } => {
                        self.batch_write_done(cx, id, Some((index, result.map(|_| ()))));
                    }
                    MergeDone::Peer { node, gen, rid } => {
                        let body = Body::PeerResp {
                            gen,
                            rid,
                            resp: result.map(|_| PeerResponse::Ack),
                            minted: None,
                        };
                        cx.w.send(self.me(), Addr::Node(node), body);
                    }
                    MergeDone::AntiEntropy { exchange, repair } => {
                        self.ae_merged(cx, exchange, key, repair, result);
                    }
                }
            }
            DiskJob::AddHint { seq, key, target } => {
                // As the driver's hint writer: a hint that cannot be kept is logged; read
                // repair still repairs the key.
                cx.w.logf(self.me(), || match &result {
                    Ok(_) => format!("disk: hint for {} {}", node(target), key_str(&key)),
                    Err(e) => format!(
                        "disk: could not keep a hint for {} {}: {e}",
                        node(target),
                        key_str(&key)
                    ),
                });
                // Kept or not, it is done: replies held for it may go (a failure first).
                if let Err(e) = result {
                    let reason = format!("hint for {}: {e}", node(target));
                    self.run().driver.handle_hint_failed(seq, key, reason);
                }
                let run = self.run();
                run.hints_done += 1;
                let done = run.hints_done;
                run.driver.handle_hints_done(done);
                self.drain(cx);
            }
            DiskJob::Drop { key, .. } => {
                let outcome = result
                    .map(|left| left.is_empty())
                    .map_err(|e| e.to_string());
                match &outcome {
                    Ok(true) => {
                        cx.w.logf(self.me(), || {
                            format!("cleanup: dropped {} {}", key_str(&key), obj(&before))
                        });
                        cx.history.dropped(self.ix, &before);
                    }
                    other => {
                        cx.w.logf(self.me(), || {
                            format!(
                                "cleanup: kept {} ({})",
                                key_str(&key),
                                match other {
                                    Ok(_) => "changed since read, or hinted",
                                    Err(e) => e,
                                }
                            )
                        });
                    }
                }
                let now = cx.w.instant();
                if let Some(c) = self.run().cleanup.as_mut() {
                    c.handle_dropped(now, &key, outcome);
                }
                self.cleanup_pump(cx);
            }
            DiskJob::Reap { key, .. } => {
                let outcome = result
                    .map(|left| left.is_empty())
                    .map_err(|e| e.to_string());
                cx.w.logf(self.me(), || match &outcome {
                    Ok(true) => format!("reaper: reaped {} {}", key_str(&key), obj(&before)),
                    Ok(false) => format!("reaper: kept {} (changed since read)", key_str(&key)),
                    Err(e) => format!("reaper: dropping {} failed: {e}", key_str(&key)),
                });
                if outcome == Ok(true) {
                    cx.history.reaped(self.ix, &before);
                }
                let now = cx.w.instant();
                if let Some(r) = self.run().reaper.as_mut() {
                    r.handle_dropped(now, &key, outcome);
                }
                self.reaper_pump(cx);
            }
            DiskJob::Redirect {
                key,
                target,
                writes,
            } => {
                for write in writes {
                    if let (_, Err(e)) = self.write(cx, &key, write) {
                        cx.w.logf(self.me(), || {
                            format!(
                                "disk: redirecting the hint for {} {} failed: {e}",
                                node(target),
                                key_str(&key)
                            )
                        });
                        return;
                    }
                }
                cx.w.logf(self.me(), || {
                    format!(
                        "disk: hint for {} {} redirected",
                        node(target),
                        key_str(&key)
                    )
                });
            }
            DiskJob::HintDelivered { key, target, seq } => {
                let deleted = hint.is_some_and(|h| h.seq == seq) && result.is_ok();
                cx.w.logf(self.me(), || {
                    format!(
                        "disk: hint for {} {} delivered, {}",
                        node(target),
                        key_str(&key),
                        if deleted {
                            "deleted"
                        } else {
                            "renewed since, kept"
                        }
                    )
                });
            }
        }
    }

    // ---- liveness (peers.rs) ----

    /// Records the outcome of an exchange with `peer` that started at `started`.
    fn mark(&mut self, cx: &mut Ctx, peer: NodeId, up: bool, started: Duration, why: &str) {
        let started = cx.w.base + started;
        let outcome = if up { Ok(()) } else { Err(why.to_owned()) };
        let run = self.run();
        run.liveness.handle_exchange(peer, started, outcome);
        let transitions: Vec<Transition> =
            std::iter::from_fn(|| run.liveness.poll_transition()).collect();
        for t in transitions {
            cx.w.logf(self.me(), || match &t {
                Transition::Up(p) => format!("view: {} is UP", node(*p)),
                Transition::Down { node: p, reason } => {
                    format!("view: {} is DOWN ({reason})", node(*p))
                }
            });
            if matches!(t, Transition::Up(_)) {
                self.handoff_up_event(cx);
            }
        }
    }

    fn ping_failed(&mut self, cx: &mut Ctx, peer: NodeId) {
        let now = cx.w.instant();
        let run = self.run();
        run.pinging.remove(&peer);
        run.liveness.handle_probe(now, peer, false);
    }

    /// The probe loop: ping every peer that is due, then tick again after `PROBE_INTERVAL`.
    pub fn on_probe_tick(&mut self, cx: &mut Ctx) {
        let now = cx.w.instant();
        let run = self.run();
        let due: Vec<NodeId> = run
            .liveness
            .poll_probes(now)
            .into_iter()
            .filter(|id| run.pinging.insert(*id))
            .collect();
        for peer in due {
            let to = cx.ix(peer);
            let ping = PeerRequest::Ping {
                from: super::fmt::node_name(self.ix),
            };
            self.request(cx, to, ping, Outgoing::Ping, PING_TIMEOUT);
        }
        let gen = self.gen;
        cx.w.after(PROBE_INTERVAL, Event::ProbeTick { node: self.ix, gen });
    }

    // ---- hinted handoff (`cairn_core::handoff`, carried out as handoff.rs does) ----

    fn arm_handoff(&mut self, cx: &mut Ctx, delay: Duration) {
        let gen = self.gen;
        let run = self.run();
        run.handoff_arm += 1;
        let arm = run.handoff_arm;
        cx.w.after(
            delay,
            Event::HandoffTick {
                node: self.ix,
                gen,
                arm,
            },
        );
    }

    /// The handoff interval elapsed.
    pub fn on_handoff_tick(&mut self, cx: &mut Ctx, arm: u64) {
        if arm != self.run().handoff_arm {
            return;
        }
        self.handoff_round(cx);
        self.arm_handoff(cx, HANDOFF_INTERVAL);
    }

    fn handoff_up_event(&mut self, cx: &mut Ctx) {
        self.handoff_round(cx);
    }

    fn handoff_round(&mut self, cx: &mut Ctx) {
        // As the node's handoff loop: the policy routes by the layout this node holds, handed
        // over when it changed, so a hint for a node that no longer replicates its key goes to
        // the key's current replicas.
        let (me, seq) = (self.id, self.layout_seq);
        if let (Some(layout), Some(run)) = (&self.layout, self.run.as_mut()) {
            if run.handoff_seq != seq {
                run.handoff
                    .handle_layout(me, std::sync::Arc::new(layout.clone()));
                run.handoff_seq = seq;
            }
        }
        let counts = self.run().writer.hint_counts().clone();
        let now = cx.w.instant();
        let run = self.run();
        let liveness = &run.liveness;
        run.handoff
            .handle_round(now, &counts, &|id| liveness.is_up(id));
        self.handoff_actions(cx);
    }

    fn handoff_answer(&mut self, cx: &mut Ctx, target: NodeId, answer: Answer) {
        if let Answer::Refused(why) | Answer::Failed(why) = &answer {
            cx.w.logf(self.me(), || {
                format!("handoff to {} failed: {why}", node(target))
            });
        }
        let now = cx.w.instant();
        self.run().handoff.handle_answer(now, target, answer);
        self.handoff_actions(cx);
    }

    /// Carries out what the policy asks, as `node/src/handoff.rs::carry_out` does.
    fn handoff_actions(&mut self, cx: &mut Ctx) {
        while let Some(action) = self.run().handoff.poll_action() {
            match action {
                Action::ReadHints { target, limit } => {
                    let hints: Vec<HintRef> = self
                        .store
                        .hints(target, limit)
                        .expect("the simulated store does not fail")
                        .into_iter()
                        .map(|h| HintRef {
                            key: h.key,
                            seq: h.seq,
                        })
                        .collect();
                    cx.w.logf(self.me(), || {
                        format!("handoff: {} hints for {}", hints.len(), node(target))
                    });
                    self.run().handoff.handle_hints(target, hints);
                }
                Action::Send { target, hint } => {
                    let object = self.read_local(&hint.key);
                    let to = cx.ix(target);
                    let req = PeerRequest::Replicate {
                        key: hint.key,
                        object: object.encode(),
                        hint_for: None,
                    };
                    self.request(cx, to, req, Outgoing::Handoff, HANDOFF_REQUEST_TIMEOUT);
                }
                Action::Delete { target, hint } => self.queue_disk(
                    cx,
                    DiskJob::HintDelivered {
                        key: hint.key,
                        target,
                        seq: hint.seq,
                    },
                ),
                Action::Redirect {
                    target,
                    hint,
                    to,
                    keep,
                } => {
                    let writes = redirect_writes(target, &hint, &to, keep);
                    self.queue_disk(
                        cx,
                        DiskJob::Redirect {
                            key: hint.key,
                            target,
                            writes,
                        },
                    );
                }
                Action::RoundDone { .. } => {}
            }
        }
    }
}

// ---- the tombstone reaper (`cairn_core::reaper`, carried out as node/src/reaper.rs does) ----
impl SimNode {
    /// Hands the reaper the layout if it changed, carries out what it asks (pages read from the
    /// store at once, checks sent to every member it names, drops queued for the disk), and
    /// arms its timer.
    fn reaper_pump(&mut self, cx: &mut Ctx) {
        let (seq, ix, gen) = (self.layout_seq, self.ix, self.gen);
        let now = cx.w.instant();
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let Some(reaper) = run.reaper.as_mut() else {
            return;
        };
        if run.reaper_seq != seq {
            reaper.handle_layout(now, self.layout.clone().map(std::sync::Arc::new));
            run.reaper_seq = seq;
        }
        let mut checks = Vec::new();
        let mut drops = Vec::new();
        while let Some(action) = reaper.poll_action(now) {
            match action {
                ReaperAction::Scan {
                    after,
                    tombstones_max,
                } => {
                    let page = reaper::read_page(&self.store, after.as_deref(), tombstones_max)
                        .map_err(|e| e.to_string());
                    reaper.handle_page(now, page);
                }
                ReaperAction::Check { peer, probes } => {
                    // A member judged down cannot answer: no need to wait for a timeout.
                    if run.liveness.is_up(peer) {
                        checks.push((peer, probes.to_vec()));
                    } else {
                        reaper.handle_checked(
                            now,
                            peer,
                            Err(format!("{} is judged down", node(peer))),
                        );
                    }
                }
                ReaperAction::Drop { key, expected } => drops.push((key, expected)),
            }
        }
        let next = reaper.poll_timeout();
        run.reaper_arm += 1;
        let arm = run.reaper_arm;
        for (peer, probes) in checks {
            let to = cx.ix(peer);
            self.request(
                cx,
                to,
                PeerRequest::Tombstones { probes },
                Outgoing::Reaper,
                TOMBSTONE_REQUEST_TIMEOUT,
            );
        }
        for (key, expected) in drops {
            self.queue_disk(cx, DiskJob::Reap { key, expected });
        }
        if let Some(at) = next {
            let delay = cx.w.virtual_of(at).saturating_sub(cx.w.now);
            cx.w.after(delay, Event::ReaperTick { node: ix, gen, arm });
        }
    }

    /// The reaper's timer.
    pub fn on_reaper_tick(&mut self, cx: &mut Ctx, arm: u64) {
        if self.run.as_ref().is_some_and(|r| r.reaper_arm == arm) {
            self.reaper_pump(cx);
        }
    }

    fn reaper_checked(
        &mut self,
        cx: &mut Ctx,
        peer: NodeId,
        answer: Result<Vec<TombstoneHolding>, String>,
    ) {
        let now = cx.w.instant();
        if let Some(r) = self.run().reaper.as_mut() {
            r.handle_checked(now, peer, answer);
        }
        self.reaper_pump(cx);
    }
}

// ---- the layout, the transfer and the cleanup (node/src/transfer.rs, cleanup.rs and
// `Membership::layout_changed`, around the core's transfer machine and the layout crate) ----
impl SimNode {
    /// This node's layout changed (merged from a peer, or an operator's change applied here):
    /// route by it, sweep, and follow the transfer.
    pub fn layout_changed(&mut self, cx: &mut Ctx) {
        self.layout_seq += 1;
        if self.run.is_none() {
            return;
        }
        self.cleanup_pump(cx);
        self.pump(cx);
        self.reaper_pump(cx);
    }

    /// Merges a peer's layout into this node's (adopting it when this node has none), as
    /// `NodeLayout::merge` does.
    fn take_layout(&mut self, cx: &mut Ctx, theirs: &Layout, from: NodeIx) {
        let changed = match &mut self.layout {
            None => {
                self.layout = Some(theirs.clone());
                true
            }
            Some(l) => l.merge(theirs) != MergeOutcome::Unchanged,
        };
        if changed {
            cx.w.logf(self.me(), || {
                format!(
                    "layout from n{}: now {}",
                    from + 1,
                    describe_layout(self.layout.as_ref())
                )
            });
            self.layout_changed(cx);
        }
    }

    /// The write fence moves as `node/src/driver.rs` moves it (`Coordinator::write_fence`). Returns
    /// whether this node may now acknowledge its layout's newest version.
    fn advance_fence(&mut self) -> bool {
        let me = self.id;
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        let fence = run.driver.coordinator().write_fence();
        if let Some(routed) = fence.filter(|f| *f > run.fence) {
            run.fence = routed;
            return self
                .layout
                .as_ref()
                .is_some_and(|l| l.should_ack(me, routed));
        }
        false
    }

    /// Follows the layout: the coordinator routes by it, the fence moves, this node acknowledges
    /// the newest version when the fence allows (`Layout::should_ack`), the core's transfer
    /// machine is brought in line (`TransferMachine::follow`) and run (pages read from the store
    /// with the core's `read_page`, each key sent as a `Replicate` without a hint), the push is
    /// recorded and the old version retired when the machine and the layout say so; a node that
    /// no live version has any more has left.
    pub fn pump(&mut self, cx: &mut Ctx) {
        if self.run.is_none() || self.layout.is_none() {
            return;
        }
        let now = cx.w.instant();
        let me = self.id;
        let here = self.me();
        let mut sends = Vec::new();
        let mut changed_any = false;
        for _ in 0..PUMP_ROUNDS_MAX {
            if self.run().routed_seq != self.layout_seq {
                let seq = self.layout_seq;
                let SimNode { layout, run, .. } = self;
                let run = run.as_mut().expect("checked above");
                run.driver
                    .set_layout(layout.as_ref().expect("checked above"));
                run.routed_seq = seq;
            }
            self.advance_fence();
            let SimNode {
                layout,
                run,
                store,
                ix,
                ..
            } = self;
            let layout = layout.as_mut().expect("checked above");
            let run = run.as_mut().expect("checked above");
            let mut changed = false;
            if layout.should_ack(me, run.fence) && layout.ack(me) {
                changed = true;
                cx.w.logf(here, || {
                    format!("layout: ACK v{}", layout.current().version())
                });
            }
            let step = run.transfer.follow(now, me, layout, &|_| None);
            if let Some((version, partitions)) = step.started {
                let parts: BTreeMap<u32, Vec<NodeId>> = layout
                    .transfers(me)
                    .into_iter()
                    .map(|t| (t.partition, t.to))
                    .collect();
                let mut snapshot = Vec::new();
                let config = cx.config;
                store
                    .scan_objects(None, &mut |k, o| {
                        if let Some(to) = parts.get(&config.partition_of(k)) {
                            let o = Object::decode(o).expect("the simulated store holds objects");
                            snapshot.push((k.to_vec(), o, to.clone()));
                        }
                        true
                    })
                    .expect("a simulated store scan does not fail");
                cx.w.logf(here, || {
                    format!(
                        "transfer: TRANSFER START v{version}, {partitions} partitions, {} keys",
                        snapshot.len()
                    )
                });
                run.snapshot = Some((version, cx.w.now, snapshot));
            }
            let mut pushed = step
                .record_push
                .is_some_and(|v| layout.current().version() == v && layout.record_pushed(me));
            while let Some(action) = run.transfer.poll_action(now) {
                match action {
                    TransferAction::Scan {
                        partition,
                        after,
                        keys_max,
                        bytes_max,
                    } => {
                        let page = read_page(
                            &*store,
                            cx.config,
                            partition,
                            after.as_deref(),
                            keys_max,
                            bytes_max,
                        )
                        .map_err(|e| e.to_string());
                        run.transfer.handle_page(now, partition, page);
                    }
                    TransferAction::Send {
                        id, to, entries, ..
                    } => {
                        if entries.is_empty() {
                            run.transfer.handle_sent(now, id, Ok(()));
                        } else {
                            run.sends.insert(id, batches(&entries).len());
                            sends.push((to, id, entries));
                        }
                    }
                    TransferAction::PartitionPushed(p) => {
                        cx.w.logf(here, || format!("transfer: partition {p} pushed"));
                    }
                    TransferAction::AllPushed { version } => {
                        pushed |= layout.current().version() == version && layout.record_pushed(me);
                    }
                }
            }
            if pushed {
                changed = true;
                let version = layout.current().version();
                cx.w.logf(here, || {
                    format!("transfer: PUSHED every partition of v{version}")
                });
                if let Some((v, started, snapshot)) = run.snapshot.take() {
                    if v == version {
                        cx.notices.push(Notice::Pushed {
                            source: *ix,
                            version,
                            started,
                            snapshot,
                        });
                    }
                }
            }
            if step.retire {
                if let Some(r) = layout.poll_retire() {
                    changed = true;
                    cx.w.logf(here, || {
                        format!(
                            "layout: RETIRED v{}, now v{} settled",
                            r.version,
                            layout.current().version()
                        )
                    });
                }
            }
            if !changed {
                break;
            }
            changed_any = true;
            self.layout_seq += 1;
        }
        if changed_any {
            let seq = self.layout_seq;
            let SimNode { layout, run, .. } = self;
            let run = run.as_mut().expect("checked above");
            run.driver
                .set_layout(layout.as_ref().expect("checked above"));
            run.routed_seq = seq;
            self.cleanup_pump(cx);
        }
        let member = self.layout.as_ref().is_some_and(|l| l.is_member(me));
        if !member && !self.left && self.was_member {
            self.left = true;
            cx.w.log(here, "LEFT: no live layout version has this node any more");
            cx.history.left(self.ix);
        }
        if member {
            self.was_member = true;
            self.left = false;
        }
        // As `node/src/transfer.rs::send`: the entries in peer batches (all at once here; the
        // node has `TRANSFER_BATCHES_IN_FLIGHT_MAX` in flight).
        for (to, id, entries) in sends {
            let to = cx.ix(to);
            for batch in batches(&entries) {
                let out = Outgoing::Transfer {
                    send: id,
                    batch: batch.to_vec(),
                };
                self.request(cx, to, batch_request(batch), out, TRANSFER_REQUEST_TIMEOUT);
            }
        }
        let gen = self.gen;
        let run = self.run();
        if let Some(t) = run.transfer.poll_timeout() {
            let at = cx.w.virtual_of(t);
            if run.transfer_timer.is_none_or(|armed| at < armed) {
                run.transfer_timer = Some(at);
                cx.w.at(at, Event::TransferTimer { node: self.ix, gen });
            }
        }
    }

    /// One key of batch `send` was acknowledged (or failed): the batch is sent when every key
    /// is, and fails with its first failure, as `node/src/transfer.rs::send` does.
    fn transfer_sent(&mut self, cx: &mut Ctx, send: SendId, result: Result<(), String>) {
        let now = cx.w.instant();
        let run = self.run();
        let Some(left) = run.sends.get_mut(&send) else {
            return;
        };
        match result {
            Ok(()) => {
                *left -= 1;
                if *left > 0 {
                    return;
                }
                run.sends.remove(&send);
                run.transfer.handle_sent(now, send, Ok(()));
            }
            Err(e) => {
                run.sends.remove(&send);
                cx.w.logf(self.me(), || format!("transfer: a send failed: {e}"));
                self.run().transfer.handle_sent(now, send, Err(e));
            }
        }
        self.pump(cx);
    }

    /// The transfer machine's timer fired.
    pub fn on_transfer_timer(&mut self, cx: &mut Ctx) {
        let now = cx.w.now;
        let run = self.run();
        if run.transfer_timer.is_some_and(|t| t <= now) {
            run.transfer_timer = None;
        }
        self.pump(cx);
    }

    /// Follows the layout again (the node's transfer task rechecks at least every
    /// `TRANSFER_RETRY_MAX`). Without gossip in the run, it also sends this node's layout to a
    /// random peer (`PeerRequest::Layout`), standing in for gossip's stamps; with gossip, the
    /// stamps start the exchanges (`gossip::start_layout_exchanges`), as in the node.
    pub fn on_layout_tick(&mut self, cx: &mut Ctx) {
        if !cx.gossip {
            let slots = cx.ids.len();
            let mut to = cx.w.rng.gen_range(0..slots - 1);
            if to >= self.ix {
                to += 1;
            }
            let mine = PeerRequest::Layout(self.encoded_layout(cx));
            self.request(cx, to, mine, Outgoing::Layout, PING_TIMEOUT);
        }
        if self.layout.as_ref().is_some_and(|l| !l.is_settled()) {
            self.pump(cx);
        }
        let delay = cx.w.micros(500_000, 1_500_000);
        let gen = self.gen;
        cx.w.after(delay, Event::LayoutTick { node: self.ix, gen });
    }

    /// Hands the cleanup the layout if it changed, carries out what it asks (pages read from
    /// the store at once, drops queued for the disk), and arms its timer.
    fn cleanup_pump(&mut self, cx: &mut Ctx) {
        let (seq, ix, gen) = (self.layout_seq, self.ix, self.gen);
        let now = cx.w.instant();
        let here = self.me();
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let Some(cleanup) = run.cleanup.as_mut() else {
            return;
        };
        if run.cleanup_seq != seq {
            cleanup.handle_layout(now, self.layout.clone().map(std::sync::Arc::new));
            run.cleanup_seq = seq;
        }
        let mut drops = Vec::new();
        while let Some(action) = cleanup.poll_action(now) {
            match action {
                CleanupAction::Scan {
                    layout,
                    after,
                    keys_max,
                } => {
                    let page = unreplicated_page(
                        &self.store,
                        cx.config,
                        &layout,
                        self.id,
                        after.as_deref(),
                        keys_max,
                    )
                    .map_err(|e| e.to_string());
                    cleanup.handle_page(now, page);
                }
                CleanupAction::Drop { key, expected } => drops.push((key, expected)),
            }
        }
        if let Some(report) = cleanup.poll_report() {
            cx.w.logf(here, || format!("cleanup: sweep ended {report:?}"));
        }
        let next = cleanup.poll_timeout();
        run.cleanup_arm += 1;
        let arm = run.cleanup_arm;
        for (key, expected) in drops {
            self.queue_disk(cx, DiskJob::Drop { key, expected });
        }
        if let Some(at) = next {
            let delay = cx.w.virtual_of(at).saturating_sub(cx.w.now);
            cx.w.after(delay, Event::Cleanup { node: ix, gen, arm });
        }
    }

    /// The cleanup's timer (a sweep that kept keys runs again).
    pub fn on_cleanup(&mut self, cx: &mut Ctx, arm: u64) {
        if self.run.as_ref().is_some_and(|r| r.cleanup_arm == arm) {
            self.cleanup_pump(cx);
        }
    }
}
