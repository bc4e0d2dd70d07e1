//! The coordinator's task: it owns the pure request driver (`cairn_core::driver`, which holds
//! the `Coordinator`), feeds it client requests, replica answers, finished hints and time, and
//! carries out what it asks for (engine writes and reads, peer requests over QUIC, hint writes,
//! replies). What those mean is decided in the core, which the simulator runs too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_core::driver::{LocalOp, Output, RequestDriver};
use cairn_core::reply::reply;
use cairn_proto::{ErrorReply, NodeId, PeerResponse, Response};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::coordinator::{OpId, ReadFanout, ReplicaResult};
use crate::engine::{Engine, Write};
use crate::limits::{COORDINATOR_QUEUE_MAX, HINT_QUEUE_MAX, REPLICA_RESULTS_QUEUE_MAX};
use crate::membership::ClusterView;
use crate::peers::Peers;
use crate::tasks::{sleep_until, Tasks};
use cairn_ring::Ring;

/// A client request for the coordinator: defined by the pure driver.
pub use cairn_core::driver::Job;

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

/// Starts the coordinator task (and its hint writer, which ends with it) among `tasks`.
pub(crate) fn spawn(ctx: Arc<DriverContext>, tasks: &Tasks) -> CoordinatorHandle {
    let (tx, rx) = mpsc::channel(COORDINATOR_QUEUE_MAX);
    let unsettled = Arc::new(Unsettled::default());
    let task_unsettled = unsettled.clone();
    tasks.spawn_scoped("coordinator", |scope| run(rx, ctx, task_unsettled, scope));
    CoordinatorHandle { tx, unsettled }
}

/// What a replica op's task reports back to the coordinator task.
enum Answer {
    /// This node's engine answered.
    Local(OpId, Result<ReplicaResult, ErrorReply>),
    /// The peer answered (an error answer is its refusal).
    Peer(OpId, Result<PeerResponse, ErrorReply>),
    /// No answer came from the peer.
    PeerFailed(OpId, crate::peers::PeerError),
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    ctx: Arc<DriverContext>,
    unsettled: Arc<Unsettled>,
    scope: Tasks,
) {
    let mut view = ctx.view.clone();
    // No coordinator until there is a ring (a joining node has none); requests meanwhile are
    // refused by the server, and any that slip through are answered `NoRing` below.
    // With a layout, writes need their quorum in every live version's replica set and reads
    // use each partition's read version; the ring alone only routes.
    let new_driver = |view: &ClusterView| {
        view.ring.clone().map(|ring| {
            let mut driver = RequestDriver::new(ctx.me, Ring::clone(&ring), ctx.read_repair);
            // A read asks only the replicas it needs (its own copy first), the rest only when
            // those fail or are slow: R requests per read instead of N.
            driver.set_read_fanout(ReadFanout::Needed);
            if let Some(layout) = &view.layout {
                driver.set_layout(layout);
            }
            driver
        })
    };
    let mut driver: Option<RequestDriver<oneshot::Sender<Response>>> =
        new_driver(&view.borrow_and_update());
    let (results_tx, mut results) = mpsc::channel(REPLICA_RESULTS_QUEUE_MAX);
    let (hints_tx, hints_rx) = mpsc::channel(HINT_QUEUE_MAX);
    let (done_tx, mut hints_done) = watch::channel(0u64);
    let hints_failed: Arc<Mutex<Vec<HintFailure>>> = Arc::default();
    // Everything the driver starts lives in this set, so stopping the driver (shutdown) stops
    // it too, and nothing keeps the endpoint or the engine alive afterwards.
    let mut tasks = tokio::task::JoinSet::new();
    // In the driver's scope: it ends when the driver does.
    scope.spawn(
        "hint writer",
        write_hints(
            ctx.clone(),
            hints_rx,
            HintsFinished {
                done: done_tx,
                failed: hints_failed.clone(),
            },
            unsettled.clone(),
        ),
    );
    let is_up = {
        let peers = ctx.peers.clone();
        move |id| peers.is_up(id)
    };
    loop {
        let deadline = driver.as_ref().and_then(RequestDriver::poll_timeout);
        tokio::select! {
            biased;
            Some(answer) = results.recv() => {
                if let Some(driver) = &mut driver {
                    match answer {
                        Answer::Local(op, result) => driver.handle_local(op, result),
                        Answer::Peer(op, answer) => driver.handle_peer_reply(op, answer),
                        Answer::PeerFailed(op, failure) => driver.handle_peer_failure(op, failure),
                    }
                }
            }
            changed = hints_done.changed() => {
                if changed.is_err() {
                    return;
                }
                let done = *hints_done.borrow_and_update();
                // Failures are recorded before the count that includes them is published.
                let failed = std::mem::take(&mut *hints_failed.lock().expect("hint failures"));
                if let Some(driver) = &mut driver {
                    for HintFailure { seq, key, reason } in failed {
                        driver.handle_hint_failed(seq, key, reason);
                    }
                    driver.handle_hints_done(done);
                }
            }
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                // Requests in flight keep the replicas they chose; new ones use the new ring.
                let v = view.borrow_and_update().clone();
                if let Some(ring) = v.ring.clone() {
                    match &mut driver {
                        Some(driver) => {
                            driver.set_ring(Ring::clone(&ring));
                            if let Some(layout) = &v.layout {
                                driver.set_layout(layout);
                            }
                        }
                        None => driver = new_driver(&v),
                    }
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let Some(driver) = &mut driver else {
                    let no_ring = crate::membership::no_ring(&ctx.peers.name(ctx.me));
                    let _ = cmd.reply.send(Response::Error(no_ring));
                    continue;
                };
                let Command { job, reply } = cmd;
                driver.handle_client(std::time::Instant::now(), job, reply, &is_up);
            }
            _ = sleep_until(deadline) => {
                if let Some(driver) = &mut driver {
                    driver.handle_tick(std::time::Instant::now());
                }
            }
        }
        let Some(driver) = &mut driver else { continue };
        // Reap finished tasks so the set stays as small as the work in flight.
        while tasks.try_join_next().is_some() {}
        while let Some(output) = driver.poll_output() {
            match output {
                Output::Local { op, key, work } => {
                    let engine = ctx.engine.clone();
                    let results = results_tx.clone();
                    tasks.spawn(async move {
                        let result = execute_local(key, work, &engine).await;
                        if let Some(op) = op {
                            // The coordinator task is gone only at shutdown.
                            let _ = results.send(Answer::Local(op, result)).await;
                        }
                    });
                }
                Output::SendPeer {
                    op,
                    to,
                    request,
                    timeout,
                } => {
                    let peers = ctx.peers.clone();
                    let results = results_tx.clone();
                    tasks.spawn(async move {
                        // Replicates and reads to one peer travel in batches.
                        let answer = peers.call_batched(to, request, timeout).await;
                        if let Some(op) = op {
                            let answer = match answer {
                                Ok(answer) => Answer::Peer(op, answer),
                                Err(failure) => Answer::PeerFailed(op, failure),
                            };
                            let _ = results.send(answer).await;
                        }
                    });
                }
                Output::Hint { seq, key, target } => {
                    // Bounded: when the hint writer falls behind, the coordinator waits for it.
                    if hints_tx.send((seq, key, target)).await.is_err() {
                        return;
                    }
                }
                Output::Reply { to, result, .. } => {
                    let _ = to.send(Response::from(reply(result, |n| ctx.peers.name(n))));
                }
            }
        }
        unsettled
            .hints_issued
            .store(driver.hints_issued(), Ordering::Release);
        unsettled.outstanding.store(
            driver.coordinator().replicas_outstanding() as u64,
            Ordering::Release,
        );
        // The fence a node's layout ack waits for: every write routed under an older layout
        // has been answered.
        if let Some(routed) = driver.coordinator().write_fence() {
            ctx.write_fence.send_if_modified(|f| {
                let newer = *f < routed;
                if newer {
                    *f = routed;
                }
                newer
            });
        }
    }
}

/// A hint that could not be kept.
struct HintFailure {
    /// Its number (`Output::Hint::seq`).
    seq: u64,
    /// The key.
    key: Vec<u8>,
    /// Why.
    reason: String,
}

/// Where the hint writer reports: failures first, then the count of finished hints. The list
/// holds at most the hints issued between two of the driver's reads of the count, which the
/// coordinator's own limits bound.
struct HintsFinished {
    /// Hints finished since the start, in issue order.
    done: watch::Sender<u64>,
    /// Failures not yet taken by the driver.
    failed: Arc<Mutex<Vec<HintFailure>>>,
}

/// Makes hints durable in the order they were issued, a batch at a time, and reports how many
/// are done and which failed (failed ones count as done: they are logged and reported to the
/// driver, and waiting on them forever would stall every later acknowledgement).
async fn write_hints(
    ctx: Arc<DriverContext>,
    mut rx: mpsc::Receiver<(u64, Vec<u8>, NodeId)>,
    report: HintsFinished,
    unsettled: Arc<Unsettled>,
) {
    let mut finished = 0u64;
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, HINT_QUEUE_MAX).await > 0 {
        let n = batch.len() as u64;
        // Submitted together so they share the engine's group commit.
        let mut set = tokio::task::JoinSet::new();
        for (seq, key, target) in batch.drain(..) {
            let engine = ctx.engine.clone();
            let name = ctx.peers.name(target);
            set.spawn(async move {
                match engine.apply(key.clone(), Write::AddHint { target }).await {
                    Ok(_) => None,
                    Err(e) => {
                        // Read repair (and later anti-entropy) still repair the key when a
                        // primary holds it; the driver fails a held acknowledgement that
                        // depended on this hint.
                        warn!("could not keep a hint for {name}: {e}");
                        Some(HintFailure {
                            seq,
                            key,
                            reason: format!("hint for {name}: {e}"),
                        })
                    }
                }
            });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(Some(failure)) = joined {
                report.failed.lock().expect("hint failures").push(failure);
            }
        }
        finished += n;
        unsettled.hints_done.store(finished, Ordering::Release);
        let _ = report.done.send(finished);
    }
}

/// Carries out work on this node's replica.
async fn execute_local(
    key: Vec<u8>,
    work: LocalOp,
    engine: &Arc<Engine>,
) -> Result<ReplicaResult, ErrorReply> {
    match work {
        LocalOp::Write(write @ Write::Update { .. }) => {
            engine.apply(key, write).await.map(ReplicaResult::Object)
        }
        LocalOp::Write(write) => engine.apply(key, write).await.map(|_| ReplicaResult::Ack),
        LocalOp::Read => engine.read(key).await.map(ReplicaResult::Object),
    }
    .map_err(ErrorReply::from)
}
