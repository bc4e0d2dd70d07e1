//! The coordinator's driver: one task owns the `Coordinator` state machine, feeds it client
//! requests, replica answers and time, and carries out what it asks for (local engine calls,
//! peer requests, hints).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::{
    Context, ErrorReply, NodeId, PeerRequest, PeerResponse, ReadOptions, ReplicaFailure, Request,
    Response, WriteOptions,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::coordinator::{
    ClientWrite, Coordinator, CoordinatorError, OpId, Outcome, ReplicaOp, ReplicaResult, RequestId,
    Transmit, REQUEST_TIMEOUT_MAX,
};
use crate::engine::{Engine, EngineError, Write};
use crate::limits::{COORDINATOR_QUEUE_MAX, HINT_QUEUE_MAX, REPLICA_RESULTS_QUEUE_MAX};
use crate::membership::ClusterView;
use crate::peers::Peers;
use crate::server::get_reply;
use crate::version::{decode_context, Object, Payload};
use cairn_ring::Ring;

/// A client request for the coordinator.
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
}

/// A job and where its answer goes.
struct Command {
    job: Job,
    reply: oneshot::Sender<Response>,
}

/// Handle to the coordinator task.
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: mpsc::Sender<Command>,
    unsettled: Arc<Unsettled>,
}

/// Replicas the coordinator task knows missed (or may have missed) a write stored here, but
/// which no durable hint covers yet.
#[derive(Debug, Default)]
struct Unsettled {
    /// `Coordinator::replicas_outstanding` after the task's last step; published after
    /// `hints_issued`, so a replica leaving this count for a hint is already counted there.
    outstanding: AtomicU64,
    /// Hints handed to the hint writer.
    hints_issued: AtomicU64,
    /// Hints the hint writer finished (in issue order).
    hints_done: AtomicU64,
}

impl CoordinatorHandle {
    /// Replicas sent a write stored here that have neither acknowledged it nor a durable hint
    /// for it yet: those still silent (`Coordinator::replicas_outstanding`) and those whose
    /// hint is still being written. `status` adds them to the hints pending: a replica that
    /// died silently gets its hint only at the write's deadline, and until then "no hints"
    /// would claim it has every write (issue 10's quick-restart defect).
    pub fn replicas_outstanding(&self) -> u64 {
        let u = &self.unsettled;
        // This order with the task's (issued, then outstanding) never misses one in between.
        let outstanding = u.outstanding.load(Ordering::Acquire);
        let issued = u.hints_issued.load(Ordering::Acquire);
        let done = u.hints_done.load(Ordering::Acquire);
        outstanding + issued.saturating_sub(done)
    }

    /// Runs `job`; a full queue is an `Overloaded` answer, not an unbounded wait.
    pub async fn submit(&self, job: Job) -> Response {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Command { job, reply }).is_err() {
            return Response::Error(ErrorReply::Overloaded {
                reason: format!(
                    "coordinator queue is full (COORDINATOR_QUEUE_MAX = {COORDINATOR_QUEUE_MAX})"
                ),
            });
        }
        rx.await
            .unwrap_or(Response::Error(ErrorReply::ShuttingDown))
    }
}

/// What the driver needs to carry out transmits.
pub struct DriverContext {
    /// This node.
    pub me: NodeId,
    /// The local store.
    pub engine: Arc<Engine>,
    /// The other nodes.
    pub peers: Arc<Peers>,
    /// The membership view; the coordinator routes by its ring.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Whether gets repair stale replicas (tests switch it off to isolate anti-entropy).
    pub read_repair: bool,
    /// The newest layout version the coordinator routes by with no unanswered write routed
    /// under an older one: a node acknowledges a layout version only once this reaches it.
    pub write_fence: watch::Sender<u64>,
}

/// Starts the coordinator task.
pub fn spawn(ctx: Arc<DriverContext>) -> (CoordinatorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COORDINATOR_QUEUE_MAX);
    let unsettled = Arc::new(Unsettled::default());
    let task = tokio::spawn(run(rx, ctx, unsettled.clone()));
    (CoordinatorHandle { tx, unsettled }, task)
}

async fn run(mut rx: mpsc::Receiver<Command>, ctx: Arc<DriverContext>, unsettled: Arc<Unsettled>) {
    let mut view = ctx.view.clone();
    // No coordinator until there is a ring (a joining node has none); requests meanwhile are
    // refused by the server, and any that slip through are answered `NoRing` below.
    let new_coordinator = |ring: Arc<Ring>| {
        let mut coord = Coordinator::new(ctx.me, Ring::clone(&ring));
        coord.set_read_repair(ctx.read_repair);
        coord
    };
    // With a layout, writes need their quorum in every live version's replica set and reads
    // use each partition's read version; the ring alone only routes.
    let route_by = |coord: &mut Coordinator, view: &ClusterView| {
        if let Some(layout) = &view.layout {
            coord.set_layout(layout);
        }
    };
    let mut coord = {
        let v = view.borrow_and_update();
        v.ring.clone().map(new_coordinator).map(|mut c| {
            route_by(&mut c, &v);
            c
        })
    };
    let (results_tx, mut results) = mpsc::channel(REPLICA_RESULTS_QUEUE_MAX);
    let (hints_tx, hints_rx) = mpsc::channel(HINT_QUEUE_MAX);
    let (done_tx, hints_done) = watch::channel(0u64);
    let mut hints_issued = 0u64;
    // Everything the driver starts lives in this set, so stopping the driver (shutdown) stops
    // it too, and nothing keeps the endpoint or the engine alive afterwards.
    let mut tasks = tokio::task::JoinSet::new();
    // Stops the hint writer when the driver ends (shutdown aborts the driver).
    let _hint_writer = AbortOnDrop(tokio::spawn(write_hints(
        ctx.clone(),
        hints_rx,
        done_tx,
        unsettled.clone(),
    )));
    let mut waiting: HashMap<RequestId, oneshot::Sender<Response>> = HashMap::new();
    let mut next_req = 0u64;
    let is_up = {
        let peers = ctx.peers.clone();
        move |id| peers.is_up(id)
    };
    loop {
        let deadline = coord.as_ref().and_then(Coordinator::poll_timeout);
        tokio::select! {
            biased;
            Some((op, result)) = results.recv() => {
                if let Some(coord) = &mut coord {
                    coord.handle_result(op, result);
                }
            }
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                // Requests in flight keep the replicas they chose; new ones use the new ring.
                let v = view.borrow_and_update().clone();
                if let Some(ring) = v.ring.clone() {
                    let coord = match &mut coord {
                        Some(coord) => {
                            coord.set_ring(Ring::clone(&ring));
                            coord
                        }
                        None => coord.insert(new_coordinator(ring)),
                    };
                    route_by(coord, &v);
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let Some(coord) = &mut coord else {
                    let no_ring = crate::membership::no_ring(&ctx.peers.name(ctx.me));
                    let _ = cmd.reply.send(Response::Error(no_ring));
                    continue;
                };
                let req = RequestId(next_req);
                next_req += 1;
                let now = std::time::Instant::now();
                let Command { job, reply } = cmd;
                match job {
                    Job::Get { key, opts } => {
                        waiting.insert(req, reply);
                        coord.handle_get(now, req, key, &opts, &is_up);
                    }
                    Job::Put { key, context, payload, opts } => match decode_context(&context) {
                        Ok(ctx) => {
                            waiting.insert(req, reply);
                            let write = ClientWrite { key, ctx, payload, opts };
                            coord.handle_put(now, req, write, &is_up);
                        }
                        Err(e) => {
                            let _ = reply.send(Response::Error(EngineError::from(e).into()));
                        }
                    },
                }
            }
            _ = sleep_until(deadline) => {
                if let Some(coord) = &mut coord {
                    coord.handle_timeout(std::time::Instant::now());
                }
            }
        }
        let Some(coord) = &mut coord else { continue };
        // Reap finished tasks so the set stays as small as the work in flight.
        while tasks.try_join_next().is_some() {}
        while let Some(t) = coord.poll_transmit() {
            tasks.spawn(execute(t, ctx.clone(), results_tx.clone()));
        }
        while let Some(h) = coord.poll_hint() {
            // Bounded: when the hint writer falls behind, the coordinator waits for it.
            if hints_tx.send(h).await.is_err() {
                return;
            }
            hints_issued += 1;
        }
        unsettled
            .hints_issued
            .store(hints_issued, Ordering::Release);
        unsettled
            .outstanding
            .store(coord.replicas_outstanding() as u64, Ordering::Release);
        let routed = coord.layout_version();
        if coord.unanswered_writes_before(routed) == 0 {
            ctx.write_fence.send_if_modified(|f| {
                let newer = *f < routed;
                if newer {
                    *f = routed;
                }
                newer
            });
        }
        while let Some((req, outcome)) = coord.poll_outcome() {
            let Some(reply) = waiting.remove(&req) else {
                continue;
            };
            let response = response(outcome, &ctx.peers);
            // A write is acknowledged only once every hint issued before its outcome is
            // durable: otherwise a crash right after the ack could lose the only record that
            // a replica missed it.
            if *hints_done.borrow() >= hints_issued {
                let _ = reply.send(response);
            } else {
                let mut done = hints_done.clone();
                let issued = hints_issued;
                tasks.spawn(async move {
                    let _ = done.wait_for(|d| *d >= issued).await;
                    let _ = reply.send(response);
                });
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes hints durable in the order they were issued, a batch at a time, and publishes how
/// many are done (failed ones count as done: they are logged, and waiting on them forever
/// would stall every later acknowledgement).
async fn write_hints(
    ctx: Arc<DriverContext>,
    mut rx: mpsc::Receiver<crate::coordinator::HintNeeded>,
    done: watch::Sender<u64>,
    unsettled: Arc<Unsettled>,
) {
    let mut finished = 0u64;
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, HINT_QUEUE_MAX).await > 0 {
        let n = batch.len() as u64;
        // Submitted together so they share the engine's group commit.
        let mut set = tokio::task::JoinSet::new();
        for h in batch.drain(..) {
            let engine = ctx.engine.clone();
            let name = ctx.peers.name(h.target);
            set.spawn(async move {
                if let Err(e) = engine
                    .apply(h.key, Write::AddHint { target: h.target })
                    .await
                {
                    // Read repair (and later anti-entropy) still repair the key; the hint
                    // only makes it prompt.
                    warn!("could not keep a hint for {name}: {e}");
                }
            });
        }
        while set.join_next().await.is_some() {}
        finished += n;
        unsettled.hints_done.store(finished, Ordering::Release);
        let _ = done.send(finished);
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn response(outcome: Result<Outcome, CoordinatorError>, peers: &Peers) -> Response {
    match outcome {
        Ok(Outcome::Read(obj)) => Response::Value(get_reply(&obj)),
        Ok(Outcome::Written(obj)) => Response::Written(get_reply(&obj)),
        Err(CoordinatorError::BadOptions(reason)) => {
            Response::Error(ErrorReply::BadOptions { reason })
        }
        Err(CoordinatorError::Local(e)) => Response::Error(e),
        Err(CoordinatorError::Overloaded(_)) => Response::Error(ErrorReply::Overloaded {
            reason: "too many requests in flight at this coordinator".into(),
        }),
        Err(CoordinatorError::Quorum {
            kind,
            needed,
            got,
            failed,
        }) => Response::Error(ErrorReply::QuorumNotReached {
            kind: kind.to_owned(),
            needed,
            got,
            failed: replica_failures(failed, peers),
        }),
        Err(CoordinatorError::SetsShort { short, failed }) => {
            // The reply has room for one count: the first set short; the kind names every one
            // (the wire type is unchanged, so old clients read it).
            let first = short.first().map_or((0, 0), |s| (s.needed, s.got));
            let sets: Vec<String> = short
                .iter()
                .map(|s| {
                    let names: Vec<String> = s.replicas.iter().map(|n| peers.name(*n)).collect();
                    format!(
                        "{} {} of {} in layout version {} [{}]",
                        s.got,
                        s.kind,
                        s.needed,
                        s.version,
                        names.join(",")
                    )
                })
                .collect();
            Response::Error(ErrorReply::QuorumNotReached {
                kind: format!(
                    "acks in every live layout version's replica set ({})",
                    sets.join("; ")
                ),
                needed: first.0,
                got: first.1,
                failed: replica_failures(failed, peers),
            })
        }
    }
}

fn replica_failures(failed: Vec<(NodeId, String)>, peers: &Peers) -> Vec<ReplicaFailure> {
    failed
        .into_iter()
        .map(|(node, reason)| ReplicaFailure {
            node: peers.name(node),
            reason,
        })
        .collect()
}

/// Carries out one transmit and reports the result to the coordinator.
async fn execute(
    t: Transmit,
    ctx: Arc<DriverContext>,
    results: mpsc::Sender<(OpId, Result<ReplicaResult, ErrorReply>)>,
) {
    let result = if t.to == ctx.me {
        execute_local(t.msg, &ctx.engine).await
    } else {
        execute_remote(t.to, t.msg, &ctx.peers).await
    };
    if let Some(op) = t.op {
        // The coordinator task is gone only at shutdown.
        let _ = results.send((op, result)).await;
    }
}

async fn execute_local(msg: ReplicaOp, engine: &Arc<Engine>) -> Result<ReplicaResult, ErrorReply> {
    match msg {
        ReplicaOp::Update { key, ctx, payload } => engine
            .apply(key, Write::Update { ctx, payload })
            .await
            .map(ReplicaResult::Object),
        ReplicaOp::Replicate {
            key,
            object,
            hint_for,
        } => engine
            .apply(key, Write::Merge { object, hint_for })
            .await
            .map(|_| ReplicaResult::Ack),
        ReplicaOp::Read { key } => engine.read(key).await.map(ReplicaResult::Object),
    }
    .map_err(ErrorReply::from)
}

/// Peer requests give up after this long; the coordinator's own deadline is usually shorter.
const PEER_REQUEST_TIMEOUT: Duration = REQUEST_TIMEOUT_MAX;

async fn execute_remote(
    to: NodeId,
    msg: ReplicaOp,
    peers: &Peers,
) -> Result<ReplicaResult, ErrorReply> {
    let req = match msg {
        ReplicaOp::Update { .. } => {
            return Err(ErrorReply::Malformed {
                reason: "updates are applied by the coordinating replica only".into(),
            })
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
    match peers.request(to, req, PEER_REQUEST_TIMEOUT).await? {
        PeerResponse::Ack => Ok(ReplicaResult::Ack),
        PeerResponse::Object(bytes) if bytes.is_empty() => Ok(ReplicaResult::Object(Object::new())),
        PeerResponse::Object(bytes) => {
            Object::decode(&bytes)
                .map(ReplicaResult::Object)
                .map_err(|e| ErrorReply::Malformed {
                    reason: format!("peer sent a bad object: {e}"),
                })
        }
        other => Err(ErrorReply::Malformed {
            reason: format!("peer answered {other:?}"),
        }),
    }
}
