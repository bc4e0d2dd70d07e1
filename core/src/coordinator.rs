//! The request coordinator: per-request quorum logic for gets and puts, as a sans-I/O state
//! machine (`handle_*` inputs, `poll_*` outputs, time passed in) that the node's driver and the
//! simulator both run.
//!
//! While the layout changes ([`Coordinator::set_layout`] with two live versions), a write goes to
//! the union of every live version's replica set for its partition (each set with its own
//! fallbacks for down primaries) and succeeds only when *each* set has W acknowledgements, PW of
//! them from that set's primaries; a failure names the sets that fell short. A read asks the one
//! set of [`Layout::read_version`]. With one version, both are the single-ring behaviour.
//!
//! The coordinator treats its own node like any other replica: the local update and local reads
//! are transmits addressed to itself, which the driver executes against the engine and answers
//! with `handle_result`. That keeps one code path for counting acknowledgements.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use cairn_layout::limits::LIVE_VERSIONS_MAX;
use cairn_layout::Layout;
use cairn_proto::{ErrorReply, NodeId, ReadOptions, WriteOptions};
use cairn_ring::Ring;

use crate::limits::{COORDINATOR_REQUESTS_MAX, READ_SPARE_DELAY};

// A target's set memberships are bits of a `u8`, one per live version.
const _: () = assert!(LIVE_VERSIONS_MAX <= 8);
use crate::version::{Object, Payload, VClock};

/// How long a request waits for replicas when the client does not say.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Longest timeout a client may ask for.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// The driver's name for one client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// The coordinator's name for one message it sent, to match the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// What to send to a replica (possibly this node itself).
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaOp {
    /// Apply a client write as coordinating replica: mint a dot, store durably, return the object.
    Update {
        /// The key.
        key: Vec<u8>,
        /// The client's context.
        ctx: VClock,
        /// The value or tombstone.
        payload: Payload,
    },
    /// Merge this object and store it durably; keep a hint for `hint_for` if set.
    Replicate {
        /// The key.
        key: Vec<u8>,
        /// The object to merge.
        object: Object,
        /// The unreachable primary this copy stands in for.
        hint_for: Option<NodeId>,
    },
    /// Return the local copy.
    Read {
        /// The key.
        key: Vec<u8>,
    },
}

/// An outgoing message.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// Answer with `handle_result(op, ..)`; `None` for fire-and-forget (read repair).
    pub op: Option<OpId>,
    /// The replica.
    pub to: NodeId,
    /// What to do.
    pub msg: ReplicaOp,
}

/// A replica's answer to a [`Transmit`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaResult {
    /// `Update` or `Read`: the replica's object (empty if absent).
    Object(Object),
    /// `Replicate` is durable.
    Ack,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// Options that cannot be met by any cluster state (e.g. R > N).
    #[error("invalid options: {0}")]
    BadOptions(String),
    /// Too few replicas answered.
    #[error("{needed} {kind} needed, {got} received")]
    Quorum {
        /// "acks", "primary acks", "replies", "primary replies".
        kind: &'static str,
        /// Needed.
        needed: u8,
        /// Received.
        got: u8,
        /// Replicas that failed or did not answer, with the reason.
        failed: Vec<(NodeId, String)>,
    },
    /// The coordinating replica refused the write (a limit, a bad context, its disk).
    #[error("{0}")]
    Local(ErrorReply),
    /// Too many requests in flight at this coordinator.
    #[error("coordinator is at COORDINATOR_REQUESTS_MAX ({0}) requests")]
    Overloaded(usize),
    /// A write while the layout changes missed its quorum in the replica set of at least one
    /// live version (each needs W acks and PW primary acks of its own).
    #[error("write quorum missed in {} live layout version replica set(s): {}", short.len(), ShortSets(short))]
    SetsShort {
        /// Every set that fell short.
        short: Vec<SetShortfall>,
        /// Replicas that failed or did not answer, with the reason.
        failed: Vec<(NodeId, String)>,
    },
}

/// One live version's replica set that a write did not reach its quorum in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShortfall {
    /// The layout version whose replica set this is.
    pub version: u64,
    /// The set's primaries.
    pub replicas: Vec<NodeId>,
    /// "acks" or "primary acks".
    pub kind: &'static str,
    /// Needed.
    pub needed: u8,
    /// Received.
    pub got: u8,
}

struct ShortSets<'a>(&'a [SetShortfall]);

impl std::fmt::Display for ShortSets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "version {}: {} {} needed, {} received",
                s.version, s.needed, s.kind, s.got
            )?;
        }
        Ok(())
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A get: the merge of the replies (empty object: not found).
    Read(Object),
    /// A put or delete: the coordinator's object after the write.
    Written(Object),
}

/// Something the driver must make durable: a replica missed `key`, so keep a hint to hand the
/// key to `target` when it is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintNeeded {
    /// The key.
    pub key: Vec<u8>,
    /// The replica that missed it.
    pub target: NodeId,
}

/// A client write for [`Coordinator::handle_put`].
#[derive(Debug, Clone)]
pub struct ClientWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The client's context.
    pub ctx: VClock,
    /// The value or tombstone.
    pub payload: Payload,
    /// Quorum choices.
    pub opts: WriteOptions,
}

/// Which of a read's chosen replicas a get asks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFanout {
    /// Every chosen replica (Dynamo's and Riak's way): read repair sees every copy that
    /// answers, at the price of N requests per read whatever R is.
    #[default]
    All,
    /// Only as many as the read needs (R of them, PR of those primaries), this node first: the
    /// rest are asked when an asked one fails or its reply does not count, and all of them once
    /// `READ_SPARE_DELAY` passes without an answer. Fewer requests per read (R instead of N);
    /// read repair sees only the replicas asked, leaving the others to anti-entropy.
    Needed,
}

/// Where a request for a key should be coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Here: this node is among the replicas chosen for the key.
    Local,
    /// At this replica; the driver forwards the request.
    Forward(NodeId),
    /// No replica is reachable.
    Unavailable,
}

/// One replica chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    node: NodeId,
    /// Bit `i` set: it counts toward the quorum of replica set `i` (a primary of it, or a
    /// fallback standing in for one).
    in_sets: u8,
    /// Bit `i` set: it is one of set `i`'s primaries (counts for PR/PW there).
    primary_in: u8,
    /// The primary a fallback stands in for (one per write: a node holds at most one hint for
    /// a key from one write).
    hint_for: Option<NodeId>,
}

impl Target {
    fn is_primary(&self) -> bool {
        self.primary_in != 0
    }
}

/// The quorum of one live version's replica set for one write.
#[derive(Debug)]
struct SetCount {
    /// The layout version (`None` for a bare ring).
    version: Option<u64>,
    replicas: Vec<NodeId>,
    w: u8,
    pw: u8,
    acks: u8,
    primary_acks: u8,
}

impl SetCount {
    fn met(&self) -> bool {
        self.acks >= self.w && self.primary_acks >= self.pw
    }
}

#[derive(Debug)]
enum State {
    Put(PutState),
    Get(GetState),
}

#[derive(Debug)]
struct PutState {
    key: Vec<u8>,
    /// The newest layout version the write was routed under (0: a bare ring).
    layout_version: u64,
    targets: Vec<Target>,
    /// Node of each outstanding op.
    waiting: BTreeMap<OpId, Target>,
    /// One per live version whose replica set for the key differs (one when settled).
    sets: Vec<SetCount>,
    failed: Vec<(NodeId, String)>,
    /// Primaries that no chosen replica covers at all (no fallback available).
    uncovered: Vec<NodeId>,
    object: Option<Object>,
    replied: bool,
}

#[derive(Debug)]
struct GetState {
    key: Vec<u8>,
    waiting: BTreeMap<OpId, Target>,
    r: u8,
    pr: u8,
    notfound_ok: bool,
    basic_quorum: bool,
    n: u8,
    counted: u8,
    primary_counted: u8,
    notfound: u8,
    replies: Vec<(NodeId, Object)>,
    failed: Vec<(NodeId, String)>,
    replied: bool,
    /// Chosen replicas not asked yet ([`ReadFanout::Needed`]), in the order they are asked.
    spare: VecDeque<Target>,
    /// When the spares are asked anyway, for want of answers.
    spare_at: Option<Instant>,
}

struct Pending {
    deadline: Instant,
    state: State,
}

/// The coordinator of one node.
pub struct Coordinator {
    me: NodeId,
    /// The newest version's ring: routing, N, and the only set when no change is in flight.
    ring: Ring,
    /// The layout while a change is in flight (two live versions), else `None`.
    transition: Option<Layout>,
    /// The newest layout version routed by (0: a bare ring).
    layout_version: u64,
    pending: BTreeMap<RequestId, Pending>,
    ops: Ops,
    transmits: VecDeque<Transmit>,
    outcomes: VecDeque<(RequestId, Result<Outcome, CoordinatorError>)>,
    hints: VecDeque<HintNeeded>,
    /// Replicas that were sent a write stored here and have neither answered nor been given a
    /// hint yet (see [`Coordinator::replicas_outstanding`]).
    outstanding: usize,
    /// Whether finished gets send the merge to replicas that answered with less.
    read_repair: bool,
    /// Which replicas a get asks first.
    read_fanout: ReadFanout,
}

/// The messages in flight and the request each belongs to. A field of its own so op ids can be
/// minted while a request's state is borrowed.
#[derive(Default)]
struct Ops {
    owner: BTreeMap<OpId, RequestId>,
    next: u64,
}

impl Ops {
    fn mint(&mut self, req: RequestId) -> OpId {
        let op = OpId(self.next);
        self.next += 1;
        self.owner.insert(op, req);
        op
    }
}

fn quorum(n: usize) -> u8 {
    (n / 2 + 1) as u8
}

fn timeout(ms: Option<u32>) -> Duration {
    ms.map_or(REQUEST_TIMEOUT_DEFAULT, |ms| {
        Duration::from_millis(ms.into()).min(REQUEST_TIMEOUT_MAX)
    })
}

impl State {
    /// Whether the client has its answer (the request only waits for late replicas).
    fn replied(&self) -> bool {
        match self {
            State::Put(s) => s.replied,
            State::Get(s) => s.replied,
        }
    }
}

impl Coordinator {
    /// A coordinator for node `me` over `ring`.
    pub fn new(me: NodeId, ring: Ring) -> Coordinator {
        Coordinator {
            me,
            ring,
            transition: None,
            layout_version: 0,
            pending: BTreeMap::new(),
            ops: Ops::default(),
            transmits: VecDeque::new(),
            outcomes: VecDeque::new(),
            hints: VecDeque::new(),
            outstanding: 0,
            read_repair: true,
            read_fanout: ReadFanout::All,
        }
    }

    /// Which of a read's chosen replicas gets ask first: all of them (the default) or only as
    /// many as they need (see [`ReadFanout`]).
    pub fn set_read_fanout(&mut self, fanout: ReadFanout) {
        self.read_fanout = fanout;
    }

    /// Switches read repair on (the default) or off. Off, gets only answer; replicas that
    /// answered with less are left to anti-entropy (tests prove anti-entropy alone this way).
    pub fn set_read_repair(&mut self, on: bool) {
        self.read_repair = on;
    }

    /// The ring this coordinator routes by.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Replaces the ring (membership changed); one replica set per key, no change in flight.
    pub fn set_ring(&mut self, ring: Ring) {
        self.ring = ring;
        self.transition = None;
        self.layout_version = 0;
    }

    /// Routes by `layout`: writes need their quorum in every live version's replica set, reads
    /// use [`Layout::read_version`]. A settled layout is the same as [`Coordinator::set_ring`]
    /// with its ring. Requests in flight keep the replicas they chose.
    pub fn set_layout(&mut self, layout: &Layout) {
        self.ring = layout.current().ring().clone();
        self.layout_version = layout.current().version();
        self.transition = (!layout.is_settled()).then(|| layout.clone());
    }

    /// The newest layout version this coordinator routes by (0: a bare ring).
    pub fn layout_version(&self) -> u64 {
        self.layout_version
    }

    /// Writes routed under a layout older than `version` that have not been answered yet. A
    /// node acknowledges a new layout version only once this is zero: every write it answers
    /// afterwards reached the replica sets of the new version too, and every write answered
    /// before is durable on W old replicas, whose transfer pushes it (the fence Garage calls
    /// `ack`).
    pub fn unanswered_writes_before(&self, version: u64) -> usize {
        self.pending
            .values()
            .filter(
                |p| matches!(&p.state, State::Put(s) if !s.replied && s.layout_version < version),
            )
            .count()
    }

    /// The write fence this coordinator has reached: the layout version it routes by, once no
    /// write routed under an older version is unanswered (`None` until then). A node
    /// acknowledges a layout version only when its fence has reached it
    /// (`Layout::should_ack`); the node's driver and the simulator both move the fence by this.
    pub fn write_fence(&self) -> Option<u64> {
        let routed = self.layout_version;
        (self.unanswered_writes_before(routed) == 0).then_some(routed)
    }

    /// The rings whose replica sets a write of `key` needs its quorum in, oldest version first,
    /// each with its version number; versions whose set for the key is the same count once.
    fn write_rings(&self, key: &[u8]) -> Vec<(Option<u64>, &Ring)> {
        let Some(layout) = &self.transition else {
            return vec![(None, &self.ring)];
        };
        let p = self.ring.partition_of(key);
        let sets = layout.write_sets(p);
        let mut rings: Vec<(Option<u64>, &Ring)> = Vec::with_capacity(sets.len());
        for set in &sets {
            // `write_sets` lists each distinct set once, in version order. A set two versions
            // share takes the newest one's ring, whose fallbacks include the newest members.
            let v = layout
                .versions()
                .iter()
                .rev()
                .find(|v| same_nodes(&v.primaries(p), set))
                .expect("write_sets come from the live versions");
            rings.push((Some(v.version()), v.ring()));
        }
        rings
    }

    /// The ring whose replica set serves reads of `key`.
    fn read_ring(&self, key: &[u8]) -> &Ring {
        match &self.transition {
            Some(layout) => layout.read_version(self.ring.partition_of(key)).ring(),
            None => &self.ring,
        }
    }

    /// N: replicas per key, capped by the number of members.
    pub fn n(&self) -> usize {
        replicas(&self.ring)
    }

    /// Requests in flight (including those answered but still collecting late replies).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Replicas that were sent a write already stored here and have neither acknowledged it nor
    /// been given a hint for it yet. A replica that died silently is only known to have missed
    /// the write at the request's deadline, when it gets its hint; until then this counts it, so
    /// a node showing no hints *and* nothing outstanding has handed every write on.
    pub fn replicas_outstanding(&self) -> usize {
        self.outstanding
    }

    /// Where a request for `key` should be coordinated: at a chosen replica, preferably here.
    pub fn route(&self, key: &[u8], is_up: &dyn Fn(NodeId) -> bool) -> Route {
        route(&self.ring, self.me, key, is_up)
    }

    fn admit(&mut self, req: RequestId) -> Result<(), CoordinatorError> {
        if self.pending.len() >= COORDINATOR_REQUESTS_MAX {
            // A request already answered only waits for late replicas (for hints or read
            // repair). When a replica dies silently those pile up until its deadline; end the
            // one closest to its deadline now, as the deadline would, rather than refuse a
            // client. Only a coordinator full of unanswered requests is overloaded.
            let oldest = self
                .pending
                .iter()
                .filter(|(_, p)| p.state.replied())
                .min_by_key(|(_, p)| p.deadline)
                .map(|(r, _)| *r);
            match oldest {
                Some(answered) => self.expire(answered),
                None => return Err(CoordinatorError::Overloaded(COORDINATOR_REQUESTS_MAX)),
            }
        }
        assert!(
            !self.pending.contains_key(&req),
            "request id {req:?} reused"
        );
        Ok(())
    }

    /// A client write (value or tombstone) to coordinate here. Call only when `route` said
    /// `Local`; otherwise the write is coordinated as well as possible from here.
    pub fn handle_put(
        &mut self,
        now: Instant,
        req: RequestId,
        write: ClientWrite,
        is_up: &dyn Fn(NodeId) -> bool,
    ) {
        let ClientWrite {
            key,
            ctx,
            payload,
            opts,
        } = write;
        if let Err(e) = self.admit(req) {
            self.outcomes.push_back((req, Err(e)));
            return;
        }
        let n = self.n();
        let w = opts.w.unwrap_or(quorum(n));
        let pw = opts.pw.unwrap_or(0);
        if w == 0 || usize::from(w) > n || usize::from(pw) > n {
            self.outcomes.push_back((
                req,
                Err(CoordinatorError::BadOptions(format!(
                    "w={w}, pw={pw} must satisfy 1 <= w <= N and pw <= N (N={n})"
                ))),
            ));
            return;
        }
        let rings = self.write_rings(&key);
        let (targets, uncovered) = targets(&rings, &key, is_up);
        let sets = rings
            .iter()
            .map(|(version, ring)| {
                // A smaller old version (fewer members than N) cannot give more than its N.
                let n_set = replicas(ring) as u8;
                SetCount {
                    version: *version,
                    replicas: ring
                        .preference_list(ring.partition_of(&key))
                        .primaries
                        .into_iter()
                        .take(usize::from(n_set))
                        .collect(),
                    w: w.min(n_set),
                    pw: pw.min(n_set),
                    acks: 0,
                    primary_acks: 0,
                }
            })
            .collect();
        let me = targets
            .iter()
            .find(|t| t.node == self.me)
            .copied()
            .unwrap_or(Target {
                node: self.me,
                in_sets: 0,
                primary_in: 0,
                hint_for: None,
            });
        let op = self.ops.mint(req);
        self.transmits.push_back(Transmit {
            op: Some(op),
            to: self.me,
            msg: ReplicaOp::Update {
                key: key.clone(),
                ctx,
                payload,
            },
        });
        let mut waiting = BTreeMap::new();
        waiting.insert(op, me);
        self.pending.insert(
            req,
            Pending {
                deadline: now + timeout(opts.timeout_ms),
                state: State::Put(PutState {
                    key,
                    layout_version: self.layout_version,
                    targets,
                    waiting,
                    sets,
                    failed: Vec::new(),
                    uncovered,
                    object: None,
                    replied: false,
                }),
            },
        );
    }

    /// A client read to coordinate here.
    pub fn handle_get(
        &mut self,
        now: Instant,
        req: RequestId,
        key: Vec<u8>,
        opts: &ReadOptions,
        is_up: &dyn Fn(NodeId) -> bool,
    ) {
        if let Err(e) = self.admit(req) {
            self.outcomes.push_back((req, Err(e)));
            return;
        }
        let n = replicas(self.read_ring(&key));
        let r = opts.r.unwrap_or(quorum(n));
        let pr = opts.pr.unwrap_or(0);
        if r == 0 || usize::from(r) > n || usize::from(pr) > n {
            self.outcomes.push_back((
                req,
                Err(CoordinatorError::BadOptions(format!(
                    "r={r}, pr={pr} must satisfy 1 <= r <= N and pr <= N (N={n})"
                ))),
            ));
            return;
        }
        let (mut targets, uncovered) = targets(&[(None, self.read_ring(&key))], &key, is_up);
        let mut spare = VecDeque::new();
        if self.read_fanout == ReadFanout::Needed {
            // This node's own copy first (no network), then primaries, in preference order.
            let me = self.me;
            targets.sort_by_key(|t| (t.node != me, !t.is_primary()));
            let first = usize::from(r.max(pr)).min(targets.len());
            spare.extend(targets.drain(first..));
        }
        let mut waiting = BTreeMap::new();
        for t in targets {
            let op = self.ops.mint(req);
            self.transmits.push_back(Transmit {
                op: Some(op),
                to: t.node,
                msg: ReplicaOp::Read { key: key.clone() },
            });
            waiting.insert(op, t);
        }
        let spare_at = (!spare.is_empty()).then(|| now + READ_SPARE_DELAY);
        let failed = uncovered
            .into_iter()
            .map(|p| (p, "unreachable".to_owned()))
            .collect();
        self.pending.insert(
            req,
            Pending {
                deadline: now + timeout(opts.timeout_ms),
                state: State::Get(GetState {
                    key,
                    waiting,
                    r,
                    pr,
                    notfound_ok: opts.notfound_ok.unwrap_or(true),
                    basic_quorum: opts.basic_quorum.unwrap_or(false),
                    n: n as u8,
                    counted: 0,
                    primary_counted: 0,
                    notfound: 0,
                    replies: Vec::new(),
                    failed,
                    replied: false,
                    spare,
                    spare_at,
                }),
            },
        );
        self.progress(req);
    }

    /// A replica answered `op` (or failed to: `Err(why)`).
    pub fn handle_result(&mut self, op: OpId, result: Result<ReplicaResult, ErrorReply>) {
        let Some(req) = self.ops.owner.remove(&op) else {
            // Late answer to a request already finished, or to fire-and-forget repair.
            return;
        };
        let Some(pending) = self.pending.get_mut(&req) else {
            return;
        };
        let mut local_failure = None;
        match &mut pending.state {
            State::Put(s) => {
                let Some(target) = s.waiting.remove(&op) else {
                    return;
                };
                if s.object.is_some() {
                    self.outstanding -= 1;
                }
                match result {
                    Ok(ReplicaResult::Object(obj)) if s.object.is_none() => {
                        // The local update is durable: count it, then replicate its result.
                        // A coordinator that is not among the chosen replicas (its forward
                        // failed, or views differ) holds a copy no read will ask for: it does
                        // not count toward W.
                        count_ack(&mut s.sets, &target);
                        for t in s.targets.iter().filter(|t| t.node != target.node) {
                            let op = self.ops.mint(req);
                            s.waiting.insert(op, *t);
                            self.outstanding += 1;
                            self.transmits.push_back(Transmit {
                                op: Some(op),
                                to: t.node,
                                msg: ReplicaOp::Replicate {
                                    key: s.key.clone(),
                                    object: obj.clone(),
                                    hint_for: t.hint_for,
                                },
                            });
                        }
                        // This node may itself be a fallback standing in for a primary.
                        if let Some(p) = target.hint_for {
                            self.hints.push_back(HintNeeded {
                                key: s.key.clone(),
                                target: p,
                            });
                        }
                        // Primaries no fallback stands in for missed the write: the
                        // coordinator keeps their hints itself.
                        for p in std::mem::take(&mut s.uncovered) {
                            s.failed
                                .push((p, "unreachable, and no fallback is up".into()));
                            self.hints.push_back(HintNeeded {
                                key: s.key.clone(),
                                target: p,
                            });
                        }
                        s.object = Some(obj);
                    }
                    Ok(_) => count_ack(&mut s.sets, &target),
                    Err(reason) if s.object.is_none() => {
                        // The coordinating replica itself refused: nothing was written.
                        local_failure = Some(reason);
                    }
                    Err(why) => {
                        self.hints.push_back(HintNeeded {
                            key: s.key.clone(),
                            target: target.hint_for.unwrap_or(target.node),
                        });
                        s.failed.push((target.node, why.to_string()));
                    }
                }
            }
            State::Get(s) => {
                let Some(target) = s.waiting.remove(&op) else {
                    return;
                };
                match result {
                    Ok(ReplicaResult::Object(obj)) => {
                        let found = !obj.is_empty();
                        if found || s.notfound_ok {
                            s.counted += 1;
                            s.primary_counted += u8::from(target.is_primary());
                        }
                        s.notfound += u8::from(!found);
                        s.replies.push((target.node, obj));
                    }
                    Ok(ReplicaResult::Ack) => s
                        .failed
                        .push((target.node, "answered a read with an ack".into())),
                    Err(why) => s.failed.push((target.node, why.to_string())),
                }
            }
        }
        if let Some(reason) = local_failure {
            self.finish(req, Some(Err(CoordinatorError::Local(reason))));
            return;
        }
        self.progress(req);
    }

    /// Decides whether `req` can be answered or finished.
    fn progress(&mut self, req: RequestId) {
        let Some(pending) = self.pending.get_mut(&req) else {
            return;
        };
        let mut outcome = None;
        let done;
        match &mut pending.state {
            State::Put(s) => {
                // A write that cannot reach W still waits for the replies in flight, so the
                // error reports every ack the write actually got.
                let settled = s.object.is_some() && s.waiting.is_empty();
                if !s.replied {
                    if s.sets.iter().all(SetCount::met) {
                        s.replied = true;
                        outcome = Some(Ok(Outcome::Written(
                            s.object.clone().expect("acked writes have an object"),
                        )));
                    } else if settled {
                        s.replied = true;
                        outcome = Some(Err(write_quorum_err(&s.sets, &s.failed)));
                    }
                }
                done = s.replied && s.waiting.is_empty();
            }
            State::Get(s) => {
                if !s.replied {
                    // Too few asked replicas left to reach R (or PR): ask spares, a primary
                    // first when primaries are short.
                    loop {
                        let outstanding = s.waiting.len() as u8;
                        let primaries_outstanding =
                            s.waiting.values().filter(|t| t.is_primary()).count() as u8;
                        let primaries_short = s.primary_counted + primaries_outstanding < s.pr;
                        if !(s.counted + outstanding < s.r || primaries_short) {
                            break;
                        }
                        let next = match s.spare.iter().position(|t| t.is_primary()) {
                            Some(i) if primaries_short => s.spare.remove(i),
                            _ => s.spare.pop_front(),
                        };
                        let Some(t) = next else { break };
                        ask_read(
                            &mut self.ops,
                            &mut self.transmits,
                            req,
                            &s.key,
                            t,
                            &mut s.waiting,
                        );
                    }
                }
                let outstanding = s.waiting.len() as u8;
                let primaries_outstanding =
                    s.waiting.values().filter(|t| t.is_primary()).count() as u8;
                if !s.replied {
                    // basic_quorum: a majority saying "not found" ends the read early.
                    let majority_notfound =
                        !s.notfound_ok && s.basic_quorum && s.notfound > s.n / 2;
                    if (s.counted >= s.r && s.primary_counted >= s.pr) || majority_notfound {
                        s.replied = true;
                        outcome = Some(Ok(Outcome::Read(merge(&s.replies))));
                    } else if s.counted + outstanding < s.r {
                        s.replied = true;
                        // With notfound_ok = false, "not found" replies are not failures:
                        // enough replicas agree the key is absent.
                        outcome = Some(if !s.notfound_ok && s.failed.is_empty() {
                            Ok(Outcome::Read(merge(&s.replies)))
                        } else {
                            Err(quorum_err("replies", s.r, s.counted, &s.failed))
                        });
                    } else if s.primary_counted + primaries_outstanding < s.pr {
                        s.replied = true;
                        outcome = Some(Err(quorum_err(
                            "primary replies",
                            s.pr,
                            s.primary_counted,
                            &s.failed,
                        )));
                    }
                }
                done = s.waiting.is_empty();
            }
        }
        if let Some(outcome) = outcome {
            self.outcomes.push_back((req, outcome));
        }
        if done {
            self.finish(req, None);
        }
    }

    /// Ends `req`: replies if it has not yet, sends read repair for gets, forgets it.
    fn finish(&mut self, req: RequestId, outcome: Option<Result<Outcome, CoordinatorError>>) {
        let Some(pending) = self.pending.remove(&req) else {
            return;
        };
        if let State::Put(s) = &pending.state {
            // Every way here empties `waiting` first; this keeps the count true regardless.
            if s.object.is_some() {
                self.outstanding -= s.waiting.len();
            }
        }
        self.ops.owner.retain(|_, r| *r != req);
        if let Some(outcome) = outcome {
            self.outcomes.push_back((req, outcome));
        }
        if let (State::Get(s), true) = (pending.state, self.read_repair) {
            // Read repair, after the reply: every replica that answered with less than the
            // merge gets the merge. Replicas that did not answer are left to anti-entropy.
            let merged = merge(&s.replies);
            if merged.is_empty() {
                return;
            }
            for (node, obj) in &s.replies {
                if *obj != merged {
                    self.transmits.push_back(Transmit {
                        op: None,
                        to: *node,
                        msg: ReplicaOp::Replicate {
                            key: s.key.clone(),
                            object: merged.clone(),
                            hint_for: None,
                        },
                    });
                }
            }
        }
    }

    /// Time has passed: requests past their deadline fail (or finish, if already answered);
    /// replicas that never answered a write get hints.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Reads whose asked replicas are slow: ask the spares too.
        for (req, p) in self.pending.iter_mut() {
            if let State::Get(s) = &mut p.state {
                if s.spare_at.is_some_and(|at| at <= now) {
                    s.spare_at = None;
                    while let Some(t) = s.spare.pop_front() {
                        ask_read(
                            &mut self.ops,
                            &mut self.transmits,
                            *req,
                            &s.key,
                            t,
                            &mut s.waiting,
                        );
                    }
                }
            }
        }
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            self.expire(req);
        }
    }

    /// Ends `req` as its deadline does: replicas still waited for count as failed (a write
    /// leaves hints for them), and an unanswered client gets the quorum error.
    fn expire(&mut self, req: RequestId) {
        let Some(pending) = self.pending.get_mut(&req) else {
            return;
        };
        let mut outcome = None;
        match &mut pending.state {
            State::Put(s) => {
                for t in s.waiting.values() {
                    s.failed.push((t.node, "timed out".into()));
                    if s.object.is_some() {
                        self.outstanding -= 1;
                        self.hints.push_back(HintNeeded {
                            key: s.key.clone(),
                            target: t.hint_for.unwrap_or(t.node),
                        });
                    }
                }
                s.waiting.clear();
                if !s.replied {
                    outcome = Some(if s.object.is_none() {
                        Err(CoordinatorError::Local(ErrorReply::Storage {
                            reason: "the local write did not finish in time".into(),
                        }))
                    } else {
                        Err(write_quorum_err(&s.sets, &s.failed))
                    });
                }
            }
            State::Get(s) => {
                for t in s.waiting.values() {
                    s.failed.push((t.node, "timed out".into()));
                }
                s.waiting.clear();
                if !s.replied {
                    outcome = Some(if s.counted < s.r {
                        Err(quorum_err("replies", s.r, s.counted, &s.failed))
                    } else {
                        Err(quorum_err(
                            "primary replies",
                            s.pr,
                            s.primary_counted,
                            &s.failed,
                        ))
                    });
                }
            }
        }
        self.finish(req, outcome);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished request.
    pub fn poll_outcome(&mut self) -> Option<(RequestId, Result<Outcome, CoordinatorError>)> {
        self.outcomes.pop_front()
    }

    /// The next hint to make durable.
    pub fn poll_hint(&mut self) -> Option<HintNeeded> {
        self.hints.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .flat_map(|p| {
                let spare_at = match &p.state {
                    State::Get(s) => s.spare_at,
                    State::Put(_) => None,
                };
                [Some(p.deadline), spare_at]
            })
            .flatten()
            .min()
    }
}

/// Asks replica `t` for its copy of `key`, as an op of `req`.
fn ask_read(
    ops: &mut Ops,
    transmits: &mut VecDeque<Transmit>,
    req: RequestId,
    key: &[u8],
    t: Target,
    waiting: &mut BTreeMap<OpId, Target>,
) {
    let op = ops.mint(req);
    transmits.push_back(Transmit {
        op: Some(op),
        to: t.node,
        msg: ReplicaOp::Read { key: key.to_vec() },
    });
    waiting.insert(op, t);
}

/// N for `ring`: replicas per key, capped by the number of members.
pub fn replicas(ring: &Ring) -> usize {
    ring.config().replicas.min(ring.members().len())
}

/// The replicas for `key` in the union of `rings`' replica sets (one ring per live version,
/// oldest first): in each set, each of its N primaries if up, otherwise the next up fallback of
/// that ring standing in for it (with a hint). A node already standing in for another primary
/// of this write is skipped as a fallback, so it holds one hint per write. Primaries with no
/// fallback left are returned separately. With one ring this is its preference list's first N
/// up nodes, in order.
fn targets(
    rings: &[(Option<u64>, &Ring)],
    key: &[u8],
    is_up: &dyn Fn(NodeId) -> bool,
) -> (Vec<Target>, Vec<NodeId>) {
    assert!(
        rings.len() <= LIVE_VERSIONS_MAX,
        "one ring per live version"
    );
    let mut targets: Vec<Target> = Vec::new();
    let mut uncovered: Vec<NodeId> = Vec::new();
    for (i, (_, ring)) in rings.iter().enumerate() {
        let bit = 1u8 << i;
        let pl = ring.preference_list(ring.partition_of(key));
        let mut fallbacks = pl.fallbacks.iter().copied().filter(|f| is_up(*f));
        for &p in pl.primaries.iter().take(replicas(ring)) {
            if is_up(p) {
                match targets.iter_mut().find(|t| t.node == p) {
                    Some(t) => {
                        t.in_sets |= bit;
                        t.primary_in |= bit;
                    }
                    None => targets.push(Target {
                        node: p,
                        in_sets: bit,
                        primary_in: bit,
                        hint_for: None,
                    }),
                }
                continue;
            }
            let free = |f: &NodeId, targets: &[Target]| {
                targets
                    .iter()
                    .find(|t| t.node == *f)
                    .is_none_or(|t| t.hint_for.is_none_or(|h| h == p))
            };
            match fallbacks.find(|f| free(f, &targets)) {
                Some(f) => match targets.iter_mut().find(|t| t.node == f) {
                    Some(t) => {
                        t.in_sets |= bit;
                        t.hint_for = Some(p);
                    }
                    None => targets.push(Target {
                        node: f,
                        in_sets: bit,
                        primary_in: 0,
                        hint_for: Some(p),
                    }),
                },
                None => {
                    if !uncovered.contains(&p) {
                        uncovered.push(p);
                    }
                }
            }
        }
    }
    (targets, uncovered)
}

/// Counts an acknowledgement from `target` in every set it belongs to.
fn count_ack(sets: &mut [SetCount], target: &Target) {
    for (i, set) in sets.iter_mut().enumerate() {
        let bit = 1u8 << i;
        if target.in_sets & bit != 0 {
            set.acks += 1;
            set.primary_acks += u8::from(target.primary_in & bit != 0);
        }
    }
}

/// The error of a write that missed its quorum: the single-ring error when there is one set,
/// else every set that fell short.
fn write_quorum_err(sets: &[SetCount], failed: &[(NodeId, String)]) -> CoordinatorError {
    if let [set] = sets {
        return if set.acks < set.w {
            quorum_err("acks", set.w, set.acks, failed)
        } else {
            quorum_err("primary acks", set.pw, set.primary_acks, failed)
        };
    }
    let short = sets
        .iter()
        .filter(|s| !s.met())
        .map(|s| {
            let (kind, needed, got) = if s.acks < s.w {
                ("acks", s.w, s.acks)
            } else {
                ("primary acks", s.pw, s.primary_acks)
            };
            SetShortfall {
                version: s.version.expect("several sets come from a layout"),
                replicas: s.replicas.clone(),
                kind,
                needed,
                got,
            }
        })
        .collect();
    CoordinatorError::SetsShort {
        short,
        failed: failed.to_vec(),
    }
}

fn same_nodes(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

/// Where a request for `key` should be coordinated: here if this node is among the replicas
/// chosen for it, else the first chosen replica.
pub fn route(ring: &Ring, me: NodeId, key: &[u8], is_up: &dyn Fn(NodeId) -> bool) -> Route {
    let (targets, _) = targets(&[(None, ring)], key, is_up);
    if targets.iter().any(|t| t.node == me) {
        Route::Local
    } else if let Some(t) = targets.first() {
        Route::Forward(t.node)
    } else {
        Route::Unavailable
    }
}

fn merge(replies: &[(NodeId, Object)]) -> Object {
    replies
        .iter()
        .fold(Object::new(), |acc, (_, obj)| acc.sync(obj))
}

fn quorum_err(
    kind: &'static str,
    needed: u8,
    got: u8,
    failed: &[(NodeId, String)],
) -> CoordinatorError {
    CoordinatorError::Quorum {
        kind,
        needed,
        got,
        failed: failed.to_vec(),
    }
}

/// How long a request with the client's `timeout_ms` may take at its coordinator (the default
/// when unset, capped at `REQUEST_TIMEOUT_MAX`): a forwarding node waits this long plus a margin.
pub fn request_timeout(timeout_ms: Option<u32>) -> Duration {
    timeout(timeout_ms)
}
