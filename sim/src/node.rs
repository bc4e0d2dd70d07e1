//! One simulated node: the real `Coordinator`, ring and handoff policy, driven the way
//! `node/src/driver.rs`, `server.rs`, `engine.rs`, `peers.rs` and `handoff.rs` drive them, over
//! an in-memory store.
//!
//! Durability: the node's writer (`cairn_core::writer`, the engine's own batch application)
//! over a `MemoryStore` that survives a crash. A write queued for the disk is applied and
//! becomes durable when its `Disk` event runs (one FIFO queue per node, like the engine's single
//! writer thread); its acknowledgement is sent only then, and a crash before it loses the write.
//! Everything else (the coordinator, the liveness view, requests in flight, the handoff loop,
//! the writer with its next dot counter) is lost on a crash; a restart reopens the writer, which
//! resumes dots at the persisted lease end, so no dot is minted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_core::coordinator::{
    route, ClientWrite, Coordinator, OpId, Outcome, ReplicaOp, ReplicaResult, RequestId, Route,
    REQUEST_TIMEOUT_MAX,
};
use cairn_core::handoff::{Action, Answer, Handoff, HintRef};
use cairn_core::handoff::{HANDOFF_INTERVAL, HANDOFF_REQUEST_TIMEOUT};
use cairn_core::liveness::{Liveness, Transition};
use cairn_core::liveness::{PING_TIMEOUT, PROBE_INTERVAL};
use cairn_core::store::{MemoryStore, Store};
use cairn_core::version::{decode_context, Dot, Object, Payload, VClock};
use cairn_core::writer::{read_object, Write, Writer, WriterConfig};
use cairn_proto::{ErrorReply, NodeId};
use cairn_ring::Ring;

use super::fmt::{dot, node, obj};
use super::history::{History, WriteId};
use super::msg::{key_str, Addr, Body, ClientRequest, ClientResponse, Envelope, PeerReq, PeerResp};
use super::world::{ClientIx, Event, NodeIx, World};
use super::Sabotage;

/// How long a forwarded request may take at the coordinating replica (`server.rs`).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(65);
/// Dots leased per lease extension. Much smaller than the node's `DOT_LEASE_BLOCK` so that
/// runs cross many lease boundaries; the rule (persist the lease end before using a counter
/// under it, restart at the lease end) is the writer's own.
pub const SIM_LEASE_BLOCK: u64 = 5;
/// Hints a simulated node keeps per target (the node's `HINTS_PER_PEER_MAX` is 100,000, which
/// no run reaches).
pub const SIM_HINTS_PER_PEER_MAX: u64 = 100_000;

/// What every node handler needs besides the node itself.
pub struct Ctx<'a> {
    /// Time, events, randomness, network.
    pub w: &'a mut World,
    /// The ring every node shares.
    pub ring: &'a Ring,
    /// Node id of each node index.
    pub ids: &'a [NodeId],
    /// The history being recorded.
    pub history: &'a mut History,
    /// Probability of crashing a coordinator right after it acknowledged a write (0 when faults
    /// are off).
    pub crash_after_ack: f64,
    /// A deliberate bug in the simulated replica, to show the checker catches it.
    pub sabotage: Sabotage,
    /// Replies wait until every hint issued before them is durable (see `Options`).
    pub hints_before_reply: bool,
    /// A write whose forward went out unanswered is not coordinated again (see `Options`).
    pub forward_once: bool,
    /// Writes are coordinated only at a chosen replica (see `Options`).
    pub strict_routing: bool,
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
        /// The key.
        key: Vec<u8>,
        /// The replica that missed it.
        target: NodeId,
    },
    /// Not a write: a reply held back until everything queued before it is durable.
    Reply {
        /// Who gets it.
        to: ReplyTo,
        /// The answer.
        resp: ClientResponse,
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
    /// A peer that forwarded the request.
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
    Forward {
        client: ClientIx,
        seq: u64,
        req: ClientRequest,
    },
    Handoff,
}

/// The state a crash loses.
pub struct Running {
    coord: Coordinator,
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
    requests: BTreeMap<RequestId, ReplyTo>,
    next_req: u64,
    minted: BTreeMap<RequestId, Dot>,
    put_tag: Option<(RequestId, WriteId)>,
    coord_timer: Option<Duration>,
    disk_free_at: Duration,
    disk_pending: usize,
    /// Hints queued for the disk and not yet durable.
    hints_pending: usize,
    /// The node's own hint delivery policy (`cairn_core::handoff`), carried out as
    /// `node/src/handoff.rs` does.
    handoff: Handoff,
    /// Arming of the handoff interval timer; older arms are stale.
    handoff_arm: u64,
}

/// A simulated node.
pub struct SimNode {
    /// Its index.
    pub ix: NodeIx,
    /// Its id.
    pub id: NodeId,
    /// The epoch its store gets when fresh (it never loses its disk, so the epoch never changes).
    pub epoch: u64,
    /// What survives a crash: objects, hints and the node's metadata (epoch, dot lease end).
    pub store: MemoryStore,
    /// Incarnation: bumped by every crash, so events of an earlier life are ignored.
    pub gen: u64,
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
            store: MemoryStore::new(),
            gen: 0,
            run: None,
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

    /// Starts the process (first start or restart after a crash).
    pub fn start(&mut self, cx: &mut Ctx) {
        assert!(self.run.is_none(), "node started twice");
        let now = cx.w.now;
        let instant = cx.w.instant();
        let peer_ids: Vec<NodeId> = cx.ids.iter().copied().filter(|&id| id != self.id).collect();
        let mut liveness = Liveness::new(self.id);
        for &id in &peer_ids {
            // No gossip here: every peer counts as alive to gossip and as a suspect, so the
            // probes find a dead one, as a suspect's pings do in the node.
            liveness.handle_gossip(instant, id, true, true);
        }
        while liveness.poll_transition().is_some() {}
        let writer = Writer::open(
            &self.store,
            self.id,
            self.epoch,
            WriterConfig::new(SIM_LEASE_BLOCK, SIM_HINTS_PER_PEER_MAX).with_sabotage(cx.sabotage),
        )
        .expect("the simulated store belongs to this node and does not fail");
        let meta = self.store.meta().ok().flatten();
        let objects = self.store.scan_objects(&mut |_, _| true).unwrap_or(0);
        let hints: u64 = self.hint_counts().values().sum();
        self.run = Some(Running {
            coord: Coordinator::new(self.id, cx.ring.clone()),
            writer,
            liveness,
            peer_ids,
            pinging: BTreeSet::new(),
            outgoing: BTreeMap::new(),
            next_rid: 0,
            requests: BTreeMap::new(),
            next_req: 0,
            minted: BTreeMap::new(),
            put_tag: None,
            coord_timer: None,
            disk_free_at: now,
            disk_pending: 0,
            hints_pending: 0,
            handoff: Handoff::new(),
            handoff_arm: 0,
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
                run.requests.len()
            )
        });
    }

    /// Whether nothing is in progress here (besides pings).
    pub fn idle(&self) -> bool {
        self.run.as_ref().is_some_and(|r| {
            r.coord.in_flight() == 0
                && r.disk_pending == 0
                && r.handoff.is_idle()
                && r.outgoing
                    .values()
                    .all(|(_, _, o)| matches!(o, Outgoing::Ping))
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
            Body::PeerReq { gen, rid, req } => {
                let Addr::Node(peer) = from else {
                    unreachable!("peer requests come from nodes")
                };
                self.on_peer_request(cx, peer, gen, rid, req);
            }
            Body::PeerResp { gen, rid, resp } => {
                if gen != self.gen {
                    return;
                }
                self.on_peer_response(cx, rid, resp);
            }
            Body::ClientResp { .. } => unreachable!("nodes get no client responses"),
        }
    }

    /// `server.rs::handle`: forward to a chosen replica, or coordinate here.
    fn on_client_request(&mut self, cx: &mut Ctx, client: ClientIx, seq: u64, req: ClientRequest) {
        let me = self.id;
        let run = self.run();
        let liveness = &run.liveness;
        let is_up = |id: NodeId| id == me || liveness.is_up(id);
        match route(cx.ring, me, req.key(), &is_up) {
            Route::Forward(to) => {
                cx.w.logf(self.me(), || {
                    format!("route {}: forward to {}", key_str(req.key()), node(to))
                });
                let to_ix = cx.ix(to);
                let out = Outgoing::Forward {
                    client,
                    seq,
                    req: req.clone(),
                };
                self.request(cx, to_ix, PeerReq::Forward(req), out, FORWARD_TIMEOUT);
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

    /// What `server.rs` does when it cannot hand a request to a chosen replica (its forward
    /// failed, or it was forwarded here): coordinate here regardless. With `strict_routing`,
    /// a write is coordinated only where `route` says `Local`, else refused.
    fn coordinate_if_chosen(&mut self, cx: &mut Ctx, req: ClientRequest, reply: ReplyTo) {
        if cx.strict_routing && matches!(req, ClientRequest::Put { .. }) {
            let me = self.id;
            let run = self.run();
            let liveness = &run.liveness;
            let is_up = |id: NodeId| id == me || liveness.is_up(id);
            let route = route(cx.ring, me, req.key(), &is_up);
            if route != Route::Local {
                cx.w.logf(self.me(), || {
                    format!("strict routing: not a chosen replica ({route:?}), write refused")
                });
                let resp = ClientResponse {
                    result: Err(format!("no chosen replica reachable ({route:?})")),
                    minted: None,
                };
                self.answer(cx, reply, resp);
                return;
            }
        }
        self.coordinate(cx, req, reply);
    }

    /// `server.rs::handle_peer`.
    fn on_peer_request(&mut self, cx: &mut Ctx, peer: NodeIx, gen: u64, rid: u64, req: PeerReq) {
        let reply = |cx: &mut Ctx, me: Addr, resp: Result<PeerResp, ErrorReply>| {
            cx.w.send(me, Addr::Node(peer), Body::PeerResp { gen, rid, resp });
        };
        match req {
            PeerReq::Ping => reply(cx, self.me(), Ok(PeerResp::Pong)),
            PeerReq::Forward(req) => {
                cx.w.logf(self.me(), || {
                    format!("recv forward from n{} r{rid}: coordinating", peer + 1)
                });
                // Never forwarded again.
                self.coordinate_if_chosen(
                    cx,
                    req,
                    ReplyTo::Peer {
                        node: peer,
                        gen,
                        rid,
                    },
                );
            }
            PeerReq::Replicate {
                key,
                object,
                hint_for,
            } => {
                let done = MergeDone::Peer {
                    node: peer,
                    gen,
                    rid,
                };
                self.queue_disk(
                    cx,
                    DiskJob::Merge {
                        key,
                        object,
                        hint_for,
                        done,
                    },
                );
            }
            PeerReq::Read { key } => {
                let obj = self.read_local(&key);
                // `server.rs` sends an object without siblings as empty bytes, which the
                // requester decodes as `Object::new()` (its history is not sent).
                let obj = if obj.is_empty() { Object::new() } else { obj };
                reply(cx, self.me(), Ok(PeerResp::Object(obj)));
            }
        }
    }

    fn read_local(&self, key: &[u8]) -> Object {
        self.object(key)
    }

    fn on_peer_response(&mut self, cx: &mut Ctx, rid: u64, resp: Result<PeerResp, ErrorReply>) {
        let Some((peer, started, out)) = self.run().outgoing.remove(&rid) else {
            // A duplicate, or the answer after the transport gave up.
            return;
        };
        // `Peers::request`: any answer is a successful exchange.
        self.mark(cx, peer, true, started, "");
        match out {
            Outgoing::Coord { op } => {
                let result = match resp {
                    Ok(PeerResp::Ack) => Ok(ReplicaResult::Ack),
                    Ok(PeerResp::Object(o)) => Ok(ReplicaResult::Object(o)),
                    Ok(other) => Err(ErrorReply::Malformed {
                        reason: format!("peer answered {other:?}"),
                    }),
                    Err(e) => Err(e),
                };
                self.run().coord.handle_result(op, result);
                self.pump(cx);
            }
            Outgoing::Repair => {}
            Outgoing::Ping => match resp {
                Ok(PeerResp::Pong) => {
                    let now = cx.w.instant();
                    let run = self.run();
                    run.pinging.remove(&peer);
                    run.liveness.handle_probe(now, peer, true);
                }
                other => {
                    let why = format!("odd answer to ping: {other:?}");
                    self.mark(cx, peer, false, started, &why);
                    self.ping_failed(cx, peer);
                }
            },
            Outgoing::Forward { client, seq, req } => match resp {
                Ok(PeerResp::Forwarded(r)) => {
                    cx.w.send(
                        self.me(),
                        Addr::Client(client),
                        Body::ClientResp { seq, resp: r },
                    );
                }
                other => {
                    cx.w.logf(self.me(), || {
                        format!("forward failed ({other:?}); coordinating here")
                    });
                    self.coordinate_if_chosen(cx, req, ReplyTo::Client { client, seq });
                }
            },
            Outgoing::Handoff => {
                // As `node/src/handoff.rs::send` reads the answer.
                let answer = match resp {
                    Ok(PeerResp::Ack) => Answer::Acked,
                    Ok(other) => Answer::Refused(format!("answered {other:?}")),
                    Err(e) => Answer::from_error(&e),
                };
                self.handoff_answer(cx, peer, answer);
            }
        }
    }

    /// The transport gave up on request `rid` (`Peers::request`: marks the peer down).
    pub fn on_request_failed(&mut self, cx: &mut Ctx, rid: u64, reason: &str) {
        let Some((peer, started, out)) = self.run().outgoing.remove(&rid) else {
            return;
        };
        let reason = reason.to_owned();
        self.mark(cx, peer, false, started, &reason);
        match out {
            Outgoing::Coord { op } => {
                let err = ErrorReply::Unreachable {
                    node: node(peer),
                    reason,
                };
                self.run().coord.handle_result(op, Err(err));
                self.pump(cx);
            }
            Outgoing::Repair => {}
            Outgoing::Ping => self.ping_failed(cx, peer),
            Outgoing::Forward { client, seq, req } => {
                // `server.rs`: a write whose forward went out unanswered may have been applied
                // there; applying it here too would make two siblings of one write (rule 5).
                // Only a forward that never reached a process is coordinated here.
                if cx.forward_once
                    && matches!(req, ClientRequest::Put { .. })
                    && reason != "no connection"
                {
                    cx.w.logf(self.me(), || {
                        format!("forward failed ({reason}) after it went out; write not retried")
                    });
                    let resp = ClientResponse {
                        result: Err(format!(
                            "forward to {} failed ({reason}); the write may have been applied there",
                            node(peer)
                        )),
                        minted: None,
                    };
                    self.answer(cx, ReplyTo::Client { client, seq }, resp);
                    return;
                }
                cx.w.logf(self.me(), || {
                    format!("forward failed ({reason}); coordinating here")
                });
                self.coordinate_if_chosen(cx, req, ReplyTo::Client { client, seq });
            }
            Outgoing::Handoff => self.handoff_answer(
                cx,
                peer,
                Answer::from_error(&ErrorReply::Unreachable {
                    node: node(peer),
                    reason,
                }),
            ),
        }
    }

    /// Sends a peer request with a transport timeout.
    fn request(
        &mut self,
        cx: &mut Ctx,
        to: NodeIx,
        req: PeerReq,
        out: Outgoing,
        timeout: Duration,
    ) {
        let peer = cx.ids[to];
        let gen = self.gen;
        let now = cx.w.now;
        let run = self.run();
        let rid = run.next_rid;
        run.next_rid += 1;
        run.outgoing.insert(rid, (peer, now, out));
        cx.w.send(
            Addr::Node(self.ix),
            Addr::Node(to),
            Body::PeerReq { gen, rid, req },
        );
        cx.w.after(
            timeout,
            Event::RequestFailed {
                node: self.ix,
                gen,
                rid,
                reason: "no answer in time",
            },
        );
    }

    // ---- coordination (driver.rs) ----

    fn coordinate(&mut self, cx: &mut Ctx, req: ClientRequest, reply: ReplyTo) {
        let me = self.id;
        let here = self.me();
        let now = cx.w.instant();
        let run = self.run();
        let rid = RequestId(run.next_req);
        run.next_req += 1;
        run.requests.insert(rid, reply);
        let liveness = &run.liveness;
        let is_up = |id: NodeId| id == me || liveness.is_up(id);
        if cx.w.tracing()
            && matches!(req, ClientRequest::Put { .. })
            && route(cx.ring, me, req.key(), &is_up) != Route::Local
        {
            cx.w.log(
                here,
                format!(
                    "coordinating a write OFF its chosen replicas (req {})",
                    rid.0
                ),
            );
        }
        match req {
            ClientRequest::Get { key, opts } => {
                run.coord.handle_get(now, rid, key, &opts, &is_up);
            }
            ClientRequest::Put {
                key,
                context,
                payload,
                opts,
                write,
            } => match decode_context(&context) {
                Ok(ctx) => {
                    run.put_tag = Some((rid, write));
                    let w = ClientWrite {
                        key,
                        ctx,
                        payload,
                        opts,
                    };
                    run.coord.handle_put(now, rid, w, &is_up);
                }
                Err(e) => {
                    run.requests.remove(&rid);
                    let resp = ClientResponse {
                        result: Err(format!("bad context: {e}")),
                        minted: None,
                    };
                    self.answer(cx, reply, resp);
                    return;
                }
            },
        }
        self.pump(cx);
    }

    /// Carries out everything the coordinator asked for, as the driver's loop does after each
    /// input: transmits, then hints, then outcomes; then re-arms its timer.
    fn pump(&mut self, cx: &mut Ctx) {
        let me = self.id;
        let gen = self.gen;
        let mut transmits = Vec::new();
        let mut hints = Vec::new();
        let mut outcomes = Vec::new();
        {
            let run = self.run();
            while let Some(t) = run.coord.poll_transmit() {
                transmits.push(t);
            }
            while let Some(h) = run.coord.poll_hint() {
                hints.push(h);
            }
            while let Some(o) = run.coord.poll_outcome() {
                outcomes.push(o);
            }
        }
        let mut local_failures = Vec::new();
        for t in transmits {
            if t.to == me {
                match t.msg {
                    ReplicaOp::Update { key, ctx, payload } => {
                        let op = t.op.expect("an update is always answered");
                        let tag = self.run().put_tag.take();
                        assert!(
                            tag.is_some(),
                            "an Update transmit that no handle_put just asked for"
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
                    ReplicaOp::Replicate {
                        key,
                        object,
                        hint_for,
                    } => {
                        self.queue_disk(
                            cx,
                            DiskJob::Merge {
                                key,
                                object,
                                hint_for,
                                done: MergeDone::Local(t.op),
                            },
                        );
                    }
                    ReplicaOp::Read { key } => {
                        let op = t.op.expect("a read is always answered");
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
                }
            } else {
                let to = cx.ix(t.to);
                let out = match t.op {
                    Some(op) => Outgoing::Coord { op },
                    None => Outgoing::Repair,
                };
                let req = match t.msg {
                    ReplicaOp::Update { .. } => {
                        // `driver::execute_remote` refuses to send it.
                        if let Some(op) = t.op {
                            local_failures.push((
                                op,
                                ErrorReply::Malformed {
                                    reason: "updates are applied by the coordinating replica only"
                                        .into(),
                                },
                            ));
                        }
                        continue;
                    }
                    ReplicaOp::Replicate {
                        key,
                        object,
                        hint_for,
                    } => PeerReq::Replicate {
                        key,
                        object,
                        hint_for,
                    },
                    ReplicaOp::Read { key } => PeerReq::Read { key },
                };
                self.request(cx, to, req, out, REQUEST_TIMEOUT_MAX);
            }
        }
        self.run().put_tag = None;
        for h in hints {
            cx.w.logf(self.me(), || {
                format!(
                    "coordinator: hint needed for {} {}",
                    node(h.target),
                    key_str(&h.key)
                )
            });
            self.run().hints_pending += 1;
            self.queue_disk(
                cx,
                DiskJob::AddHint {
                    key: h.key,
                    target: h.target,
                },
            );
        }
        // Every hint issued so far must be durable before a reply goes out.
        let hold_replies = cx.hints_before_reply && self.run().hints_pending > 0;
        for (req, outcome) in outcomes {
            let run = self.run();
            let minted = run.minted.remove(&req);
            let reply = run.requests.remove(&req);
            let resp = ClientResponse {
                result: outcome.map_err(|e| e.to_string()),
                minted,
            };
            cx.w.logf(self.me(), || {
                format!(
                    "outcome req {}: {}",
                    req.0,
                    super::msg::describe_resp(&resp)
                )
            });
            match reply {
                // The disk is FIFO: the reply goes out once the hints queued above are durable.
                Some(to) if hold_replies => self.queue_disk(cx, DiskJob::Reply { to, resp }),
                Some(reply) => self.answer(cx, reply, resp),
                None => {
                    cx.w.log(self.me(), format!("outcome for unknown request {}", req.0))
                }
            }
        }
        if !local_failures.is_empty() {
            for (op, err) in local_failures {
                self.run().coord.handle_result(op, Err(err));
            }
            // Those answers may have produced more work; that pump re-arms the timer.
            self.pump(cx);
            return;
        }
        if let Some(deadline) = self.run().coord.poll_timeout() {
            let at = cx.w.virtual_of(deadline);
            let run = self.run();
            if run.coord_timer.is_none_or(|t| at < t) {
                run.coord_timer = Some(at);
                cx.w.at(at, Event::CoordTimer { node: self.ix, gen });
            }
        }
    }

    fn answer(&mut self, cx: &mut Ctx, reply: ReplyTo, resp: ClientResponse) {
        if matches!(resp.result, Ok(Outcome::Written(_))) && cx.w.chance(cx.crash_after_ack) {
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
            ReplyTo::Peer { node, gen, rid } => {
                cx.w.send(
                    self.me(),
                    Addr::Node(node),
                    Body::PeerResp {
                        gen,
                        rid,
                        resp: Ok(PeerResp::Forwarded(resp)),
                    },
                );
            }
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
        let pending = run.coord.in_flight();
        run.coord.handle_timeout(instant);
        cx.w.logf(self.me(), || {
            format!("coordinator timer ({pending} requests in flight)")
        });
        self.pump(cx);
    }

    /// A local read finished.
    pub fn on_local_read(&mut self, cx: &mut Ctx, op: OpId, key: Vec<u8>) {
        let copy = self.read_local(&key);
        cx.w.logf(self.me(), || {
            format!("local read {} -> {}", key_str(&key), obj(&copy))
        });
        self.run()
            .coord
            .handle_result(op, Ok(ReplicaResult::Object(copy)));
        self.pump(cx);
    }

    // ---- the disk (engine.rs) ----

    fn queue_disk(&mut self, cx: &mut Ctx, job: DiskJob) {
        let now = cx.w.now;
        let latency = cx.w.micros(50, 2000);
        let gen = self.gen;
        let run = self.run();
        // One writer: jobs become durable in the order they were queued.
        let at = run.disk_free_at.max(now) + latency;
        run.disk_free_at = at;
        run.disk_pending += 1;
        cx.w.at(
            at,
            Event::Disk {
                node: self.ix,
                gen,
                job,
            },
        );
    }

    /// Applies one write through the node's writer (`cairn_core::writer`) over this node's
    /// store, as the engine's writer thread does for a batch; returns the copy before and the
    /// writer's result.
    fn write(&mut self, key: &[u8], write: Write) -> (Object, Result<Object, ErrorReply>) {
        let before = self.object(key);
        let store = &self.store;
        let run = self.run.as_mut().expect("running");
        let mut outcome = run
            .writer
            .apply_batch(store, &[(key.to_vec(), write)], &mut |b| store.commit(b));
        let result = outcome.results.pop().expect("one result per write");
        (before, result.map_err(ErrorReply::from))
    }

    /// A queued write reaches the disk: apply it durably, then answer.
    pub fn on_disk(&mut self, cx: &mut Ctx, job: DiskJob) {
        self.run().disk_pending -= 1;
        match job {
            DiskJob::Update {
                key,
                ctx,
                payload,
                op,
                tag,
            } => {
                let (current, result) = self.write(&key, Write::Update { ctx, payload });
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
                            .filter(|d| d.actor == actor && !old.contains(d))
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
                        cx.history.stored(self.ix, &key, &current, &next);
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
                self.run().coord.handle_result(op, result);
                self.pump(cx);
            }
            DiskJob::Merge {
                key,
                object,
                hint_for,
                done,
            } => {
                let (current, result) = self.write(&key, Write::Merge { object, hint_for });
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
                        cx.history.stored(self.ix, &key, &current, &merged);
                        Ok(())
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
                        let result = result.map(|()| ReplicaResult::Ack);
                        self.run().coord.handle_result(op, result);
                        self.pump(cx);
                    }
                    MergeDone::Local(None) => {}
                    MergeDone::Peer { node, gen, rid } => {
                        let resp = result.map(|()| PeerResp::Ack);
                        cx.w.send(
                            self.me(),
                            Addr::Node(node),
                            Body::PeerResp { gen, rid, resp },
                        );
                    }
                }
            }
            DiskJob::AddHint { key, target } => {
                self.run().hints_pending -= 1;
                let (_, result) = self.write(&key, Write::AddHint { target });
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
            }
            DiskJob::Reply { to, resp } => self.answer(cx, to, resp),
            DiskJob::HintDelivered { key, target, seq } => {
                let before = self.store.hint(target, &key).ok().flatten();
                let (_, result) = self.write(&key, Write::HintDelivered { target, seq });
                let deleted = before.is_some_and(|h| h.seq == seq) && result.is_ok();
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
            self.request(cx, to, PeerReq::Ping, Outgoing::Ping, PING_TIMEOUT);
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
                    let req = PeerReq::Replicate {
                        key: hint.key,
                        object,
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
                Action::RoundDone { .. } => {}
            }
        }
    }
}
