//! The request driver, sans I/O: the glue between client requests, the [`Coordinator`], this
//! node's writer and its peers. It names requests, decodes contexts, turns the coordinator's
//! transmits into local writes and reads or peer requests (and peers' answers back into replica
//! results), issues hints, and holds every reply until the hints issued before it are durable.
//!
//! The node's coordinator task (`node/src/driver.rs`) drives it with tokio, the engine and
//! QUIC; the simulator drives it with virtual time, its network and a `MemoryStore`. Inputs are
//! `handle_*` (time passed in), outputs come from [`RequestDriver::poll_output`], and
//! [`RequestDriver::poll_timeout`] says when to call [`RequestDriver::handle_tick`].
//!
//! Reply rule (issue 10's bug 1): a write is acknowledged only once every hint issued before
//! its outcome is durable, so a crash right after the acknowledgement cannot lose the only
//! record that a replica missed it. Hints finish in the order they were issued
//! ([`RequestDriver::handle_hints_done`] counts them).
//!
//! And (found by the simulator, seed 106 of `sweep_as_the_node_drives_it`): when this node is
//! not a primary of the key, a hint for it that could not be kept (a full hint store) turns the
//! held acknowledgement into an error. The write is stored only here, on a fallback, and without
//! the hint nothing would ever hand it to a primary: acknowledging it would be losing it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use cairn_proto::{
    Context, ErrorReply, NodeId, PeerRequest, PeerResponse, ReadOptions, Request, WriteOptions,
};
use cairn_ring::Ring;

use crate::coordinator::{
    request_timeout, ClientWrite, Coordinator, CoordinatorError, OpId, Outcome, ReplicaOp,
    ReplicaResult, RequestId, REQUEST_TIMEOUT_MAX,
};
use crate::peer::PeerError;
use crate::version::{decode_context, Object, Payload};
use crate::writer::{Write, WriteError};

/// Peer requests give up after this long; the coordinator's own deadline is usually shorter.
pub const PEER_REQUEST_TIMEOUT: Duration = REQUEST_TIMEOUT_MAX;
/// How much longer than the request's own timeout a forwarding node waits for the coordinator
/// it forwarded to: room for the reply's way back and the coordinator's queue.
pub const FORWARD_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// A client request for the coordinator.
#[derive(Debug, Clone)]
pub enum Job {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Quorum choices.
        opts: ReadOptions,
    },
    /// Write a value or tombstone.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The client's context.
        context: Context,
        /// Value or tombstone.
        payload: Payload,
        /// Quorum choices.
        opts: WriteOptions,
    },
}

impl Job {
    /// The coordinator job for a client get, put or delete; `None` for other requests.
    pub fn from_request(req: Request) -> Option<Job> {
        match req {
            Request::Get { key, opts } => Some(Job::Get { key, opts }),
            Request::Put {
                key,
                value,
                context,
                opts,
            } => Some(Job::Put {
                key,
                context,
                payload: Payload::Value(value),
                opts,
            }),
            Request::Delete { key, context, opts } => Some(Job::Put {
                key,
                context,
                payload: Payload::Tombstone,
                opts,
            }),
            _ => None,
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        match self {
            Job::Get { key, .. } | Job::Put { key, .. } => key,
        }
    }
}

/// How long a node that forwarded a request with this `timeout_ms` waits for the coordinator's
/// answer: the request's own timeout plus [`FORWARD_TIMEOUT_MARGIN`] (a fixed wait outlasted
/// every client, or cut a long request short).
pub fn forward_timeout(timeout_ms: Option<u32>) -> Duration {
    request_timeout(timeout_ms) + FORWARD_TIMEOUT_MARGIN
}

/// Work on this node's own replica.
#[derive(Debug, Clone)]
pub enum LocalOp {
    /// Apply through the writer; answer with the object after it (`Write::Update`) or an ack.
    Write(Write),
    /// Read the stored copy.
    Read,
}

/// What the driver asks its runner to do.
#[derive(Debug)]
pub enum Output<T> {
    /// Work on this node's replica of `key`; answer with [`RequestDriver::handle_local`] when
    /// `op` is set.
    Local {
        /// The coordinator's op (`None`: read repair, nobody waits).
        op: Option<OpId>,
        /// The key.
        key: Vec<u8>,
        /// What to do.
        work: LocalOp,
    },
    /// Send `request` to `to`, giving up after `timeout`; answer with
    /// [`RequestDriver::handle_peer_reply`] or [`RequestDriver::handle_peer_failure`] when `op`
    /// is set.
    SendPeer {
        /// The coordinator's op (`None`: read repair, nobody waits).
        op: Option<OpId>,
        /// The replica.
        to: NodeId,
        /// The request.
        request: PeerRequest,
        /// The transport timeout.
        timeout: Duration,
    },
    /// Make a hint durable (`Write::AddHint` for `target` on `key`); report every finished hint,
    /// in issue order, with [`RequestDriver::handle_hints_done`] (a failed one counts as done).
    Hint {
        /// The hint's number: 1 for the first hint this driver issued, then counting up.
        seq: u64,
        /// The key.
        key: Vec<u8>,
        /// The replica that missed it.
        target: NodeId,
    },
    /// Answer the client.
    Reply {
        /// The request.
        req: RequestId,
        /// Who asked.
        to: T,
        /// The answer.
        result: Result<Outcome, CoordinatorError>,
    },
}

/// A deliberate bug in the driver, compiled only with the `sabotage` feature.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverSabotage {
    /// None: the driver behaves as in production.
    #[default]
    None,
    /// A fallback acknowledges a write although the hint that would hand it to a primary could
    /// not be kept (the bug of seed 106).
    AckDespiteFailedHint,
}

/// The request driver: the coordinator and the replies waiting for it. `T` is the runner's
/// handle for where a reply goes.
pub struct RequestDriver<T> {
    me: NodeId,
    coord: Coordinator,
    waiting: BTreeMap<RequestId, T>,
    next_req: u64,
    hints_issued: u64,
    hints_done: u64,
    /// Replies waiting for hints: (hints issued before it, the key, the reply).
    held: VecDeque<(u64, Vec<u8>, Output<T>)>,
    /// Keys whose hint failed (key → the failed hint's number and why), kept until no held
    /// reply can be about them; bounded by the held replies.
    hints_failed: BTreeMap<Vec<u8>, (u64, String)>,
    /// The key of each request waiting for its outcome (to match failed hints).
    keys: BTreeMap<RequestId, Vec<u8>>,
    out: VecDeque<Output<T>>,
    #[cfg(feature = "sabotage")]
    sabotage: DriverSabotage,
}

impl<T> RequestDriver<T> {
    /// A driver for node `me` over `ring`; `read_repair` lets gets repair stale replicas.
    pub fn new(me: NodeId, ring: Ring, read_repair: bool) -> RequestDriver<T> {
        let mut coord = Coordinator::new(me, ring);
        coord.set_read_repair(read_repair);
        RequestDriver {
            me,
            coord,
            waiting: BTreeMap::new(),
            next_req: 0,
            hints_issued: 0,
            hints_done: 0,
            held: VecDeque::new(),
            hints_failed: BTreeMap::new(),
            keys: BTreeMap::new(),
            out: VecDeque::new(),
            #[cfg(feature = "sabotage")]
            sabotage: DriverSabotage::None,
        }
    }

    /// Puts `sabotage` into this driver.
    #[cfg(feature = "sabotage")]
    pub fn set_sabotage(&mut self, sabotage: DriverSabotage) {
        self.sabotage = sabotage;
    }

    /// Which of a read's chosen replicas gets ask first (see
    /// [`crate::coordinator::ReadFanout`]).
    pub fn set_read_fanout(&mut self, fanout: crate::coordinator::ReadFanout) {
        self.coord.set_read_fanout(fanout);
    }

    /// The ring for new requests (requests in flight keep the replicas they chose).
    pub fn set_ring(&mut self, ring: Ring) {
        self.coord.set_ring(ring);
    }

    /// The layout for new requests: writes need their quorum in every live version's replica
    /// set, reads use each partition's read version (requests in flight keep what they chose).
    pub fn set_layout(&mut self, layout: &cairn_layout::Layout) {
        self.coord.set_layout(layout);
    }

    /// The coordinator, for what it reports (`in_flight`, `route`...).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coord
    }

    /// Hints issued so far (handed out as [`Output::Hint`]).
    pub fn hints_issued(&self) -> u64 {
        self.hints_issued
    }

    /// Replicas sent a write stored here that have neither acknowledged it nor a durable hint
    /// for it yet: those still silent and those whose hint is not yet durable.
    pub fn replicas_unsettled(&self) -> u64 {
        self.coord.replicas_outstanding() as u64 + (self.hints_issued - self.hints_done)
    }

    /// Whether nothing is in progress: no request, no reply held, no output waiting.
    pub fn is_idle(&self) -> bool {
        self.coord.in_flight() == 0 && self.held.is_empty() && self.out.is_empty()
    }

    /// A client request; `reply` is where its answer goes. Returns the request's name.
    pub fn handle_client(
        &mut self,
        now: Instant,
        job: Job,
        reply: T,
        is_up: &dyn Fn(NodeId) -> bool,
    ) -> RequestId {
        let req = RequestId(self.next_req);
        self.next_req += 1;
        self.keys.insert(req, job.key().to_vec());
        match job {
            Job::Get { key, opts } => {
                self.waiting.insert(req, reply);
                self.coord.handle_get(now, req, key, &opts, is_up);
            }
            Job::Put {
                key,
                context,
                payload,
                opts,
            } => match decode_context(&context) {
                Ok(ctx) => {
                    self.waiting.insert(req, reply);
                    let write = ClientWrite {
                        key,
                        ctx,
                        payload,
                        opts,
                    };
                    self.coord.handle_put(now, req, write, is_up);
                }
                Err(e) => {
                    // Nothing was coordinated, so no hint can be owed for it.
                    self.keys.remove(&req);
                    let refused = ErrorReply::from(WriteError::from(e));
                    self.out.push_back(Output::Reply {
                        req,
                        to: reply,
                        result: Err(CoordinatorError::Local(refused)),
                    });
                }
            },
        }
        self.pump();
        req
    }

    /// This node's replica answered op `op` (a write's object or ack, or a read's copy).
    pub fn handle_local(&mut self, op: OpId, result: Result<ReplicaResult, ErrorReply>) {
        self.coord.handle_result(op, result);
        self.pump();
    }

    /// A peer answered op `op`: its response, or the error it replied with (a refusal).
    pub fn handle_peer_reply(&mut self, op: OpId, answer: Result<PeerResponse, ErrorReply>) {
        let result = answer.and_then(replica_result);
        self.coord.handle_result(op, result);
        self.pump();
    }

    /// No answer came from the peer for op `op` (the transport's error; a client sees it as
    /// `ErrorReply::Unreachable` naming the node and why).
    pub fn handle_peer_failure(&mut self, op: OpId, failure: PeerError) {
        self.coord.handle_result(op, Err(failure.into()));
        self.pump();
    }

    /// Hint `seq` (of [`Output::Hint`]) could not be made durable; report it before the
    /// [`RequestDriver::handle_hints_done`] that counts it.
    pub fn handle_hint_failed(&mut self, seq: u64, key: Vec<u8>, reason: String) {
        // Only a reply still held, or one whose outcome is still to come (the hint may fail
        // before the last acknowledgement arrives: seed 8025), can change; with neither,
        // nothing waits for this hint.
        if self.refers_to(&key) {
            // The first failure per key: a reply is affected by any failed hint issued
            // before it.
            self.hints_failed.entry(key).or_insert((seq, reason));
        }
    }

    /// Whether a held reply or a request still in flight is about `key`.
    fn refers_to(&self, key: &[u8]) -> bool {
        self.held.iter().any(|(_, k, _)| k == key) || self.keys.values().any(|k| k == key)
    }

    /// Turns the acknowledgement `reply` (issued after `issued` hints) into an error when a
    /// hint for its key issued before it failed and this node is no primary of the key.
    fn fail_if_hint_lost(&self, issued: u64, key: &[u8], reply: &mut Output<T>) {
        if let Output::Reply { result, .. } = reply {
            if let (Ok(Outcome::Written(_)), Some((seq, reason))) =
                (&*result, self.hints_failed.get(key))
            {
                if *seq <= issued && !self.is_primary(key) && self.failed_hints_fail_acks() {
                    *result = Err(CoordinatorError::Local(ErrorReply::Overloaded {
                        reason: format!(
                            "the write is stored only on this fallback node and a hint to \
                             hand it to its primary could not be kept ({reason}); it may \
                             never reach its replicas"
                        ),
                    }));
                }
            }
        }
    }

    /// `done` hints (counted from the start, in issue order) are durable or given up on.
    pub fn handle_hints_done(&mut self, done: u64) {
        self.hints_done = self.hints_done.max(done.min(self.hints_issued));
        while self
            .held
            .front()
            .is_some_and(|(issued, _, _)| *issued <= self.hints_done)
        {
            let (issued, key, mut reply) = self.held.pop_front().expect("front exists");
            self.fail_if_hint_lost(issued, &key, &mut reply);
            self.out.push_back(reply);
        }
        self.forget_hint_failures();
    }

    /// Drops the failures no held reply and no request in flight can be about, so the map
    /// stays bounded by them.
    fn forget_hint_failures(&mut self) {
        if self.hints_failed.is_empty() {
            return;
        }
        let failed = std::mem::take(&mut self.hints_failed);
        self.hints_failed = failed
            .into_iter()
            .filter(|(key, _)| self.refers_to(key))
            .collect();
    }

    fn is_primary(&self, key: &[u8]) -> bool {
        let ring = self.coord.ring();
        ring.preference_list(ring.partition_of(key))
            .primaries
            .contains(&self.me)
    }

    /// Time passed: requests past their deadline end.
    pub fn handle_tick(&mut self, now: Instant) {
        self.coord.handle_timeout(now);
        self.pump();
    }

    /// When to call [`RequestDriver::handle_tick`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.coord.poll_timeout()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.out.pop_front()
    }

    fn failed_hints_fail_acks(&self) -> bool {
        #[cfg(feature = "sabotage")]
        if self.sabotage == DriverSabotage::AckDespiteFailedHint {
            return false;
        }
        true
    }

    /// Carries out what the coordinator asked for: transmits, then hints, then outcomes.
    fn pump(&mut self) {
        loop {
            let mut refused = Vec::new();
            while let Some(t) = self.coord.poll_transmit() {
                if t.to == self.me {
                    let (key, work) = match t.msg {
                        ReplicaOp::Update { key, ctx, payload } => {
                            (key, LocalOp::Write(Write::Update { ctx, payload }))
                        }
                        ReplicaOp::Replicate {
                            key,
                            object,
                            hint_for,
                        } => (key, LocalOp::Write(Write::Merge { object, hint_for })),
                        ReplicaOp::Read { key } => (key, LocalOp::Read),
                    };
                    self.out.push_back(Output::Local {
                        op: t.op,
                        key,
                        work,
                    });
                    continue;
                }
                let request = match t.msg {
                    ReplicaOp::Update { .. } => {
                        if let Some(op) = t.op {
                            refused.push(op);
                        }
                        continue;
                    }
                    ReplicaOp::Replicate {
                        key,
                        object,
                        hint_for,
                    } => PeerRequest::Replicate {
                        key,
                        object: object.encode(),
                        hint_for,
                    },
                    ReplicaOp::Read { key } => PeerRequest::Read { key },
                };
                self.out.push_back(Output::SendPeer {
                    op: t.op,
                    to: t.to,
                    request,
                    timeout: PEER_REQUEST_TIMEOUT,
                });
            }
            while let Some(h) = self.coord.poll_hint() {
                self.hints_issued += 1;
                self.out.push_back(Output::Hint {
                    seq: self.hints_issued,
                    key: h.key,
                    target: h.target,
                });
            }
            while let Some((req, result)) = self.coord.poll_outcome() {
                let key = self.keys.remove(&req).unwrap_or_default();
                let Some(to) = self.waiting.remove(&req) else {
                    continue;
                };
                let mut reply = Output::Reply { req, to, result };
                if self.hints_done >= self.hints_issued {
                    // Every hint issued before it is done: one that failed decides now.
                    self.fail_if_hint_lost(self.hints_issued, &key, &mut reply);
                    self.out.push_back(reply);
                    self.forget_hint_failures();
                } else {
                    self.held.push_back((self.hints_issued, key, reply));
                }
            }
            if refused.is_empty() {
                return;
            }
            // A coordinator never sends an update elsewhere; if it did, that op fails here
            // and its answer may produce more work.
            for op in refused {
                self.coord.handle_result(
                    op,
                    Err(ErrorReply::Malformed {
                        reason: "updates are applied by the coordinating replica only".into(),
                    }),
                );
            }
        }
    }
}

/// A peer's answer to a replica request, as the coordinator's result.
fn replica_result(response: PeerResponse) -> Result<ReplicaResult, ErrorReply> {
    match response {
        PeerResponse::Ack => Ok(ReplicaResult::Ack),
        PeerResponse::Object(bytes) => Object::decode_copy(&bytes)
            .map(ReplicaResult::Object)
            .map_err(|e| ErrorReply::Malformed {
                reason: format!("peer sent a bad object: {e}"),
            }),
        other => Err(ErrorReply::Malformed {
            reason: format!("peer answered {other:?}"),
        }),
    }
}
