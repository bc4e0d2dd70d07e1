//! A deterministic whole-cluster simulator: the node's own pure core (`cairn_core`'s request
//! driver with its coordinator, the writer over a synchronous store, versioning, the
//! hint-delivery and liveness policies, and the real ring) for several nodes, over virtual time,
//! a seeded faulty network and in-memory disks, with random clients and a history checker (see
//! `history`). This crate depends on no I/O crate (`tests/tests/architecture.rs` checks it).
//!
//! A run is a pure function of its seed: the cluster shape, the network's faults, the clients'
//! operations and every timing come from one `StdRng`, and events at the same instant run in the
//! order they were scheduled. A failing seed replays exactly; [`run`] with `trace: true` returns
//! a one-line-per-event trace.
//!
//! Phases of a run:
//! 1. *Active*: clients issue their operations while the fault injector crashes and restarts
//!    nodes (sometimes at once, sometimes with the data directory lost), pauses them, makes
//!    their disks fail for a while, installs and heals partitions, and (in most seeds) has the
//!    operator change the layout: a spare joins, a member leaves, a crashed member is removed
//!    or replaced by a spare (and never comes back), sometimes a second change right after the
//!    first settles, sometimes a crash of a member while its transfer runs.
//! 2. *Heal*: partitions heal, disks work, crashed nodes restart, the network stops dropping and
//!    duplicating; the run waits until the cluster is quiet (every node idle, every liveness view
//!    up, every hint delivered, every node holding the same settled layout; the operator
//!    overrides a change that still waits for a node gone for good).
//! 3. *Repair*: anti-entropy alone (`Options::anti_entropy`): the run waits until every replica
//!    of every key written agrees (or `QUIET_MAX` passes, and the checker says what differs).
//!    Then every key is read with R = N, which must succeed and has nothing left to repair.
//!    Without it a verifier reads every key written with R = N (read repair), and the run waits
//!    for quiet again.
//! 4. *Check*: the history checker judges what every replica of the final layout holds.
//!
//! What runs the node's own code, and what is still this simulator's:
//! - `msg`: between nodes the node's own wire messages (`cairn_proto::PeerRequest` and
//!   `PeerResponse`): objects encoded as the node encodes them (`Object::encode`, a read's copy
//!   `encode_copy`), layouts as `cairn_layout::held` encodes them, gossip messages as the gossip
//!   crate does; answers read with the node's typed picks (`cairn_core::peer`). Clients get the
//!   node's `KeyOpReply`, built by `cairn_core::reply` as the node's driver builds it (live
//!   siblings and a context), and the checker judges that. Beside a forwarded write travel the
//!   history's name for it and the dot minted for it: bookkeeping the node never reads.
//! - `node`: per node the core's `RequestDriver` (the coordinator, replies held for hints, a
//!   fallback's ack failed when its hint could not be kept), carried out as
//!   `node/src/driver.rs` carries out its outputs; the core's `Writer` applying each queued
//!   write (FIFO, group commits of up to `SIM_GROUP_COMMIT_MAX` jobs, like the engine's
//!   single writer thread)
//!   over a `SimDisk`, durable and acknowledged only when its disk event runs, lost if the node
//!   crashes first; the core's liveness and handoff policies, fed and carried out as `peers.rs`
//!   and `handoff.rs` do, the handoff policy routing by the node's layout (hints for a node that
//!   no longer replicates a key are redirected to its owners with the core's
//!   `redirect_writes`); the core's forwarder and forward table at both ends of a forward. Still
//!   this crate's own, not the node's: the loops around those machines, the match that hands
//!   each decoded peer request to them, and the forward loop around `route` and `Forwarder`.
//! - `node/gossip`: gossip membership, the gossip crate's state machine (SYN/ACK/ACK2 over the
//!   simulated network, heartbeats, phi accrual, a new generation per start) with the core's
//!   `PeerJudge` feeding the liveness policy after every tick and message, as
//!   `node/src/membership.rs` does; `Options::gossip` off feeds every peer as alive and suspect,
//!   so only probes find a dead one.
//! - `world`: virtual time, the event queue, the network: per-message delay, loss, duplicated
//!   answers (never requests), slow messages that reorder, partitions between groups of nodes;
//!   a request to a crashed node fails after `PEER_CONNECT_TIMEOUT`, one lost in a partition
//!   times out; a paused node's events wait until it resumes.
//! - `node`, layouts: each node holds its own `cairn_layout::Layout` (kept across a crash, lost
//!   with the data directory), exchanged as the node exchanges it: each node gossips its
//!   layout's stamp in its ring field (`cairn_core::membership::RingInfo`) and sends its layout
//!   to every peer up that gossips another stamp (`layout_exchange_partners`); without gossip
//!   in the run, with a random peer every 0.5–1.5 s instead; the coordinator routes by it (`set_layout`, forwarding by
//!   `Layout::routing_ring`), the write fence moves as `node/src/driver.rs` moves it, the node
//!   acknowledges by `Layout::should_ack`, follows and runs the core's transfer machine
//!   (`TransferMachine::follow`, pages from `transfer::read_page`, sent as the node sends them:
//!   peer batches of hintless replicates, `transfer::{batches, batch_request, batch_answered}`,
//!   served at the target by the core's `serve::BatchPlan` as `server/dispatch.rs` serves
//!   them), records its push and retires the old version as `node/src/transfer.rs`
//!   does, and (with `Options::drop_copies`) runs the core's cleanup machine
//!   (`cairn_core::cleanup`: pages from `transfer::unreplicated_page`, each key a
//!   `DropIfUnchanged` through the disk queue) as `node/src/cleanup.rs` drives it.
//! - `disk`: the core's `MemoryStore`, whose commits fail while the fault injector says so.
//! - `client`: random clients and the final verifier; `history`: the record and the checker.
//!
//! - `node/ae`: anti-entropy, the core's round plan, exchange, key repair and responder table
//!   (`cairn_core::antientropy`) over the simulated network and the node's disk queue.
//!
//! - `disk`, storage health: a commit that fails degrades the node as the engine's writer
//!   does (`cairn_core::health`): the node declares it in gossip and to its own liveness view
//!   (peers and the node itself route around it) every `STORAGE_CHECK_INTERVAL`, and its writer
//!   recovers the store in place on the health's backoff once the disk works again.
//!
//! - `node/ae`, Merkle trees: kept from every commit's puts and removes as the engine's writer
//!   keeps the node's (`cairn_core::trees`), and checked against a fresh build at each turn.
//!
//! Not modelled: joining rounds (the `Joining` status only shows in `cairn status`; no decision
//! reads it), a node that bootstraps version 1 again from `initial_members` after losing its data
//! directory while the layout has moved on (in runs with changes it waits for a peer's layout
//! instead; without, it bootstraps version 1 as the node does), conflicting changes at two nodes (the
//! operator changes only a settled cluster), limits other than the object's and the hint
//! store's.

mod client;
mod disk;
mod fmt;
mod history;
mod msg;
mod node;
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

pub use cairn_core::antientropy::ExchangeSabotage;
pub use cairn_core::forward::ForwardSabotage;
use cairn_core::liveness::PEER_CONNECT_TIMEOUT;
use cairn_core::transfer::TransferConfig;
use cairn_core::version::Object;
use cairn_layout::{Change, Digest, Layout, LayoutVersion};
use cairn_proto::{ErrorReply, NodeId};
use cairn_ring::{Member, RingConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use client::CLIENT_TIMEOUT;
pub use history::{History, Violation, WriteRecord, WriteStatus};
pub use world::NetConfig;

use client::{ClientCtx, SimClient};
use msg::{Addr, Body, ClientResponse};
use node::{Ctx, Notice, SimNode};
use world::{Event, TransportFailure, World};

/// A deliberate bug in the node's writer (`cairn_core::writer`, built with its `sabotage`
/// feature), to show that the checker catches it.
pub use cairn_core::writer::Sabotage;

/// A deliberate bug in the node's transfer machine (`cairn_core::transfer`, built with its
/// `sabotage` feature), to show that the checker catches it.
pub use cairn_core::reaper::ReaperSabotage;
pub use cairn_core::transfer::TransferSabotage;

/// How to run one seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep a one-line-per-event trace.
    pub trace: bool,
    /// Break the simulated replica on purpose.
    pub sabotage: Sabotage,
    /// Let the fault injector crash a coordinator right after it acknowledged a write (with the
    /// probability the seed draws), while what it still has to make durable is queued.
    pub crash_after_ack: bool,
    /// The driver's bug of seed 106 put back (`DriverSabotage::AckDespiteFailedHint`): a
    /// fallback acknowledges a write whose hint could not be kept.
    pub ack_despite_failed_hint: bool,
    /// Coordinate a write only at a node that `route` chooses for it (known bug 2 in
    /// `tests/tests/coordinator.rs`): after a failed forward, and on receiving a forward, a node
    /// that is not among the key's chosen replicas refuses the write. `false` does as
    /// `server/dispatch.rs` does today: it coordinates there anyway.
    pub strict_routing: bool,
    /// A deliberate bug in every node's forwarder (`cairn_core::forward::Forwarder`):
    /// `CoordinateAfterLostReply` coordinates a write whose forward went out unanswered here as
    /// well, as `server/dispatch.rs` did before bug 3, which can apply one client write twice.
    pub forward_sabotage: ForwardSabotage,
    /// The faults added with the shared node core: disks that fail their commits for a while,
    /// nodes paused and resumed, restarts right after a crash, and (drawn per seed) a small hint
    /// store that fills up. `false` keeps the random choices of the seeds found before them
    /// (the regression seeds of bug 1).
    pub more_faults: bool,
    /// Layout changes during the run (drawn per seed: joins of spare nodes, leaves, removes
    /// and replaces of crashed nodes, changes in a row, crashes in the middle of a transfer).
    /// `false` keeps the random choices of the seeds found before them.
    pub layout_changes: bool,
    /// A deliberate bug in the transfer machine.
    pub transfer_sabotage: TransferSabotage,
    /// Old owners drop the copies no live layout version needs (`node/src/cleanup.rs`, with
    /// the core's `unreplicated_page` and `DropIfUnchanged`), as the node does. (Bug 6 hid
    /// behind this switch while it was off: a node that dropped its copy minted a version
    /// vector entry covering its own earlier dots of the key; the writer's per-key actors fixed
    /// it, `sim/tests/sim.rs`.)
    pub drop_copies: bool,
    /// Every node runs the core's tombstone reaper (`cairn_core::reaper`), as the node does,
    /// with a grace period of `SIM_TOMBSTONE_GRACE` and rounds every
    /// `SIM_TOMBSTONE_ROUND_INTERVAL`; the checker counts a reaped delete as having taken effect.
    pub reap: bool,
    /// A deliberate bug in every node's reaper.
    pub reaper_sabotage: ReaperSabotage,
    /// Every node runs anti-entropy (`cairn_core::antientropy`, as `node/src/antientropy.rs`
    /// drives it), and the final repair waits for it to make the replicas agree instead of
    /// reading every key with R = N.
    pub anti_entropy: bool,
    /// A deliberate bug in every node's anti-entropy exchanges.
    pub exchange_sabotage: ExchangeSabotage,
    /// Every node runs gossip membership (the gossip crate's state machine and the core's
    /// `PeerJudge`, as `node/src/membership.rs` runs them), which tells the liveness policy who
    /// is alive; `false` feeds it every peer as alive and suspect, so only pings find the dead.
    pub gossip: bool,
}

/// The simulated reaper's grace period. As the node's hour is twelve times the longest a copy
/// can stay in flight, this is three times the simulator's longest: a coordinator's request
/// lives up to its 5 s deadline (the read repair of a read that began before the delete goes
/// out at that deadline) and a node may be paused for up to 5 s holding one. (With 3 s, seeds
/// 1870, 2787, 5249 and 8577 brought a deleted value back exactly that way: the grace period
/// is what guards messages in flight, so it must outlast them.)
pub const SIM_TOMBSTONE_GRACE: Duration = Duration::from_secs(30);
/// The simulated reaper's round interval.
pub const SIM_TOMBSTONE_ROUND_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Options {
    fn default() -> Options {
        Options {
            trace: false,
            sabotage: Sabotage::None,
            crash_after_ack: true,
            // As node/src/driver.rs does: an ack waits for the hints issued before it.
            ack_despite_failed_hint: false,
            strict_routing: false,
            forward_sabotage: ForwardSabotage::None,
            more_faults: true,
            layout_changes: true,
            transfer_sabotage: TransferSabotage::None,
            drop_copies: true,
            reap: true,
            reaper_sabotage: ReaperSabotage::None,
            anti_entropy: true,
            exchange_sabotage: ExchangeSabotage::None,
            gossip: true,
        }
    }
}

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Q.
    pub partitions: u32,
    /// N.
    pub replicas: usize,
    /// Random clients.
    pub clients: usize,
    /// Client operations in the active phase.
    pub ops: usize,
    /// Distinct keys (few, so writes conflict).
    pub keys: usize,
    /// Network faults.
    pub net: NetConfig,
    /// Time between fault injector actions, milliseconds.
    pub fault_every_ms: (u64, u64),
    /// Probability of crashing a coordinator right after it acknowledged a write.
    pub crash_after_ack: f64,
    /// Client think time, milliseconds.
    pub think_ms: (u64, u64),
    /// Disk failures, pauses and quick restarts among the faults (`Options::more_faults`).
    pub more_faults: bool,
    /// Hints each node keeps per target (the writer refuses more).
    pub hints_per_peer_max: u64,
    /// Whether the operator changes the layout during the run.
    pub layout_changes: bool,
    /// Nodes beyond `nodes` that start outside the layout, to join or replace.
    pub spares: usize,
    /// How fast and wide transfers go.
    pub transfer: TransferConfig,
}

/// Members a layout change never goes below (N: fewer members than replicas is a cluster that
/// cannot place its copies).
const MEMBERS_MIN: usize = 3;
/// Attempts the operator makes at a change, every `OPERATOR_RETRY`, while the cluster is not
/// settled.
const OPERATOR_TRIES_MAX: u32 = 120;
/// How long the operator waits between attempts (`cairn status` again).
const OPERATOR_RETRY: Duration = Duration::from_millis(500);

impl Config {
    /// The configuration for `rng`'s seed.
    fn draw(rng: &mut StdRng, more_faults: bool, layout_changes: bool) -> Config {
        let faulty = rng.gen_bool(0.85);
        let mut cfg = Config {
            nodes: rng.gen_range(3..=5),
            partitions: 16,
            replicas: 3,
            clients: rng.gen_range(2..=4),
            ops: rng.gen_range(150..=400),
            keys: rng.gen_range(2..=6),
            net: NetConfig {
                drop: if faulty {
                    rng.gen_range(0.0..0.05)
                } else {
                    0.0
                },
                duplicate: if faulty {
                    rng.gen_range(0.0..0.03)
                } else {
                    0.0
                },
                delay_us: (100, rng.gen_range(500..=5000)),
                slow: if faulty {
                    rng.gen_range(0.0..0.05)
                } else {
                    0.0
                },
                slow_delay_us: (5_000, rng.gen_range(10_000..=400_000)),
            },
            fault_every_ms: if faulty {
                (300, rng.gen_range(1000..=8000))
            } else {
                (0, 0)
            },
            crash_after_ack: if faulty && rng.gen_bool(0.5) {
                rng.gen_range(0.0..0.05)
            } else {
                0.0
            },
            think_ms: (0, rng.gen_range(10..=200)),
            more_faults,
            hints_per_peer_max: node::SIM_HINTS_PER_PEER_MAX,
            layout_changes: false,
            spares: 0,
            transfer: TransferConfig::default(),
        };
        // Drawn last, and only with the new faults, so the seeds before them keep their runs.
        if more_faults && rng.gen_bool(0.3) {
            cfg.hints_per_peer_max = rng.gen_range(1..=4);
        }
        // Likewise for layout changes. Transfers are slow and small-paged here, so faults land
        // in the middle of them.
        if layout_changes && rng.gen_bool(0.7) {
            cfg.layout_changes = true;
            cfg.spares = rng.gen_range(1..=2);
            cfg.transfer = TransferConfig {
                batch_keys: rng.gen_range(1..=3),
                batch_bytes: 256,
                partitions_concurrent: rng.gen_range(1..=3),
                bytes_per_sec: rng.gen_range(200..=5_000),
            };
        }
        cfg
    }

    fn one_line(&self) -> String {
        format!(
            "nodes={} Q={} N={} clients={} ops={} keys={} drop={:.3} dup={:.3} slow={:.3} \
             faults_every={:?}ms crash_after_ack={:.3} more_faults={} hints_max={} \
             layout_changes={} spares={} transfer={}x{}@{}B/s",
            self.nodes,
            self.partitions,
            self.replicas,
            self.clients,
            self.ops,
            self.keys,
            self.net.drop,
            self.net.duplicate,
            self.net.slow,
            self.fault_every_ms,
            self.crash_after_ack,
            self.more_faults,
            self.hints_per_peer_max,
            self.layout_changes,
            self.spares,
            self.transfer.partitions_concurrent,
            self.transfer.batch_keys,
            self.transfer.bytes_per_sec
        )
    }
}

/// What one seed did.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The shape drawn from it.
    pub config: Config,
    /// Broken rules; empty when the run passed.
    pub violations: Vec<Violation>,
    /// The trace, if asked for.
    pub trace: Vec<String>,
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Events processed.
    pub events: u64,
    /// Writes acknowledged, failed, unknown; reads answered.
    pub counts: (usize, usize, usize, usize),
    /// The history, for inspection.
    pub history: History,
}

impl Report {
    /// One line: seed, shape, what happened.
    pub fn summary(&self) -> String {
        let (ok, failed, unknown, reads) = self.counts;
        format!(
            "seed {}: {} | writes ok={ok} failed={failed} unknown={unknown}, reads ok={reads}, \
             {} events, {:.1}s virtual, {} violations",
            self.seed,
            self.config.one_line(),
            self.events,
            self.virtual_time.as_secs_f64(),
            self.violations.len()
        )
    }
}

/// Longest a run may take in virtual time before it is declared stuck.
const ACTIVE_MAX: Duration = Duration::from_secs(600);
/// Longest wait for quiet after healing or the full read.
const QUIET_MAX: Duration = Duration::from_secs(300);
/// Full reads of every key at the end, repeated while the replicas still differ.
const FULL_READS_MAX: usize = 3;
/// When clients start in runs with gossip: two gossip rounds.
const CLIENTS_START_WITH_GOSSIP: Duration = Duration::from_secs(2);
/// Shortest quiet phase (lets views and timers settle even when nothing is pending).
const QUIET_MIN: Duration = Duration::from_secs(2);

struct Sim {
    cfg: Config,
    opts: Options,
    w: World,
    ring_config: RingConfig,
    /// Node id of every slot: the first `cfg.nodes` start as members, the spares outside.
    ids: Vec<NodeId>,
    /// Removed or replaced while dead: never started again.
    gone: Vec<bool>,
    /// When each node last lost its data (directory lost, or removed for good).
    wiped_at: Vec<Option<Duration>>,
    /// What nodes reported for the checker, not yet looked at.
    notices: Vec<Notice>,
    /// Layout version 1, which an initial member bootstraps again after losing its data
    /// directory in a run without layout changes (`node/src/layout.rs::bootstrap`).
    first: Layout,
    /// The cluster's id, as the node's layout exchange carries it: the digest of version 1.
    cluster: Digest,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    history: History,
    ops_left: usize,
    faults_on: bool,
    partition: u64,
    problems: Vec<Violation>,
    /// Until when each node is paused (`Duration::ZERO`: running).
    paused_until: Vec<Duration>,
}

/// Runs one seed.
pub fn run(seed: u64, opts: &Options) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cfg = Config::draw(&mut rng, opts.more_faults, opts.layout_changes);
    if !opts.crash_after_ack {
        // Drawn all the same, so a seed's other choices do not depend on this option.
        cfg.crash_after_ack = 0.0;
    }
    let slots = cfg.nodes + cfg.spares;
    let ids: Vec<NodeId> = (0..slots)
        .map(|i| NodeId::from_name(&fmt::node_name(i)))
        .collect();
    let ring_config = RingConfig {
        partitions: cfg.partitions,
        replicas: cfg.replicas,
    };
    // Layout version 1 over the first `nodes` nodes, as every initial member bootstraps it
    // (`node/src/layout.rs::bootstrap`: ids from names, sorted).
    let mut members: Vec<(Member, String)> = (0..cfg.nodes)
        .map(|i| (Member::new(ids[i]), fmt::node_name(i)))
        .collect();
    members.sort_by_key(|(m, _)| m.id);
    let first = Layout::new(LayoutVersion::initial(ring_config, &members).expect("a valid layout"));
    let nodes = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let mut n = SimNode::new(i, id, rng.gen::<u64>().max(1));
            if i < cfg.nodes {
                n.layout = Some(first.clone());
                n.was_member = true;
            }
            n
        })
        .collect();
    let clients = (0..cfg.clients).map(SimClient::new).collect();
    let w = World::new(rng, cfg.net.clone(), slots, opts.trace);
    let paused_until = vec![Duration::ZERO; ids.len()];
    let sim = Sim {
        ops_left: cfg.ops,
        cfg,
        opts: opts.clone(),
        w,
        ring_config,
        gone: vec![false; slots],
        wiped_at: vec![None; slots],
        notices: Vec::new(),
        cluster: first.current().digest(),
        first,
        ids,
        nodes,
        clients,
        history: History::default(),
        faults_on: true,
        partition: 0,
        problems: Vec::new(),
        paused_until,
    };
    sim.run_all(seed)
}

impl Sim {
    fn run_all(mut self, seed: u64) -> Report {
        self.w
            .log("sim", format!("seed {seed}: {}", self.cfg.one_line()));
        for n in 0..self.nodes.len() {
            let (node, mut cx) = self.split(n);
            assert!(node.start(&mut cx), "a fresh node on a healthy disk starts");
        }
        // With gossip, clients start once its first rounds told every node of the others (as
        // an operator waits for `cairn status` to show every node up).
        let start = if self.opts.gossip {
            CLIENTS_START_WITH_GOSSIP
        } else {
            Duration::ZERO
        };
        for c in 0..self.clients.len() {
            let delay = start + self.w.micros(0, 10_000);
            self.w.after(delay, Event::ClientNext(c));
        }
        if self.cfg.fault_every_ms.1 > 0 {
            let (lo, hi) = self.cfg.fault_every_ms;
            let delay = self.w.micros(lo * 1000, hi * 1000);
            self.w.after(delay, Event::Fault);
        }

        // 1. Active.
        let active_end = self.run_until(ACTIVE_MAX, |s| {
            s.ops_left == 0 && s.clients.iter().all(|c| !c.busy())
        });
        if !active_end {
            self.stuck("clients did not finish their operations");
        }

        // 2. Heal, then wait for hints to be delivered.
        self.heal();
        let deadline = self.w.now + QUIET_MAX;
        let min = self.w.now + QUIET_MIN;
        if !self.run_until(deadline, |s| s.w.now >= min && s.quiet()) {
            self.stuck("no quiet after healing");
        }

        let keys = self.history.keys_written();
        if self.opts.anti_entropy {
            // 3. Anti-entropy alone makes the replicas agree (no read repairs them).
            self.w.log(
                "sim",
                format!("REPAIR by anti-entropy of {} keys", keys.len()),
            );
            let deadline = self.w.now + QUIET_MAX;
            if self.run_until(deadline, |s| s.quiet() && s.final_replicas_agree(&keys)) {
                // Every key must also read with R = N now that every node is up; the replicas
                // agree, so these reads repair nothing and cannot hide what anti-entropy left.
                self.full_reads(&keys, min);
            } else {
                // Rule 3 of the checker names the keys whose replicas still differ.
                self.w.log(
                    "sim",
                    "anti-entropy did not make the replicas agree in time",
                );
            }
        } else {
            self.full_reads(&keys, min);
        }
        self.check(seed, &keys)
    }

    /// Repair without anti-entropy: a full read of every key written, read repair standing in
    /// for it.
    fn full_reads(&mut self, keys: &[Vec<u8>], min: Duration) {
        let verifier = self.clients.len();
        self.w.log(
            "sim",
            format!("FULL READ of {} keys with R = N", keys.len()),
        );
        let final_members: Vec<usize> = match self.agreed_layout() {
            // A member gone for good whose removal the agreed layout does not show yet (the
            // node that applied it lost its disk before it spread, seed 9607) answers nothing.
            Some(l) => (0..self.ids.len())
                .filter(|&i| !self.gone[i] && l.current().is_member(self.ids[i]))
                .collect(),
            None => (0..self.ids.len()).filter(|&i| !self.gone[i]).collect(),
        };
        // Again while the replicas differ, as anti-entropy would go on exchanging: a merge that
        // brings a node's own lost events back records a history-only entry there (the
        // writer's per-key actors), which the next read repair spreads.
        for round in 0..FULL_READS_MAX {
            let verifier = verifier + round;
            if round > 0 {
                if self.final_replicas_agree(keys) {
                    break;
                }
                self.w.log("sim", "FULL READ again: replicas still differ");
            }
            self.clients.push(SimClient::verifier(
                verifier,
                keys.to_vec(),
                final_members.clone(),
            ));
            self.w.after(Duration::ZERO, Event::ClientNext(verifier));
            let deadline = self.w.now + QUIET_MAX;
            if !self.run_until(deadline, |s| {
                !s.clients[verifier].verifying() && s.w.now >= min && s.quiet()
            }) {
                self.stuck("no quiet after the full read");
            }
        }
    }

    /// 4. The checker's judgement of what every replica of the final layout holds.
    fn check(mut self, seed: u64, keys: &[Vec<u8>]) -> Report {
        self.w.log("sim", "CHECK");
        let mut finals = BTreeMap::new();
        let layout = self.agreed_layout().cloned();
        if let Some(l) = &layout {
            self.w.log(
                "sim",
                format!("final layout {}", msg::describe_layout(Some(l))),
            );
        }
        for key in keys {
            let Some(layout) = &layout else { break };
            let copies = self.final_copies(layout, key);
            self.w.logf("sim", || {
                let all: Vec<String> = copies
                    .iter()
                    .map(|(n, o)| format!("n{}={}", n + 1, fmt::obj(o)))
                    .collect();
                format!("final {}: {}", msg::key_str(key), all.join("  "))
            });
            finals.insert(key.clone(), copies);
        }
        let mut violations = std::mem::take(&mut self.problems);
        violations.extend(self.history.check(&finals));
        for v in &violations {
            self.w.log("sim", format!("VIOLATION {v}"));
        }
        let counts = self.history.counts();
        Report {
            seed,
            config: self.cfg,
            violations,
            trace: self.w.take_trace(),
            virtual_time: self.w.now,
            events: self.w.steps,
            counts,
            history: self.history,
        }
    }

    fn stuck(&mut self, what: &str) {
        let mut detail = vec![what.to_owned()];
        for n in &self.nodes {
            let hints: Vec<String> = n
                .hint_counts()
                .iter()
                .map(|(t, c)| format!("{}:{c}", fmt::node(*t)))
                .collect();
            detail.push(format!(
                "n{} gone={} running={} idle={} layout={} hints=[{}] believes down=[{}]",
                n.ix + 1,
                self.gone[n.ix],
                n.is_running(),
                n.idle(),
                msg::describe_layout(n.layout.as_ref()),
                hints.join(","),
                n.peers_down()
                    .iter()
                    .map(|p| fmt::node(*p))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        detail.push(format!("messages in flight: {}", self.w.in_flight));
        self.problems.push(Violation {
            rule: "liveness",
            key: Vec::new(),
            detail: detail.join("; "),
        });
    }

    /// Every node running (none paused) and idle, every view up, every hint delivered,
    /// nothing in flight.
    ///
    /// Nodes removed or replaced for good are left out, and so are hints for them (nothing will
    /// ever take those); the layout must be the same everywhere and settled.
    /// What each replica of `key` in `layout`'s newest version holds, by node index.
    fn final_copies(&self, layout: &Layout, key: &[u8]) -> Vec<(usize, Object)> {
        layout
            .current()
            .primaries(self.ring_config.partition_of(key))
            .iter()
            .map(|id| {
                let ix = self.ids.iter().position(|i| i == id).expect("member");
                (ix, self.nodes[ix].object(key))
            })
            .collect()
    }

    /// Whether every replica of every key in the agreed layout holds the same object.
    fn final_replicas_agree(&self, keys: &[Vec<u8>]) -> bool {
        let Some(layout) = self.agreed_layout() else {
            return true;
        };
        keys.iter().all(|key| {
            let copies = self.final_copies(layout, key);
            copies.windows(2).all(|w| w[0].1 == w[1].1)
        })
    }

    fn quiet(&self) -> bool {
        let gone = |id: &NodeId| {
            self.ids
                .iter()
                .position(|i| i == id)
                .is_some_and(|ix| self.gone[ix])
        };
        self.w.in_flight == 0
            && self.paused_until.iter().all(|&until| self.w.now >= until)
            && self.clients.iter().all(|c| !c.busy())
            && self.nodes.iter().enumerate().all(|(i, n)| {
                self.gone[i]
                    || (n.is_running()
                        && n.idle()
                        && n.hint_counts().keys().all(gone)
                        && n.peers_down().iter().all(gone))
            })
            && self.agreed_layout().is_some_and(|l| l.is_settled())
    }

    /// The layout every node that holds one holds, if they agree and every member of it holds
    /// one (what an operator reads from `cairn status` before the next change).
    fn agreed_layout(&self) -> Option<&Layout> {
        let mut held = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.gone[*i])
            .filter_map(|(_, n)| n.layout.as_ref());
        let first = held.next()?;
        if !held.all(|l| l == first) {
            return None;
        }
        let every_member_holds = self
            .nodes
            .iter()
            .enumerate()
            .all(|(i, n)| self.gone[i] || !first.is_member(self.ids[i]) || n.layout.is_some());
        every_member_holds.then_some(first)
    }

    fn heal(&mut self) {
        self.w.log(
            "sim",
            "HEAL: partitions healed, crashed nodes restart, network reliable",
        );
        self.faults_on = false;
        self.w.reliable = true;
        // The operator looks until the layout settles, to repair a change stuck on a node that
        // is gone for good.
        if self.cfg.layout_changes {
            self.w.after(
                Duration::ZERO,
                Event::LayoutChange {
                    tries: OPERATOR_TRIES_MAX,
                },
            );
        }
        for n in &self.nodes {
            n.store.set_failing(false);
        }
        self.w.group.iter_mut().for_each(|g| *g = 0);
        for n in 0..self.nodes.len() {
            if !self.nodes[n].is_running() && !self.gone[n] {
                let (node, mut cx) = self.split(n);
                assert!(node.start(&mut cx), "disks are healed before the restarts");
            }
        }
    }

    /// Runs events until `done` holds (checked after each event) or `deadline` passes.
    fn run_until(&mut self, deadline: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.w.peek_time() {
                Some(t) if t <= deadline => {}
                _ => return false,
            }
            let event = self.w.pop().expect("peeked");
            self.dispatch(event);
        }
    }

    fn split(&mut self, n: usize) -> (&mut SimNode, Ctx<'_>) {
        let crash_after_ack = if self.faults_on && self.opts.crash_after_ack {
            self.cfg.crash_after_ack
        } else {
            0.0
        };
        let Sim {
            w,
            ring_config,
            ids,
            history,
            nodes,
            opts,
            cfg,
            notices,
            cluster,
            ..
        } = self;
        (
            &mut nodes[n],
            Ctx {
                w,
                config: *ring_config,
                cluster: *cluster,
                ids,
                history,
                crash_after_ack,
                hints_per_peer_max: cfg.hints_per_peer_max,
                sabotage: opts.sabotage,
                ack_despite_failed_hint: opts.ack_despite_failed_hint,
                forward_sabotage: opts.forward_sabotage,
                strict_routing: opts.strict_routing,
                transfer: cfg.transfer,
                transfer_sabotage: opts.transfer_sabotage,
                drop_copies: opts.drop_copies,
                anti_entropy: opts.anti_entropy,
                gossip: opts.gossip,
                exchange_sabotage: opts.exchange_sabotage,
                reap: opts.reap,
                reaper_sabotage: opts.reaper_sabotage,
                layout_changes: cfg.layout_changes,
                notices,
            },
        )
    }

    fn client(&mut self, c: usize) -> (&mut SimClient, ClientCtx<'_>) {
        let Sim {
            w,
            history,
            clients,
            ops_left,
            cfg,
            problems,
            ..
        } = self;
        (
            &mut clients[c],
            ClientCtx {
                w,
                history,
                ops_left,
                keys: cfg.keys,
                nodes: cfg.nodes + cfg.spares,
                n: cfg.replicas.min(cfg.nodes) as u8,
                think_ms: cfg.think_ms,
                problems,
            },
        )
    }

    /// Runs `f` on node `n` if it is running in incarnation `gen`.
    fn on_node(&mut self, n: usize, gen: u64, f: impl FnOnce(&mut SimNode, &mut Ctx)) {
        let (node, mut cx) = self.split(n);
        if node.is_running() && node.gen == gen {
            f(node, &mut cx);
        }
        self.check_notices();
    }

    /// Rule 7, *a transfer moves every key*: when a source records that it pushed a version's
    /// partitions, every gaining replica holds (its context covers) every dot the source held
    /// for them when the transfer started, unless it lost its data since.
    fn check_notices(&mut self) {
        for notice in std::mem::take(&mut self.notices) {
            let Notice::Pushed {
                source,
                version,
                started,
                snapshot,
            } = notice;
            for (key, held, targets) in snapshot {
                for t in targets {
                    let ix = self.ids.iter().position(|i| *i == t).expect("a slot");
                    if self.wiped_at[ix].is_some_and(|at| at >= started) {
                        continue;
                    }
                    let copy = self.nodes[ix].object(&key);
                    let seen = copy.join();
                    let missing: Vec<String> = held
                        .siblings()
                        .iter()
                        .filter(|(d, _)| seen.get(&d.actor) < d.counter)
                        .map(|(d, p)| format!("{}@{}", fmt::payload(p), fmt::dot(*d)))
                        .collect();
                    if !missing.is_empty() {
                        let detail = format!(
                            "n{} recorded its push of v{version}, but n{} lacks {} of its {} \
                             (it holds {})",
                            source + 1,
                            ix + 1,
                            missing.join(" "),
                            fmt::obj(&held),
                            fmt::obj(&copy)
                        );
                        self.w.log("sim", format!("VIOLATION (transfer) {detail}"));
                        self.problems.push(Violation {
                            rule: "7 transfer missed a key",
                            key: key.clone(),
                            detail,
                        });
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, event: Event) {
        if let Some(n) = event.node() {
            let until = self.paused_until[n];
            if self.w.now < until && self.nodes[n].is_running() {
                // A paused process handles nothing; its events wait for it, in order.
                self.w.at(until, event);
                return;
            }
        }
        match event {
            Event::Deliver(env) => {
                if !env.body.is_ping() {
                    self.w.in_flight -= 1;
                }
                match env.to {
                    Addr::Node(n) => {
                        if !self.nodes[n].is_running() {
                            self.w.logf(env.to, || {
                                format!("DOWN, lost: {} from {}", env.body.describe(), env.from)
                            });
                            if let (Addr::Node(from), Body::PeerReq { gen, rid, .. }) =
                                (env.from, &env.body)
                            {
                                // Nothing listens: the requester's connection attempt fails
                                // after `PEER_CONNECT_TIMEOUT` instead of waiting for its
                                // request timeout.
                                self.w.after(
                                    PEER_CONNECT_TIMEOUT,
                                    Event::RequestFailed {
                                        node: from,
                                        gen: *gen,
                                        rid: *rid,
                                        failure: TransportFailure::NoConnection,
                                    },
                                );
                            }
                            if let (Addr::Client(_), Body::ClientReq { seq, .. }) =
                                (env.from, &env.body)
                            {
                                // The client's connection attempt fails.
                                let resp = ClientResponse::error(ErrorReply::Unreachable {
                                    node: fmt::node_name(n),
                                    reason: "connection failed: node down".into(),
                                });
                                let body = Body::ClientResp { seq: *seq, resp };
                                self.w.send(env.to, env.from, body);
                            }
                        } else if self.w.cut(env.from, env.to) {
                            self.w.logf(env.to, || {
                                format!(
                                    "PARTITIONED, lost: {} from {}",
                                    env.body.describe(),
                                    env.from
                                )
                            });
                        } else {
                            let (node, mut cx) = self.split(n);
                            node.on_deliver(&mut cx, env);
                            self.check_notices();
                        }
                    }
                    Addr::Client(c) => {
                        let Body::ClientResp { seq, resp } = env.body else {
                            unreachable!("clients only get responses")
                        };
                        self.w.logf(env.to, || {
                            format!("got op#{seq}: {}", msg::describe_resp(&resp))
                        });
                        let (client, mut cx) = self.client(c);
                        client.on_response(&mut cx, seq, resp);
                    }
                }
            }
            Event::Disk { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_disk(cx));
            }
            Event::LocalRead { node, gen, op, key } => {
                self.on_node(node, gen, |n, cx| n.on_local_read(cx, op, key));
            }
            Event::CoordTimer { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_coord_timer(cx));
            }
            Event::RequestFailed {
                node,
                gen,
                rid,
                failure,
            } => {
                self.on_node(node, gen, |n, cx| n.on_request_failed(cx, rid, failure));
            }
            Event::ProbeTick { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_probe_tick(cx));
            }
            Event::HandoffTick { node, gen, arm } => {
                self.on_node(node, gen, |n, cx| n.on_handoff_tick(cx, arm));
            }
            Event::ReaperTick { node, gen, arm } => {
                self.on_node(node, gen, |n, cx| n.on_reaper_tick(cx, arm));
            }
            Event::TransferTimer { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_transfer_timer(cx));
            }
            Event::LayoutTick { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_layout_tick(cx));
            }
            Event::Cleanup { node, gen, arm } => {
                self.on_node(node, gen, |n, cx| n.on_cleanup(cx, arm));
            }
            Event::ForwardWait { node, gen, wait } => {
                self.on_node(node, gen, |n, cx| n.on_forward_wait(cx, wait));
            }
            Event::GossipTick { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_gossip_tick(cx));
            }
            Event::StorageCheck { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_storage_check(cx));
            }
            Event::AntiEntropyTick { node, gen } => {
                self.on_node(node, gen, |n, cx| n.on_anti_entropy_tick(cx));
            }
            Event::LayoutChange { tries } => self.layout_change(tries),
            Event::ClientNext(c) => {
                let (client, mut cx) = self.client(c);
                client.next(&mut cx);
            }
            Event::ClientTimeout { client, seq } => {
                let (client, mut cx) = self.client(client);
                client.on_timeout(&mut cx, seq);
            }
            Event::Fault => self.fault(),
            Event::Crash(n) => {
                if self.faults_on && self.nodes[n].is_running() {
                    if self.nodes[n]
                        .layout
                        .as_ref()
                        .is_some_and(|l| !l.is_settled())
                    {
                        self.w
                            .log(Addr::Node(n), "CRASH in the middle of a layout change");
                    }
                    let (node, mut cx) = self.split(n);
                    node.crash(&mut cx);
                    self.paused_until[n] = Duration::ZERO;
                    // Sometimes the data directory is lost with the process: the node comes
                    // back empty, under a new epoch.
                    if self.cfg.more_faults && self.w.chance(0.15) && self.layout_survives(n) {
                        let epoch = self.w.rng.gen::<u64>().max(1);
                        self.nodes[n].lose_data(epoch);
                        if !self.cfg.layout_changes {
                            // As the node: an initial member without `layout.bin` bootstraps
                            // version 1, which is still the layout when nothing changes it.
                            // (With changes, it waits for a peer's layout here; see the crate
                            // docs.)
                            self.nodes[n].layout = Some(self.first.clone());
                            self.nodes[n].was_member = true;
                        }
                        self.history.wiped(n);
                        self.wiped_at[n] = Some(self.w.now);
                        self.w
                            .log(Addr::Node(n), "DATA DIR LOST: restarts empty, new epoch");
                    }
                    // Sometimes back at once (issue 10's quick restart: peers still have
                    // requests to it in flight).
                    let down_for = if self.cfg.more_faults && self.w.chance(0.3) {
                        self.w.micros(1_000, 50_000)
                    } else {
                        self.w.micros(200_000, 8_000_000)
                    };
                    self.w.after(down_for, Event::Restart(n));
                }
            }
            Event::DiskFails { node, failing } => {
                if !failing || self.faults_on {
                    self.nodes[node].store.set_failing(failing);
                    self.w.logf(Addr::Node(node), || {
                        format!("DISK {}", if failing { "FAILING" } else { "works again" })
                    });
                }
            }
            Event::Pause { node, until } => {
                if self.faults_on && self.nodes[node].is_running() {
                    self.paused_until[node] = until;
                    self.w.logf(Addr::Node(node), || {
                        format!("PAUSED until {:.3}s", until.as_secs_f64())
                    });
                }
            }
            Event::Restart(n) => {
                if !self.nodes[n].is_running() && !self.gone[n] {
                    let (node, mut cx) = self.split(n);
                    if !node.start(&mut cx) {
                        self.w.after(Duration::from_secs(1), Event::Restart(n));
                    }
                }
            }
            Event::Heal { id } => {
                if self.faults_on && id == self.partition {
                    self.w.group.iter_mut().for_each(|g| *g = 0);
                    self.w.log("net", "partition healed");
                }
            }
        }
    }

    /// Whether some node other than `n`, not gone for good, holds the layout, so `n` may lose
    /// its data directory. With every member's disk lost the cluster itself is gone: a new node
    /// has no layout to join (it waits for one, as `cairn` does) and an operator would have to
    /// bootstrap a new cluster. The runs keep one (seeds 2088 and 8999 lost them all).
    fn layout_survives(&self, n: world::NodeIx) -> bool {
        !self.cfg.layout_changes
            || (0..self.nodes.len())
                .any(|m| m != n && !self.gone[m] && self.nodes[m].layout.is_some())
    }

    /// The fault injector: crash a node, install a partition, or heal.
    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        if self.cfg.layout_changes && self.w.chance(0.2) {
            self.w.after(
                Duration::ZERO,
                Event::LayoutChange {
                    tries: OPERATOR_TRIES_MAX,
                },
            );
            let (lo, hi) = self.cfg.fault_every_ms;
            let delay = self.w.micros(lo * 1000, hi * 1000);
            self.w.after(delay, Event::Fault);
            return;
        }
        let roll = self.w.rng.gen_range(0..100);
        let nodes = self.nodes.len();
        if self.cfg.more_faults && roll < 20 {
            let n = self.w.rng.gen_range(0..nodes);
            let lasts = self.w.micros(100_000, 5_000_000);
            if roll < 10 {
                self.w.after(
                    Duration::ZERO,
                    Event::DiskFails {
                        node: n,
                        failing: true,
                    },
                );
                self.w.after(
                    lasts,
                    Event::DiskFails {
                        node: n,
                        failing: false,
                    },
                );
            } else {
                let until = self.w.now + lasts;
                self.w
                    .after(Duration::ZERO, Event::Pause { node: n, until });
            }
        } else if roll < 45 {
            let n = self.w.rng.gen_range(0..nodes);
            self.w.after(Duration::ZERO, Event::Crash(n));
        } else if roll < 85 {
            // Two sides, both non-empty.
            let mut group: Vec<u32> = (0..nodes).map(|_| self.w.rng.gen_range(0..2)).collect();
            if group.iter().all(|&g| g == group[0]) {
                let flip = self.w.rng.gen_range(0..nodes);
                group[flip] ^= 1;
            }
            self.partition += 1;
            self.w.group = group.clone();
            let lasts = self.w.micros(300_000, 10_000_000);
            self.w.logf("net", || {
                let side = |g: u32| {
                    (0..nodes)
                        .filter(|&i| group[i] == g)
                        .map(|i| format!("n{}", i + 1))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                format!(
                    "PARTITION {{{}}} | {{{}}} for {:.3}s",
                    side(0),
                    side(1),
                    lasts.as_secs_f64()
                )
            });
            let id = self.partition;
            self.w.after(lasts, Event::Heal { id });
        } else {
            self.w.group.iter_mut().for_each(|g| *g = 0);
            self.w.log("net", "partition healed");
        }
        let (lo, hi) = self.cfg.fault_every_ms;
        let delay = self.w.micros(lo * 1000, hi * 1000);
        self.w.after(delay, Event::Fault);
    }

    /// What the operator does about a node that is gone for good while the layout still
    /// counts on it (its remove was applied at a node that lost its data directory before the
    /// change spread, and another change was made meanwhile): a change that waits for it is
    /// overridden (`cairn layout force`, `Layout::force`, which may lose what only it held),
    /// and a settled layout that still has it gets its remove again. Returns whether it acted.
    fn operator_repair(&mut self) -> bool {
        let Some(layout) = self.agreed_layout().cloned() else {
            return false;
        };
        let gone: Vec<NodeId> = (0..self.ids.len())
            .filter(|&i| self.gone[i])
            .map(|i| self.ids[i])
            .collect();
        if gone.is_empty() {
            return false;
        }
        let at: Vec<usize> = (0..self.ids.len())
            .filter(|&i| self.nodes[i].is_running() && layout.is_member(self.ids[i]))
            .collect();
        if at.is_empty() {
            return false;
        }
        let at = at[self.w.rng.gen_range(0..at.len())];
        let spare = (0..self.ids.len()).find(|&i| {
            !self.gone[i] && !layout.current().is_member(self.ids[i]) && self.nodes[i].is_running()
        });
        let held = self.nodes[at]
            .layout
            .as_mut()
            .expect("agreed layouts are held");
        let what = match layout.transition() {
            Some(t) => {
                let Some(&n) = t
                    .waiting_acks
                    .iter()
                    .chain(&t.waiting_pushes)
                    .find(|n| gone.contains(n))
                else {
                    return false;
                };
                if held.force(n).is_err() {
                    return false;
                }
                format!(
                    "LAYOUT FORCE {} (gone for good; may lose data)",
                    fmt::node(n)
                )
            }
            None => {
                let Some(&n) = gone.iter().find(|n| layout.current().is_member(**n)) else {
                    return false;
                };
                // Removing it must not leave fewer members than replicas (the final R = N read
                // would be refused): at the floor, a spare takes its place instead.
                let change = if layout.current().names().len() > MEMBERS_MIN {
                    Change::Remove { node: n }
                } else {
                    let Some(s) = spare else {
                        return false;
                    };
                    Change::Replace {
                        old: n,
                        new: self.ids[s],
                        name: fmt::node_name(s),
                        zone: None,
                    }
                };
                let Ok(plan) = held.plan(&change) else {
                    return false;
                };
                if held.apply(plan).is_err() {
                    return false;
                }
                format!(
                    "LAYOUT CHANGE {change:?} again for {} (gone for good)",
                    fmt::node(n)
                )
            }
        };
        self.w.log(Addr::Node(at), what);
        let (node, mut cx) = self.split(at);
        node.layout_changed(&mut cx);
        self.check_notices();
        true
    }

    /// The operator: once `cairn status` shows the cluster settled (every node holds the same
    /// settled layout), one change at a node, as `server/dispatch.rs` plans and applies it: a spare joins
    /// (fetching a member's layout first, as `cairn join SEED` does), a running member leaves,
    /// a crashed member is removed or replaced by a spare (it never comes back: its data counts
    /// as lost). Sometimes the next change is queued at once (two changes in a row), and
    /// sometimes a node of the change crashes while its transfer runs.
    fn layout_change(&mut self, tries: u32) {
        if self.operator_repair() || !self.faults_on {
            // After a repair, or once faults are off (the heal asks the operator to look until
            // the layout settles), only repairs: look again soon.
            let settled = self.agreed_layout().is_some_and(|l| l.is_settled());
            if tries > 0 && !settled {
                self.w
                    .after(OPERATOR_RETRY, Event::LayoutChange { tries: tries - 1 });
            }
            return;
        }
        let Some(layout) = self.agreed_layout().filter(|l| l.is_settled()).cloned() else {
            if tries > 0 {
                self.w
                    .after(OPERATOR_RETRY, Event::LayoutChange { tries: tries - 1 });
            }
            return;
        };
        let slots = self.ids.len();
        let pick = |w: &mut World, from: &[usize]| from[w.rng.gen_range(0..from.len())];
        let member = |i: usize| layout.current().is_member(self.ids[i]);
        let members: Vec<usize> = (0..slots).filter(|&i| member(i)).collect();
        let up: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        let down: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !self.nodes[i].is_running())
            .collect();
        let spares: Vec<usize> = (0..slots)
            .filter(|&i| !self.gone[i] && !member(i) && self.nodes[i].is_running())
            .collect();
        if down.is_empty() && up.len() > 1 && self.w.chance(0.3) {
            // A member dies, and the operator takes it out: remove or replace it.
            let n = pick(&mut self.w, &up);
            self.w.after(Duration::ZERO, Event::Crash(n));
            self.w
                .after(Duration::from_millis(1), Event::LayoutChange { tries });
            return;
        }
        let mut kinds = Vec::new();
        if !spares.is_empty() {
            kinds.push("join");
        }
        if members.len() > MEMBERS_MIN && up.len() > 1 {
            kinds.push("leave");
        }
        if members.len() > MEMBERS_MIN && !down.is_empty() && !up.is_empty() {
            kinds.push("remove");
        }
        if !down.is_empty() && !spares.is_empty() && !up.is_empty() {
            kinds.push("replace");
        }
        if kinds.is_empty() {
            return;
        }
        let dead: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| *k == "remove" || *k == "replace")
            .collect();
        let kind = if !dead.is_empty() && self.w.chance(0.7) {
            dead[self.w.rng.gen_range(0..dead.len())]
        } else {
            kinds[self.w.rng.gen_range(0..kinds.len())]
        };
        let (at, change, gone) = match kind {
            "join" => {
                let s = pick(&mut self.w, &spares);
                // `cairn join SEED`: the joiner takes the seed's layout, then adds itself.
                self.nodes[s].layout = Some(layout.clone());
                let change = Change::Join {
                    node: self.ids[s],
                    name: fmt::node_name(s),
                    zone: None,
                };
                (s, change, None)
            }
            "leave" => {
                let m = pick(&mut self.w, &up);
                (m, Change::Leave { node: self.ids[m] }, None)
            }
            "remove" => {
                let d = pick(&mut self.w, &down);
                let at = pick(&mut self.w, &up);
                (at, Change::Remove { node: self.ids[d] }, Some(d))
            }
            _ => {
                let d = pick(&mut self.w, &down);
                let s = pick(&mut self.w, &spares);
                let at = pick(&mut self.w, &up);
                let change = Change::Replace {
                    old: self.ids[d],
                    new: self.ids[s],
                    name: fmt::node_name(s),
                    zone: None,
                };
                (at, change, Some(d))
            }
        };
        let held = self.nodes[at]
            .layout
            .as_mut()
            .expect("the operator asks a node that holds the layout");
        let plan = match held.plan(&change) {
            Ok(plan) => plan,
            Err(e) => {
                self.w
                    .log(Addr::Node(at), format!("LAYOUT CHANGE refused: {e}"));
                return;
            }
        };
        let (from, to, moves) = (plan.from, plan.next.version(), plan.moves.len());
        if let Err(e) = held.apply(plan) {
            self.w
                .log(Addr::Node(at), format!("LAYOUT CHANGE refused: {e}"));
            return;
        }
        self.w.logf(Addr::Node(at), || {
            format!("LAYOUT CHANGE {kind} ({change:?}): v{from} -> v{to}, {moves} partitions move")
        });
        if let Some(d) = gone {
            self.gone[d] = true;
            self.history.wiped(d);
            self.wiped_at[d] = Some(self.w.now);
            self.w
                .log(Addr::Node(d), "GONE for good: its data counts as lost");
        }
        let (node, mut cx) = self.split(at);
        node.layout_changed(&mut cx);
        self.check_notices();
        if self.w.chance(0.4) {
            // Two changes in a row: the next waits only for this one to settle.
            self.w.after(
                OPERATOR_RETRY,
                Event::LayoutChange {
                    tries: OPERATOR_TRIES_MAX,
                },
            );
        }
        if self.w.chance(0.4) {
            // A restart in the middle of the transfer.
            let involved: Vec<usize> = (0..slots)
                .filter(|&i| !self.gone[i] && self.nodes[i].is_running())
                .filter(|&i| {
                    self.nodes[at]
                        .layout
                        .as_ref()
                        .is_some_and(|l| l.is_member(self.ids[i]))
                })
                .collect();
            if !involved.is_empty() {
                let n = pick(&mut self.w, &involved);
                let delay = self.w.micros(50_000, 3_000_000);
                self.w.after(delay, Event::Crash(n));
            }
        }
    }
}
