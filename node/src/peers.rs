//! Connections to the other nodes, and the liveness view built from them: the up/down policy
//! is the pure `cairn_core::liveness` machine; this module feeds it gossip's judgements,
//! exchange outcomes and probe results, runs the probe pings, and reports its transitions (an
//! up-transition wakes hint delivery).
//!
//! This is the membership interface the coordinator, hinted handoff and status use (`is_up`,
//! `name`); the member table itself is kept by `membership` from gossip.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use cairn_core::liveness::{Liveness, Transition};
use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse, Request, Response};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info};

use crate::limits::{
    PEER_BATCHES_IN_FLIGHT_MAX, PEER_BATCH_BYTES_MAX, PEER_BATCH_ITEMS_MAX, PEER_BATCH_QUEUE_MAX,
};
use crate::tasks::Tasks;

/// Defined by the pure liveness policy, which the simulator drives too.
pub use cairn_core::liveness::{
    PEER_CONNECT_TIMEOUT, PING_TIMEOUT, PROBE_BACKOFF_MAX, PROBE_INTERVAL, SUSPECT_PROBE_INTERVAL,
};

/// Why a peer request got no answer: defined by the pure core, whose driver (and the
/// simulator) act on it.
pub use cairn_core::peer::PeerError;

struct Peer {
    name: String,
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    /// Counts this peer's up-to-down transitions: requests in flight to it watch it, so a peer
    /// judged down (by any failed exchange, or by gossip) fails them at once instead of at
    /// their own timeout.
    went_down: watch::Sender<u64>,
    /// The queue of this peer's batcher (`Peers::call_batched`), started by the first request
    /// batched for it; the batcher ends when this peer entry is dropped.
    batcher: OnceLock<mpsc::Sender<Queued>>,
}

/// What a peer request's caller gets: the peer's answer, or why there was none.
type CallResult = Result<Result<PeerResponse, ErrorReply>, PeerError>;

/// A request waiting for its peer's next batch.
struct Queued {
    req: PeerRequest,
    timeout: Duration,
    reply: oneshot::Sender<CallResult>,
}

impl Queued {
    /// Roughly the bytes this request adds to a batch frame.
    fn bytes(&self) -> usize {
        match &self.req {
            PeerRequest::Replicate { key, object, .. } => key.len() + object.len() + 16,
            PeerRequest::Read { key } => key.len() + 8,
            _ => 64,
        }
    }
}

impl Peer {
    fn went_down(&self) {
        self.went_down.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The other members of the cluster, as this node reaches them.
pub struct Peers {
    me: NodeId,
    my_name: String,
    endpoint: quinn::Endpoint,
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    liveness: Mutex<Liveness>,
    up_events: mpsc::Sender<NodeId>,
    batches: BatchStats,
    /// The node's tasks: the batchers and their batches run there, so shutdown stops them.
    tasks: Tasks,
}

/// What the batchers sent: batches of two or more requests, and the requests in them.
#[derive(Debug, Default)]
struct BatchStats {
    batches: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
}

impl Peers {
    /// No peers yet, reached through `endpoint`; `membership` adds them as gossip finds them.
    /// Up-transitions are reported on `up_events` (hint delivery listens); batchers run among
    /// `tasks`.
    pub(crate) fn new(
        me: NodeId,
        my_name: String,
        endpoint: quinn::Endpoint,
        up_events: mpsc::Sender<NodeId>,
        tasks: Tasks,
    ) -> Peers {
        Peers {
            me,
            my_name,
            endpoint,
            peers: RwLock::new(BTreeMap::new()),
            liveness: Mutex::new(Liveness::new(me)),
            up_events,
            batches: BatchStats::default(),
            tasks,
        }
    }

    /// Batches of two or more replica requests sent so far, and the requests they carried
    /// (for tests and benchmarks: requests per batch is how much batching saved).
    pub fn batches_sent(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.batches.batches.load(Relaxed),
            self.batches.requests.load(Relaxed),
        )
    }

    fn get(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().expect("peers lock").get(&id).cloned()
    }

    /// Runs `step` on the liveness machine, then reports the transitions it made.
    fn liveness<T>(&self, step: impl FnOnce(&mut Liveness) -> T) -> T {
        let (out, transitions) = {
            let mut l = self.liveness.lock().expect("liveness lock");
            let out = step(&mut l);
            (
                out,
                std::iter::from_fn(|| l.poll_transition()).collect::<Vec<_>>(),
            )
        };
        for t in transitions {
            match t {
                Transition::Up(id) => {
                    info!(peer = %self.name(id), "peer is up");
                    // Full channel: the handoff loop's periodic scan picks the peer up anyway.
                    let _ = self.up_events.try_send(id);
                }
                Transition::Down { node, reason } => {
                    info!(peer = %self.name(node), "peer is down: {reason}");
                    if let Some(peer) = self.get(node) {
                        peer.went_down();
                    }
                }
            }
        }
        out
    }

    /// Adds peer `id` or updates its name and address (a restarted node may move); `alive` is
    /// gossip's judgement, `suspect` says its heartbeat is late (the probe loop pings it) and
    /// `degraded` that it declares its storage failing (it is routed around). A changed address
    /// drops the cached connection. Called for every member on every gossip message, so an
    /// unchanged peer costs a read lock and the liveness lock only.
    pub fn upsert(
        &self,
        id: NodeId,
        name: &str,
        addr: SocketAddr,
        alive: bool,
        suspect: bool,
        degraded: bool,
    ) {
        if id == self.me {
            return;
        }
        let moved = !matches!(self.get(id), Some(p) if p.addr == addr && p.name == name);
        if moved {
            let fresh = Arc::new(Peer {
                name: name.to_owned(),
                addr,
                conn: tokio::sync::Mutex::new(None),
                went_down: watch::Sender::new(0),
                batcher: OnceLock::new(),
            });
            self.peers.write().expect("peers lock").insert(id, fresh);
        }
        let now = Instant::now();
        self.liveness(|l| {
            if moved {
                l.handle_new_address(now, id);
            }
            l.handle_gossip(now, id, alive, suspect);
            l.handle_storage(now, id, degraded);
        });
    }

    /// Whether this node's own storage is degraded: while it is, this node does not route
    /// requests to itself (see [`cairn_core::liveness::Liveness::handle_storage`]).
    pub fn set_own_storage(&self, degraded: bool) {
        let now = Instant::now();
        let me = self.me;
        self.liveness(|l| l.handle_storage(now, me, degraded));
    }

    /// Forgets peer `id` (it was removed from the cluster).
    pub fn remove(&self, id: NodeId) {
        self.peers.write().expect("peers lock").remove(&id);
        self.liveness(|l| l.remove(id));
    }

    /// Whether `id` is believed reachable (this node always is).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.liveness.lock().expect("liveness lock").is_up(id)
    }

    /// The name of `id`, or its id in hex if it is not a member.
    pub fn name(&self, id: NodeId) -> String {
        if id == self.me {
            return self.my_name.clone();
        }
        self.get(id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// Records the outcome of an exchange with `id` that started at `started`.
    fn mark(&self, id: NodeId, started: Instant, outcome: Result<(), String>) {
        self.liveness(|l| l.handle_exchange(id, started, outcome));
    }

    async fn connection(&self, peer: &Peer) -> Result<quinn::Connection, String> {
        let mut cached = peer.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = self.connect(peer.addr).await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// A new connection to `addr` (a seed, whose id is not known yet, or a peer).
    pub async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect(addr, cairn_net::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(PEER_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no connection within {PEER_CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    /// Sends `req` to peer `id`. Transport failures mark the peer down. An error answer from
    /// the peer is `Err` too; see [`Peers::call`] for a transport failure told apart.
    pub async fn request(
        &self,
        id: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ErrorReply> {
        self.call(id, req, timeout).await?
    }

    /// Sends `req` to peer `id`: the peer's answer (which may be an error reply), or why there
    /// was none, saying whether the request may have arrived. Transport failures mark the peer
    /// down. Fails early, before `timeout`, when the peer is judged down meanwhile (another
    /// exchange with it failed, or gossip convicted it): a forward or replica request to a node
    /// that went silent must not outlast the client's deadline.
    pub async fn call(
        &self,
        id: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<Result<PeerResponse, ErrorReply>, PeerError> {
        let Some(peer) = self.get(id) else {
            return Err(PeerError::NotAMember {
                node: self.name(id),
            });
        };
        let started = Instant::now();
        // Set once the request is on its way: from then on a failure may follow its arrival.
        let sent = std::sync::atomic::AtomicBool::new(false);
        // Subscribed before the exchange starts, so a transition during it is seen.
        let mut went_down = peer.went_down.subscribe();
        let exchange = async {
            let conn = self.connection(&peer).await?;
            exchange_on(&conn, req, &sent).await
        };
        let (result, timed_out) = tokio::select! {
            r = tokio::time::timeout(timeout, exchange) => match r {
                Ok(r) => (r, false),
                Err(_) => (Err(format!("no answer within {timeout:?}")), true),
            },
            // The sender lives as long as `peer`, which this holds: only a transition ends it.
            _ = went_down.changed() => (
                Err(format!(
                    "no answer after {:?}, and the peer was judged down meanwhile",
                    started.elapsed()
                )),
                false,
            ),
        };
        if result.is_ok() {
            self.mark(id, started, Ok(()));
        }
        match result {
            Ok(resp) => Ok(resp),
            Err(reason) => {
                // The cached connection may belong to a peer process that is gone (killed and
                // restarted peers do not reset old connections): dial afresh next time.
                peer.conn.lock().await.take();
                self.mark(id, started, Err(reason.clone()));
                let node = peer.name.clone();
                let sent = sent.load(std::sync::atomic::Ordering::Acquire);
                Err(match (sent, timed_out) {
                    (false, _) => PeerError::Connect { node, reason },
                    (true, true) => PeerError::Timeout {
                        node,
                        after: timeout,
                    },
                    (true, false) => PeerError::Lost { node, reason },
                })
            }
        }
    }

    /// A typed call: [`Peers::call`] with the answer read by `pick`
    /// ([`cairn_core::peer::typed_answer`]), so the peer's refusal and an answer of another
    /// kind are [`PeerError`]s carrying their facts, as transport failures are. `request`
    /// names the request in those errors.
    pub async fn call_for<T>(
        &self,
        id: NodeId,
        request: &'static str,
        req: PeerRequest,
        timeout: Duration,
        pick: impl FnOnce(PeerResponse) -> Result<T, PeerResponse>,
    ) -> Result<T, PeerError> {
        let answer = self.call(id, req, timeout).await;
        cairn_core::peer::typed_answer(&self.name(id), request, answer, pick)
    }

    /// [`Peers::call`] for a replica request (`Replicate` or `Read`; anything else is sent
    /// alone): requests queued for the same peer while its earlier batches are in flight go
    /// together as one `PeerRequest::Batch`, one frame on one stream, and the peer applies
    /// their writes in one group commit. A request alone in its batch is sent as itself, so
    /// an idle node's requests travel exactly as before.
    pub async fn call_batched(
        self: &Arc<Self>,
        id: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> CallResult {
        if !matches!(
            req,
            PeerRequest::Replicate { .. } | PeerRequest::Read { .. }
        ) {
            return self.call(id, req, timeout).await;
        }
        let Some(peer) = self.get(id) else {
            return Err(PeerError::NotAMember {
                node: self.name(id),
            });
        };
        let queue = peer.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::channel(PEER_BATCH_QUEUE_MAX);
            self.tasks
                .spawn("peer batcher", batch_loop(Arc::downgrade(self), id, rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let lost = || PeerError::Connect {
            node: peer.name.clone(),
            reason: "the batcher for this peer stopped (shutdown)".into(),
        };
        if queue
            .send(Queued {
                req,
                timeout,
                reply,
            })
            .await
            .is_err()
        {
            return Err(lost());
        }
        // The batch's own exchange is bounded by the largest timeout of its requests.
        answer.await.unwrap_or_else(|_| Err(lost()))
    }

    /// Sends `batch` to peer `id` as one request (as itself when alone) and hands each
    /// caller its answer.
    async fn send_batch(&self, id: NodeId, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let q = batch.pop().expect("one request");
            let _ = q.reply.send(self.call(id, q.req, q.timeout).await);
            return;
        }
        let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
        let n = batch.len();
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.batches.batches.fetch_add(1, Relaxed);
            self.batches.requests.fetch_add(n as u64, Relaxed);
        }
        let mut items = Vec::with_capacity(n);
        let mut callers = Vec::with_capacity(n);
        for q in batch {
            // A read's key is kept for the retry below (keys are small; objects are not kept).
            let read_key = match &q.req {
                PeerRequest::Read { key } => Some(key.clone()),
                _ => None,
            };
            match cairn_proto::BatchItem::from_request(q.req) {
                Ok(item) => {
                    items.push(item);
                    callers.push((q.reply, read_key, q.timeout));
                }
                // `call_batched` queues only what a batch may carry; anything else goes alone.
                Err(req) => {
                    let _ = q.reply.send(self.call(id, req, q.timeout).await);
                }
            }
        }
        let n = items.len();
        match self.call(id, PeerRequest::Batch(items), timeout).await {
            Ok(Ok(PeerResponse::Batch(answers))) if answers.len() == n => {
                for ((reply, read_key, timeout), answer) in callers.into_iter().zip(answers) {
                    let answer = match (answer, read_key) {
                        // The peer's copies together did not fit one answer frame, so it left
                        // this one out: asked alone, it fits whatever fits a frame.
                        (
                            Err(ErrorReply::Limit(cairn_proto::LimitError::FrameTooLarge {
                                ..
                            })),
                            Some(key),
                        ) => self.call(id, PeerRequest::Read { key }, timeout).await,
                        (answer, _) => Ok(answer.map(PeerResponse::from)),
                    };
                    let _ = reply.send(answer);
                }
            }
            Ok(Ok(other)) => {
                let e = ErrorReply::Malformed {
                    reason: format!("peer answered a batch of {n} with {other:?}"),
                };
                for (reply, _, _) in callers {
                    let _ = reply.send(Ok(Err(e.clone())));
                }
            }
            other => {
                for (reply, _, _) in callers {
                    let _ = reply.send(other.clone());
                }
            }
        }
    }

    async fn ping(&self, id: NodeId) -> bool {
        let req = PeerRequest::Ping {
            from: self.my_name.clone(),
        };
        let started = Instant::now();
        match self
            .call_for(id, "ping", req, PING_TIMEOUT, cairn_core::peer::pong)
            .await
        {
            Ok(_) => true,
            // It answered, but not as a node of this protocol does: not up.
            Err(e @ PeerError::Mismatch { .. }) => {
                self.mark(id, started, Err(e.to_string()));
                false
            }
            Err(e) => {
                debug!("ping {} failed: {e}", self.name(id));
                false
            }
        }
    }

    /// Pings, forever, the peers gossip judges alive but whose last exchange failed, with
    /// doubling backoff, so a peer marked down by one failed request comes back as soon as it
    /// answers; and reachable peers whose heartbeat is late (suspects), every
    /// `SUSPECT_PROBE_INTERVAL`, so a dead one is marked down by its failed ping. Peers gossip
    /// judges dead are left to gossip.
    pub async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let due = self
                .liveness
                .lock()
                .expect("liveness lock")
                .poll_probes(Instant::now());
            let probes = due.into_iter().map(|id| {
                let this = self.clone();
                async move {
                    let ok = this.ping(id).await;
                    this.liveness(|l| l.handle_probe(Instant::now(), id, ok));
                }
            });
            futures_join_all(probes).await;
        }
    }
}

/// The batcher of one peer: takes what queued for it, up to `PEER_BATCH_ITEMS_MAX` requests and
/// `PEER_BATCH_BYTES_MAX` bytes, as one batch whenever fewer than `PEER_BATCHES_IN_FLIGHT_MAX`
/// of its batches are in flight. Holds the peers weakly, so it keeps no connection or endpoint
/// alive; it ends when the peer's entry (the queue's sender) is dropped.
async fn batch_loop(peers: Weak<Peers>, id: NodeId, mut rx: mpsc::Receiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(PEER_BATCHES_IN_FLIGHT_MAX));
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut received = Vec::new();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if pending.is_empty() {
            if rx.recv_many(&mut received, PEER_BATCH_ITEMS_MAX).await == 0 {
                return;
            }
            pending.extend(received.drain(..));
        }
        while pending.len() < PEER_BATCH_ITEMS_MAX {
            match rx.try_recv() {
                Ok(q) => pending.push_back(q),
                Err(_) => break,
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(q) = pending.front() {
            let b = q.bytes();
            if !batch.is_empty()
                && (bytes + b > PEER_BATCH_BYTES_MAX || batch.len() == PEER_BATCH_ITEMS_MAX)
            {
                break;
            }
            bytes += b;
            batch.push(pending.pop_front().expect("front exists"));
        }
        let Some(peers) = peers.upgrade() else {
            return;
        };
        // Among the node's tasks rather than the batcher's: a batch in flight is answered even
        // if its batcher ends first.
        let tasks = peers.tasks.clone();
        tasks.spawn("peer batch", async move {
            peers.send_batch(id, batch).await;
            drop(permit);
        });
    }
}

/// One request and its response on a new stream of `conn`; `sent` is set once any of the
/// request may have left.
pub async fn exchange_on(
    conn: &quinn::Connection,
    req: PeerRequest,
    sent: &std::sync::atomic::AtomicBool,
) -> Result<Result<PeerResponse, ErrorReply>, String> {
    // Encoded before a stream opens: a request too large for a frame (read repair of a merge
    // past the hard limits) is this node's problem, not a failure of the peer.
    let frame = match cairn_proto::encode_frame(&Request::Peer(req)) {
        Ok(frame) => frame,
        Err(cairn_proto::FrameError::TooLarge { len, max }) => {
            return Ok(Err(ErrorReply::Limit(
                cairn_proto::LimitError::FrameTooLarge {
                    what: "a peer request".to_owned(),
                    len,
                    max,
                },
            )))
        }
        Err(e) => return Err(e.to_string()),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    sent.store(true, std::sync::atomic::Ordering::Release);
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let resp = cairn_net::read_frame::<Response>(&mut recv)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match resp {
        Response::Peer(resp) => Ok(resp),
        Response::Error(e) => Err(e),
        other => Err(ErrorReply::Malformed {
            reason: format!("peer answered {other:?}"),
        }),
    })
}

/// Runs futures concurrently and waits for all (a few lines instead of a dependency).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
